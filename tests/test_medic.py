"""MEDIC vocabularies: ID normalization, CTD and BioSyn readers on real lines and full files, gold coverage."""

import gzip

import pytest

from ehrbert.corpora.medic import gold_coverage, normalize_id, read_biosyn_dictionary, read_medic
from ehrbert.corpora.pubtator import CDR_TYPES, NCBI_TYPES, read_pubtator
from ehrbert.corpora.records import COMPOSITE, NO_CONCEPT, Concept, Document, FormatError, Mention, Vocabulary

# The last header lines and five rows of CTD_diseases.tsv.gz (2017-06-06), verbatim.
CTD_HEADER = """\
# Report created: Tue Jun 06 11:31:46 EDT 2017
#
# Fields:
# DiseaseName\tDiseaseID\tAltDiseaseIDs\tDefinition\tParentIDs\tTreeNumbers\tParentTreeNumbers\tSynonyms\tSlimMappings
#
"""
ABDOMINAL_INJURIES = (
    "Abdominal Injuries\tMESH:D000007\t\tGeneral or unspecified injuries involving organs in the abdominal cavity."
    "\tMESH:D014947\tC26.017\tC26\tAbdominal Injury|Injuries, Abdominal|Injury, Abdominal\tWounds and injuries"
)
CTD_ROWS = [
    ABDOMINAL_INJURIES,
    "Acromicric dysplasia\tMESH:C535662\t\t\tMESH:D001848|MESH:D017880\tC05.116.099/C535662|C05.660.585/C535662|"
    "C16.131.621.585/C535662\tC05.116.099|C05.660.585|C16.131.621.585\tACMICD|Acromicric skeletal dysplasia|"
    "Geleophysic dwarfism|Geleophysic dysplasia\tCongenital abnormality|Musculoskeletal disease",
    "Ambras syndrome\tMESH:C536605\tDO:DOID:0111060|OMIM:145701\t\tMESH:D006983\tC17.800.329.875/C536605\t"
    "C17.800.329.875\tAMBRAS SYNDROME|HTC1|HYPERTRICHOSIS, CONGENITAL GENERALIZED|Hypertrichosis universalis "
    "congenita Ambras type|Hypertrichosis Universalis Congenita, Ambras Type\tSkin disease",
    "COMPLEMENT COMPONENT 2 DEFICIENCY\tOMIM:217000\tDO:DOID:0060295\t\tMESH:D007153\tC20.673/217000\tC20.673\t"
    "C2D|C2 DEFICIENCY\tImmune system disease",
    "Diseases\tMESH:C\t\t\t\tC\t\t\t",
]

# Lines 2, 3, 7, 123 and 25919-25921 of the BioSyn dictionary, verbatim.
BIOSYN_LINES = [
    "C567755|613097||tooth agenesis selective 6",
    "C567755|613097||sthag6",
    "145250||hyperpigmentation familial progressive 2",
    "C|D004194||diseases",
    "106210|C536372||aniridia type 2",
    "106210|C536372|606788|D000856||an",
    "106210|C536372|D015783||aniridia",
]


def write_ctd(tmp_path, rows):
    path = tmp_path / "CTD_diseases.tsv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as out:
        out.write(CTD_HEADER + "".join(row + "\n" for row in rows))
    return path


def write_lines(tmp_path, lines, name="dictionary.txt"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "raw, normalized",
    [
        ("MESH:C535662", "C535662"),  # NCBI test
        (" D008661", "D008661"),  # NCBI dev, leading space
        ("OMIM:106210 ", "OMIM:106210"),  # NCBI train, trailing space
        ("D012345", "D012345"),
        ("OMIM:164400", "OMIM:164400"),
        ("DO:DOID:0060395", "DO:DOID:0060395"),
        ("613097", "OMIM:613097"),  # BioSyn writes OMIM numbers bare
        ("MESH:C", "C"),  # MEDIC's root, "Diseases"
    ],
)
def test_normalize_id(raw, normalized):
    assert normalize_id(raw) == normalized


def test_read_medic_rows(tmp_path):
    vocabulary = read_medic(write_ctd(tmp_path, CTD_ROWS))
    assert [c.concept_id for c in vocabulary.concepts] == ["D000007", "C535662", "C536605", "OMIM:217000", "C"]
    assert vocabulary["D000007"] == Concept(
        concept_id="D000007",
        name="Abdominal Injuries",
        synonyms=("Abdominal Injury", "Injuries, Abdominal", "Injury, Abdominal"),
        alt_ids=(),
        definition="General or unspecified injuries involving organs in the abdominal cavity.",
        parents=("D014947",),  # ParentIDs, normalized
    )
    assert vocabulary["C536605"].alt_ids == ("DO:DOID:0111060", "OMIM:145701")
    assert vocabulary.canonical("OMIM:145701") == "C536605"
    assert vocabulary["OMIM:217000"].names == ("COMPLEMENT COMPONENT 2 DEFICIENCY", "C2D", "C2 DEFICIENCY")
    assert vocabulary["C"].synonyms == ()


@pytest.mark.parametrize(
    "rows, line_no, message",
    [
        # header lines 1-5, rows from line 6
        ([ABDOMINAL_INJURIES, "Acromicric dysplasia\tMESH:C535662\t\t"], 7, "found 4"),
        ([ABDOMINAL_INJURIES.replace("MESH:D000007", "")], 6, "empty"),
        ([ABDOMINAL_INJURIES, "Diseases\tMESH:C\t\t\t\tC\t\t\t", ABDOMINAL_INJURIES], 8, "D000007 appears twice"),
    ],
)
def test_read_medic_malformed_names_file_and_line(tmp_path, rows, line_no, message):
    path = write_ctd(tmp_path, rows)
    with pytest.raises(FormatError) as error:
        read_medic(path)
    assert f"{path}:{line_no}:" in str(error.value)
    assert message in str(error.value)


