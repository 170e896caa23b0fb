"""Read CADEC v2 (the public stand-in for MADE 1.0) into `Document`s.

Its split is `ehrbert.corpora.cadec_split`, its task vocabulary `ehrbert.corpora.cadec_vocabulary`.

CADEC has, per forum post `<DRUG>.<n>`, four files with the same stem:

- `text/<stem>.txt`: the post; offsets are character offsets into it.
- `original/<stem>.ann`: brat standoff, the mentions: `T<n><TAB><type> <start> <end><TAB><text>`
  (discontinuous: `<start> <end>;<start> <end>`), plus `#<n><TAB>AnnotatorNotes T<n><TAB><note>` lines.
- `meddra/<stem>.ann`: MedDRA codes of the ADR mentions: `TT<n><TAB><code> <start> <end><TAB><text>`.
- `sct/<stem>.ann`: SNOMED CT (AMT for drugs) codes of all mentions:
  `TT<n><TAB><code> | <description> | <start> <end><TAB><text>`.

As in MADE, every annotation of `original/` is a mention; ADRs take their gold IDs from `meddra/` (`MDR:<code>`),
the other types (Drug, Disease, Symptom, Finding) from `sct/` (`SCT:<code>`). A code line belongs to the
annotation with the same spans (fragment order ignored: `original/` lists some fragments out of order).
Several codes: MedDRA `A + B` and SNOMED `A | a | + B | b |` are COMBINED, SNOMED `A | a | or B | b |` is
ALTERNATIVE; `CONCEPT_LESS` anywhere in the field (also `CONCEPT_LESS + A`, 8 ADRs) makes the mention NO_CONCEPT.

`Mention.text` is the text *as annotated*: the fragments of a discontinuous mention joined with a space in
the order the annotator listed them (`Mention.spans` are sorted). Quirks, each logged as a warning naming
`file:line`; no annotation is dropped:

- Where the annotated text is not the text at the offsets (4 annotations, three of them with offsets one
  character short), both are kept as they are.
- Lines with runs of spaces instead of TABs (5 code lines) are read as if they had TABs.
- A file that is not UTF-8 (`sct/LIPITOR.253.ann`) is read as ISO-8859-1.
- MedDRA `A/B` (10 lines, all with the same A; B counts up by one from line to line, a spreadsheet fill
  artifact) keeps A.
- An AnnotatorNotes line about an annotation that does not exist (1) is skipped.
- A code repeated in one field (`A + A`: 2 MedDRA lines, 1 SNOMED line) is kept once: the mention is SINGLE.

The text column of the code files is not used (it repeats the annotated text; 2 lines differ). Anything
else malformed, an ADR without a MedDRA line, any annotation without a SNOMED line, or a code line without
an annotation raises `FormatError(file, line)`; the staged files have none of these.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ehrbert.corpora.records import (
    ALTERNATIVE,
    COMBINED,
    NO_CONCEPT,
    SINGLE,
    Document,
    FormatError,
    Mention,
)

logger = logging.getLogger(__name__)

MENTION_TYPES = frozenset({"ADR", "Drug", "Disease", "Symptom", "Finding"})
MEDDRA_TYPE = "ADR"  # the one type normalized to MedDRA
MEDDRA_PREFIX = "MDR:"
SNOMED_PREFIX = "SCT:"
CONCEPT_LESS = "CONCEPT_LESS"

Spans = tuple[tuple[int, int], ...]
Codes = tuple[str, tuple[str, ...]]  # (relation, IDs)
SnomedCodes = tuple[str, tuple[tuple[str, str], ...]]  # (relation, ((ID, description), ...))
Parsed = TypeVar("Parsed")  # what a code file parser makes of a code field

_SPANS_AT_END = re.compile(r"(?P<body>.*?)\s*(?P<spans>\d+ \d+(?:;\d+ \d+)*)\s*")
_SPACED_LINE = re.compile(r"(\S+)(?:\t| {2,})(.*?\d+ \d+(?:;\d+ \d+)*)(?:\t| {2,})(.*)")  # runs of spaces for TABs
_NOTE_REF = re.compile(r"AnnotatorNotes (T\d+)")
_MEDDRA_CODE = re.compile(r"\d+")
_MEDDRA_FILL = re.compile(r"(\d+)/\d+")  # A/B: a spreadsheet fill artifact, A is the code
_SNOMED_CODE = re.compile(r"\b(\d{6,}|CONCEPT_LESS)\b")  # SNOMED CT and AMT IDs have at least 6 digits
_SNOMED_LINK = re.compile(r"(?P<name>.*?)(?<![^\s|])(?P<link>\+|or)\s*", re.DOTALL)  # name, then `+` or `or`
_SEMANTIC_TAG = re.compile(r"\s*\((?:substance|finding|disorder|product)\)\s*$")  # `A | a | (substance)`


@dataclass
class CadecDocument(Document):
    """A post, plus what the code files say beyond the gold IDs; both keyed by `Mention.spans`.

    notes: the AnnotatorNotes text of a mention (575 notes in all, 517 on ADRs).
    snomed: the SNOMED CT annotation of *every* mention, ADRs included: its ((`SCT:` ID, description), ...),
    empty when CONCEPT_LESS. `cadec_vocabulary` takes concept names from these.
    """

    notes: dict[Spans, str] = field(default_factory=dict)
    snomed: dict[Spans, tuple[tuple[str, str], ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Line:
    """One annotation line, split into its parts."""

    line_no: int
    key: str  # T1, TT1
    body: str  # the type (original/) or the code field (meddra/, sct/)
    spans: Spans  # as written
    text: str

    @property
    def sorted_spans(self) -> Spans:
        return tuple(sorted(self.spans))


# --- lines -----------------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    """A file's text: UTF-8, else ISO-8859-1 (with a warning naming the first line that is not UTF-8)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line_no = raw[: error.start].count(b"\n") + 1
        logger.warning("%s:%d: not UTF-8; file read as ISO-8859-1", path, line_no)
        return raw.decode("iso-8859-1")


