"""Plain records shared by every corpus reader, the metrics and the models.

Readers turn files into these; nothing downstream looks at a file format again.
Concept IDs are always in their *normalized* form (see `ehrbert.corpora.medic.normalize_id`):
MeSH without prefix (``D012345``, ``C535662``), other namespaces with theirs (``OMIM:164400``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

# How the IDs of one mention combine.
SINGLE = "single"  # one concept
COMPOSITE = "composite"  # "breast and ovarian cancer": several concepts, each one named (NCBI/CDR `|`)
COMBINED = "combined"  # one meaning that needs several concepts together (NCBI `+`, CADEC MedDRA `+`)
ALTERNATIVE = "alternative"  # annotators allowed any one of them (CADEC SNOMED `or`)
NO_CONCEPT = "no_concept"  # the mention has no concept in the vocabulary (`-1`, CADEC CONCEPT_LESS)


@dataclass(frozen=True)
class Mention:
    doc_id: str
    spans: tuple[tuple[int, int], ...]  # character offsets into Document.text, end exclusive; >1 = discontinuous
    text: str  # the surface string as annotated
    concept_ids: tuple[str, ...]  # normalized; empty when relation == NO_CONCEPT
    relation: str = SINGLE
    type: str = ""  # corpus mention type: SpecificDisease, Disease, ADR, Drug, ...

    @property
    def start(self) -> int:
        return self.spans[0][0]

    @property
    def end(self) -> int:
        return self.spans[-1][1]


@dataclass
class Document:
    doc_id: str
    text: str  # for PubTator: title + " " + abstract, the text the offsets point into
    mentions: list[Mention] = field(default_factory=list)
    title: str = ""
    meta: dict[str, str] = field(default_factory=dict)  # e.g. CADEC drug name


@dataclass(frozen=True)
class Concept:
    concept_id: str  # normalized primary ID
    name: str  # preferred name
    synonyms: tuple[str, ...] = ()
    alt_ids: tuple[str, ...] = ()  # normalized alternative IDs that denote this concept
    definition: str = ""
    parents: tuple[str, ...] = ()  # normalized IDs of its direct parents, where the vocabulary is a hierarchy (MEDIC)

    @property
    def names(self) -> tuple[str, ...]:
        """Preferred name first, then synonyms, without repeats."""
        return tuple(dict.fromkeys((self.name, *self.synonyms)))


class FormatError(ValueError):
    """Malformed input: always names the file and the line (1-based) where it was found."""

    def __init__(self, path, line_no: int | None, message: str):
        where = f"{path}:{line_no}" if line_no is not None else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line_no = line_no


class Vocabulary:
    """The concepts a normalizer may answer with, in a fixed order (the classifier's label order).

    `canonical()` maps any known ID form (primary or alternative) to the primary ID, so that
    gold IDs from a corpus and predictions from the vocabulary meet in one ID space. An
    alternative ID that belongs to several concepts is ambiguous and is left as it is.
    """

    def __init__(self, concepts: list[Concept], name: str = ""):
        self.name = name
        self.concepts = list(concepts)
        self.index = {c.concept_id: i for i, c in enumerate(self.concepts)}
        if len(self.index) != len(self.concepts):
            raise ValueError(f"vocabulary {name!r} has duplicate concept IDs")
        owners: dict[str, set[str]] = {}
        for c in self.concepts:
            for alt in c.alt_ids:
                owners.setdefault(alt, set()).add(c.concept_id)
        self._alt = {alt: next(iter(ids)) for alt, ids in owners.items() if len(ids) == 1 and alt not in self.index}

    def __len__(self) -> int:
        return len(self.concepts)

    def __contains__(self, concept_id: str) -> bool:
        return self.canonical(concept_id) in self.index

    def __getitem__(self, concept_id: str) -> Concept:
        return self.concepts[self.index[self.canonical(concept_id)]]

    def name_of(self, concept_id: str) -> str:
        """The concept's preferred name; the ID itself for an ID the vocabulary lacks."""
        return self[concept_id].name if concept_id in self else concept_id

    def canonical(self, concept_id: str) -> str:
        return concept_id if concept_id in self.index else self._alt.get(concept_id, concept_id)

    def canonical_mention(self, mention: Mention) -> Mention:
        """The mention with its gold IDs mapped to primary IDs (order kept, repeats dropped)."""
        ids = tuple(dict.fromkeys(self.canonical(i) for i in mention.concept_ids))
        return mention if ids == mention.concept_ids else replace(mention, concept_ids=ids)
