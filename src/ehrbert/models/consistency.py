"""Document consistency: the sure answers of a document's other mentions decide its unsure mentions.

Beyond the paper. The normalizer answers each mention alone, but a document names few concepts and often
writes one of them in several ways ("familial melanoma", "melanoma", "cutaneous malignant melanoma"). Here a
mention's answer gives way to another of its candidates when another mention of the same document answers
that candidate surely and the mention's own answer leads it by less than `weight`:

- a mention is *sure* when its best score leads its second by at least `margin` (or it has one candidate);
- the evidence for a mention is the concepts that the sure mentions of its document answer, leaving out the
  mentions with the same query text (they have the same candidates and so the same answer: no new evidence);
- each of the mention's first `depth` candidates scores its own score plus `weight` if it is in the evidence;
  the best new score is the answer, ties keeping the first order.

Repeated mentions of one text already answer alike, and an abbreviation is already read with its long form
(Ab3P, `ehrbert.text`), so what this adds is the other *wordings* of a concept in one document. Composite and
no-concept answers stay as they are: only a single-concept answer that is its own best candidate changes. The
rule makes one pass: the evidence is the answers before any change. `weight` 0 switches it off.

`choose` picks the two values on dev from a grid (`ConsistencyConfig`, params.yaml `consistency`). The scores
are those of whatever produced the answers (the first stage's cosine plus classifier weight, or the second
stage's probabilities), so the grid is read on that scale.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ehrbert.models.hybrid import Answer
from ehrbert.stats import first_best

OBJECTIVES = ("f1", "acc1")


@dataclass
class ConsistencyConfig:
    """How the rule is chosen on dev (params.yaml `consistency`)."""

    weights: list[float] = field(default_factory=lambda: [0.01, 0.02, 0.05, 0.1, 0.2, 0.5])
    margins: list[float] = field(default_factory=lambda: [0.0, 0.05, 0.1, 0.2, 0.5])
    depth: int = 10
    objective: str = "f1"  # what dev's choice maximizes: the task's F1 ("f1") or acc@1 ("acc1")
    significance: float = 0.05  # used only where dev's one-sided exact McNemar P is below it

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"consistency.objective: {self.objective!r} is not one of {', '.join(OBJECTIVES)}")


@dataclass(frozen=True)
class Consistency:
    weight: float = 0.0  # 0: off
    margin: float = 0.0  # how far a mention's best score must lead its second for it to count as evidence
    depth: int = 10  # how many of a mention's ranked candidates may take its place


def is_sure(answer: Answer, margin: float) -> bool:
    if not answer.concept_ids:
        return False
    return len(answer.scores) < 2 or answer.scores[0] - answer.scores[1] >= margin


def apply(
    answers: Sequence[Answer], documents: Sequence[str], queries: Sequence[str], rule: Consistency
) -> list[Answer]:
    """`answers` with each document's sure answers deciding its unsure ones (`documents` and `queries`: each
    answer's document ID and query text, in the same order)."""
    if not len(answers) == len(documents) == len(queries):
        raise ValueError(f"{len(answers)} answers, {len(documents)} document IDs and {len(queries)} queries")
    if rule.weight <= 0:
        return list(answers)
    sure: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))  # doc -> concept -> queries
    for answer, document, query in zip(answers, documents, queries):
        if is_sure(answer, rule.margin):
            for concept in answer.concept_ids:
                sure[document][concept].add(query)
    out = []
    for answer, document, query in zip(answers, documents, queries):
        evidence = sure.get(document, {})
        single = len(answer.concept_ids) == 1 and bool(answer.ranked) and answer.concept_ids[0] == answer.ranked[0]
        if not single or not evidence:
            out.append(answer)
            continue
        depth = min(rule.depth, len(answer.ranked))
        boosted = [
            score + (rule.weight if evidence.get(concept, set()) - {query} else 0.0)
            for concept, score in zip(answer.ranked[:depth], answer.scores[:depth])
        ]
        order = sorted(range(depth), key=lambda r: -boosted[r])  # stable: ties keep the first order
        if order[0] == 0:
            out.append(answer)
            continue
        ranked = [answer.ranked[r] for r in order] + answer.ranked[depth:]
        scores = [boosted[r] for r in order] + answer.scores[depth:]
        out.append(Answer(ranked, scores, (ranked[0],)))
    return out


def choose(
    weights: Sequence[float], margins: Sequence[float], objective: Callable[[Consistency], float], depth: int = 10
) -> tuple[Consistency, dict[Consistency, float]]:
    """The (weight, margin) of the grid with the best `objective` (on dev), off (weight 0) on a tie with it, else
    the smaller weight and then the larger margin; and the value of every rule tried, the off one first."""
    grid = [Consistency(0.0, 0.0, depth)]
    margins = sorted(set(margins), reverse=True)
    grid += [Consistency(w, m, depth) for w in sorted(set(weights)) if w > 0 for m in margins]
    best, tried = first_best(grid, objective)
    return best, dict(tried)
