"""Metrics on small hand-computed cases; each expected number is worked out in the comment above it."""

import pytest

from ehrbert.corpora.records import (
    ALTERNATIVE,
    COMBINED,
    COMPOSITE,
    NO_CONCEPT,
    SINGLE,
    Concept,
    Document,
    Mention,
    Vocabulary,
)
from ehrbert.metrics import accuracy_at_k, document_concepts, document_level, evaluate, mention_level, prf


def m(doc_id, spans, ids, relation=SINGLE, text="x"):
    return Mention(doc_id=doc_id, spans=tuple(spans), text=text, concept_ids=tuple(ids), relation=relation)


def test_prf_and_zero_denominators():
    # tp 3, fp 1, fn 2: P = 3/4, R = 3/5, F1 = 2*.75*.6/1.35 = 2/3
    assert prf(3, 1, 2) == pytest.approx({"precision": 0.75, "recall": 0.6, "f1": 2 / 3})
    assert prf(0, 0, 0) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_document_concepts_splits_composite_and_combined_and_skips_no_concept():
    mentions = [
        m("1", [(0, 5)], ["D1", "D2"], COMPOSITE),
        m("1", [(6, 9)], ["D3", "D4"], COMBINED),
        m("1", [(10, 12)], ["D1"]),
        m("2", [(0, 3)], [], NO_CONCEPT),
    ]
    assert document_concepts(mentions) == {"1": {"D1", "D2", "D3", "D4"}, "2": set()}
    with pytest.raises(ValueError, match="alternative"):
        document_concepts([m("3", [(0, 1)], ["A", "B"], ALTERNATIVE)])


def test_document_level_macro_and_micro():
    docs = [
        # gold {D1, D2, D3} (composite D1|D2 counts both); predicted {D1, D2, D9}
        # tp 2, fp 1, fn 1 -> P 2/3, R 2/3, F 2/3
        Document("a", "t", [m("a", [(0, 4)], ["D1", "D2"], COMPOSITE), m("a", [(5, 9)], ["D3"])]),
        # gold {D5}; nothing predicted -> P 1 (DNorm: no prediction = precision 1), R 0, F 0; fn 1
        Document("b", "t", [m("b", [(0, 4)], ["D5"])]),
        # gold empty (only a -1 mention); predicted {D7} -> P 0, R 1 (no gold = recall 1), F 0; fp 1
        Document("c", "t", [m("c", [(0, 4)], [], NO_CONCEPT)]),
        # gold {D8+D9 -> D8, D9}; predicted {D8, D9} -> P 1, R 1, F 1; tp 2
        Document("d", "t", [m("d", [(0, 4)], ["D8", "D9"], COMBINED)]),
        # no gold concept and no prediction: left out of the macro average
        Document("e", "t", []),
    ]
    predictions = {"a": {"D1", "D2", "D9"}, "c": {"D7"}, "d": ["D9", "D8"], "e": set()}
    scores = document_level(docs, predictions)
    # macro over a, b, c, d: P (2/3 + 1 + 0 + 1)/4 = 2/3; R (2/3 + 0 + 1 + 1)/4 = 2/3;
    # F1 mean of per-document F1 (2/3 + 0 + 0 + 1)/4 = 5/12 (not the harmonic mean of P and R)
    assert scores["documents"] == 4
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(5 / 12)
    # micro: tp 2+0+0+2 = 4, fp 1+0+1+0 = 2, fn 1+1+0+0 = 2 -> P 4/6, R 4/6, F 2/3
    assert (scores["tp"], scores["fp"], scores["fn"]) == (4, 2, 2)
    assert scores["micro_precision"] == pytest.approx(2 / 3)
    assert scores["micro_recall"] == pytest.approx(2 / 3)
    assert scores["micro_f1"] == pytest.approx(2 / 3)


def test_document_level_edge_cases():
    empty = [Document("e", "t", [])]
    assert document_level(empty, {})["documents"] == 0
    assert document_level(empty, {})["f1"] == 0.0
    with pytest.raises(ValueError, match="not in the gold set"):
        document_level(empty, {"zzz": {"D1"}})


def test_vocabulary_maps_alternative_ids_before_scoring():
    vocabulary = Vocabulary([Concept("D1", "one", alt_ids=("OMIM:1",)), Concept("D2", "two")])
    doc = Document("a", "t", [m("a", [(0, 3)], ["OMIM:1"])])
    # gold OMIM:1 is D1 in this vocabulary: predicted {D1} -> P = R = F = 1
    assert document_level([doc], {"a": {"D1"}}, vocabulary)["f1"] == 1.0
    assert document_level([doc], {"a": {"D1"}})["f1"] == 0.0
    assert mention_level(doc.mentions, [("a", ((0, 3),), {"D1"})], vocabulary)["f1"] == 1.0
    assert accuracy_at_k(doc.mentions, [["D2", "D1"]], 2, vocabulary) == 1.0


