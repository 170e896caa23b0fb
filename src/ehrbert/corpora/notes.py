"""Read unlabeled clinical notes into `Document`s (doc_id = note ID, text = the note, no mentions).

Two layouts are read:
- the MTSamples CSV (`note_id, description, medical_specialty, sample_name, transcription, keywords`; any
  CSV with at least `note_id` and `transcription` columns works): one note a row, empty transcriptions kept as
  empty documents so that the caller can count them;
- plain text with one note a line (`mtsamples_dedup_notes.txt`, or a user's own notes): the note ID is the
  1-based line number, a blank line is an empty note.
Undecodable bytes, a missing column or a row with the wrong number of fields raise `FormatError(file, line)`.
"""

from __future__ import annotations

import csv
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from ehrbert.corpora.records import Document, FormatError

logger = logging.getLogger(__name__)

CSV_ID_COLUMN = "note_id"
CSV_TEXT_COLUMN = "transcription"
CSV_TITLE_COLUMN = "sample_name"  # optional; kept as Document.title
FORMATS = ("auto", "csv", "lines")


def _decoded_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line with its newline) of a UTF-8 file; bad bytes are a FormatError."""
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, 1):
            try:
                yield line_no, raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise FormatError(path, line_no, f"not UTF-8 ({error.reason} at byte {error.start})") from None


def read_note_lines(path: str | Path) -> list[Document]:
    """One note a line; the note ID is the line number. A final line without newline is a note too."""
    path = Path(path)
    notes = []
    for line_no, line in _decoded_lines(path):
        text = line.rstrip("\r\n")
        if "\x00" in text:
            raise FormatError(path, line_no, "NUL byte in a text file")
        notes.append(Document(doc_id=str(line_no), text=text))
    logger.info("%s: %d notes (%d empty)", path, len(notes), sum(not n.text.strip() for n in notes))
    return notes


def read_mtsamples_csv(path: str | Path) -> list[Document]:
    """The rows of an MTSamples-style CSV; other columns than ID, text and title go to `Document.meta`."""
    path = Path(path)
    csv.field_size_limit(sys.maxsize)  # one transcription can exceed the 128 KiB default
    lines = _decoded_lines(path)
    reader = csv.reader(line for _, line in lines)
    try:
        header = next(reader)
    except StopIteration:
        raise FormatError(path, 1, "empty file: expected a CSV header") from None
    missing = [c for c in (CSV_ID_COLUMN, CSV_TEXT_COLUMN) if c not in header]
    if missing:
        raise FormatError(path, 1, f"CSV header lacks column(s) {', '.join(missing)}; found {header}")
    notes = []
    seen: dict[str, int] = {}
    row_start = reader.line_num + 1
    for row in _rows(path, reader):
        if len(row) != len(header):
            raise FormatError(path, row_start, f"expected {len(header)} fields, found {len(row)}")
        record = dict(zip(header, row))
        note_id = record.pop(CSV_ID_COLUMN).strip()
        if not note_id:
            raise FormatError(path, row_start, f"empty {CSV_ID_COLUMN}")
        if note_id in seen:
            raise FormatError(path, row_start, f"{CSV_ID_COLUMN} {note_id} already used on line {seen[note_id]}")
        seen[note_id] = row_start
        text = record.pop(CSV_TEXT_COLUMN)
        title = record.pop(CSV_TITLE_COLUMN, "")
        notes.append(Document(doc_id=note_id, text=text, title=title, meta=record))
        row_start = reader.line_num + 1
    logger.info("%s: %d notes (%d empty)", path, len(notes), sum(not n.text.strip() for n in notes))
    return notes


def _rows(path: Path, reader) -> Iterator[list[str]]:
    """The CSV rows, a csv.Error (e.g. an unterminated quote) turned into a FormatError at its line."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise FormatError(path, reader.line_num, f"bad CSV ({error})") from None


def read_notes(path: str | Path, fmt: str = "auto") -> list[Document]:
    """Notes from `path`: `csv` (MTSamples layout), `lines` (one note a line), or `auto` (by the suffix)."""
    path = Path(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown notes format {fmt!r}; expected one of {FORMATS}")
    if fmt == "csv" or (fmt == "auto" and path.suffix.lower() == ".csv"):
        return read_mtsamples_csv(path)
    return read_note_lines(path)


# The pretraining text layout of Google BERT's create_pretraining_data.py, written by ehrbert.notes_prep and
# read by ehrbert.pretraining_data: one sentence a line (tokens joined by single spaces), a blank line between
# documents. A document is a list of sentences.


def format_sentence_documents(documents: list[list[str]]) -> str:
    """The file text of `documents`; a sentence must be one non-blank line."""
    for sentences in documents:
        for sentence in sentences:
            if not sentence.strip() or "\n" in sentence:
                raise ValueError(f"a sentence must be one non-blank line, got {sentence!r}")
    return "".join("\n".join(sentences) + "\n\n" for sentences in documents if sentences)


def read_sentence_documents(path: str | Path) -> list[list[str]]:
    """The documents of a sentence-per-line file (see `format_sentence_documents`)."""
    path = Path(path)
    documents: list[list[str]] = []
    current: list[str] = []
    for line_no, line in _decoded_lines(path):
        sentence = line.strip()
        if "\x00" in sentence:
            raise FormatError(path, line_no, "NUL byte in a text file")
        if sentence:
            current.append(sentence)
        elif current:
            documents.append(current)
            current = []
    if current:
        documents.append(current)
    return documents
