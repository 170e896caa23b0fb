"""All evaluation of the paper, as pure functions on records: document-level, mention-level, acc@k.

- `document_level`: NCBI disease and BC5CDR, as DNorm (Leaman et al. 2013, `EvalDNorm`) and the
  BioCreative V CDR evaluation score concept normalization: per document, the set of gold concept IDs
  against the set of predicted IDs. Macro P/R/F1 (the paper's numbers) follow DNorm's
  `calculateMacroAveragedFMeasure` exactly; micro P/R/F1 over (document, ID) pairs is what the CDR
  evaluation script prints and is returned too.
- `mention_level`: the clinical corpus, MADE style: a prediction counts only where its spans equal a
  gold mention's and its concept is right under that mention's relation.
- `accuracy_at_k`: acc@1 / acc@k over gold mentions, the BioSyn / SapBERT convention.
- `is_seen`: the one seen / unseen rule that every table of seen and unseen mentions uses.
- `span_scores`: mention detection by exact span match.
- `evaluate`: what a stage reports for ranked candidates on gold mentions: acc@1, acc@k and the
  task's own P/R/F1, each mention predicting its top-1 candidate.

All scores are fractions in [0, 1]. When a `Vocabulary` is given, gold and predicted IDs are first
mapped to its primary IDs (`Vocabulary.canonical`), as DNorm maps MEDIC alternative IDs.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

from ehrbert.corpora.records import ALTERNATIVE, NO_CONCEPT, Document, Mention, Vocabulary

Span = tuple[int, int]  # character offsets into the raw text, end exclusive
Spans = tuple[Span, ...]
Prediction = tuple[str, Spans, Iterable[str]]  # (doc_id, spans, predicted concept IDs; empty = "no concept")


def prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    """Precision tp/(tp+fp), recall tp/(tp+fn), F1 their harmonic mean; 0.0 wherever a denominator is 0."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def _canonical(ids: Iterable[str], vocabulary: Vocabulary | None) -> set[str]:
    return {vocabulary.canonical(i) for i in ids} if vocabulary is not None else set(ids)


def document_concepts(mentions: Iterable[Mention], vocabulary: Vocabulary | None = None) -> dict[str, set[str]]:
    """The concept IDs each document mentions: {doc_id: IDs}.

    Single, composite (``|``) and combined (``+``) mentions contribute each of their IDs; NO_CONCEPT
    (``-1``) mentions contribute nothing (a document that has only those maps to an empty set). A set of
    IDs cannot say "one of these", so ALTERNATIVE mentions raise ValueError: score them with
    `mention_level`.
    """
    concepts: dict[str, set[str]] = {}
    for mention in mentions:
        if mention.relation == ALTERNATIVE:
            raise ValueError(f"{mention.doc_id}: document-level scores are undefined for alternative IDs {mention}")
        ids = concepts.setdefault(mention.doc_id, set())
        if mention.relation != NO_CONCEPT:
            ids |= _canonical(mention.concept_ids, vocabulary)
    return concepts


