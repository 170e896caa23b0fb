"""Text preprocessing on real NCBI disease examples, and pyab3p against DNorm's Ab3P table."""

import logging

import pytest

from ehrbert.corpora.pubtator import read_pubtator
from ehrbert.corpora.records import FormatError
from ehrbert.text import (
    expand_abbreviations,
    find_abbreviations,
    normalize,
    preprocess_mention,
    read_abbreviation_table,
)


@pytest.fixture(scope="module")
def ncbi_test(raw_data):
    return {doc.doc_id: doc for doc in read_pubtator(raw_data / "ncbi_disease" / "NCBItestset_corpus.txt")}


@pytest.fixture(scope="module")
def dnorm_ncbi(raw_data):
    return read_abbreviation_table(raw_data / "dnorm_abbreviations" / "NCBI_disease_abbreviations.tsv")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Wilson disease", "wilson disease"),
        ("autosomal recessive copper toxicosis (CT)", "autosomal recessive copper toxicosis ct"),
        ("B-cell non-Hodgkin's lymphomas", "b cell non hodgkins lymphomas"),  # hyphen -> space, apostrophe deleted
        ("B cell non-Hodgkins lymphomas", "b cell non hodgkins lymphomas"),  # ... so both spellings meet
        ("Wilms\u2019 tumor 1", "wilms tumor 1"),  # curly apostrophe
        ("'imprinting centre'", "imprinting centre"),  # quotes
        ("2p13-p16, type 1/2", "2p13 p16 type 1 2"),  # numbers kept
        ("G(M2) gangliosidosis", "g m2 gangliosidosis"),
        ("H_RG364P16  \t deletion\n", "h rg364p16 deletion"),  # underscore is punctuation; whitespace collapsed
        ("Sj\u00f6gren's syndrome", "sj\u00f6grens syndrome"),  # letters outside ASCII kept
        ("", ""),
    ],
)
def test_normalize(text, expected):
    assert normalize(text) == expected


def test_find_abbreviations_matches_dnorm_on_a_real_abstract(ncbi_test, dnorm_ncbi):
    # 9949209: "... causing Wilson disease (WD) ... copper toxicosis (CT) ... hybridization (FISH)"
    found = find_abbreviations(ncbi_test["9949209"].text)
    assert (
        found
        == dnorm_ncbi["9949209"]
        == {
            "WD": "Wilson disease",
            "CT": "copper toxicosis",
            "FISH": "fluorescence in situ hybridization",
        }
    )


def test_find_abbreviations_is_quiet_where_ab3p_fails_to_find_a_sentence(ncbi_test, capfd, caplog):
    # 9729124 has "clone H_RG364P16": Ab3P rewrites "_" and then prints "Failed to find sentence" from C++
    text = ncbi_test["9729124"].text
    assert "H_RG364P16" in text
    with caplog.at_level(logging.DEBUG, logger="ehrbert.text"):
        found = find_abbreviations(text)
    assert capfd.readouterr().err == ""
    assert "Failed to find sentence" in caplog.text
    assert found["CLD"] == "chloride diarrhea"
    assert found["PDS"] == "Pendred syndrome gene"


def test_find_abbreviations_keeps_the_most_probable_long_form(ncbi_test):
    # 9600235: "The ATM (A-T, mutated) gene" (Ab3P precision 0.92) and "ataxia-telangiectasia (A-T)" (0.98)
    assert find_abbreviations(ncbi_test["9600235"].text)["A-T"] == "ataxia-telangiectasia"


def test_pyab3p_agrees_with_dnorm_table_on_ncbi_test(ncbi_test, dnorm_ncbi):
    """Measured: 129 short forms each side, 128 pairs equal after `normalize` (the two misses: "Hp" ->
    "haptoglobin" vs DNorm "haptoglobin gene", and DNorm's "C282Y" -> "Cys-282 --> Tyr"). Exact strings
    agree on 122 only: the PubTator text lost apostrophes DNorm's copy had ("Alzheimers disease")."""

    def pairs(tables):
        return {(pmid, short, normalize(long)) for pmid, table in tables.items() for short, long in table.items()}

    ours = pairs({pmid: find_abbreviations(doc.text) for pmid, doc in ncbi_test.items()})
    dnorm = pairs({pmid: table for pmid, table in dnorm_ncbi.items() if pmid in ncbi_test})
    agree = len(ours & dnorm)
    assert (len(ours), len(dnorm)) == (129, 130)
    assert agree / len(ours) >= 0.98 and agree / len(dnorm) >= 0.98


