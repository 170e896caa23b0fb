"""PubTator reader: excerpts of the real NCBI disease / BC5CDR files, the full staged files, malformed input."""

import logging
from collections import Counter

import pytest

from ehrbert.corpora.pubtator import CDR_TYPES, NCBI_TYPES, read_pubtator
from ehrbert.corpora.records import COMBINED, COMPOSITE, NO_CONCEPT, SINGLE, FormatError

# NCBI test 9674906 (cut after the second sentence), NCBI test 9288106 and NCBI dev 8894695 (cut), real lines.
NCBI_EXCERPT = """\
9674906|t|Schwartz-Jampel syndrome type 2 and Stuve-Wiedemann syndrome: a case for "lumping".
9674906|a|Recent studies demonstrated the existence of a genetically distinct, usually lethal form of the \
Schwartz-Jampel syndrome (SJS) of myotonia and skeletal dysplasia, which we called SJS type 2. This disorder is \
reminiscent of another rare condition, the Stuve-Wiedemann syndrome (SWS), which comprises campomelia at birth with \
skeletal dysplasia, contractures, and early death.
9674906\t0\t31\tSchwartz-Jampel syndrome type 2\tSpecificDisease\tC537502
9674906\t227\t245\tskeletal dysplasia\tSpecificDisease\tMESH:C535662
9674906\t408\t426\tskeletal dysplasia\tSpecificDisease\tMESH:C535662
9674906\t446\t457\tearly death\tSpecificDisease\tD003643

9288106|t|Clustering of missense mutations in the ataxia-telangiectasia gene in a sporadic T-cell leukaemia.
9288106|a|Ataxia-telangiectasia (A-T) is a recessive multi-system disorder caused by mutations in the ATM gene \
at 11q22-q23 (ref. 3). The risk of cancer, especially lymphoid neoplasias, is substantially elevated in A-T patients \
and has long been associated with chromosomal instability. By analysing tumour DNA from patients with sporadic T-cell \
prolymphocytic leukaemia (T-PLL), a rare clonal malignancy with similarities to a mature T-cell leukae
9288106\t461\t466\tT-PLL\tSpecificDisease\tD015461
9288106\t476\t493\tclonal malignancy\tDiseaseClass\t D007945

8894695|t|HPRT-APRT-deficient mice are not a model for lesch-nyhan syndrome.
8894695|a|Complete hypoxanthine-guanine phosphoribosyl-transferase (HPRT) deficiency
8894695\t0\t19\tHPRT-APRT-deficient\tModifier\tOMIM:300322+OMIM:102600
8894695\t45\t65\tlesch-nyhan syndrome\tSpecificDisease\tD007926
"""

# BC5CDR dev 1545575 (7-column composites, relation lines) and 17574447 (`-1`), abstracts cut.
CDR_EXCERPT = """\
1545575|t|Hemorrhagic cystitis complicating bone marrow transplantation.
1545575|a|Hemorrhagic cystitis is a potentially serious complication of high-dose cyclophosphamide therapy \
administered before bone marrow transplantation.
1545575\t0\t20\tHemorrhagic cystitis\tDisease\tD006470|D003556\tHemorrhagic|cystitis
1545575\t63\t83\tHemorrhagic cystitis\tDisease\tD006470|D003556\tHemorrhagic|cystitis
1545575\t135\t151\tcyclophosphamide\tChemical\tD003520
1545575\tCID\tD003520\tD006470
1545575\tCID\tD003520\tD003556

17574447|t|Hepatonecrosis and cholangitis related to long-term phenobarbital therapy: an autopsy report of two patients.
17574447|a|Phenobarbital (PB) has a reputation for safety.
17574447\t0\t14\tHepatonecrosis\tDisease\t-1
17574447\t19\t30\tcholangitis\tDisease\tD002761
17574447\t52\t65\tphenobarbital\tChemical\tD010634
17574447\tCID\tD010634\tD002761
"""

TITLE = "8894695|t|HPRT-APRT-deficient mice are not a model for lesch-nyhan syndrome."
ABSTRACT = "8894695|a|Complete hypoxanthine-guanine phosphoribosyl-transferase (HPRT) deficiency"
ANNOTATION = "8894695\t45\t65\tlesch-nyhan syndrome\tSpecificDisease\tD007926"

NCBI_FILES = {"train": "NCBItrainset_corpus.txt", "dev": "NCBIdevelopset_corpus.txt", "test": "NCBItestset_corpus.txt"}
CDR_FILES = {
    "train": "CDR_TrainingSet.PubTator.txt",
    "dev": "CDR_DevelopmentSet.PubTator.txt",
    "test": "CDR_TestSet.PubTator.txt",
}


@pytest.fixture
def write(tmp_path):
    def _write(text: str, name: str = "corpus.txt"):
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return _write


def by_id(documents):
    return {doc.doc_id: doc for doc in documents}