def test_read_medic_not_gzip_names_file(tmp_path):
    path = write_lines(tmp_path, [ABDOMINAL_INJURIES], "CTD_diseases.tsv.gz")
    with pytest.raises(FormatError, match="not a gzip file") as error:
        read_medic(path)
    assert str(error.value).startswith(f"{path}:")


def test_read_biosyn_dictionary_groups_names_under_the_mesh_id(tmp_path):
    vocabulary = read_biosyn_dictionary(write_lines(tmp_path, BIOSYN_LINES))
    assert [c.concept_id for c in vocabulary.concepts] == ["C567755", "OMIM:145250", "C", "C536372"]
    assert vocabulary["C567755"].names == ("tooth agenesis selective 6", "sthag6")
    assert vocabulary["C567755"].alt_ids == ("OMIM:613097",)
    assert vocabulary.canonical("OMIM:613097") == "C567755"
    # OMIM-first composites are keyed on their first MeSH ID; every other ID becomes an alt ID
    assert vocabulary["C536372"].alt_ids == ("OMIM:106210", "OMIM:606788", "D000856", "D015783")
    assert vocabulary.canonical("OMIM:106210") == "C536372"
    assert vocabulary["C"].names == ("diseases",) and vocabulary.canonical("D004194") == "C"


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("C567755|613097|tooth agenesis selective 6", "expected `ID||name`"),
        ("||sthag6", "expected `ID||name`"),
        ("C567755|||sthag6", "expected `ID||name`"),
        ("C567755|613097||", "expected `ID||name`"),
    ],
)
def test_read_biosyn_dictionary_malformed_names_file_and_line(tmp_path, bad_line, message):
    path = write_lines(tmp_path, [*BIOSYN_LINES[:2], bad_line])
    with pytest.raises(FormatError, match=message) as error:
        read_biosyn_dictionary(path)
    assert f"{path}:3:" in str(error.value)


def test_gold_coverage_by_hand():
    vocabulary = Vocabulary(
        [
            Concept("D006470", "Hemorrhage", alt_ids=("OMIM:100000",)),
            Concept("D003556", "Cystitis", alt_ids=("OMIM:200000",)),
            Concept("D002761", "Cholangitis", alt_ids=("OMIM:200000",)),  # OMIM:200000 is ambiguous
        ]
    )
    mentions = [
        Mention("1", ((0, 1),), "a", ("D006470",)),  # found
        Mention("1", ((0, 1),), "b", ("OMIM:100000",)),  # found through its alt ID
        Mention("1", ((0, 1),), "c", ("D003556", "D999999"), COMPOSITE),  # one of two IDs missing
        Mention("1", ((0, 1),), "d", ("OMIM:200000",)),  # ambiguous alt ID: not found
        Mention("1", ((0, 1),), "e", (), NO_CONCEPT),  # left out
    ]
    assert gold_coverage([Document("1", "abcde", mentions)], vocabulary) == {
        "ids": 5,
        "ids_found": 3,
        "id_share": 0.6,
        "mentions": 4,
        "mentions_found": 2,
        "mention_share": 0.5,
        "missing_ids": ["D999999", "OMIM:200000"],
        "ambiguous_ids": ["OMIM:200000"],
    }


# ----- the full staged files (counts from data/medic/SOURCE.md) -----


@pytest.fixture(scope="module")
def ctd(raw_data):
    return read_medic(raw_data / "medic" / "CTD_diseases.tsv.gz")


@pytest.fixture(scope="module")
def biosyn(raw_data):
    return read_biosyn_dictionary(raw_data / "medic" / "biosyn_medic_dictionary.txt")


def test_ctd_counts(ctd):
    assert len(ctd) == 11865
    assert sum(c.concept_id.startswith("OMIM:") for c in ctd.concepts) == 532
    assert sum(len(c.synonyms) for c in ctd.concepts) == 66129
    assert sum(len(c.names) for c in ctd.concepts) == 77994
    alt_ids = {a for c in ctd.concepts for a in c.alt_ids}
    assert (sum(a.startswith("OMIM:") for a in alt_ids), sum(a.startswith("DO:DOID:") for a in alt_ids)) == (3430, 3160)


def test_biosyn_counts(biosyn):
    assert sum(len(c.names) for c in biosyn.concepts) == 71924  # every line a distinct name
    assert len(biosyn) == 11843
    assert not [c.concept_id for c in biosyn.concepts if c.concept_id.isdigit()]  # OMIM numbers got their prefix


@pytest.mark.parametrize(
    "corpus, split_file, types, vocabulary, ids, ids_found, missing",
    [
        ("ncbi_disease", "NCBItestset_corpus.txt", NCBI_TYPES, "ctd", 200, 199, ["OMIM:613825"]),
        ("ncbi_disease", "NCBItestset_corpus.txt", NCBI_TYPES, "biosyn", 200, 199, ["OMIM:201400"]),
        ("bc5cdr", "CDR_TestSet.PubTator.txt", CDR_TYPES, "ctd", 645, 645, []),
        ("bc5cdr", "CDR_TestSet.PubTator.txt", CDR_TYPES, "biosyn", 645, 642, ["D065626", "D065817", "D066126"]),
    ],
)
def test_gold_coverage_of_test_sets(raw_data, request, corpus, split_file, types, vocabulary, ids, ids_found, missing):
    documents = read_pubtator(raw_data / corpus / split_file, types)
    coverage = gold_coverage(documents, request.getfixturevalue(vocabulary))
    assert (coverage["ids"], coverage["ids_found"], coverage["missing_ids"]) == (ids, ids_found, missing)
