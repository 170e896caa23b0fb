"""CADEC reader, split and vocabulary: counts of the staged files (SOURCE.md), quirks and malformed input.

CADEC is research-only: no line of it is copied here. Tests on the corpus read the staged files through
`raw_data`; the synthetic post below is made up.
"""

import logging
import re
from collections import Counter

import pytest

from ehrbert.corpora.cadec import read_cadec
from ehrbert.corpora.cadec_split import split_cadec
from ehrbert.corpora.cadec_vocabulary import cadec_vocabulary
from ehrbert.corpora.records import ALTERNATIVE, COMBINED, NO_CONCEPT, SINGLE, FormatError

SEED = 13
FRACTIONS = {"train": 0.7, "dev": 0.1, "test": 0.2}
# SOURCE.md, "Format quirks": the 4 annotations whose text is not the text at their offsets.
MISMATCHED_POSTS = Counter({"DICLOFENAC-SODIUM.7": 2, "LIPITOR.944": 1, "VOLTAREN.34": 1})


@pytest.fixture(scope="session")
def documents(raw_data):
    return read_cadec(raw_data / "cadec")


@pytest.fixture(scope="session")
def mentions(documents):
    return [m for doc in documents for m in doc.mentions]


@pytest.fixture(scope="session")
def splits(documents):
    return split_cadec(documents, seed=SEED, dev_fraction=FRACTIONS["dev"], test_fraction=FRACTIONS["test"])


@pytest.fixture(scope="session")
def by_split(documents, splits):
    by_id = {doc.doc_id: doc for doc in documents}
    return {split: [by_id[doc_id] for doc_id in ids] for split, ids in splits.items()}


@pytest.fixture(scope="session")
def vocabulary(documents, by_split):
    return cadec_vocabulary(documents, name_documents=by_split["train"])


# --- the staged corpus ---------------------------------------------------------------------------------


def test_posts_mentions_and_types_match_source(documents, mentions):
    assert len(documents) == 1250
    drugs = Counter(doc.meta["drug"] for doc in documents)
    assert (drugs["LIPITOR"], drugs["ARTHROTEC"], drugs["VOLTAREN"], len(drugs)) == (1000, 145, 46, 12)
    assert all(doc.doc_id.startswith(doc.meta["drug"] + ".") for doc in documents)
    assert len(mentions) == 9111
    types = Counter(m.type for m in mentions)
    assert types == {"ADR": 6318, "Drug": 1800, "Finding": 435, "Disease": 283, "Symptom": 275}
    assert sum(len(m.spans) > 1 for m in mentions) == 1066


def test_gold_ids_and_relations(mentions):
    adr = Counter(m.relation for m in mentions if m.type == "ADR")
    # SOURCE.md: 335 CONCEPT_LESS (8 of them `CONCEPT_LESS + code`) and 237 with several codes
    # = 227 combined + 8 with CONCEPT_LESS + 2 `A + A`, kept once (single).
    assert adr == {SINGLE: 6318 - 227 - 335, COMBINED: 227, NO_CONCEPT: 335}
    other = Counter(m.relation for m in mentions if m.type != "ADR")
    assert other == {SINGLE: 2573, COMBINED: 12, ALTERNATIVE: 3, NO_CONCEPT: 205}
    for m in mentions:
        assert (m.relation == NO_CONCEPT) == (not m.concept_ids)
        assert (len(m.concept_ids) > 1) == (m.relation in (COMBINED, ALTERNATIVE))
        prefix = "MDR:" if m.type == "ADR" else "SCT:"
        assert all(i.startswith(prefix) and i[4:].isdigit() for i in m.concept_ids)
    # 689 in SOURCE.md = 678 + the 10 spreadsheet-fill codes + 1 code seen only beside CONCEPT_LESS.
    assert len({i for m in mentions for i in m.concept_ids if i.startswith("MDR:")}) == 678


