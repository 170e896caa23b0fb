"""Document consistency (`ehrbert.models.consistency`): a document's sure answers decide its unsure mentions."""

import pytest

from ehrbert.models.consistency import Consistency, apply, choose, is_sure
from ehrbert.models.hybrid import Answer


def single(*ranked_scores) -> Answer:
    ranked, scores = [c for c, _ in ranked_scores], [s for _, s in ranked_scores]
    return Answer(ranked, scores, (ranked[0],))


SURE_MELANOMA = single(("D008545", 0.95), ("D009101", 0.60))  # "melanoma": leads by 0.35
UNSURE = single(("C536383", 0.80), ("D008545", 0.78), ("D009101", 0.50))  # "familial melanoma": leads by 0.02


def test_an_unsure_mention_takes_the_concept_its_document_answers_surely():
    answers = [SURE_MELANOMA, UNSURE]
    out = apply(answers, ["d1", "d1"], ["melanoma", "familial melanoma"], Consistency(weight=0.05, margin=0.1))
    assert out[0] == SURE_MELANOMA
    assert out[1].concept_ids == ("D008545",)
    assert out[1].ranked == ["D008545", "C536383", "D009101"]
    assert out[1].scores == pytest.approx([0.83, 0.80, 0.50])


def test_the_weight_bounds_how_far_behind_a_candidate_may_be():
    out = apply([SURE_MELANOMA, UNSURE], ["d1", "d1"], ["melanoma", "familial melanoma"], Consistency(0.01, 0.1))
    assert out[1] == UNSURE


def test_only_the_same_documents_sure_answers_count():
    queries = ["melanoma", "familial melanoma"]
    assert apply([SURE_MELANOMA, UNSURE], ["d1", "d2"], queries, Consistency(0.05, 0.1))[1] == UNSURE
    # "melanoma" leads by 0.35: not sure enough under a margin of 0.4
    assert apply([SURE_MELANOMA, UNSURE], ["d1", "d1"], queries, Consistency(0.05, 0.4))[1] == UNSURE


def test_a_mention_with_the_same_text_is_no_evidence():
    sure_other = single(("D008545", 0.95), ("C536383", 0.50))
    out = apply([sure_other, UNSURE], ["d1", "d1"], ["familial melanoma", "familial melanoma"], Consistency(0.05, 0.1))
    assert out[1] == UNSURE


def test_composite_and_no_concept_answers_stay_and_weight_zero_is_off():
    composite = Answer(["D001943", "D010051"], [0.7, 0.69], ("D001943", "D010051"))
    none = Answer(["D008545", "C536383"], [0.2, 0.19], ())
    answers = [SURE_MELANOMA, composite, none, UNSURE]
    queries = ["melanoma", "breast and ovarian cancer", "x", "familial melanoma"]
    out = apply(answers, ["d1"] * 4, queries, Consistency(0.5, 0.1))
    assert out[1] == composite and out[2] == none and out[3].concept_ids == ("D008545",)
    assert apply(answers, ["d1"] * 4, queries, Consistency(0.0, 0.0)) == answers
    assert not is_sure(none, 0.0) and is_sure(single(("D1", 0.3)), 1.0)


def test_only_the_first_depth_candidates_may_take_the_place():
    out = apply([SURE_MELANOMA, UNSURE], ["d1", "d1"], ["melanoma", "familial melanoma"], Consistency(0.05, 0.1, 1))
    assert out[1] == UNSURE


def test_inputs_of_different_lengths_are_an_error():
    with pytest.raises(ValueError, match="2 answers, 1 document IDs and 2 queries"):
        apply([SURE_MELANOMA, UNSURE], ["d1"], ["a", "b"], Consistency(0.05, 0.1))


def test_choose_keeps_it_off_unless_dev_gains():
    rule, tried = choose([0.05, 0.1], [0.0, 0.1], lambda r: 0.5)
    assert rule == Consistency(0.0, 0.0) and len(tried) == 5 and next(iter(tried)) == rule
    rule, _ = choose([0.05, 0.1], [0.0, 0.1], lambda r: 0.5 + (r.weight == 0.1) * 0.1)
    assert rule == Consistency(0.1, 0.1)  # the larger margin on a tie: fewer, surer pieces of evidence