def _fields(path: Path, line_no: int, line: str) -> tuple[str, str, str]:
    """(key, middle, text) of an annotation line: three TAB-separated fields, or runs of spaces for TABs."""
    fields = line.split("\t")
    if len(fields) == 3:
        return fields[0], fields[1], fields[2]
    match = _SPACED_LINE.fullmatch(line)
    if match is None:
        raise FormatError(path, line_no, f"expected 3 TAB-separated fields, found {len(fields)}")
    logger.warning("%s:%d: runs of spaces instead of TABs", path, line_no)
    return match[1], match[2], match[3]


def _parse_line(path: Path, line_no: int, line: str) -> _Line:
    """A `T`/`TT` line: key, then `<type or codes> <start> <end>[;<start> <end>...]`, then the text."""
    key, middle, text = _fields(path, line_no, line)
    match = _SPANS_AT_END.fullmatch(middle)
    if match is None or not match["body"]:
        expected = "`<type or codes> <start> <end>[;<start> <end>...]`"
        raise FormatError(path, line_no, f"expected {expected}, found {middle!r}")
    spans = tuple((int(s), int(e)) for s, e in (span.split() for span in match["spans"].split(";")))
    return _Line(line_no, key, match["body"], spans, text)


def _check_spans(path: Path, line: _Line, text: str) -> None:
    for start, end in line.spans:
        if not 0 <= start < end <= len(text):
            raise FormatError(path, line.line_no, f"span {start}-{end} outside the text ({len(text)} characters)")


def _annotation_lines(path: Path) -> Iterable[tuple[int, str]]:
    """(line number, line) of the non-blank lines of an .ann file."""
    for line_no, line in enumerate(_read_text(path).split("\n"), 1):
        if line.strip():
            yield line_no, line


# --- codes -----------------------------------------------------------------------------------------------


def _meddra_codes(path: Path, line_no: int, body: str) -> Codes:
    """`A`, `A + B`, `CONCEPT_LESS` (also inside a `+`) -> (relation, `MDR:` IDs)."""
    codes = []
    for part in (p.strip() for p in body.split("+")):
        fill = _MEDDRA_FILL.fullmatch(part)
        if fill:
            logger.warning("%s:%d: MedDRA %r: kept the first code", path, line_no, part)
            part = fill[1]
        if part != CONCEPT_LESS and not _MEDDRA_CODE.fullmatch(part):
            raise FormatError(path, line_no, f"expected MedDRA codes joined by `+`, found {body!r}")
        codes.append(part)
    if CONCEPT_LESS in codes:
        return NO_CONCEPT, ()
    ids = tuple(dict.fromkeys(MEDDRA_PREFIX + code for code in codes))
    if len(ids) < len(codes):
        logger.warning("%s:%d: MedDRA %r repeats a code; kept once", path, line_no, body)
    return (COMBINED if len(ids) > 1 else SINGLE), ids