def test_snomed_annotation_of_every_mention(documents):
    annotations = [concepts for doc in documents for concepts in doc.snomed.values()]
    assert len(annotations) == 9111
    assert sum(not concepts for concepts in annotations) == 445  # CONCEPT_LESS
    # SOURCE.md's 273 multi-code lines count every `+` / ` or `: 14 are inside the name of a combination
    # drug, 4 inside a description, 1 is `A + A`.
    assert sum(len(concepts) > 1 for concepts in annotations) == 273 - 14 - 4 - 1
    assert len({i for concepts in annotations for i, _ in concepts}) == 1047
    assert sum(len(doc.notes) for doc in documents) == 575 - 1  # one note is about a missing annotation


def test_iso_8859_1_file_is_decoded(documents):
    post = next(doc for doc in documents if doc.doc_id == "LIPITOR.253")
    descriptions = [name for concepts in post.snomed.values() for _, name in concepts]
    assert any("\u00f6" in name for name in descriptions)  # a Latin-1 o-umlaut, not a replacement character
    names = [name for doc in documents for concepts in doc.snomed.values() for _, name in concepts]
    assert not any("\ufffd" in name for name in names)


def test_discontinuous_spans_map_to_the_text(documents):
    mismatched = Counter()
    for doc in documents:
        for m in doc.mentions:
            assert list(m.spans) == sorted(m.spans) and all(0 <= s < e <= len(doc.text) for s, e in m.spans)
            covered = " ".join(doc.text[s:e] for s, e in m.spans)
            if sorted(covered.split()) != sorted(m.text.split()):  # the annotator may list fragments out of order
                mismatched[doc.doc_id] += 1
    assert mismatched == MISMATCHED_POSTS


# --- split ---------------------------------------------------------------------------------------------


def test_split_is_deterministic_disjoint_and_complete(documents, splits):
    assert split_cadec(documents, seed=SEED, dev_fraction=0.1, test_fraction=0.2) == splits
    assert split_cadec(list(reversed(documents)), seed=SEED) == splits  # input order does not matter
    assert split_cadec(documents, seed=SEED + 1) != splits
    ids = [doc_id for split in splits.values() for doc_id in split]
    assert len(ids) == len(set(ids)) == 1250
    assert set(ids) == {doc.doc_id for doc in documents}
    assert {split: len(ids) for split, ids in splits.items()} == {"train": 875, "dev": 125, "test": 250}


def test_split_keeps_each_drugs_share(documents, by_split):
    posts = Counter(doc.meta["drug"] for doc in documents)
    for split, split_documents in by_split.items():
        in_split = Counter(doc.meta["drug"] for doc in split_documents)
        for drug, n in posts.items():
            assert abs(in_split[drug] - n * FRACTIONS[split]) <= 1, (split, drug)
    assert {doc.meta["drug"] for doc in by_split["train"]} == set(posts)
    assert "FLECTOR" not in {doc.meta["drug"] for doc in by_split["test"] + by_split["dev"]}  # 1 post: train


def test_split_rejects_fractions_that_leave_no_train():
    with pytest.raises(ValueError):
        split_cadec([], seed=0, dev_fraction=0.5, test_fraction=0.5)


# --- vocabulary ----------------------------------------------------------------------------------------


def test_vocabulary_covers_every_gold_id(vocabulary, mentions):
    ids = [c.concept_id for c in vocabulary.concepts]
    meddra, snomed = sum(i.startswith("MDR:") for i in ids), sum(i.startswith("SCT:") for i in ids)
    assert (len(ids), meddra, snomed) == (1093, 678, 415)
    assert {i for m in mentions for i in m.concept_ids} == set(ids)
    assert all(name.strip() for c in vocabulary.concepts for name in c.names)
    assert sum(c.concept_id.endswith(":" + c.name) for c in vocabulary.concepts) == 2  # no name in any allowed source