def test_text_is_title_space_abstract_and_offsets_point_into_it(write):
    docs = read_pubtator(write(NCBI_EXCERPT), NCBI_TYPES)
    assert [d.doc_id for d in docs] == ["9674906", "9288106", "8894695"]
    doc = docs[2]
    assert doc.title == "HPRT-APRT-deficient mice are not a model for lesch-nyhan syndrome."
    assert doc.text == doc.title + " Complete hypoxanthine-guanine phosphoribosyl-transferase (HPRT) deficiency"
    assert all(d.text[m.start : m.end] == m.text for d in docs for m in d.mentions)
    assert [len(d.mentions) for d in docs] == [4, 2, 2]


def test_mesh_prefix_and_leading_space_are_normalized(write):
    docs = by_id(read_pubtator(write(NCBI_EXCERPT), NCBI_TYPES))
    dysplasia = [m for m in docs["9674906"].mentions if m.text == "skeletal dysplasia"]
    assert [m.concept_ids for m in dysplasia] == [("C535662",), ("C535662",)]
    malignancy = docs["9288106"].mentions[1]
    assert (malignancy.concept_ids, malignancy.relation, malignancy.type) == (("D007945",), SINGLE, "DiseaseClass")
    assert malignancy.spans == ((476, 493),)


def test_plus_ids_are_combined_and_keep_omim_prefix(write):
    modifier = by_id(read_pubtator(write(NCBI_EXCERPT)))["8894695"].mentions[0]
    assert modifier.relation == COMBINED
    assert modifier.concept_ids == ("OMIM:300322", "OMIM:102600")
    assert modifier.type == "Modifier"


def test_cdr_composite_seven_columns_relations_and_type_filter(write):
    path = write(CDR_EXCERPT)
    diseases = by_id(read_pubtator(path, CDR_TYPES))
    cystitis = diseases["1545575"].mentions
    assert [(m.spans, m.text, m.concept_ids, m.relation) for m in cystitis] == [
        (((0, 20),), "Hemorrhagic cystitis", ("D006470", "D003556"), COMPOSITE),
        (((63, 83),), "Hemorrhagic cystitis", ("D006470", "D003556"), COMPOSITE),
    ]
    everything = by_id(read_pubtator(path))
    assert Counter(m.type for d in everything.values() for m in d.mentions) == {"Disease": 4, "Chemical": 2}


def test_minus_one_is_no_concept(write):
    hepatonecrosis, cholangitis = by_id(read_pubtator(write(CDR_EXCERPT), CDR_TYPES))["17574447"].mentions
    assert (hepatonecrosis.relation, hepatonecrosis.concept_ids) == (NO_CONCEPT, ())
    assert (cholangitis.relation, cholangitis.concept_ids) == (SINGLE, ("D002761",))


def test_identical_duplicate_document_is_kept_once_with_a_warning(write, caplog):
    block = f"{TITLE}\n{ABSTRACT}\n{ANNOTATION}\n"
    path = write(f"{block}\n{block}")
    with caplog.at_level(logging.WARNING):
        docs = read_pubtator(path)
    assert len(docs) == 1 and len(docs[0].mentions) == 1
    assert f"{path}:5" in caplog.text and "8894695" in caplog.text


def test_duplicate_pmid_with_different_content_is_an_error(write):
    path = write(f"{TITLE}\n{ABSTRACT}\n{ANNOTATION}\n\n{TITLE}\n{ABSTRACT}\n")
    with pytest.raises(FormatError, match="appears twice") as error:
        read_pubtator(path)
    assert f"{path}:5:" in str(error.value)


def test_offset_mismatch_warns_with_file_and_line(write, caplog):
    shifted = ANNOTATION.replace("\t45\t65\t", "\t44\t64\t")
    path = write(f"{TITLE}\n{ABSTRACT}\n{shifted}\n")
    with caplog.at_level(logging.WARNING):
        (doc,) = read_pubtator(path)
    assert f"{path}:3" in caplog.text
    assert doc.mentions[0].spans == ((44, 64),)


def test_trailing_spaces_in_the_mention_string_are_no_mismatch(write, caplog):
    # the NCBI train case: `generalized epilepsy and febrile seizures " plus "  ` covers 50 characters
    padded = ANNOTATION.replace("\tlesch-nyhan syndrome\t", "\tlesch-nyhan syndrome  \t")
    with caplog.at_level(logging.WARNING):
        (doc,) = read_pubtator(write(f"{TITLE}\n{ABSTRACT}\n{padded}\n"))
    assert caplog.text == ""
    assert doc.mentions[0].text == "lesch-nyhan syndrome  "


