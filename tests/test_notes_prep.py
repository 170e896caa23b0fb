"""Note preparation and the biomedical stand-in's text (`ehrbert.notes_prep`)."""

from __future__ import annotations

import json

import pytest
import yaml

from ehrbert.corpora.notes import read_sentence_documents
from ehrbert.corpora.pubtator import read_pubtator
from ehrbert.corpora.records import Concept, Document
from ehrbert.notes_prep import (
    NotesConfig,
    biomedical_documents,
    main,
    prepare_biomedical,
    prepare_text,
    split_notes,
    split_sentences,
    statistics,
    tokenize,
    usable_notes,
)

NCBI = {"train": "NCBItrainset_corpus.txt", "dev": "NCBIdevelopset_corpus.txt", "test": "NCBItestset_corpus.txt"}
CDR = {
    "train": "CDR_TrainingSet.PubTator.txt",
    "dev": "CDR_DevelopmentSet.PubTator.txt",
    "test": "CDR_TestSet.PubTator.txt",
}


# --- sentences and tokens -----------------------------------------------------------------------------------


def test_sentences_split_on_periods_line_breaks_and_tabs():
    text = "Dose 2.5 mg daily. No fever.\tAfebrile\nHEENT: clear\r\nDr. Smith saw her."
    assert split_sentences(text) == [
        "Dose 2.5 mg daily.",
        "No fever.",
        "Afebrile",
        "HEENT: clear",
        "Dr.",
        "Smith saw her.",
    ]


def test_mtsamples_line_break_commas_split_too():
    text = (
        "SUBJECTIVE:,  This 23-year-old presents with allergies.  She does not think it is flaring up.,"
        "MEDICATIONS: , Her only medication is Allegra.,ALLERGIES: , None.,OBJECTIVE:,Vitals:  Weight 130 pounds."
    )
    assert split_sentences(text) == [
        "SUBJECTIVE:",
        "This 23-year-old presents with allergies.",
        "She does not think it is flaring up.",
        "MEDICATIONS:",
        "Her only medication is Allegra.",
        "ALLERGIES:",
        "None.",
        "OBJECTIVE:",
        "Vitals:  Weight 130 pounds.",
    ]


def test_pieces_without_letters_or_digits_are_dropped():
    assert split_sentences(" . ... \n , \t-- \n1. Aspirin.") == ["1.", "Aspirin."]
    assert split_sentences("") == []


def test_nltk_word_tokens_need_no_downloaded_data():
    assert tokenize("The patient's BP was 120/80, HR 72.") == [
        "The",
        "patient",
        "'s",
        "BP",
        "was",
        "120/80",
        ",",
        "HR",
        "72",
        ".",
    ]
    assert prepare_text("No chest pain. Lungs: clear") == [["No", "chest", "pain", "."], ["Lungs", ":", "clear"]]


# --- notes: dedup, splits, statistics ------------------------------------------------------------------------


def test_usable_notes_drop_empty_and_repeated_notes():
    notes = [Document("1", "a."), Document("2", "  "), Document("3", "a."), Document("4", " a. "), Document("5", "b.")]
    kept, counts = usable_notes(notes)
    assert [n.doc_id for n in kept] == ["1", "5"]  # " a. " is "a." once stripped
    assert counts == {"notes_read": 5, "notes_empty": 1, "notes_duplicate": 2}


def test_splits_are_nested_disjoint_and_seeded():
    ids = [str(i) for i in range(50)]
    config = NotesConfig(seed=3, heldout_notes=10, max_full_notes=30, half_fraction=0.5)
    splits = split_notes(ids, config)
    assert (len(splits["heldout"]), len(splits["full"]), len(splits["half"])) == (10, 30, 15)
    assert splits["half"] == splits["full"][:15]  # half is inside full
    assert not set(splits["heldout"]) & set(splits["full"])
    assert split_notes(ids, config) == splits
    assert split_notes(ids, NotesConfig(seed=4, heldout_notes=10)) != splits
    everything = split_notes(ids, NotesConfig(seed=3, heldout_notes=10, max_full_notes=None))
    assert everything["heldout"] == splits["heldout"]  # resizing full keeps the held-out notes
    assert len(everything["full"]) == 40 and everything["full"][:30] == splits["full"]
    with pytest.raises(ValueError, match="heldout_notes"):
        split_notes(ids[:5], NotesConfig(heldout_notes=5))
    with pytest.raises(ValueError, match="half_fraction"):
        split_notes(ids, NotesConfig(heldout_notes=10, half_fraction=0))


def test_statistics_by_hand():
    documents = [[["a", "b", "c"], ["d"]], [["e", "f"]]]
    assert statistics(documents) == {"documents": 2, "sentences": 3, "tokens": 6, "mean_sentence_length": 2.0}
    assert statistics([], prefix="x_") == {
        "x_documents": 0,
        "x_sentences": 0,
        "x_tokens": 0,
        "x_mean_sentence_length": 0.0,
    }


