"""The peers'-protocol reading of the champion (benchmarks/peers_rerank.py): a seed without a reranker reads as its
first stage, a shipped reranker reorders the first stage's answers, and the shipped trees read new evidence."""

import sys
from pathlib import Path

import numpy as np

from ehrbert.corpora.records import Concept, Mention, Vocabulary
from ehrbert.models.hybrid import Candidates, Settings, decide
from ehrbert.models.rerank import RerankConfig, Reranker

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import peers_rerank as bench  # noqa: E402

CONFIG = RerankConfig(candidates=2, max_iter=50, min_samples_leaf=2)
N = 30
VOCABULARY = Vocabulary(
    [c for i in range(N) for c in (Concept(f"S{i}", f"cond{i}"), Concept(f"L{i}", f"familial cond{i} syndrome"))]
)


def _cases(conditions) -> tuple[list[str], list[set[str]], Candidates]:
    """Queries "familial condN", annotated condN, which the first stage ranks below the familial syndrome."""
    queries = [f"familial cond{i}" for i in conditions]
    retrieval = [{f"L{i}": 0.9, f"S{i}": 0.85} for i in conditions]
    candidates = Candidates(
        retrieval, [(f"L{i}",) for i in conditions], [], [[] for _ in conditions], [0.85] * len(conditions)
    )
    return queries, [{f"S{i}"} for i in conditions], candidates


def _shipped() -> Reranker:
    """A reranker that learned the convention on conditions 0-19 (rows of their candidates, gold marked)."""
    queries, gold, candidates = _cases(range(20))
    mentions = [Mention("d", ((0, len(q)),), q, tuple(g)) for q, g in zip(queries, gold)]
    reranker = Reranker.build(CONFIG, VOCABULARY, [], [])
    answers = decide(candidates, Settings(), k=CONFIG.depth)
    features, owners = reranker.features(queries, answers, candidates)
    return reranker.fit(features, Reranker.labels(answers, owners, mentions, CONFIG.candidates), seed=1)


def test_a_seed_without_a_reranker_reads_as_its_first_stage_and_a_shipped_one_reorders():
    queries, gold, candidates = _cases(range(20, 30))
    assert bench.read(candidates, None, Settings(), queries, gold) == (0.0, 0.0)
    first, reranked = bench.read(candidates, _shipped(), Settings(), queries, gold)
    assert (first, reranked) == (0.0, 1.0)


def test_the_shipped_trees_read_the_evidence_of_other_mentions():
    shipped = _shipped()
    dev = [Mention("d", ((0, 14),), "familial cond3", ("S3",))] * 2
    moved = bench.with_evidence(shipped, VOCABULARY, dev, ["familial cond3"] * 2)
    assert moved.model is shipped.model
    assert (shipped.mention_counts, moved.mention_counts) == ({}, {"S3": 2})
    assert moved.query_counts == {"familial cond3": {"S3": 2}}
    queries, _, candidates = _cases([3])
    answers = decide(candidates, Settings(), k=CONFIG.depth)
    own, _ = shipped.features(queries, answers, candidates)
    read, _ = moved.features(queries, answers, candidates)
    share = list(moved.feature_names).index("query_share")
    assert np.array_equal(own[:, share], [-1.0, -1.0]) and np.array_equal(read[:, share], [0.0, 1.0])