@pytest.mark.parametrize(
    "lines, line_no, message",
    [
        ([TITLE, ABSTRACT, "8894695\t45\t65\tlesch-nyhan syndrome\tSpecificDisease"], 3, "found 5"),
        ([TITLE, ABSTRACT, ANNOTATION.replace("\t45\t", "\t4a\t")], 3, "integers"),
        ([TITLE, ABSTRACT, ANNOTATION.replace("\t45\t65\t", "\t65\t45\t")], 3, "65-45"),
        ([TITLE, ABSTRACT, ANNOTATION.replace("\t45\t65\t", "\t45\t999\t")], 3, "outside the text"),
        ([ANNOTATION, TITLE, ABSTRACT], 1, "title line"),
        ([TITLE, ANNOTATION], 2, "abstract line"),
        ([TITLE], 1, "no abstract"),
        ([TITLE, ABSTRACT.replace("8894695", "8894696")], 2, "abstract line `8894695|a|...`"),
        ([TITLE, ABSTRACT, ANNOTATION.replace("8894695", "9288106")], 3, "PMID 9288106"),
        ([TITLE, ABSTRACT, ANNOTATION.replace("D007926", "D007926|")], 3, "empty concept ID"),
    ],
)
def test_malformed_input_names_file_and_line(write, lines, line_no, message):
    path = write("\n".join(lines) + "\n")
    with pytest.raises(FormatError) as error:
        read_pubtator(path)
    assert f"{path}:{line_no}:" in str(error.value)
    assert message in str(error.value)
    assert error.value.line_no == line_no


# ----- the full staged files (counts from data/*/SOURCE.md) -----


@pytest.mark.parametrize(
    "split, docs, mentions, composite, combined, unique_ids",
    [
        # train: 593 documents in the file; the repeated PMID 8528200 (11 mentions) is kept once: 5145 - 11
        ("train", 592, 5134, 93, 22, 647),
        ("dev", 100, 787, 20, 10, 170),
        ("test", 100, 960, 15, 0, 200),
    ],
)
def test_ncbi_counts(raw_data, split, docs, mentions, composite, combined, unique_ids):
    documents = read_pubtator(raw_data / "ncbi_disease" / NCBI_FILES[split], NCBI_TYPES)
    all_mentions = [m for d in documents for m in d.mentions]
    relations = Counter(m.relation for m in all_mentions)
    assert len(documents) == len({d.doc_id for d in documents}) == docs
    assert len(all_mentions) == mentions
    assert (relations[COMPOSITE], relations[COMBINED], relations[NO_CONCEPT]) == (composite, combined, 0)
    assert len({i for m in all_mentions for i in m.concept_ids}) == unique_ids


def test_ncbi_train_duplicate_is_the_only_warning(raw_data, caplog):
    path = raw_data / "ncbi_disease" / NCBI_FILES["train"]
    with caplog.at_level(logging.WARNING):
        read_pubtator(path, NCBI_TYPES)
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}:4557: PMID 8528200 repeats an earlier document; kept once"
    ]


def test_ncbi_odd_ids_are_normalized(raw_data):
    ids = {
        (d.doc_id, m.start): m.concept_ids
        for split in NCBI_FILES.values()
        for d in read_pubtator(raw_data / "ncbi_disease" / split)
        for m in d.mentions
    }
    assert ids["9674906", 227] == ids["9674906", 408] == ("C535662",)
    assert ids["8808605", 154] == ("D008661",)
    assert ids["10842298", 374] == ("D015862", "D058499")
    assert ids["7550230", 979] == ("OMIM:106210",)
    all_ids = {i for concept_ids in ids.values() for i in concept_ids}
    assert not [i for i in all_ids if i != i.strip() or i.startswith("MESH:")]


@pytest.mark.parametrize(
    "split, diseases, chemicals, composite, no_concept, unique_ids",
    [
        ("train", 4182, 5203, 95, 32, 664),
        ("dev", 4244, 5347, 98, 16, 604),
        ("test", 4424, 5385, 63, 61, 645),
    ],
)
def test_cdr_counts(raw_data, caplog, split, diseases, chemicals, composite, no_concept, unique_ids):
    path = raw_data / "bc5cdr" / CDR_FILES[split]
    with caplog.at_level(logging.WARNING):
        documents = read_pubtator(path)
    assert caplog.text == ""  # every offset matches the text
    assert len(documents) == 500
    types = Counter(m.type for d in documents for m in d.mentions)
    assert types == {"Disease": diseases, "Chemical": chemicals}
    disease_mentions = [m for d in read_pubtator(path, CDR_TYPES) for m in d.mentions]
    relations = Counter(m.relation for m in disease_mentions)
    assert len(disease_mentions) == diseases
    assert (relations[COMPOSITE], relations[NO_CONCEPT]) == (composite, no_concept)
    assert len({i for m in disease_mentions for i in m.concept_ids}) == unique_ids


def test_cdr_composite_part_without_concept_is_left_out(raw_data):
    doc = by_id(read_pubtator(raw_data / "bc5cdr" / CDR_FILES["dev"], CDR_TYPES))["8638876"]
    (occlusion,) = [m for m in doc.mentions if m.start == 708]
    assert occlusion.text == "cerebral artery and the venous sinus occlusion"
    assert (occlusion.relation, occlusion.concept_ids) == (COMPOSITE, ("D002544",))