def _snomed_codes(path: Path, line_no: int, body: str) -> SnomedCodes:
    """`A | a |`, `A | a | + B | b |`, `A | a | or B | b |`, `CONCEPT_LESS` -> (relation, ((`SCT:` ID, a), ...)).

    Tolerated: missing pipes (`A | a | + B b |`), a semantic tag after the name (`A | a | (substance)`), no
    name (the ID then has the description "").
    """
    pieces = _SNOMED_CODE.split(body)  # ["", code, after code, code, after code, ...]
    if len(pieces) < 3 or pieces[0].strip():
        raise FormatError(path, line_no, f"expected `<SNOMED ID> | <description> |`, found {body!r}")
    codes, links = [], set()
    for i in range(1, len(pieces), 2):
        code, rest = pieces[i], pieces[i + 1]
        if i + 2 < len(pieces):  # not the last code: a `+` or `or` follows its name
            match = _SNOMED_LINK.fullmatch(rest)
            if match is None:
                raise FormatError(path, line_no, f"expected `+` or `or` between SNOMED codes in {body!r}")
            rest = match["name"]
            links.add(match["link"])
        name = _SEMANTIC_TAG.sub("", rest).strip(" |")
        if "|" in name:
            raise FormatError(path, line_no, f"unexpected `|` in SNOMED description {name!r}")
        codes.append((code, " ".join(name.split())))
    if len(links) > 1:
        raise FormatError(path, line_no, f"both `+` and `or` between SNOMED codes in {body!r}")
    if any(code == CONCEPT_LESS for code, _ in codes):
        return NO_CONCEPT, ()
    concepts: dict[str, str] = {}
    for code, name in codes:
        concepts.setdefault(SNOMED_PREFIX + code, name)
    if len(concepts) < len(codes):
        logger.warning("%s:%d: SNOMED %r repeats a code; kept once", path, line_no, body)
    relation = SINGLE if len(concepts) == 1 else ALTERNATIVE if links == {"or"} else COMBINED
    return relation, tuple(concepts.items())


def _read_codes(path: Path, parse: Callable[[Path, int, str], Parsed], text: str) -> dict[Spans, tuple[int, Parsed]]:
    """A code file: sorted spans -> (line number, parsed code field)."""
    out: dict[Spans, tuple[int, Parsed]] = {}
    for line_no, raw in _annotation_lines(path):
        line = _parse_line(path, line_no, raw)
        _check_spans(path, line, text)
        if line.sorted_spans in out:
            raise FormatError(path, line_no, f"second code line for spans {line.spans}")
        out[line.sorted_spans] = (line_no, parse(path, line_no, line.body))
    return out


# --- posts -----------------------------------------------------------------------------------------------


def _read_original(path: Path, text: str) -> tuple[list[_Line], dict[str, str]]:
    """The annotations of `original/<stem>.ann`, and the AnnotatorNotes by annotation key."""
    annotations: dict[str, _Line] = {}
    notes: dict[str, tuple[int, str]] = {}
    for line_no, raw in _annotation_lines(path):
        if raw.startswith("#"):
            fields = raw.split("\t")
            match = _NOTE_REF.fullmatch(fields[1]) if len(fields) == 3 else None
            if match is None:
                raise FormatError(path, line_no, "expected `#<n><TAB>AnnotatorNotes T<n><TAB><note>`")
            notes[match[1]] = (line_no, fields[2])
            continue
        line = _parse_line(path, line_no, raw)
        if not line.key.startswith("T") or line.key in annotations:
            raise FormatError(path, line_no, f"expected a new text-bound annotation `T<n>`, found {line.key!r}")
        if line.body not in MENTION_TYPES:
            raise FormatError(path, line_no, f"unknown mention type {line.body!r}")
        _check_spans(path, line, text)
        covered = " ".join(text[start:end] for start, end in line.spans)
        if covered != line.text:
            logger.warning("%s:%d: offsets cover %r, annotated %r; kept both", path, line_no, covered, line.text)
        annotations[line.key] = line
    for key, (line_no, _) in notes.items():
        if key not in annotations:
            logger.warning("%s:%d: AnnotatorNotes for %s, which does not exist; skipped", path, line_no, key)
    return list(annotations.values()), {key: note for key, (_, note) in notes.items() if key in annotations}