def test_vocabulary_names_use_no_test_only_mention_text(documents, by_split, vocabulary):
    descriptions = {name for doc in documents for concepts in doc.snomed.values() for _, name in concepts}
    train_strings = {m.text for doc in by_split["train"] for m in doc.mentions} | {
        note for doc in by_split["train"] for note in doc.notes.values()
    }
    names = {n for c in vocabulary.concepts for n in c.names}
    leaky = {n for c in cadec_vocabulary(documents, name_documents=documents).concepts for n in c.names}
    for held_out in ("test", "dev"):
        only_there = {m.text for doc in by_split[held_out] for m in doc.mentions} - train_strings - descriptions
        assert len(only_there) > 100
        assert not names & only_there
        assert leaky & only_there  # the check can fail: naming from all posts would leak


def test_vocabulary_without_name_documents_names_from_snomed_only(documents):
    vocabulary = cadec_vocabulary(documents, name_documents=[])
    descriptions = {name for doc in documents for concepts in doc.snomed.values() for _, name in concepts}
    codes = {c.concept_id.partition(":")[2] for c in vocabulary.concepts}
    assert {n for c in vocabulary.concepts for n in c.names} <= descriptions | codes


# --- a made-up post ------------------------------------------------------------------------------------

TEXT = "Zorbex gave me sore knees and a dry throat.\n"
POST = {
    "original": [
        "T1\tDrug 0 6\tZorbex",
        "T2\tADR 20 25;15 19\tknees sore",  # fragments listed out of order, text in that order
        "#1\tAnnotatorNotes T2\tPainful knees",
        "T3\tADR 32 42\tdry throat",
    ],
    "meddra": ["TT2\t10000001 15 19;20 25\tsore knees", "TT3\t10000002 + 10000003 32 42\tdry throat"],
    "sct": [
        "TT1\t100001 | Zorbex | 0 6\tZorbex",
        "TT2\t100002 | Knee pain | 15 19;20 25\tsore knees",
        "TT3\t100003 | Dry throat | or 100004|Throat pain| 32 42\tdry throat",
    ],
}


def _write_post(root, post, sct_encoding="utf-8"):
    (root / "text").mkdir(parents=True)
    (root / "text" / "ZORBEX.1.txt").write_text(TEXT, encoding="utf-8")
    for folder, lines in post.items():
        (root / folder).mkdir()
        (root / folder / "ZORBEX.1.ann").write_bytes(
            "".join(line + "\n" for line in lines).encode(sct_encoding if folder == "sct" else "utf-8")
        )
    return root


def test_made_up_post(tmp_path):
    [doc] = read_cadec(_write_post(tmp_path, POST))
    assert (doc.doc_id, doc.meta) == ("ZORBEX.1", {"drug": "ZORBEX"})
    drug, knees, throat = doc.mentions
    assert (drug.type, drug.concept_ids, drug.relation) == ("Drug", ("SCT:100001",), SINGLE)
    assert (knees.spans, knees.text, knees.concept_ids) == (((15, 19), (20, 25)), "knees sore", ("MDR:10000001",))
    assert (throat.concept_ids, throat.relation) == (("MDR:10000002", "MDR:10000003"), COMBINED)
    assert doc.notes == {knees.spans: "Painful knees"}
    assert doc.snomed[throat.spans] == (("SCT:100003", "Dry throat"), ("SCT:100004", "Throat pain"))
    vocabulary = cadec_vocabulary([doc], name_documents=[doc])
    assert vocabulary["MDR:10000001"].names == ("Knee pain", "Painful knees", "knees sore")
    assert vocabulary["MDR:10000002"].name == "Dry throat"  # by position in the combined ADR
    assert cadec_vocabulary([doc], name_documents=[])["MDR:10000001"].names == ("Knee pain",)


