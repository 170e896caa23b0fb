"""Note readers (`ehrbert.corpora.notes`): MTSamples CSV, one-note-a-line text, the sentence-per-line format."""

from __future__ import annotations

import pytest

from ehrbert.corpora.notes import (
    format_sentence_documents,
    read_mtsamples_csv,
    read_note_lines,
    read_notes,
    read_sentence_documents,
)
from ehrbert.corpora.records import FormatError

HEADER = "note_id,description,medical_specialty,sample_name,transcription,keywords\n"
ROW_1 = (
    "1,A 23-year-old white female presents with complaint of allergies.,Allergy / Immunology,Allergic Rhinitis,"
    '"SUBJECTIVE:,  This 23-year-old white female presents with complaint of allergies.  She used to have '
    'allergies when she lived in Seattle.","allergy / immunology, allergic rhinitis"\n'
)
ROW_2 = "2,Empty one.,Surgery,Nothing,,\n"
ROW_3 = '3,Two lines.,Surgery,Knee,"PROCEDURE:\nKnee arthroscopy.",knee\n'


def test_mtsamples_csv_rows(tmp_path):
    path = tmp_path / "mtsamples.csv"
    path.write_text(HEADER + ROW_1 + ROW_2 + ROW_3)
    notes = read_mtsamples_csv(path)
    assert [n.doc_id for n in notes] == ["1", "2", "3"]
    first = notes[0]
    assert first.text.startswith("SUBJECTIVE:,  This 23-year-old") and first.text.endswith("in Seattle.")
    assert first.title == "Allergic Rhinitis"
    assert first.meta == {
        "description": "A 23-year-old white female presents with complaint of allergies.",
        "medical_specialty": "Allergy / Immunology",
        "keywords": "allergy / immunology, allergic rhinitis",
    }
    assert notes[1].text == "" and notes[2].text == "PROCEDURE:\nKnee arthroscopy."
    assert read_notes(path)[2].text == notes[2].text  # `auto` reads .csv as CSV


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        ("id,text\n1,x\n", 1, r"lacks column\(s\) note_id, transcription"),
        ("", 1, "empty file"),
        (HEADER + ROW_1 + "9,too,few\n", 3, "expected 6 fields, found 3"),
        (HEADER + ROW_3 + "4,x,y,z,w\n", 4, "expected 6 fields, found 5"),  # ROW_3 spans lines 2-3
        (HEADER + ROW_1 + ROW_1, 3, "note_id 1 already used on line 2"),
        (HEADER + ROW_1 + ",no id,a,b,c,d\n", 3, "empty note_id"),
    ],
)
def test_mtsamples_csv_errors_name_file_and_line(tmp_path, content, line, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(FormatError, match=message) as error:
        read_mtsamples_csv(path)
    assert error.value.path == str(path) and error.value.line_no == line
    assert str(error.value).startswith(f"{path}:{line}: ")


def test_row_numbers_count_physical_lines(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(HEADER + ROW_3 + ROW_2 + "7,short\n")  # ROW_3 is lines 2-3, ROW_2 line 4
    with pytest.raises(FormatError) as error:
        read_mtsamples_csv(path)
    assert error.value.line_no == 5


def test_note_lines(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("First note. Two sentences.\n\nThird line\tnote\nno final newline")
    notes = read_note_lines(path)
    assert [(n.doc_id, n.text) for n in notes] == [
        ("1", "First note. Two sentences."),
        ("2", ""),
        ("3", "Third line\tnote"),
        ("4", "no final newline"),
    ]
    assert [n.text for n in read_notes(path)] == [n.text for n in notes]
    assert read_notes(path, "lines")[0].doc_id == "1"
    with pytest.raises(ValueError, match="unknown notes format"):
        read_notes(path, "json")


def test_undecodable_bytes_are_a_format_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"good note\n" + b"bad \xff byte\n")
    with pytest.raises(FormatError, match="not UTF-8") as error:
        read_note_lines(path)
    assert error.value.line_no == 2
    csv_path = tmp_path / "notes.csv"
    csv_path.write_bytes(HEADER.encode() + b"1,a,b,c,\xfe,d\n")
    with pytest.raises(FormatError) as error:
        read_mtsamples_csv(csv_path)
    assert error.value.line_no == 2


def test_sentence_documents_round_trip(tmp_path):
    documents = [["Patient seen .", "No fever ."], ["HEENT :"], []]
    text = format_sentence_documents(documents)
    assert text == "Patient seen .\nNo fever .\n\nHEENT :\n\n"
    path = tmp_path / "corpus.txt"
    path.write_text(text + "\n\nLast doc without trailing blank .")
    assert read_sentence_documents(path) == [
        ["Patient seen .", "No fever ."],
        ["HEENT :"],
        ["Last doc without trailing blank ."],
    ]
    with pytest.raises(ValueError, match="one non-blank line"):
        format_sentence_documents([["two\nlines"]])


def test_staged_mtsamples_files(raw_data):
    notes = read_notes(raw_data / "mtsamples" / "mtsamples.csv")
    assert len(notes) == 4999 and sum(not n.text.strip() for n in notes) == 33  # SOURCE.md counts
    assert len({n.text for n in notes if n.text.strip()}) == 2357
    assert {"medical_specialty", "description", "keywords"} == set(notes[0].meta)
    dedup = read_notes(raw_data / "mtsamples" / "mtsamples_dedup_notes.txt")
    assert len(dedup) == 2357 and all(n.text.strip() for n in dedup)
    assert sum(len(n.text.split()) for n in dedup) == 1_080_139