def _mention(
    path: Path,
    doc_id: str,
    line: _Line,
    meddra: dict[Spans, tuple[int, Codes]],
    snomed: dict[Spans, tuple[int, SnomedCodes]],
) -> Mention:
    """The mention of annotation `line`, with gold IDs from `meddra` (ADR) or `snomed` (other types)."""
    spans = line.sorted_spans
    if spans not in snomed:
        raise FormatError(path, line.line_no, f"{line.key} has no line in sct/")
    if line.body == MEDDRA_TYPE:
        if spans not in meddra:
            raise FormatError(path, line.line_no, f"ADR {line.key} has no line in meddra/")
        relation, ids = meddra[spans][1]
    else:
        relation, concepts = snomed[spans][1]
        ids = tuple(concept_id for concept_id, _ in concepts)
    return Mention(doc_id, spans, line.text, ids, relation, line.body)


def _check_claimed(path: Path, codes: dict[Spans, tuple[int, Parsed]], claimed: Iterable[Spans]) -> None:
    """FormatError at the first code line whose spans are not those of a mention in `claimed`."""
    unclaimed = sorted(codes[spans][0] for spans in codes.keys() - set(claimed))
    if unclaimed:
        raise FormatError(path, unclaimed[0], "its spans match no annotation of original/ (of the right type)")


def _read_post(root: Path, stem: str, drug: str) -> CadecDocument:
    text = _read_text(root / "text" / f"{stem}.txt")
    paths = {folder: root / folder / f"{stem}.ann" for folder in ("original", "meddra", "sct")}
    for path in paths.values():
        if not path.is_file():
            raise FormatError(path, None, "missing: every post needs original/, meddra/ and sct/ files")
    annotations, notes = _read_original(paths["original"], text)
    meddra = _read_codes(paths["meddra"], _meddra_codes, text)
    snomed = _read_codes(paths["sct"], _snomed_codes, text)
    mentions = [_mention(paths["original"], stem, line, meddra, snomed) for line in annotations]
    _check_claimed(paths["meddra"], meddra, (m.spans for m in mentions if m.type == MEDDRA_TYPE))
    _check_claimed(paths["sct"], snomed, (m.spans for m in mentions))
    by_key = {line.key: line.sorted_spans for line in annotations}
    return CadecDocument(
        doc_id=stem,
        text=text,
        mentions=mentions,
        meta={"drug": drug},
        notes={by_key[key]: note for key, note in notes.items()},
        snomed={spans: concepts for spans, (_, (_, concepts)) in snomed.items()},
    )


def doc_id_key(doc_id: str) -> tuple[str, int]:
    """(drug, post number) of `<DRUG>.<n>`: posts sort by drug, then number (`LIPITOR.2` before `LIPITOR.10`)."""
    drug, _, number = doc_id.rpartition(".")
    return drug, int(number)


def _post_key(path: Path) -> tuple[str, int]:
    """(drug, post number) of `text/<DRUG>.<n>.txt`."""
    drug, _, number = path.stem.rpartition(".")
    if not drug or not number.isdigit():
        raise FormatError(path, None, "expected a file name `<DRUG>.<n>.txt`")
    return doc_id_key(path.stem)


def read_cadec(root: Path) -> list[CadecDocument]:
    """Every post under `root` (the folder holding text/, original/, meddra/, sct/), by drug, then post number."""
    root = Path(root)
    texts = sorted((root / "text").glob("*.txt"), key=_post_key)
    if not texts:
        raise FormatError(root / "text", None, "no posts (*.txt) found")
    documents = [_read_post(root, path.stem, _post_key(path)[0]) for path in texts]
    logger.info("%s: %d posts, %d mentions", root, len(documents), sum(len(d.mentions) for d in documents))
    return documents
