"""A user's own annotated mentions, in the formats such users already have, read into `Document`s.

- ``pubtator``: `ehrbert.corpora.pubtator.read_pubtator` (IDs normalized as MEDIC's), the mentions of
  `entity_types` only when given.
- ``bioc``: BioC XML (``.xml``) or JSON (``.json``), through the `bioc` package. A document's passages, placed at
  their offsets (gaps filled with spaces), make its text; an annotation's locations are offsets into it (several:
  a discontinuous mention), its concept IDs the infon ``identifier`` (another key with `id_key`), ``|`` or ``,``
  between the IDs of a composite mention, ``+`` between those of a combined one; no infon, an empty one or
  ``-1``: no concept; an infon ``relation`` (single, composite, combined, no_concept) overrides what the IDs imply
  (a composite mention whose parts share one concept). Mentions keep the file's order. `write_bioc` writes BioC
  XML.
- ``brat``: a folder of ``<doc>.txt`` and ``<doc>.ann``: text-bound annotations
  ``T<n><TAB><type> <start> <end>[;<start> <end>...]<TAB><text>`` and normalizations
  ``N<n><TAB>Reference T<n> <ID><TAB><name>`` (several for one mention: a composite; none: no concept). Relations,
  events, attributes and notes are skipped.
- ``tsv``: ``doc_id<TAB>start<TAB>end<TAB>text<TAB>concept_id`` with that header; ``A|B``: a composite, ``A+B``: a
  combined mention, empty or ``-1``: no concept. With `texts` (a TSV ``doc_id<TAB>text`` with that header) each
  mention's text is checked against the document and the documents carry their text; without it they carry
  none, which allows mention-level scoring only.

Wherever the document text is known, a mention whose text is not the text at its offsets (surrounding spaces
aside) is an error, as are offsets outside the text, an unknown annotation in a normalization, and a malformed
line: `FormatError` naming the file and line (BioC, whose records are not lines: the document and annotation
IDs).
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterable
from pathlib import Path

from ehrbert.corpora.pubtator import read_pubtator
from ehrbert.corpora.records import (
    ALTERNATIVE,
    COMBINED,
    COMPOSITE,
    NO_CONCEPT,
    SINGLE,
    Document,
    FormatError,
    Mention,
)
from ehrbert.stage import file_written_whole

log = logging.getLogger(__name__)

FORMATS = ("pubtator", "bioc", "brat", "tsv")
# What to do with mentions whose gold IDs the vocabulary does not have: fail (the default), drop them, or keep
# them as they are, scored and never answerable (what published evaluations of NCBI disease and BC5CDR do).
UNKNOWN_ID_POLICIES = ("fail", "drop", "keep")
NO_CONCEPT_IDS = {"", "-1"}
RELATIONS = (SINGLE, COMPOSITE, COMBINED, ALTERNATIVE, NO_CONCEPT)
TSV_COLUMNS = ["doc_id", "start", "end", "text", "concept_id"]


def _ids(raw: str, separators: str = "|") -> tuple[str, tuple[str, ...]]:
    """(relation, IDs) of an ID field: `separators` between a composite's IDs, ``+`` between a combined one's."""
    combined = "+" in raw
    parts = (part.strip() for part in re.split("[+]" if combined else f"[{re.escape(separators)}]", raw))
    ids = tuple(dict.fromkeys(part for part in parts if part not in NO_CONCEPT_IDS))
    relation = NO_CONCEPT if not ids else COMBINED if combined else COMPOSITE if len(ids) > 1 else SINGLE
    return relation, ids


def _mention(doc_id: str, spans, text: str, ids: tuple[str, tuple[str, ...]], kind: str = "") -> Mention:
    relation, concept_ids = ids
    return Mention(doc_id, tuple(sorted(spans)), text, concept_ids, relation, kind)


def _check_text(path, line: int | None, document: str, spans, text: str, where: str = "") -> None:
    if any(not 0 <= start < end <= len(document) for start, end in spans):
        raise FormatError(path, line, f"{where}offsets {spans} are outside the text ({len(document)} characters)")
    found = " ".join(document[start:end] for start, end in spans)
    if found.strip() != text.strip():  # surrounding spaces aside (NCBI train annotates `" plus "  `)
        raise FormatError(path, line, f"{where}the text at {spans} is {found[:60]!r}, the mention says {text[:60]!r}")


def read_bioc(path: Path, id_key: str = "identifier") -> list[Document]:
    from bioc import biocjson, biocxml

    loader = biocjson if path.suffix.lower() == ".json" else biocxml
    try:
        with path.open(encoding="utf-8") as handle:
            collection = loader.load(handle)
    except Exception as error:  # the bioc package's own parse errors, whatever their class
        raise FormatError(path, None, f"not BioC {'JSON' if loader is biocjson else 'XML'}: {error}") from None
    documents = []
    for document in collection.documents:
        text = ""
        for passage in sorted(document.passages, key=lambda p: p.offset):
            text = text.ljust(passage.offset) + (passage.text or "")
        mentions = []
        for passage in document.passages:
            for annotation in passage.annotations:
                where = f"document {document.id}, annotation {annotation.id}: "
                if not annotation.locations:
                    raise FormatError(path, None, f"{where}no location")
                spans = [(loc.offset, loc.offset + loc.length) for loc in annotation.locations]
                _check_text(path, None, text, spans, annotation.text, where)
                relation, ids = _ids(annotation.infons.get(id_key, ""), "|,")
                relation = annotation.infons.get("relation", relation)
                if relation not in RELATIONS or (relation == NO_CONCEPT) != (not ids):
                    raise FormatError(path, None, f"{where}relation {relation!r} does not fit the IDs {ids}")
                kind = annotation.infons.get("type") or ""
                mentions.append(_mention(document.id, spans, annotation.text, (relation, ids), kind))
        title = next((p.text for p in document.passages if p.infons.get("type") == "title" and p.offset == 0), "")
        documents.append(Document(document.id, text, mentions, title or ""))
    return documents


def write_bioc(documents: list[Document], path: Path, source: str = "", date: str = "") -> None:
    """`documents` as BioC XML (the ``bioc`` format above), through a temporary file: whole or not at all. A
    document with a title gets a title passage and one for the rest of its text; IDs are joined by ``|`` (``+``
    for a combined mention), ``-1`` for no concept."""
    from bioc import BioCAnnotation, BioCCollection, BioCDocument, BioCLocation, BioCPassage, biocxml

    collection = BioCCollection()
    collection.source, collection.date = source, date  # no date by default: the same documents, the same bytes
    for document in documents:
        out = BioCDocument()
        out.id = document.doc_id
        title = document.title if document.title and document.text.startswith(document.title + " ") else ""
        pieces = [("title", 0, title), ("abstract", len(title) + 1, document.text[len(title) + 1 :])] if title else []
        for kind, offset, text in pieces or [("text", 0, document.text)]:
            passage = BioCPassage()
            passage.offset, passage.text, passage.infons["type"] = offset, text, kind
            out.add_passage(passage)
        for number, mention in enumerate(document.mentions, start=1):
            annotation = BioCAnnotation()
            annotation.id = str(number)
            annotation.text = mention.text
            annotation.infons["type"] = mention.type
            joiner = "+" if mention.relation == COMBINED else "|"
            annotation.infons["identifier"] = joiner.join(mention.concept_ids) or "-1"
            if _ids(annotation.infons["identifier"])[0] != mention.relation:  # e.g. a composite left with one ID
                annotation.infons["relation"] = mention.relation
            for start, end in mention.spans:
                annotation.add_location(BioCLocation(start, end - start))
            out.passages[-1 if title and mention.start > len(title) else 0].add_annotation(annotation)
        collection.add_document(out)
    with file_written_whole(path) as partial, partial.open("w", encoding="utf-8") as handle:
        biocxml.dump(collection, handle)


def _brat_document(ann: Path, text: str) -> Document:
    entities: dict[str, tuple[int, list[tuple[int, int]], str, str]] = {}
    ids: dict[str, list[str]] = {}
    with ann.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            fields = line.split("\t")
            if line.startswith("T"):
                if len(fields) != 3:
                    raise FormatError(ann, number, "expected T<n><TAB><type> <start> <end><TAB><text>")
                kind, _, offsets = fields[1].partition(" ")
                try:
                    spans = [tuple(int(x) for x in part.split()) for part in offsets.split(";")]
                except ValueError:
                    raise FormatError(ann, number, f"offsets {offsets!r} are not numbers") from None
                if not spans or any(len(span) != 2 for span in spans):
                    raise FormatError(ann, number, f"expected '<start> <end>' pairs, got {offsets!r}")
                _check_text(ann, number, text, spans, fields[2])
                entities[fields[0]] = (number, spans, fields[2], kind)
            elif line.startswith("N"):
                parts = fields[1].split() if len(fields) >= 2 else []
                if len(parts) != 3 or parts[0] != "Reference":
                    raise FormatError(ann, number, "expected N<n><TAB>Reference T<n> <ID>[<TAB><name>]")
                ids.setdefault(parts[1], []).append(parts[2])
                if parts[1] not in entities:
                    raise FormatError(ann, number, f"normalization of {parts[1]}, which is not an annotation above")
    mentions = [
        _mention(ann.stem, spans, mention, _ids("|".join(ids.get(key, []))), kind)
        for key, (_, spans, mention, kind) in entities.items()
    ]
    return Document(ann.stem, text, sorted(mentions, key=lambda m: m.spans))


def read_brat(folder: Path) -> list[Document]:
    if not folder.is_dir():
        raise FileNotFoundError(f"brat folder {folder} not found")
    documents = []
    for ann in sorted(folder.glob("*.ann")):
        txt = ann.with_suffix(".txt")
        if not txt.is_file():
            raise FormatError(ann, None, f"no text file {txt.name} beside it")
        documents.append(_brat_document(ann, txt.read_text(encoding="utf-8")))
    return documents


def _tsv_rows(path: Path, columns: list[str]) -> Iterable[tuple[int, dict[str, str]]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        if reader.fieldnames != columns:
            raise FormatError(path, 1, f"expected the header {'<TAB>'.join(columns)}, got {reader.fieldnames}")
        for row in reader:
            if None in row or None in row.values():
                raise FormatError(path, reader.line_num, f"expected {len(columns)} tab-separated fields")
            yield reader.line_num, row


def read_tsv(path: Path, texts: Path | None = None) -> list[Document]:
    known = {row["doc_id"]: row["text"] for _, row in _tsv_rows(texts, ["doc_id", "text"])} if texts else None
    documents: dict[str, Document] = {}
    for number, row in _tsv_rows(path, TSV_COLUMNS):
        doc_id = row["doc_id"]
        try:
            spans = [(int(row["start"]), int(row["end"]))]
        except ValueError:
            message = f"start and end must be numbers, got {row['start']!r}, {row['end']!r}"
            raise FormatError(path, number, message) from None
        if known is not None:
            if doc_id not in known:
                raise FormatError(path, number, f"document {doc_id} is not in {texts}")
            _check_text(path, number, known[doc_id], spans, row["text"])
        document = documents.setdefault(doc_id, Document(doc_id, known[doc_id] if known else ""))
        document.mentions.append(_mention(doc_id, spans, row["text"], _ids(row["concept_id"])))
    if known is not None:
        for doc_id, text in known.items():  # documents without mentions still count (document-level scoring)
            documents.setdefault(doc_id, Document(doc_id, text))
    return list(documents.values())


def check_gold_ids(documents: list[Document], vocabulary, source, policy: str = "fail") -> list[Document]:
    """The documents with every gold ID known to `vocabulary` (primary or alternative ID). Mentions with an unknown
    ID are an error naming `source`, their count and the first of them (`policy` "fail"), are dropped with that
    count logged ("drop"; a composite mention is dropped whole, since its answer would be incomplete), or are kept
    with that count logged ("keep")."""
    if policy not in UNKNOWN_ID_POLICIES:
        raise ValueError(f"unknown-ID policy {policy!r}: expected one of {', '.join(UNKNOWN_ID_POLICIES)}")
    unknown = [
        (document.doc_id, mention, [c for c in mention.concept_ids if c not in vocabulary])
        for document in documents
        for mention in document.mentions
        if any(c not in vocabulary for c in mention.concept_ids)
    ]
    if not unknown:
        return documents
    total = sum(len(d.mentions) for d in documents)
    # document, offsets and IDs, not the mention's text: annotations of clinical notes may carry identifying text
    shown = "; ".join(f"{doc} {m.start}-{m.end}: {', '.join(ids)}" for doc, m, ids in unknown[:5])
    message = f"{len(unknown)} of {total} mentions have gold IDs not in the vocabulary (first: {shown})"
    if policy == "fail":
        raise FormatError(source, None, message + "; fix the IDs, or drop these mentions (unknown-ID policy 'drop')")
    if policy == "keep":  # the task's own choice (the built-in corpora's): worth a line, not a warning
        log.info("%s: %s; kept, never answerable", source, message)
        return documents
    log.warning("%s: %s; dropped", source, message)
    dropped = {id(m) for _, m, _ in unknown}
    return [
        Document(d.doc_id, d.text, [m for m in d.mentions if id(m) not in dropped], d.title, d.meta) for d in documents
    ]


def read_annotations(
    path: str | Path,
    fmt: str,
    texts: str | Path | None = None,
    id_key: str = "identifier",
    entity_types: Iterable[str] | None = None,
):
    """The documents of `path` (a file, or a folder for brat) in format `fmt`, one of FORMATS; `texts`: the tsv
    format's document texts, `id_key`: the BioC infon of the IDs, `entity_types`: the PubTator types kept."""
    path = Path(path)
    if fmt not in FORMATS:
        raise ValueError(f"{path}: unknown annotation format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt != "brat" and not path.is_file():
        raise FileNotFoundError(f"annotation file {path} not found")
    if fmt == "pubtator":
        documents = read_pubtator(path, entity_types=set(entity_types) if entity_types else None)
    elif fmt == "bioc":
        documents = read_bioc(path, id_key)
    elif fmt == "brat":
        documents = read_brat(path)
    else:
        documents = read_tsv(path, Path(texts) if texts else None)
    log.info("%s: %d documents, %d mentions (%s)", path, len(documents), sum(len(d.mentions) for d in documents), fmt)
    return documents
