"""A user's own vocabulary in each format, on real lines: MEDIC concepts (IDs, names, synonyms, definitions as
CTD ships them) written as TSV, OBO and UMLS MRCONSO rows, and BioSyn's dictionary lines, read back; and the
malformed-input errors, each naming the file and line."""

from __future__ import annotations

import pytest

from ehrbert.corpora.medic import read_medic
from ehrbert.corpora.records import FormatError
from ehrbert.corpora.terminology import read_vocabulary


@pytest.fixture(scope="module")
def medic_concepts(raw_data):
    """The first 40 MEDIC concepts with synonyms, and the 5 after them."""
    concepts = [c for c in read_medic(raw_data / "medic" / "CTD_diseases.tsv.gz").concepts if c.synonyms]
    return concepts[:45]


def _mrconso_row(cui: str, string: str, preferred: bool, sab: str = "MSH", lat: str = "ENG", suppress="N") -> str:
    ts, stt, ispref = ("P", "PF", "Y") if preferred else ("S", "VO", "N")
    fields = [cui, lat, ts, "L0000001", stt, "S0000001", ispref, "A0000001", "", "", "D000001", sab, "PT"]
    return "|".join([*fields, "D000001", string, "0", suppress, "256"]) + "|"


def test_tsv_obo_and_mrconso_read_back_medic_concepts(tmp_path, medic_concepts):
    concepts = medic_concepts[:40]
    tsv = tmp_path / "vocabulary.tsv"
    rows = "".join(f"{c.concept_id}\t{c.name}\t{'|'.join(c.synonyms)}\n" for c in concepts)
    tsv.write_text("concept_id\tname\tsynonyms\n" + rows)
    obo = tmp_path / "vocabulary.obo"
    stanzas = ["format-version: 1.4\nontology: medic-sample\n"]
    for c in concepts:
        synonyms = "".join(f'synonym: "{s}" EXACT []\n' for s in c.synonyms)
        parents = "".join(f"is_a: {p} {{source=MEDIC}} ! a parent\n" for p in c.parents)
        stanzas.append(f"[Term]\nid: {c.concept_id}\nname: {c.name}\n{synonyms}{parents}")
    stanzas.append(f"[Term]\nid: {medic_concepts[40].concept_id}\nname: {medic_concepts[40].name}\nis_obsolete: true\n")
    stanzas.append("[Typedef]\nid: part_of\nname: part of\n")
    obo.write_text("\n".join(stanzas))
    mrconso = tmp_path / "MRCONSO.RRF"
    rows = []
    for i, c in enumerate(concepts):
        cui = f"C{i:07d}"
        rows += [_mrconso_row(cui, s, False) for s in c.synonyms]  # the preferred row need not come first
        rows.append(_mrconso_row(cui, c.name, True))
        rows.append(_mrconso_row(cui, c.name.upper(), False, sab="SNOMEDCT_US"))  # another source: left out
        rows.append(_mrconso_row(cui, c.name + " (fre)", False, lat="FRE"))  # another language: left out
        rows.append(_mrconso_row(cui, c.name + " old", False, suppress="O"))  # suppressed: left out
    mrconso.write_text("\n".join(rows) + "\n")

    for path, fmt, options in ((tsv, "tsv", {}), (obo, "obo", {}), (mrconso, "mrconso", {"sources": ["MSH"]})):
        vocabulary = read_vocabulary(path, fmt, **options)
        assert len(vocabulary) == 40, fmt
        for read, original in zip(vocabulary.concepts, concepts):
            assert read.name == original.name, fmt
            assert set(read.synonyms) == set(original.synonyms) - {original.name}, fmt
        if fmt == "obo":  # is_a: the term's parents, qualifiers and comment left out
            assert [c.parents for c in vocabulary.concepts] == [c.parents for c in concepts]
            assert any(c.parents for c in concepts)
        if fmt == "mrconso":
            assert vocabulary.concepts[0].concept_id == "C0000000"
        else:
            assert [c.concept_id for c in vocabulary.concepts] == [c.concept_id for c in concepts]


def test_biosyn_dictionary_lines(tmp_path, medic_concepts):
    path = tmp_path / "dictionary.txt"
    lines = [f"{c.concept_id}||{name}" for c in medic_concepts[:5] for name in c.names]
    path.write_text("\n".join(lines) + "\n")
    vocabulary = read_vocabulary(path, "biosyn")
    assert [c.concept_id for c in vocabulary.concepts] == [c.concept_id for c in medic_concepts[:5]]
    assert vocabulary.concepts[0].name == medic_concepts[0].name


@pytest.mark.parametrize(
    "fmt, text, line, message",
    [
        ("tsv", "D1\tfever\nD2\tcough\nD1\tpyrexia\n", 3, "concept ID D1 was already given on line 1"),
        ("tsv", "D1\tfever\nD2\t \n", 2, "concept D2 has an empty name"),
        ("tsv", "D1\tfever\nD2\n", 2, "expected concept_id<TAB>name"),
        ("tsv", "D1\tfever\n\tcough\n", 2, "empty concept ID"),
        ("obo", "[Term]\nid: HP:1\nname: a\n\n[Term]\nid: HP:2\n", 5, "term HP:2 has no name"),
        ("obo", "[Term]\nid: HP:1\nname: a\n\n[Term]\nid: HP:1\nname: b\n", 5, "concept ID HP:1 was already given"),
        ("obo", "[Term]\nid: HP:1\nname: a\nsynonym: unquoted EXACT []\n", 4, "synonym must start with a quoted"),
        ("obo", "[Term]\nid: HP:1\nname: a\nis_a: ! nothing\n", 4, "is_a without a parent ID"),
        ("mrconso", "C1|ENG|P|L1|PF|S1|Y|A1\n", 1, "expected 18 '|'-separated fields"),
        ("biosyn", "D1||fever\nD2|cough\n", 2, "expected `ID||name`"),
    ],
)
def test_malformed_vocabularies_name_the_file_and_line(tmp_path, fmt, text, line, message):
    path = tmp_path / f"vocabulary.{fmt}"
    path.write_text(text)
    options = {"sources": ["MSH"]} if fmt == "mrconso" else {}
    with pytest.raises(FormatError, match=message) as caught:
        read_vocabulary(path, fmt, **options)
    assert caught.value.path == str(path) and caught.value.line_no == line


def test_unknown_format_empty_vocabulary_and_missing_sources(tmp_path):
    path = tmp_path / "v.tsv"
    path.write_text("# nothing here\n")
    with pytest.raises(ValueError, match="unknown vocabulary format 'csv'"):
        read_vocabulary(path, "csv")
    with pytest.raises(FormatError, match="no concepts read"):
        read_vocabulary(path, "tsv")
    with pytest.raises(ValueError, match="name the UMLS sources"):
        read_vocabulary(path, "mrconso")
    with pytest.raises(FileNotFoundError, match="missing.tsv"):
        read_vocabulary(tmp_path / "missing.tsv", "tsv")
