"""The CADEC task vocabulary: MedDRA and SNOMED CT concepts named from the terminology columns and the train split.

CADEC ships no terminology files; `cadec_vocabulary` builds one vocabulary over every gold ID of the corpus,
named without letting dev or test mention text in.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

from ehrbert.corpora.cadec import MEDDRA_TYPE, CadecDocument
from ehrbert.corpora.records import COMBINED, SINGLE, Concept, Document, Mention, Vocabulary

logger = logging.getLogger(__name__)


def _ranked(sources: Iterable[Counter[str]]) -> list[str]:
    """The non-empty names of `sources` in priority order, each source by frequency then alphabetically; a
    name repeated up to case and spacing is kept once, in its first place."""
    out: dict[str, str] = {}
    for counts in sources:
        for name, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
            if name.strip():
                out.setdefault(" ".join(name.split()).casefold(), name)
    return list(out.values())


def _concept_order(concept_id: str) -> tuple[str, int]:
    prefix, _, code = concept_id.partition(":")
    return prefix, int(code)


def _snomed_names(documents: Iterable[CadecDocument]) -> dict[str, Counter[str]]:
    """`SCT:` ID -> its descriptions in sct/ (all mentions, ADRs too), counted."""
    names: dict[str, Counter[str]] = defaultdict(Counter)
    for doc in documents:
        for concepts in doc.snomed.values():
            for concept_id, name in concepts:
                if name:
                    names[concept_id][name] += 1
    return names


def _adrs(doc: Document) -> Iterable[Mention]:
    return (m for m in doc.mentions if m.type == MEDDRA_TYPE)


def _meddra_names(documents: Iterable[CadecDocument], name_documents: Iterable[CadecDocument]) -> dict[str, list[str]]:
    """`MDR:` ID -> names, best first (the rule is in `cadec_vocabulary`)."""
    snomed, paired, notes, texts = (defaultdict(Counter) for _ in range(4))
    for doc in documents:
        for m in _adrs(doc):
            concepts = doc.snomed.get(m.spans, ())
            if m.relation == SINGLE and len(concepts) == 1:
                snomed[m.concept_ids[0]][concepts[0][1]] += 1
            elif m.relation == COMBINED and len(concepts) == len(m.concept_ids):
                for concept_id, (_, name) in zip(m.concept_ids, concepts):
                    paired[concept_id][name] += 1
    for doc in name_documents:
        for m in _adrs(doc):
            if m.relation == SINGLE:
                notes[m.concept_ids[0]][doc.notes.get(m.spans, "")] += 1
                texts[m.concept_ids[0]][m.text] += 1
    names = {i: _ranked(source[i] for source in (snomed, notes, texts)) for i in set().union(snomed, notes, texts)}
    return {i: names.get(i) or _ranked([paired[i]]) for i in set(names) | set(paired)}


def cadec_vocabulary(documents: Sequence[CadecDocument], name_documents: Sequence[CadecDocument]) -> Vocabulary:
    """The CADEC task vocabulary: every gold ID of `documents` (all splits: the classifier is over the task's
    whole vocabulary, as in the paper), ordered MedDRA then SNOMED CT, each by code.

    Names (a concept's name is its first name, the others its synonyms; repeats up to case and spacing dropped):
    - `SCT:` IDs: the SNOMED CT descriptions written next to the ID in sct/ (terminology, so all posts),
      most frequent first.
    - `MDR:` IDs (no MedDRA terminology is staged), from the ADRs whose only gold ID it is: first the SNOMED
      CT descriptions annotated on the same spans where that SNOMED annotation is a single code too (all
      posts: terminology), then the AnnotatorNotes, then the mention texts, both of ADRs in `name_documents`
      only (pass the train split: no dev/test mention text or note becomes a name); within each source most
      frequent first. An ID these leave unnamed (22 with seed 13: they occur only in combined ADRs) takes
      the SNOMED descriptions at its position in the combined ADRs whose MedDRA and SNOMED fields have
      equally many codes, `A + B` beside `a | + b |` (checked on the codes that also have single-code
      SNOMED names: the description at the same position is one of them 386 times of 402).
    - An ID still without a name is named by its own code (`MDR:A` is named `A`; 2 with seed 13; logged).
    """
    concept_ids = sorted({i for doc in documents for m in doc.mentions for i in m.concept_ids}, key=_concept_order)
    names = {i: _ranked([c]) for i, c in _snomed_names(documents).items()} | _meddra_names(documents, name_documents)
    unnamed = [i for i in concept_ids if not names.get(i)]
    if unnamed:
        logger.info("%d CADEC concepts have no name in the allowed sources; named by their code", len(unnamed))
    concepts = []
    for concept_id in concept_ids:
        concept_names = names.get(concept_id) or [concept_id.partition(":")[2]]
        concepts.append(Concept(concept_id, concept_names[0], tuple(concept_names[1:])))
    return Vocabulary(concepts, name="cadec")
