"""Read PubTator files (NCBI disease corpus, BioCreative V CDR) into `Document`s with normalized mentions.

A document is a block of lines: `PMID|t|title`, `PMID|a|abstract`, then annotation lines
`PMID start end mention type IDs [part mentions]` (6 or 7 tab-separated fields; offsets point into
title + " " + abstract) and relation lines `PMID CID chemical disease` (4 fields, skipped here).
We parse the format ourselves rather than with `bioc.pubtator` (bioc 2.1): that reads the staged files to
the right counts, but it keeps no line numbers, prints and drops lines it cannot parse, takes any 5-field
line for a relation and accepts annotations before their title, so malformed input cannot be reported
as `FormatError(file, line)`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path

from ehrbert.corpora.medic import normalize_id
from ehrbert.corpora.records import COMBINED, COMPOSITE, NO_CONCEPT, SINGLE, Document, FormatError, Mention

logger = logging.getLogger(__name__)

NCBI_TYPES = frozenset({"SpecificDisease", "DiseaseClass", "Modifier", "CompositeMention"})  # all are diseases
CDR_TYPES = frozenset({"Disease"})  # CDR also annotates Chemical
NO_CONCEPT_ID = "-1"

_TEXT_LINE = re.compile(r"([^\t|]+)\|([ta])\|(.*)")  # PMID|t|title or PMID|a|abstract
_RELATION_FIELDS = 4
_ANNOTATION_FIELDS = (6, 7)  # CDR composites add the part mentions: `renal failure|hepatic failure`

Line = tuple[int, str]  # (1-based line number, line without its newline)


def _blocks(lines: Iterable[str]) -> Iterator[list[Line]]:
    """The blank-line separated blocks of a file, each line with its number."""
    block: list[Line] = []
    for line_no, line in enumerate(lines, 1):
        line = line.rstrip("\n")
        if line.strip():
            block.append((line_no, line))
        elif block:
            yield block
            block = []
    if block:
        yield block


def _concept_ids(raw: str) -> tuple[str, tuple[str, ...]]:
    """(relation, normalized IDs) of an ID field: `D1|D2` composite, `D1+D2` combined, `-1` no concept.

    A composite part without a concept (`D002544|-1`, once in CDR dev) is left out of the IDs.
    """
    relation, parts = SINGLE, [raw]
    for separator, separated in (("|", COMPOSITE), ("+", COMBINED)):
        if separator in raw:
            relation, parts = separated, raw.split(separator)
            break
    ids = tuple(normalize_id(part) for part in parts if part.strip() != NO_CONCEPT_ID)
    return (relation if ids else NO_CONCEPT), ids


def _text_line(path: Path, line: Line, kind: str, pmid: str | None = None) -> tuple[str, str]:
    """(PMID, text) of the title (`kind` "t") or abstract ("a") line expected at `line`."""
    line_no, content = line
    match = _TEXT_LINE.fullmatch(content)
    if not match or match[2] != kind or (pmid is not None and match[1] != pmid):
        expected = f"{pmid or 'PMID'}|{kind}|..."
        raise FormatError(path, line_no, f"expected the {'title' if kind == 't' else 'abstract'} line `{expected}`")
    return match[1], match[3]


def _mention(path: Path, line: Line, doc: Document) -> Mention | None:
    """The mention of an annotation line of `doc`, or None for a relation line."""
    line_no, content = line
    fields = content.split("\t")
    if len(fields) == _RELATION_FIELDS:
        return None
    if len(fields) not in _ANNOTATION_FIELDS:
        raise FormatError(path, line_no, f"expected 6 or 7 tab-separated fields (4: relation), found {len(fields)}")
    pmid, start, end, text, mention_type, raw_ids = fields[:6]
    if pmid != doc.doc_id:
        raise FormatError(path, line_no, f"annotation of PMID {pmid} inside document {doc.doc_id}")
    try:
        start_offset, end_offset = int(start), int(end)
    except ValueError:
        raise FormatError(path, line_no, f"offsets must be integers, found {start!r} {end!r}") from None
    if not 0 <= start_offset <= end_offset <= len(doc.text):
        raise FormatError(path, line_no, f"offsets {start}-{end} outside the text ({len(doc.text)} characters)")
    covered = doc.text[start_offset:end_offset]
    if covered.strip() != text.strip():  # strip: NCBI train 10923035 annotates `" plus "  ` with trailing spaces
        logger.warning("%s:%d: offsets %s-%s cover %r, not %r", path, line_no, start, end, covered, text)
    relation, concept_ids = _concept_ids(raw_ids)
    if relation != NO_CONCEPT and not all(concept_ids):
        raise FormatError(path, line_no, f"empty concept ID in {raw_ids!r}")
    return Mention(pmid, ((start_offset, end_offset),), text, concept_ids, relation, mention_type)


def _document(path: Path, block: list[Line]) -> Document:
    """One block: title line, abstract line, then annotation and relation lines."""
    pmid, title = _text_line(path, block[0], "t")
    if len(block) < 2:
        raise FormatError(path, block[0][0], f"document {pmid} has no abstract line")
    _, abstract = _text_line(path, block[1], "a", pmid)
    doc = Document(doc_id=pmid, text=f"{title} {abstract}", title=title)
    for line in block[2:]:
        mention = _mention(path, line, doc)
        if mention is not None:
            doc.mentions.append(mention)
    return doc


def read_pubtator(path: str | Path, entity_types: Collection[str] | None = None) -> list[Document]:
    """The documents of a PubTator file, keeping mentions of `entity_types` (all types when None).

    A PMID seen twice with identical content is kept once (NCBI train repeats 8528200); with different
    content it is a FormatError.
    """
    path = Path(path)
    documents: dict[str, Document] = {}
    with path.open(encoding="utf-8") as lines:
        for block in _blocks(lines):
            doc = _document(path, block)
            if doc.doc_id not in documents:
                documents[doc.doc_id] = doc
            elif doc == documents[doc.doc_id]:
                logger.warning("%s:%d: PMID %s repeats an earlier document; kept once", path, block[0][0], doc.doc_id)
            else:
                raise FormatError(path, block[0][0], f"PMID {doc.doc_id} appears twice with different content")
    if entity_types is not None:
        for doc in documents.values():
            doc.mentions = [m for m in doc.mentions if m.type in entity_types]
    logger.info("%s: %d documents, %d mentions", path, len(documents), sum(len(d.mentions) for d in documents.values()))
    return list(documents.values())