def test_read_abbreviation_table_real_file(dnorm_ncbi):
    assert len(dnorm_ncbi) == 550
    assert sum(len(pairs) for pairs in dnorm_ncbi.values()) == 907  # `wc -l` says 906: no final newline
    assert dnorm_ncbi["10021369"] == {
        "APC": "adenomatous polyposis coli",
        "GSK-3beta": "glycogen synthase kinase 3beta",
    }


@pytest.mark.parametrize(
    ("content", "line_no"),
    [
        ("1\tAPC\tadenomatous polyposis coli\n\n2\tWD\n", 3),  # two fields (after a skipped blank line)
        ("1\tAPC\t\n", 1),  # empty long form
        ("1\tAPC\tadenomatous polyposis coli\n1\tAPC\tactivated protein C\n", 2),  # two meanings in one PMID
    ],
)
def test_read_abbreviation_table_format_errors(tmp_path, content, line_no):
    path = tmp_path / "abbreviations.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(FormatError, match=f"abbreviations.tsv:{line_no}:") as error:
        read_abbreviation_table(path)
    assert error.value.line_no == line_no


def test_read_abbreviation_table_skips_blank_lines_and_repeats(tmp_path):
    path = tmp_path / "abbreviations.tsv"
    path.write_text("1\tWD\tWilson disease\r\n\n1\tWD\tWilson disease\n2\tWD\twhite dwarf\n", encoding="utf-8")
    assert read_abbreviation_table(path) == {"1": {"WD": "Wilson disease"}, "2": {"WD": "white dwarf"}}


WD = {"WD": "Wilson disease"}  # 9949209
APC = {"APC": "adenomatous polyposis coli"}  # 10021369
VHL = {"VHL": "von Hippel-Lindau", "RCC": "renal cell carcinomas"}  # 9448273


@pytest.mark.parametrize(
    ("mention", "abbreviations", "expected"),
    [
        ("WD", WD, "Wilson disease"),
        ("wd", WD, "wd"),  # short forms are case-sensitive
        ("APC tumours", APC, "adenomatous polyposis coli tumours"),
        ("APC-associated", APC, "adenomatous polyposis coli-associated"),
        ("APCs", APC, "APCs"),  # not a whole token
        # the long form is already there, so "(APC)" is dropped (DNorm's rule)
        ("adenomatous polyposis coli (APC) tumour", APC, "adenomatous polyposis coli tumour"),
        ("von Hippel-Lindau (VHL) tumor", VHL, "von Hippel-Lindau tumor"),
        ("VHL and RCC", VHL, "von Hippel-Lindau and renal cell carcinomas"),
        # 9288106: the longer short form wins, and its long form is expanded in turn
        ("B-NHL", {"NHL": "non-Hodgkin lymphoma", "B-NHL": "B-cell NHL"}, "B-cell non-Hodgkin lymphoma"),
        # a nested short form of NCBI test: "IDMS" is "isolated DMS", DMS is defined in the same abstract
        (
            "IDMS",
            {"IDMS": "isolated DMS", "DMS": "diffuse mesangial sclerosis"},
            "isolated diffuse mesangial sclerosis",
        ),
        # each short form at most once on the way down: a circle of long forms ends
        ("AB", {"AB": "alpha CD", "CD": "beta AB"}, "alpha beta AB"),
        # "(DMS)" inside a long form that already spells it out is dropped, as in a mention
        (
            "IDMS",
            {"IDMS": "isolated diffuse mesangial sclerosis (DMS)", "DMS": "diffuse mesangial sclerosis"},
            "isolated diffuse mesangial sclerosis",
        ),
        ("no short form here", {}, "no short form here"),
    ],
)
def test_expand_abbreviations(mention, abbreviations, expected):
    assert expand_abbreviations(mention, abbreviations) == expected


def test_preprocess_mention_on_real_mentions(ncbi_test):
    found = find_abbreviations(ncbi_test["9949209"].text)
    assert preprocess_mention("WD", found) == "wilson disease"
    assert preprocess_mention("copper toxicosis (CT)", found) == "copper toxicosis"
    ad = find_abbreviations(ncbi_test["9702690"].text)  # "Alzheimers disease (AD)" in this copy
    assert preprocess_mention("AD", ad) == normalize("Alzheimer's disease") == "alzheimers disease"
