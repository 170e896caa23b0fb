"""The cross-encoder benchmark's own logic: what a candidate reads as, the listwise lists, the rows' pairs and
features, and listwise training on a tiny BERT."""

import sys
from pathlib import Path

import numpy as np
import torch

from ehrbert.corpora.records import Concept, Document, Mention, Vocabulary
from ehrbert.launch import make_accelerator
from ehrbert.models.hybrid import Answer
from ehrbert.models.rerank import RerankConfig, Reranker
from ehrbert.tasks import Task

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import cross_encoder as bench  # noqa: E402

VOCABULARY = Vocabulary(
    [
        Concept("D1", "Melanoma", synonyms=("Malignant Melanoma", "Melanomas", "Melanoma, Malignant")),
        Concept("D2", "Breast Neoplasms", synonyms=("Breast Cancer",)),
        Concept("D3", "Wilson Disease"),
    ]
)


def mention(text: str, *concepts: str) -> Mention:
    return Mention("doc", ((0, len(text)),), text, concepts)


def evidence() -> Reranker:
    mentions = [mention("familial melanoma", "D1"), mention("melanoma", "D1"), mention("breast cancer", "D2")]
    return Reranker.build(RerankConfig(), VOCABULARY, mentions, [m.text for m in mentions])


def test_a_candidate_reads_as_its_first_names_then_training_mentions_that_are_not_among_them():
    config = bench.CrossEncoderConfig("unused", names=2, mentions=3)
    # "melanoma" is a name and a training mention: it is read once, among the names
    assert bench.candidate_text(evidence(), "D1", config) == "melanoma ; malignant melanoma | familial melanoma"
    assert bench.candidate_text(evidence(), "D3", config) == "wilson disease"  # no training mention
    assert bench.candidate_text(evidence(), "D2", config) == "breast neoplasms ; breast cancer"


def test_pairs_follow_the_rerankers_rows():
    answers = [Answer(["D1", "D2", "D3"], [0.9, 0.5, 0.1], ("D1",)), Answer(["D3", "D1"], [0.8, 0.2], ("D3",))]
    owners = np.array([0, 0, 1, 1])  # the first two candidates of each (RerankConfig(candidates=2))
    config = bench.CrossEncoderConfig("unused", names=1, mentions=0)
    pairs = bench.pair_texts(["skin melanoma", "wilson's"], answers, owners, evidence(), config, k=2)
    assert pairs == [
        ("skin melanoma", "melanoma"),
        ("skin melanoma", "breast neoplasms"),
        ("wilson's", "wilson disease"),
        ("wilson's", "melanoma"),
    ]


def test_a_mention_reads_in_its_own_sentence_cut_to_the_words_around_it():
    text = "Familial melanoma is rare. Most patients with the familial melanoma syndrome carry CDKN2A variants."
    first, second = text.index("Familial melanoma"), text.index("familial melanoma syndrome")
    mentions = [
        Mention("d1", ((first, first + 17),), "Familial melanoma", ("D1",)),
        Mention("d1", ((second, second + 17),), "familial melanoma", ("D1",)),
    ]
    task = Task("toy", VOCABULARY, {"train": [Document("d1", text, mentions)]}, "document")
    # the first sentence ends at its period: the second mention's words come from the second sentence only
    assert bench.mention_contexts(task, "train", 2) == [
        "Familial melanoma is rare.",
        "with the familial melanoma syndrome carry",
    ]
    assert bench.mention_contexts(task, "train", 20)[1] == text[text.index("Most") :]
    assert bench.mention_texts(["melanoma"], None, "[SEP]") == ["melanoma"]
    assert bench.mention_texts(["melanoma"], ["the melanoma"], "[SEP]") == ["melanoma [SEP] the melanoma"]


def test_scores_kept_without_a_sentence_keep_their_key_and_a_sentence_changes_it():
    alone = bench.CrossEncoderConfig("model")
    assert "context" not in alone.key() and alone.variant() == ""
    in_sentence = bench.CrossEncoderConfig("model", context=12, max_length=128)
    assert in_sentence.key() != alone.key() and in_sentence.variant() == "sentence12"
    longer = bench.CrossEncoderConfig("model", epochs=2)
    assert longer.key() != alone.key() and longer.variant() == "epochs2"
    assert bench.CrossEncoderConfig("model", epochs=3, context=12).variant() == "sentence12-epochs3"
    assert bench.variant_label("sentence12-epochs3") == ", in its sentence (±12 words), 3 epochs"


