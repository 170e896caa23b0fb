"""MEDIC disease vocabularies: CTD's `CTD_diseases.tsv.gz` and BioSyn's MEDIC-derived `ID||name` dictionary.

Both readers return a `Vocabulary` whose IDs are normalized by `normalize_id`, the one place that decides
how a concept ID is spelled. `gold_coverage` measures how much of a corpus' gold standard a vocabulary can
express at all, an upper bound on any normalizer that answers from it.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from ehrbert.corpora.records import Concept, Document, FormatError, Vocabulary

logger = logging.getLogger(__name__)

CTD_COLUMNS = (
    "DiseaseName",
    "DiseaseID",
    "AltDiseaseIDs",
    "Definition",
    "ParentIDs",
    "TreeNumbers",
    "ParentTreeNumbers",
    "Synonyms",
    "SlimMappings",
)
MESH_PREFIX = "MESH:"
OMIM_PREFIX = "OMIM:"


def normalize_id(raw: str) -> str:
    """One concept ID in its normalized form: MeSH bare (`D012345`), OMIM and DO with their prefix.

    >>> normalize_id(" MESH:C535662"), normalize_id("OMIM:164400"), normalize_id("164400")
    ('C535662', 'OMIM:164400', 'OMIM:164400')
    """
    concept_id = raw.strip()
    if concept_id.startswith(MESH_PREFIX):
        return concept_id[len(MESH_PREFIX) :]
    if concept_id.isdigit():  # the BioSyn dictionary writes OMIM numbers bare
        return OMIM_PREFIX + concept_id
    return concept_id


def _split_ids(field: str) -> tuple[str, ...]:
    """The normalized IDs of a `|`-separated CTD field; empty parts are skipped."""
    return tuple(normalize_id(part) for part in field.split("|") if part.strip())


def _split_names(field: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in field.split("|") if name.strip())


def _ctd_concept(path: Path, line_no: int, line: str) -> Concept:
    fields = line.rstrip("\n").split("\t")
    if len(fields) != len(CTD_COLUMNS):
        raise FormatError(path, line_no, f"expected {len(CTD_COLUMNS)} tab-separated fields, found {len(fields)}")
    row = dict(zip(CTD_COLUMNS, fields))
    name, concept_id = row["DiseaseName"].strip(), normalize_id(row["DiseaseID"])
    if not name or not concept_id:
        raise FormatError(path, line_no, "empty DiseaseName or DiseaseID")
    return Concept(
        concept_id=concept_id,
        name=name,
        synonyms=_split_names(row["Synonyms"]),
        alt_ids=_split_ids(row["AltDiseaseIDs"]),
        definition=row["Definition"].strip(),
        parents=_split_ids(row["ParentIDs"]),
    )


def _ctd_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of the data rows, `#` header lines skipped."""
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line_no, line in enumerate(lines, 1):
            if not line.startswith("#"):
                yield line_no, line


def read_medic(path: str | Path) -> Vocabulary:
    """CTD MEDIC (`CTD_diseases.tsv.gz`): one concept a row, AltDiseaseIDs (OMIM, DO) as alternative IDs."""
    path = Path(path)
    concepts: dict[str, Concept] = {}
    try:
        for line_no, line in _ctd_lines(path):
            concept = _ctd_concept(path, line_no, line)
            if concept.concept_id in concepts:
                raise FormatError(path, line_no, f"DiseaseID {concept.concept_id} appears twice")
            concepts[concept.concept_id] = concept
    except gzip.BadGzipFile as error:
        raise FormatError(path, None, f"not a gzip file ({error})") from error
    logger.info("%s: %d MEDIC concepts", path, len(concepts))
    return Vocabulary(list(concepts.values()), name=path.name)


def _biosyn_entry(path: Path, line_no: int, line: str) -> tuple[tuple[str, ...], str]:
    """(normalized IDs, name) of one `ID||name` line; a composite ID `C567755|613097` gives several IDs."""
    raw_ids, separator, name = line.rstrip("\n").partition("||")
    ids = tuple(normalize_id(part) for part in raw_ids.split("|"))
    if not separator or not name.strip() or "|" in name or not all(ids):
        raise FormatError(path, line_no, f"expected `ID||name`, found {line.rstrip()!r}")
    return ids, name.strip()


def _primary_id(ids: tuple[str, ...]) -> str:
    """The first MeSH ID of a composite BioSyn ID, else its first ID.

    984 of the dictionary's 12,314 ID strings start with an OMIM number though they hold a MeSH ID
    (`106210|C536372|D015783`); keying them on the OMIM number leaves MeSH IDs that corpora use as
    ambiguous alt IDs of several concepts (NCBI test mention coverage 92.9% instead of 99.8%).
    """
    return next((i for i in ids if not i.startswith(OMIM_PREFIX)), ids[0])


def read_biosyn_dictionary(path: str | Path) -> Vocabulary:
    """BioSyn's MEDIC dictionary: names grouped by primary ID (`_primary_id`); the line's other IDs become alt_ids."""
    path = Path(path)
    names: dict[str, list[str]] = {}
    alt_ids: dict[str, list[str]] = {}
    with path.open(encoding="utf-8") as lines:
        for line_no, line in enumerate(lines, 1):
            ids, name = _biosyn_entry(path, line_no, line)
            primary = _primary_id(ids)
            names.setdefault(primary, []).append(name)
            alt_ids.setdefault(primary, []).extend(ids)
    concepts = [
        Concept(
            concept_id=primary,
            name=primary_names[0],
            synonyms=tuple(dict.fromkeys(primary_names[1:])),
            alt_ids=tuple(i for i in dict.fromkeys(alt_ids[primary]) if i != primary),
        )
        for primary, primary_names in names.items()
    ]
    logger.info("%s: %d concepts from %d names", path, len(concepts), sum(map(len, names.values())))
    return Vocabulary(concepts, name=path.name)


def gold_coverage(documents: Iterable[Document], vocabulary: Vocabulary) -> dict:
    """How much of the gold standard the vocabulary can express, after mapping alt IDs with `canonical()`.

    `id_share`: distinct atomic gold IDs found; `mention_share`: mentions all of whose IDs are found.
    Mentions without a concept (`-1`) are left out. `missing_ids` and `ambiguous_ids` (gold IDs that are
    ambiguous alt IDs) are listed for inspection.
    """
    mentions = [m for doc in documents for m in doc.mentions if m.concept_ids]
    gold_ids = {i for m in mentions for i in m.concept_ids}
    found_ids = {i for i in gold_ids if i in vocabulary}  # `in` maps alt IDs through canonical()
    claimed_alt_ids = {alt for concept in vocabulary.concepts for alt in concept.alt_ids}
    found_mentions = sum(all(i in found_ids for i in m.concept_ids) for m in mentions)
    return {
        "ids": len(gold_ids),
        "ids_found": len(found_ids),
        "id_share": len(found_ids) / len(gold_ids) if gold_ids else 0.0,
        "mentions": len(mentions),
        "mentions_found": found_mentions,
        "mention_share": found_mentions / len(mentions) if mentions else 0.0,
        "missing_ids": sorted(gold_ids - found_ids),
        # an alt ID that canonical() cannot map is one that several concepts claim
        "ambiguous_ids": sorted((gold_ids & claimed_alt_ids) - found_ids),
    }