def test_mention_level_relations_spans_and_no_concept():
    gold = [
        m("a", [(0, 4)], ["D1"]),  # g1 single
        m("a", [(5, 20)], ["D2", "D3"], COMPOSITE),  # g2 composite: needs {D2, D3}
        m("a", [(21, 25)], ["D4", "D5"], COMBINED),  # g3 combined: needs {D4, D5}
        m("a", [(26, 30)], ["S1", "S2"], ALTERNATIVE),  # g4 alternative: S1 or S2
        m("a", [(31, 35), (40, 44)], ["D6"]),  # g5 discontinuous
        m("a", [(50, 54)], [], NO_CONCEPT),  # g6 no concept: not in recall denominator
        m("b", [(0, 4)], ["D7"]),  # g7 other document
        m("b", [(5, 9)], ["D8"]),  # g8 never predicted
    ]
    predicted = [
        ("a", ((0, 4),), {"D1"}),  # TP g1
        ("a", ((0, 4),), {"D1"}),  # FP: g1 already matched
        ("a", ((5, 20),), {"D2"}),  # FP: composite needs both IDs
        ("a", ((21, 25),), ["D5", "D4"]),  # TP g3 (order does not matter)
        ("a", ((26, 30),), {"S2"}),  # TP g4 (one of the alternatives)
        ("a", ((40, 44), (31, 35)), {"D6"}),  # TP g5 (same pieces, any order)
        ("a", ((50, 54),), {"D9"}),  # FP: a concept for a no-concept mention
        ("a", ((60, 64),), set()),  # "no concept" prediction: counts nowhere
        ("b", ((0, 3),), {"D7"}),  # FP: spans differ from g7 (detector boundary error)
    ]
    scores = mention_level(gold, predicted)
    # tp 4 (g1, g3, g4, g5); fp 4; recall denominator 7 (g6 left out) -> fn 3 (g2, g7, g8)
    # P 4/8 = 0.5, R 4/7, F1 = 2*.5*(4/7)/(.5 + 4/7) = (4/7)/(15/14) = 8/15
    assert (scores["tp"], scores["fp"], scores["fn"]) == (4, 4, 3)
    assert scores["precision"] == pytest.approx(0.5)
    assert scores["recall"] == pytest.approx(4 / 7)
    assert scores["f1"] == pytest.approx(8 / 15)


def test_mention_level_alternative_needs_exactly_one_choice():
    gold = [m("a", [(0, 4)], ["S1", "S2"], ALTERNATIVE)]
    # both alternatives at once is not a choice: tp 0, fp 1, fn 1
    assert mention_level(gold, [("a", ((0, 4),), {"S1", "S2"})])["fp"] == 1
    # an ID outside the alternatives: tp 0, fp 1
    assert mention_level(gold, [("a", ((0, 4),), {"S3"})])["tp"] == 0


def test_accuracy_at_k():
    gold = [
        m("a", [(0, 1)], ["D1"]),  # top-1 right
        m("a", [(2, 3)], ["D2"]),  # right only at rank 2
        m("a", [(4, 5)], ["D3", "D4"], COMPOSITE),  # D4 at rank 1: right (any one of its IDs)
        m("a", [(6, 7)], ["D5"]),  # never right
        m("a", [(8, 9)], [], NO_CONCEPT),  # excluded
    ]
    ranked = [["D1", "D9"], ["D9", "D2"], ["D4"], ["D8", "D7", "D5"], ["D1"]]
    # k=1: D1, D4 right -> 2/4; k=2: + D2 -> 3/4; k=3: + D5 -> 4/4
    assert accuracy_at_k(gold, ranked, 1) == 0.5
    assert accuracy_at_k(gold, ranked, 2) == 0.75
    assert accuracy_at_k(gold, ranked, 3) == 1.0
    assert accuracy_at_k(gold[-1:], ranked[-1:], 1) == 0.0
    with pytest.raises(ValueError):
        accuracy_at_k(gold, ranked, 0)
    with pytest.raises(ValueError):
        accuracy_at_k(gold, ranked[:2], 1)


def test_evaluate_scores_top1_at_both_levels():
    docs = [
        Document("a", "t", [m("a", [(0, 4)], ["D1"]), m("a", [(5, 9)], ["D2"])]),
        Document("b", "t", [m("b", [(0, 4)], [], NO_CONCEPT)]),
    ]
    mentions = [mention for doc in docs for mention in doc.mentions]
    ranked = [["D1", "D2"], ["D3", "D2"], ["D4"]]
    # document level: a predicts {D1, D3} vs gold {D1, D2}: P 1/2, R 1/2, F 1/2;
    # b predicts {D4}, gold empty: P 0, R 1, F 0 -> macro P 1/4, R 3/4, F 1/4; micro tp 1, fp 2, fn 1
    scores = evaluate(docs, mentions, ranked, level="document")
    assert scores["precision"] == pytest.approx(0.25)
    assert scores["recall"] == pytest.approx(0.75)
    assert scores["f1"] == pytest.approx(0.25)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (1, 2, 1)
    # acc over the 2 mentions with a concept: top-1 D1 right, D3 wrong -> 1/2; top-2 both right -> 1
    assert (scores["acc1"], scores["acc2"], scores["mentions"]) == (0.5, 1.0, 3)
    # mention level: D1 TP, D3 FP, D4 on the no-concept mention FP; fn 1 (the D2 mention)
    # P 1/3, R 1/2, F1 2*(1/3)*(1/2)/(5/6) = 2/5
    scores = evaluate(docs, mentions, ranked, level="mention")
    assert (scores["tp"], scores["fp"], scores["fn"]) == (1, 2, 1)
    assert scores["f1"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="level"):
        evaluate(docs, mentions, ranked, level="corpus")