def test_notes_stage(tmp_path):
    notes = [f"Note {i} about the knee. Pain is {i % 7} of 10.\tPLAN: rest" for i in range(30)]
    notes[4] = ""
    notes[7] = notes[6]
    (tmp_path / "notes.txt").write_text("\n".join(notes) + "\n")
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(
            {"notes": {"format": "auto", "seed": 1, "heldout_notes": 5, "max_full_notes": 20, "half_fraction": 0.5}}
        )
    )
    main(
        [
            "notes",
            "--notes",
            str(tmp_path / "notes.txt"),
            "--params",
            str(tmp_path / "params.yaml"),
            "--out-dir",
            str(tmp_path / "out"),
            "--metrics",
            str(tmp_path / "metrics" / "notes.json"),
        ]
    )
    metrics = json.loads((tmp_path / "metrics" / "notes.json").read_text())
    assert (metrics["notes_read"], metrics["notes_empty"], metrics["notes_duplicate"], metrics["notes"]) == (
        30,
        1,
        1,
        28,
    )
    # "Note 0 about the knee ." / "Pain is 0 of 10 ." / "PLAN : rest"
    assert metrics["sentences"] == 28 * 3 and metrics["tokens"] == 28 * (6 + 6 + 3)
    assert metrics["mean_sentence_length"] == 5.0
    assert (metrics["heldout_notes"], metrics["half_notes"], metrics["full_notes"]) == (5, 10, 20)
    ids = json.loads((tmp_path / "out" / "note_ids.json").read_text())
    half = read_sentence_documents(tmp_path / "out" / "half.txt")
    full = read_sentence_documents(tmp_path / "out" / "full.txt")
    heldout = read_sentence_documents(tmp_path / "out" / "heldout.txt")
    assert full[:10] == half and len(full) == 20 and len(heldout) == 5
    assert ids["half"] == ids["full"][:10] and not set(ids["heldout"]) & set(ids["full"])
    assert half[0][0].endswith("knee .") and half[0][2] == "PLAN : rest"


# --- the biomedical stand-in's text --------------------------------------------------------------------------


def test_biomedical_documents_leave_out_dev_and_test_pmids():
    abstracts = [
        Document("1", "Title one. Abstract one.", title="Title one."),
        Document("2", "Dev title. Dev abstract.", title="Dev title."),
        Document("1", "Title one. Abstract one.", title="Title one."),
    ]  # the same PMID in two training files
    concepts = [Concept("D1", "Flu", definition="A viral infection. Seasonal."), Concept("D2", "Cold")]
    documents, left_out = biomedical_documents(abstracts, concepts, held_out_ids={"2"})
    assert left_out == 1
    assert [(d.doc_id, d.text) for d in documents] == [
        ("PMID:1", "Title one.\nAbstract one."),
        ("MEDIC:D1", "Flu\nA viral infection. Seasonal."),
    ]
    ids, prepared, metrics = prepare_biomedical(abstracts, concepts, {"2"})
    assert ids == ["PMID:1", "MEDIC:D1"] and prepared[1] == [
        ["Flu"],
        ["A", "viral", "infection", "."],
        ["Seasonal", "."],
    ]
    assert (metrics["abstracts"], metrics["abstracts_left_out"], metrics["definitions"], metrics["sentences"]) == (
        1,
        1,
        1,
        5,
    )


def test_no_training_pmid_is_in_a_dev_or_test_set(raw_data):
    train = {
        d.doc_id
        for corpus, files in (("ncbi_disease", NCBI), ("bc5cdr", CDR))
        for d in read_pubtator(raw_data / corpus / files["train"])
    }
    held_out = {
        d.doc_id
        for corpus, files in (("ncbi_disease", NCBI), ("bc5cdr", CDR))
        for split in ("dev", "test")
        for d in read_pubtator(raw_data / corpus / files[split])
    }
    assert len(train) == 592 + 500 and len(held_out) == 200 + 1000
    assert not train & held_out


def test_biomedical_stage_on_the_staged_corpora_takes_no_dev_or_test_document(raw_data, tmp_path):
    held_out_files = [raw_data / "ncbi_disease" / NCBI[s] for s in ("dev", "test")]
    held_out_files += [raw_data / "bc5cdr" / CDR[s] for s in ("dev", "test")]
    args = [
        "biomedical",
        "--train",
        str(raw_data / "ncbi_disease" / NCBI["train"]),
        "--train",
        str(raw_data / "bc5cdr" / CDR["train"]),
        *[arg for path in held_out_files for arg in ("--held-out", str(path))],
        "--medic",
        str(raw_data / "medic" / "CTD_diseases.tsv.gz"),
        "--out-dir",
        str(tmp_path / "out"),
        "--metrics",
        str(tmp_path / "bio.json"),
    ]
    main(args)
    doc_ids = (tmp_path / "out" / "doc_ids.txt").read_text().split()
    corpus = read_sentence_documents(tmp_path / "out" / "corpus.txt")
    assert len(doc_ids) == len(corpus)
    held_out_docs = [d for path in held_out_files for d in read_pubtator(path)]
    assert not {f"PMID:{d.doc_id}" for d in held_out_docs} & set(doc_ids)
    pmids = {i for i in doc_ids if i.startswith("PMID:")}
    assert len(pmids) == 592 + 500  # every training abstract, NCBI's repeated 8528200 once
    assert len(doc_ids) - len(pmids) == 4691  # MEDIC concepts with a definition
    # by text as well: no dev/test abstract shares more than one sentence of 8+ tokens with the corpus. One does
    # share one: NCBI test 932197 and train 777027 are parts I and II of a series, "Hereditary deficiency of the
    # fifth component of complement in man. I. ..." / "... II. ..."
    sentences = {s for document in corpus for s in document}
    for doc in held_out_docs:
        long = [" ".join(tokens) for tokens in prepare_text(doc.text) if len(tokens) >= 8]
        assert sum(s in sentences for s in long) <= 1, doc.doc_id
    metrics = json.loads((tmp_path / "bio.json").read_text())
    assert metrics["abstracts_left_out"] == 0 and metrics["documents"] == len(doc_ids)