def document_level(
    gold_docs: Sequence[Document],
    predictions: Mapping[str, Iterable[str]],
    vocabulary: Vocabulary | None = None,
) -> dict[str, float]:
    """Document-level P/R/F1: macro-averaged over documents (DNorm) plus micro over (doc, ID) pairs (CDR).

    Gold: `document_concepts` of each document's mentions. Predicted: `predictions[doc_id]`, a missing
    document meaning no prediction. Per document, with tp = |gold & predicted|:

    - P = tp / |predicted|, but 1.0 when nothing is predicted;
    - R = tp / |gold|, but 1.0 when the gold set is empty;
    - F1 = 2PR / (P + R), 0.0 when P + R = 0 (so a document with predictions but no gold concept, or
      gold concepts but no prediction, scores F1 = 0);
    - a document with neither gold concepts nor predictions is left out of the averages.

    Macro P, R and F1 are the plain means of the per-document values (macro F1 is the mean of the
    per-document F1s, not the harmonic mean of macro P and R); `documents` says how many were averaged
    (0 gives all-zero macro scores). Micro P/R/F1 pool tp/fp/fn over all documents (`prf`).
    Predictions for a document not in `gold_docs` raise ValueError.
    """
    gold = {doc.doc_id: set() for doc in gold_docs}
    gold.update(document_concepts((m for doc in gold_docs for m in doc.mentions), vocabulary))
    unknown = set(predictions) - set(gold)
    if unknown:
        raise ValueError(f"predictions for documents that are not in the gold set: {sorted(unknown)[:5]}")

    sums = {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    documents = tp_all = fp_all = fn_all = 0
    for doc_id, gold_ids in gold.items():
        predicted = _canonical(predictions.get(doc_id, ()), vocabulary)
        if not gold_ids and not predicted:
            continue
        tp = len(gold_ids & predicted)
        fp, fn = len(predicted) - tp, len(gold_ids) - tp
        precision = tp / (tp + fp) if predicted else 1.0
        recall = tp / (tp + fn) if gold_ids else 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        for key, value in (("precision", precision), ("recall", recall), ("f1", f1)):
            sums[key] += value
        documents += 1
        tp_all, fp_all, fn_all = tp_all + tp, fp_all + fp, fn_all + fn

    scores = {key: value / documents if documents else 0.0 for key, value in sums.items()}
    micro = prf(tp_all, fp_all, fn_all)
    scores.update({f"micro_{key}": value for key, value in micro.items()})
    scores.update({"documents": documents, "tp": tp_all, "fp": fp_all, "fn": fn_all})
    return scores


def _is_correct(predicted: set[str], gold: Mention, gold_ids: set[str]) -> bool:
    if gold.relation == ALTERNATIVE:
        return len(predicted) == 1 and predicted <= gold_ids
    return predicted == gold_ids


def mention_level(
    gold_mentions: Iterable[Mention],
    predicted: Iterable[Prediction],
    vocabulary: Vocabulary | None = None,
) -> dict[str, float]:
    """Mention-level P/R/F1 where span and concept must both match (MADE style).

    A prediction is (doc_id, spans, concept IDs); spans are compared as sets of (start, end) pairs, so
    discontinuous mentions must match piece by piece. A prediction is a true positive when a gold
    mention, not yet matched, has the same document and spans and the concept is right under its
    relation: SINGLE, COMPOSITE and COMBINED need the predicted ID set to equal the gold set;
    ALTERNATIVE needs exactly one predicted ID, one of the alternatives. Every other prediction with
    concepts is a false positive: wrong concept, spans no gold mention has (detector output), a second
    prediction for one gold mention, or a concept for a gold NO_CONCEPT mention.
    A prediction with an empty ID set means "no concept" and counts nowhere.
    False negatives are the gold mentions with concepts that no prediction matched; gold NO_CONCEPT
    mentions are not in the recall denominator.
    """
    open_gold: dict[tuple[str, frozenset[tuple[int, int]]], list[Mention]] = {}
    n_gold = 0
    for mention in gold_mentions:
        if mention.relation != NO_CONCEPT:
            open_gold.setdefault((mention.doc_id, frozenset(mention.spans)), []).append(mention)
            n_gold += 1

    tp = fp = 0
    for doc_id, spans, concept_ids in predicted:
        ids = _canonical(concept_ids, vocabulary)
        if not ids:
            continue
        candidates = open_gold.get((doc_id, frozenset(spans)), [])
        match = next((g for g in candidates if _is_correct(ids, g, _canonical(g.concept_ids, vocabulary))), None)
        if match is None:
            fp += 1
        else:
            candidates.remove(match)
            tp += 1

    return {**prf(tp, fp, n_gold - tp), "tp": tp, "fp": fp, "fn": n_gold - tp}


def accuracy_at_k(
    gold_mentions: Sequence[Mention],
    ranked: Sequence[Sequence[str]],
    k: int,
    vocabulary: Vocabulary | None = None,
) -> float:
    """Share of gold mentions with one of their gold IDs among their top-k candidate IDs (BioSyn/SapBERT).

    `ranked[i]` is the best-first candidate list for `gold_mentions[i]`. Any gold ID counts, whatever
    the relation, so a composite or combined mention is right at k when any one of its concepts is in
    the top k (BioSyn's rule for composite IDs). NO_CONCEPT gold mentions are left out of numerator and
    denominator; 0.0 when no mention is left.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if len(gold_mentions) != len(ranked):
        raise ValueError(f"{len(gold_mentions)} gold mentions but {len(ranked)} candidate lists")
    scored = right = 0
    for mention, candidates in zip(gold_mentions, ranked):
        if mention.relation == NO_CONCEPT:
            continue
        scored += 1
        right += bool(_canonical(candidates[:k], vocabulary) & _canonical(mention.concept_ids, vocabulary))
    return right / scored if scored else 0.0


def score_predictions(gold_docs: Sequence[Document], predicted: Iterable[Prediction], level: str) -> dict[str, float]:
    """The task's P/R/F1 of predictions (doc_id, spans, concept IDs) against the mentions of `gold_docs`.

    `level` "document": `document_level`, each document predicting the union of its predictions' IDs (so a
    composite answer counts each concept); "mention": `mention_level`, spans and concept set must match.
    """
    if level == "document":
        by_document: dict[str, set[str]] = {}
        for doc_id, _, ids in predicted:
            by_document.setdefault(doc_id, set()).update(ids)
        return document_level(gold_docs, by_document)
    if level == "mention":
        return mention_level((m for doc in gold_docs for m in doc.mentions), predicted)
    raise ValueError(f"level must be 'document' or 'mention', got {level!r}")


def evaluate(
    gold_docs: Sequence[Document],
    mentions: Sequence[Mention],
    ranked: Sequence[Sequence[str]],
    level: str,
) -> dict[str, float]:
    """A stage's test metrics for best-first candidates `ranked[i]` of gold mention `mentions[i]`.

    Each mention predicts its top-1 candidate (none when its list is empty); the system cannot know
    which gold mentions are NO_CONCEPT, so a prediction for one of those is scored too (a false
    positive). `level`: as in `score_predictions`, on the gold spans. Keys: that function's,
    plus ``acc1`` and ``acc{k}`` for the longest candidate list when k > 1, and ``mentions``.
    """
    if len(mentions) != len(ranked):
        raise ValueError(f"{len(mentions)} mentions but {len(ranked)} candidate lists")
    scores = score_predictions(gold_docs, [(m.doc_id, m.spans, set(c[:1])) for m, c in zip(mentions, ranked)], level)
    scores["acc1"] = accuracy_at_k(mentions, ranked, 1)
    k = max((len(candidates) for candidates in ranked), default=1)
    if k > 1:
        scores[f"acc{k}"] = accuracy_at_k(mentions, ranked, k)
    scores["mentions"] = len(mentions)
    return scores


def seen_concepts(train_mentions: Iterable[Mention]) -> set[str]:
    """The concept IDs that at least one training mention is annotated with."""
    return {cid for mention in train_mentions for cid in mention.concept_ids}


def is_seen(mention: Mention, seen: Collection[str]) -> bool:
    """The seen / unseen rule: a mention is *seen* when every one of its gold concepts has a training mention.

    A closed-set classifier can give the whole answer to a seen mention only; an unseen mention has at least
    one concept that training never showed, whose output was only ever pushed down. A mention without a
    concept (NO_CONCEPT) is neither: callers leave it out of both groups.
    """
    return mention.relation != NO_CONCEPT and bool(mention.concept_ids) and all(c in seen for c in mention.concept_ids)


def span_scores(documents: Sequence[Document], detected: Mapping[str, Iterable[Span]]) -> dict[str, float]:
    """Detection P/R/F1 by exact span match, over (document, spans) pairs.

    Gold: the distinct spans of each document's mentions, all of them (a discontinuous mention is a gold span
    set a contiguous detection never equals; `discontinuous` says how many). Predicted: `detected[doc_id]`,
    a missing document meaning nothing detected.
    """
    tp = n_predicted = n_gold = discontinuous = 0
    for doc in documents:
        gold = {m.spans for m in doc.mentions}
        predicted = {((s, e),) for s, e in detected.get(doc.doc_id, ())}
        tp += len(gold & predicted)
        n_predicted += len(predicted)
        n_gold += len(gold)
        discontinuous += sum(len(spans) > 1 for spans in gold)
    scores = prf(tp, n_predicted - tp, n_gold - tp)
    counts = {"tp": tp, "fp": n_predicted - tp, "fn": n_gold - tp, "gold": n_gold, "discontinuous": discontinuous}
    return {**scores, **counts}