def test_quirks_are_read_with_a_warning_naming_file_and_line(tmp_path, caplog):
    post = {
        "original": [
            "T1\tDrug 0 6\tZorbex",
            "T2\tADR 15 24\tsore knees",  # offsets one character short, as in CADEC
            "#1\tAnnotatorNotes T7\tabout nothing",
            "T3\tADR 32 42\tdry throat",
        ],
        "meddra": ["TT2    10000001 15 24    sore knees", "TT3\t10000002/10000099 + CONCEPT_LESS 32 42\tdry throat"],
        "sct": [
            "TT1\t100001 | Zorbex | (substance) 0 6\tZorbex",
            "TT2\t100002 | Kn\u00e9e pain|+ 100002 | Kn\u00e9e pain | 15 24\tsore knees",
            "TT3\tCONCEPT_LESS 32 42\tdry throat",
        ],
    }
    with caplog.at_level(logging.WARNING, logger="ehrbert.corpora.cadec"):
        [doc] = read_cadec(_write_post(tmp_path, post, sct_encoding="iso-8859-1"))
    _, knees, throat = doc.mentions
    assert (knees.spans, knees.text, knees.concept_ids, knees.relation) == (
        ((15, 24),),
        "sore knees",
        ("MDR:10000001",),
        SINGLE,
    )
    assert (throat.concept_ids, throat.relation) == ((), NO_CONCEPT)
    assert doc.snomed == {
        ((0, 6),): (("SCT:100001", "Zorbex"),),
        knees.spans: (("SCT:100002", "Kn\u00e9e pain"),),
        throat.spans: (),
    }
    assert doc.notes == {}
    warned = "\n".join(caplog.messages)
    for where in (
        "original/ZORBEX.1.ann:2",
        "original/ZORBEX.1.ann:3",
        "meddra/ZORBEX.1.ann:1",
        "meddra/ZORBEX.1.ann:2",
        "sct/ZORBEX.1.ann:2",
    ):
        assert where in warned


MALFORMED = [
    ("original", 1, "T1\tDrug 0\tZorbex", "expected `<type or codes>"),
    ("original", 1, "T1\tSideEffect 0 6\tZorbex", "unknown mention type"),
    ("original", 4, "T3\tADR 32 99\tdry throat", "outside the text"),
    ("original", 4, "R1\tCauses Arg1:T1 Arg2:T3", "expected 3 TAB-separated fields"),
    ("original", 4, "T2\tADR 32 42\tdry throat", "expected a new text-bound annotation"),
    ("original", 3, "#1\tAnnotatorNote T2\tPainful knees", "AnnotatorNotes"),
    ("meddra", 2, "TT3\t10000002 & 10000003 32 42\tdry throat", "expected MedDRA codes"),
    ("sct", 1, "TT1\tZorbex 0 6\tZorbex", "expected `<SNOMED ID>"),
    ("sct", 3, "TT3\t100003 | Dry throat | 100004 | Throat pain | 32 42\tdry throat", "`+` or `or`"),
]


@pytest.mark.parametrize(("folder", "line_no", "line", "message"), MALFORMED)
def test_malformed_line_names_file_and_line(tmp_path, folder, line_no, line, message):
    post = {name: list(lines) for name, lines in POST.items()}
    post[folder][line_no - 1] = line
    root = _write_post(tmp_path, post)
    with pytest.raises(FormatError, match=re.escape(message)) as error:
        read_cadec(root)
    assert f"{root / folder / 'ZORBEX.1.ann'}:{line_no}:" in str(error.value)


def test_annotation_and_code_lines_must_pair(tmp_path):
    post = {name: list(lines) for name, lines in POST.items()}
    post["meddra"] = post["meddra"][:1]  # the ADR T3 (original line 4) has no MedDRA code
    root = _write_post(tmp_path / "a", post)
    with pytest.raises(FormatError, match=re.escape(f"{root / 'original' / 'ZORBEX.1.ann'}:4: ADR T3 has no line")):
        read_cadec(root)
    post = {name: list(lines) for name, lines in POST.items()}
    post["meddra"].append("TT1\t10000004 0 6\tZorbex")  # a MedDRA code on the Drug mention
    root = _write_post(tmp_path / "b", post)
    with pytest.raises(FormatError, match=re.escape(f"{root / 'meddra' / 'ZORBEX.1.ann'}:3: its spans match no")):
        read_cadec(root)