def test_the_report_compares_a_configuration_with_the_mention_alone_on_the_seeds_both_have():
    def result(acc1: float) -> dict:
        cell = {"test": {key: acc1 for key in ("acc1", "acc1_seen", "acc1_unseen", "f1")}, "dev_acc1": 0.9}
        cell |= {"used": False, "used_held_out": False}
        row = {reading: dict(cell) for reading in bench.READINGS}
        return row | {
            "training_lists": 10,
            "cross_encoder_train_seconds": 60.0,
            "cross_encoder_score_seconds": 60.0,
            "test_ms_a_mention_batched": 40.0,
        }

    results = {"ncbi-s1": result(0.80), "ncbi-s2": result(0.82), "ncbi-s1-sentence12": result(0.85)}
    results["ncbi-s2-epochs2"] = result(0.81)
    assert bench.variants(results) == ["", "epochs2", "sentence12"]
    text = bench.report(results, ["ncbi"], [1, 2])
    assert "| ncbi, in its sentence (±12 words) | 1 | cross-encoder |" in text
    # against the mention alone on seed 1 only (seed 2 has no sentence result): 85.00 against 80.00
    assert "| ncbi | in its sentence (±12 words) | 1 | cross-encoder | 85.00 | 80.00 | +5.00 | – |" in text
    assert "| ncbi | 2 epochs | 2 | cross-encoder | 81.00 | 82.00 | -1.00 | – |" in text


def test_lists_keep_the_first_candidates_and_any_gold_below_them():
    owners = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 3])
    labels = np.array([0, 0, 0, 1, 1, 0, 0, 0, 0, 1])
    lists = bench.listwise_lists(owners, labels, train_candidates=2)
    # mention 0: its first two and its gold fourth; mention 1: its first two; mention 2 has no gold and
    # mention 3 a single row: neither teaches anything
    assert [row.tolist() for row in lists] == [[0, 1, 3], [4, 5]]


def test_scores_add_their_rank_and_gap_within_each_mention():
    features = np.zeros((5, 2))
    owners = np.array([0, 0, 0, 1, 1])
    logits = np.array([0.5, 2.0, 1.0, -1.0, -1.0])
    added = bench.with_scores(features, owners, logits)
    assert added.shape == (5, 5)
    assert added[:, 2].tolist() == logits.tolist()
    assert added[:, 3].tolist() == [2, 0, 1, 0, 1]  # a tie keeps the first stage's order
    assert added[:, 4].tolist() == [1.5, 0.0, 1.0, 0.0, 0.0]


def test_listwise_training_raises_the_gold_candidate_over_the_others(make_tiny_bert, tmp_path):
    model_dir = make_tiny_bert(tmp_path / "bert", words=("melanoma", "cancer", "disease"), head="none", seed=0)
    config = bench.CrossEncoderConfig(str(model_dir), epochs=40, learning_rate=3e-3, warmup=0.0, batch_mentions=2)
    pairs = [
        ("familial melanoma", "melanoma"),
        ("familial melanoma", "breast cancer"),
        ("familial melanoma", "wilson disease"),
        ("breast cancer", "melanoma"),
        ("breast cancer", "breast cancer"),
        ("breast cancer", "wilson disease"),
    ]
    labels = np.array([1, 0, 0, 0, 1, 0])
    lists = [np.array([0, 1, 2]), np.array([3, 4, 5])]
    torch.set_num_threads(1)
    model, tokenizer, history = bench.train_cross_encoder(config, pairs, labels, lists, 0, make_accelerator())
    logits = bench.cross_scores(model, tokenizer, pairs, config)
    assert logits.shape == (6,)
    assert int(np.argmax(logits[:3])) == 0 and int(np.argmax(logits[3:])) == 1
    assert len(history) == 1 and history[0] < np.log(3)  # 40 steps: one record, below a blind model's loss
