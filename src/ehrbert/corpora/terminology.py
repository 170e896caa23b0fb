"""A user's own vocabulary, in the formats such users already have, read into a `Vocabulary`.

- ``tsv``: ``concept_id<TAB>name[<TAB>synonym|synonym...[<TAB>alt_id|alt_id...]]``, one concept a line; an
  optional header line starting ``concept_id``; blank lines and lines starting ``#`` are skipped. Alternative IDs
  (a MeSH concept's OMIM IDs, an OBO ``alt_id``) are IDs that annotations may use for the concept. `write_tsv`
  writes this format.
- ``obo``: OBO 1.4 ``[Term]`` stanzas (HPO, MONDO, ...): ``id``, ``name``, ``synonym: "..." SCOPE [...]``,
  ``alt_id``, ``def``, ``is_a`` (the term's parents: the hierarchy the reranker's `rerank.hierarchy` features
  read); obsolete terms (``is_obsolete: true``) are left out, with their count logged.
- ``mrconso``: UMLS ``MRCONSO.RRF`` (18 ``|``-separated fields), the rows of the sources `sources` (SAB) and
  the `language` (LAT) asked for, suppressed rows (SUPPRESS other than ``N``) left out; a concept per CUI, its
  preferred name the row with TS=P, STT=PF, ISPREF=Y (else its first row), every other string a synonym.
- ``biosyn``: BioSyn's dictionary, ``id||name`` a line (`ehrbert.corpora.medic.read_biosyn_dictionary`, which
  reads the built-in corpora's BioSyn MEDIC too: IDs normalized as MEDIC's, a composite ``A|B`` keyed on its
  first MeSH ID).
- ``medic``: CTD's MEDIC as it ships (``CTD_diseases.tsv.gz``, `ehrbert.corpora.medic.read_medic`): the built-in
  disease corpora's vocabulary.

IDs are kept as written: they must be the IDs the annotations use. Malformed input raises `FormatError` naming
the file and line: a wrong number of fields, an empty ID or name, a concept ID given twice (both lines are
named), a term without a name (obo).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from ehrbert.corpora.medic import read_biosyn_dictionary, read_medic
from ehrbert.corpora.records import Concept, FormatError, Vocabulary
from ehrbert.stage import file_written_whole

log = logging.getLogger(__name__)

FORMATS = ("tsv", "obo", "mrconso", "biosyn", "medic")
MRCONSO_FIELDS = 18  # CUI|LAT|TS|LUI|STT|SUI|ISPREF|AUI|SAUI|SCUI|SDUI|SAB|TTY|CODE|STR|SRL|SUPPRESS|CVF|
_OBO_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            yield number, line.rstrip("\n").rstrip("\r")


Entry = tuple[int, str, str, tuple[str, ...], tuple[str, ...], str, tuple[str, ...]]


def _concepts(path: Path, entries: Iterable[Entry]):
    """Concepts from (line, id, name, synonyms, alt_ids, definition, parents), in file order; IDs and names
    checked."""
    concepts: list[Concept] = []
    seen: dict[str, int] = {}
    for number, concept_id, name, synonyms, alt_ids, definition, parents in entries:
        concept_id, name = concept_id.strip(), name.strip()
        if not concept_id:
            raise FormatError(path, number, "empty concept ID")
        if concept_id in seen:
            raise FormatError(path, number, f"concept ID {concept_id} was already given on line {seen[concept_id]}")
        seen[concept_id] = number
        if not name:
            raise FormatError(path, number, f"concept {concept_id} has an empty name")
        synonyms = tuple(s.strip() for s in synonyms if s.strip() and s.strip() != name)
        concepts.append(
            Concept(
                concept_id, name, tuple(dict.fromkeys(synonyms)), alt_ids, definition, tuple(dict.fromkeys(parents))
            )
        )
    return concepts


def read_tsv(path: Path) -> list[Concept]:
    entries = []
    for number, line in _lines(path):
        if not line.strip() or line.startswith("#") or (number == 1 and line.lower().startswith("concept_id")):
            continue
        fields = line.split("\t")
        if len(fields) not in (2, 3, 4):
            raise FormatError(
                path, number, f"expected concept_id<TAB>name[<TAB>synonyms[<TAB>alt_ids]], got {len(fields)} fields"
            )
        synonyms = tuple(fields[2].split("|")) if len(fields) >= 3 else ()
        alt_ids = tuple(a.strip() for a in fields[3].split("|") if a.strip()) if len(fields) == 4 else ()
        entries.append((number, fields[0], fields[1], synonyms, alt_ids, "", ()))
    return _concepts(path, entries)


def write_tsv(vocabulary: Vocabulary, path: Path) -> None:
    """`vocabulary` as the ``tsv`` format (with its header), through a temporary file: whole or not at all."""
    with file_written_whole(path) as partial, partial.open("w", encoding="utf-8") as out:
        out.write("concept_id\tname\tsynonyms\talt_ids\n")
        for concept in vocabulary.concepts:
            fields = (concept.concept_id, concept.name, "|".join(concept.synonyms), "|".join(concept.alt_ids))
            if any(c in field for field in fields[:2] for c in "\t\n") or any(
                c in name for name in (*concept.synonyms, *concept.alt_ids) for c in "\t\n|"
            ):
                raise ValueError(f"concept {concept.concept_id}: a tab, newline or '|' inside a name or ID")
            out.write("\t".join(fields) + "\n")


def read_obo(path: Path) -> list[Concept]:
    entries, obsolete = [], 0
    term: dict | None = None

    def close() -> None:
        nonlocal obsolete
        if term is None:
            return
        if term["obsolete"]:
            obsolete += 1
        elif "id" not in term:
            raise FormatError(path, term["line"], "[Term] without an id")
        elif "name" not in term:
            raise FormatError(path, term["line"], f"term {term['id']} has no name")
        else:
            entries.append(
                (
                    term["line"],
                    term["id"],
                    term["name"],
                    tuple(term["synonyms"]),
                    tuple(term["alt"]),
                    term["def"],
                    tuple(term["parents"]),
                )
            )

    for number, line in _lines(path):
        stripped = line.strip()
        if stripped.startswith("["):
            close()
            term = (
                {"line": number, "synonyms": [], "alt": [], "parents": [], "def": "", "obsolete": False}
                if stripped == "[Term]"
                else None
            )
            continue
        if term is None or not stripped or stripped.startswith("!"):
            continue
        tag, separator, value = stripped.partition(":")
        if not separator:
            raise FormatError(path, number, f"expected 'tag: value', got {stripped[:80]!r}")
        value = value.split(" ! ")[0].strip()  # a trailing comment
        if tag == "id":
            term["id"] = value
        elif tag == "name":
            term["name"] = value
        elif tag == "synonym":
            quoted = _OBO_QUOTED.match(value)
            if not quoted:
                raise FormatError(path, number, f"synonym must start with a quoted string, got {value[:80]!r}")
            term["synonyms"].append(quoted[1].replace('\\"', '"'))
        elif tag == "alt_id":
            term["alt"].append(value)
        elif tag == "is_a":
            if not value:
                raise FormatError(path, number, "is_a without a parent ID")
            term["parents"].append(value.split()[0])  # `is_a: ID {qualifiers}`
        elif tag == "def":
            quoted = _OBO_QUOTED.match(value)
            term["def"] = quoted[1] if quoted else value
        elif tag == "is_obsolete":
            term["obsolete"] = value.lower() == "true"
    close()
    if obsolete:
        log.info("%s: %d obsolete terms left out", path, obsolete)
    return _concepts(path, entries)


def read_mrconso(path: Path, sources: Iterable[str] = (), language: str = "ENG") -> list[Concept]:
    sources = set(sources)
    if not sources:
        raise ValueError(f"{path}: name the UMLS sources (SAB) to keep, e.g. MSH, SNOMEDCT_US, HPO")
    names: dict[str, list[tuple[bool, str]]] = {}
    first_line: dict[str, int] = {}
    for number, line in _lines(path):
        if not line:
            continue
        fields = line.split("|")
        if len(fields) != MRCONSO_FIELDS + 1 or fields[-1] != "":
            raise FormatError(path, number, f"expected {MRCONSO_FIELDS} '|'-separated fields ending in '|'")
        cui, lat, ts, stt, ispref, sab, string, suppress = (
            fields[0],
            fields[1],
            fields[2],
            fields[4],
            fields[6],
            fields[11],
            fields[14],
            fields[16],
        )
        if sab not in sources or lat != language or suppress != "N":
            continue
        if not string.strip():
            raise FormatError(path, number, f"{cui}: empty string")
        names.setdefault(cui, []).append((ts == "P" and stt == "PF" and ispref == "Y", string))
        first_line.setdefault(cui, number)
    entries = []
    for cui, strings in names.items():
        preferred = next((s for is_preferred, s in strings if is_preferred), strings[0][1])
        entries.append((first_line[cui], cui, preferred, tuple(s for _, s in strings), (), "", ()))
    return _concepts(path, entries)


def read_vocabulary(path: str | Path, fmt: str, name: str = "", **options) -> Vocabulary:
    """The vocabulary in `path` (format `fmt`, one of FORMATS); `options`: mrconso's `sources` and `language`."""
    path = Path(path)
    readers = {
        "tsv": read_tsv,
        "obo": read_obo,
        "mrconso": read_mrconso,
        "biosyn": read_biosyn_dictionary,
        "medic": read_medic,
    }
    if fmt not in readers:
        raise ValueError(f"{path}: unknown vocabulary format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file {path} not found")
    concepts = readers[fmt](path, **options)
    if isinstance(concepts, Vocabulary):
        concepts = concepts.concepts
    if not concepts:
        raise FormatError(path, None, f"no concepts read (format {fmt})")
    log.info("%s: %d concepts (%s)", path, len(concepts), fmt)
    return Vocabulary(concepts, name or path.stem)
