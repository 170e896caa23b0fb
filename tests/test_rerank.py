"""The second stage: the reranker's features, what it learns from dev candidates, its files and its rule of use.

The stage itself (`ehrbert.rerank` on NCBI disease with a tiny random encoder, registered and served) runs in
tests/test_hybrid.py, after the hybrid stage it reads.
"""

import json

import numpy as np
import pytest

from ehrbert import rerank
from ehrbert.corpora.records import COMPOSITE, Concept, Mention, Vocabulary
from ehrbert.cross_fit import CANDIDATES_FILE, Held, read_candidates, write_candidates
from ehrbert.models.hybrid import Answer, Candidates, Settings, decide
from ehrbert.models.rerank import (
    FEATURES,
    HIERARCHY_FEATURES,
    RerankConfig,
    Reranker,
    SavedVectorizer,
    Trees,
    char_ngrams,
    new_vectorizer,
    reorder,
)
from ehrbert.rerank import cross_validated, flips

CONFIG = RerankConfig(candidates=3, max_iter=50, min_samples_leaf=2)
N = 40  # conditions; each has a short name and a longer "familial ... syndrome" one


def _vocabulary() -> Vocabulary:
    concepts = []
    for i in range(N):
        concepts += [Concept(f"S{i}", f"cond{i}"), Concept(f"L{i}", f"familial cond{i} syndrome")]
    return Vocabulary(concepts)


def _case(i: int, query: str, gold: str, long_first: bool = True):
    """A mention whose first stage ranks the long name above the short one (or the other way round)."""
    order = [f"L{i}", f"S{i}"] if long_first else [f"S{i}", f"L{i}"]
    retrieval = {order[0]: 0.9, order[1]: 0.85, f"S{(i + 1) % N}": 0.5}
    mention = Mention(f"doc{i % 8}", ((0, len(query)),), query, (gold,))
    return mention, query, retrieval


def _split(cases):
    mentions, queries, retrieved = zip(*cases)
    best = [(max(r, key=r.get),) for r in retrieved]
    candidates = Candidates(list(retrieved), best, [], [[] for _ in cases], [min(r.values()) for r in retrieved])
    return list(mentions), list(queries), candidates


def _dev_and_test():
    """The corpus's convention: "familial condN" is annotated as condN, not as the familial syndrome the first
    stage prefers; the full syndrome name is the syndrome. Dev and test hold different conditions."""
    dev = [_case(i, f"familial cond{i}", f"S{i}") for i in range(0, 20)]
    dev += [_case(i, f"familial cond{i} syndrome", f"L{i}") for i in range(0, 20)]
    test = [_case(i, f"familial cond{i}", f"S{i}") for i in range(20, 30)]
    test += [_case(i, f"familial cond{i} syndrome", f"L{i}") for i in range(20, 30)]
    return _split(dev), _split(test)


def _trained():
    (dev_mentions, dev_queries, dev), test = _dev_and_test()
    train = [Mention("t", ((0, 5),), "cond1", ("S1",)), Mention("t", ((0, 5),), "cond1", ("S1",))]
    reranker = Reranker.build(CONFIG, _vocabulary(), train, ["cond1", "cond1"])
    answers = decide(dev, Settings(), k=CONFIG.candidates)
    features, owners = reranker.features(dev_queries, answers, dev)
    labels = Reranker.labels(answers, owners, dev_mentions, CONFIG.candidates)
    return reranker.fit(features, labels, seed=1), (features, owners, labels), test


def test_features_describe_each_pair_and_labels_mark_the_gold():
    reranker, (features, owners, labels), _ = _trained()
    assert features.shape == (40 * 3, len(FEATURES)) and owners.tolist() == [i for i in range(40) for _ in range(3)]
    column = {name: features[:, i] for i, name in enumerate(FEATURES)}
    first = slice(0, 3)  # "familial cond0": L0 (rank 0), S0, S1
    assert labels[first].tolist() == [0, 1, 0]
    assert column["name_inside"][first].tolist() == [0.0, 1.0, 0.0]  # "cond0" is inside the query
    assert column["rank"][first].tolist() == [0, 1, 2]
    assert column["gap"][first] == pytest.approx([0.0, 0.05, 0.4])
    assert column["query_share"][first].tolist() == [-1.0] * 3  # the query never occurs in training
    assert column["training_mentions"][2] == pytest.approx(np.log1p(2))  # S1: two training mentions
    exact = slice(20 * 3, 20 * 3 + 3)  # "familial cond0 syndrome": its own name
    assert column["exact_name"][exact].tolist() == [1.0, 0.0, 0.0]
    assert column["name_similarity"][exact][0] == pytest.approx(1.0, abs=1e-5)


def test_features_of_a_batch_have_the_bits_of_each_mention_alone():
    """A served one-mention call computes the same features as the batch the stage scored."""
    reranker, (features, owners, _), _ = _trained()
    (_, dev_queries, dev), _ = _dev_and_test()
    answers = decide(dev, Settings(), k=CONFIG.candidates)
    alone = []
    for i, query in enumerate(dev_queries):
        one = Candidates(dev.retrieval[i : i + 1], dev.best_tuple[i : i + 1], [], [[]], dev.floor[i : i + 1])
        alone.append(reranker.features([query], answers[i : i + 1], one)[0])
    assert np.array_equal(np.concatenate(alone), features)


def test_similarities_have_the_bits_of_the_sparse_product():
    """`Reranker._similarities` sums each cosine from the matrices' arrays; every one must equal scipy's
    `vectors @ query.T` to the bit (long names: many n-grams, where another order of summing would show)."""
    rng = np.random.default_rng(3)
    words = ["carcinoma", "familial", "adenomatous", "polyposis", "coli", "syndrome", "hereditary", "breast", "ovarian"]
    names = [" ".join(rng.choice(words, size=rng.integers(1, 9))) for _ in range(60)]
    vocabulary = Vocabulary([Concept(f"C{i}", name) for i, name in enumerate(dict.fromkeys(names))])
    reranker = Reranker.build(CONFIG, vocabulary, [], [])
    queries = [" ".join(rng.choice(words, size=rng.integers(1, 7))) for _ in range(40)]
    vectors = reranker.vectorizer.transform(queries).tocsr()
    concepts = list(reranker.names)
    groups = [[reranker.names[c] for c in rng.choice(concepts, size=5)] + [[]] for _ in queries]
    found = reranker._similarities(vectors, groups)
    for i, own in enumerate(groups):
        expected = [float((reranker.vectors[group] @ vectors[i].T).toarray().max()) if group else 0.0 for group in own]
        assert found[i] == expected


def test_the_reranker_learns_a_convention_on_dev_and_fixes_unseen_test_mentions(tmp_path):
    reranker, _, (test_mentions, test_queries, test) = _trained()
    first = decide(test, Settings(), k=CONFIG.candidates)
    assert [a.concept_ids[0] for a in first[:10]] == [f"L{i}" for i in range(20, 30)]  # the first stage's error
    reranked = reranker.rerank(test_queries, first, test)
    assert [a.concept_ids for a in reranked] == [m.concept_ids for m in test_mentions]  # all 20 right
    fixed, broken, p_value = flips(test_mentions, first, reranked)
    assert (fixed, broken) == (10, 0) and p_value == pytest.approx(0.5**10)
    assert all(a.scores == sorted(a.scores, reverse=True) for a in reranked)  # the reranker's probabilities

    reranker.save(tmp_path / "reranker")
    loaded = Reranker.load(tmp_path / "reranker")
    again = loaded.rerank(test_queries, first, test)
    assert [(a.ranked, a.scores) for a in again] == [(a.ranked, a.scores) for a in reranked]


def test_hierarchy_features_place_each_candidate_among_the_others(tmp_path):
    vocabulary = Vocabulary(
        [
            Concept("ROOT", "disease"),
            Concept("P", "cancer", parents=("ROOT",)),
            Concept("C", "familial cancer", parents=("P", "P")),
            Concept("X", "injury", parents=("ROOT", "GONE")),  # a parent outside the vocabulary is left out
        ]
    )
    mentions = [Mention("t", ((0, 6),), "cancer", ("P",))]
    reranker = Reranker.build(CONFIG, vocabulary, mentions, ["cancer"], hierarchy=True)
    assert reranker.parents == {"P": ["ROOT"], "C": ["P"], "X": ["ROOT"]}
    assert reranker.feature_names == FEATURES + HIERARCHY_FEATURES
    candidates = Candidates([{"C": 0.9, "P": 0.8, "X": 0.5}], [("C",)], [], [[]], [0.5])
    answers = decide(candidates, Settings(), k=3)
    features, _ = reranker.features(["familial cancer"], answers, candidates)
    # C first; P is its parent, an ancestor of the first and C's one listed ancestor; X is a sibling of P
    assert features[:, len(FEATURES) :].tolist() == [[0, 0, 1, 0, 2], [1, 0, 0, 1, 1], [0, 0, 0, 0, 1]]
    flat = Reranker.build(CONFIG, vocabulary, mentions, ["cancer"])
    assert flat.parents is None and np.array_equal(
        flat.features(["familial cancer"], answers, candidates)[0], features[:, : len(FEATURES)]
    )

    reranker.fit(np.tile(features, (4, 1)), np.asarray([0, 1, 0] * 4), seed=1)
    reranker.save(tmp_path / "reranker")
    loaded = Reranker.load(tmp_path / "reranker")
    assert loaded.parents == reranker.parents
    assert np.array_equal(loaded.features(["familial cancer"], answers, candidates)[0], features)
    data = json.loads((tmp_path / "reranker" / "reranker.json").read_text())
    del data["parents"]
    (tmp_path / "reranker" / "reranker.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="hierarchy features without parents"):
        Reranker.load(tmp_path / "reranker")


def test_the_saved_trees_answer_as_scikit_learn_does(tmp_path):
    """`Trees` (the served form of the fitted model: arrays, evaluated with NumPy) against predict_proba."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(0)
    features = rng.random((600, 6))
    features[rng.random(features.shape) < 0.05] = np.nan  # missing values take each node's learned side
    labels = ((np.nan_to_num(features[:, 0]) + np.nan_to_num(features[:, 3]) > 1) ^ (rng.random(600) < 0.1)).astype(int)
    model = HistGradientBoostingClassifier(max_iter=60, max_leaf_nodes=9, random_state=0).fit(features, labels)
    Trees.from_sklearn(model).save(tmp_path / "trees.npz")
    held_out = rng.random((300, 6))
    held_out[rng.random(held_out.shape) < 0.05] = np.nan
    trees = Trees.load(tmp_path / "trees.npz")
    assert trees.probability(held_out) == pytest.approx(model.predict_proba(held_out)[:, 1], abs=1e-9)


def test_the_saved_vectorizer_gives_scikit_learns_rows_without_importing_it():
    """A loaded reranker's TF-IDF (`SavedVectorizer`) against the fitted scikit-learn vectorizer it was saved from,
    on texts with short words, repeated n-grams, tabs, capitals, accents and n-grams never seen in fitting."""
    fitted = [f"familial cond{i} syndrome" for i in range(30)] + ["a b", "IL-2 receptor", "ataxia telangiectasia"]
    vectorizer = new_vectorizer()
    vectorizer.fit(fitted)
    saved = SavedVectorizer(sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.get), vectorizer.idf_)
    texts = [*fitted, "", "x", "Ab  ab\tAB", "ataxia ataxia ataxia", "naïve ÜBER-cond1", "qqqq zzzz"]
    expected, got = vectorizer.transform(texts).toarray(), saved.transform(texts).toarray()
    assert got.dtype == np.float32 and np.array_equal(got, expected)  # the same bits: trees split on these
    assert not got[texts.index("qqqq zzzz")].any() and (got[texts.index("ataxia ataxia ataxia")] > 0).any()
    assert char_ngrams("Ab c") == [" a", "ab", "b ", " ab", "ab ", " ab ", " c", "c ", " c "]
    analyzer = vectorizer.build_analyzer()
    assert all(char_ngrams(text) == analyzer(text) for text in texts)


def test_a_saved_reranker_is_checked_when_loaded(tmp_path):
    reranker, _, _ = _trained()
    reranker.save(tmp_path / "reranker")
    assert sorted(p.name for p in (tmp_path / "reranker").iterdir()) == [
        "idf.npy",
        "reranker.json",
        "tfidf.npz",
        "trees.npz",
    ]  # arrays and JSON: nothing that runs code when loaded
    path = tmp_path / "reranker" / "reranker.json"
    path.write_text(path.read_text().replace('"features": ["score"', '"features": ["other"'))
    with pytest.raises(ValueError, match="reranker.json: its trees read other features"):
        Reranker.load(tmp_path / "reranker")
    path.write_text(path.read_text().replace("ehrbert-reranker/1", "other/1"))
    with pytest.raises(ValueError, match="not a ehrbert-reranker/1 file"):
        Reranker.load(tmp_path / "reranker")


def test_reorder_changes_single_answers_only():
    answers = [
        Answer(["A", "B"], [0.9, 0.8], ("A",)),
        Answer(["A", "B"], [0.9, 0.8], ("A", "B")),  # composite: stays
        Answer(["A", "B"], [0.5, 0.4], ()),  # no concept: stays
        Answer([], [], ()),
    ]
    owners = np.array([0, 0, 1, 1, 2, 2])
    out = reorder(answers, owners, np.array([0.2, 0.7, 0.2, 0.7, 0.2, 0.7]), k=2)
    assert [(a.ranked, a.concept_ids) for a in out] == [
        (["B", "A"], ("B",)),
        (["B", "A"], ("A", "B")),
        (["B", "A"], ()),
        ([], ()),
    ]
    assert out[0].scores == [0.7, 0.2]


def test_flips_count_only_mentions_with_a_concept():
    gold = [
        Mention("d", ((0, 1),), "a", ("A",)),
        Mention("d", ((0, 1),), "b", ("B",)),
        Mention("d", ((0, 1),), "c", (), "no_concept"),
        Mention("d", ((0, 1),), "x", ("X", "Y"), COMPOSITE),
    ]
    first = [Answer(["B"], [1], ("B",)), Answer(["B"], [1], ("B",)), Answer(["C"], [1], ()), Answer(["Y"], [1], ())]
    second = [Answer(["A"], [1], ("A",)), Answer(["A"], [1], ("A",)), Answer(["A"], [1], ()), Answer(["X"], [1], ())]
    fixed, broken, p_value = flips(gold, first, second)
    assert (fixed, broken) == (1, 1) and p_value == pytest.approx(0.75)
    assert flips(gold, first, first) == (0, 0, 1.0)


def test_cross_validation_needs_two_documents_and_both_labels():
    """Too little dev to learn from leaves the first stage's order (the stage then keeps the first stage)."""
    reranker, (features, owners, labels), _ = _trained()
    one_document = cross_validated(reranker, features, labels, owners, ["d"] * 40, seed=1)
    assert one_document.tolist() == (-features[:, 3]).tolist()
    no_positive = cross_validated(
        reranker, features, np.zeros_like(labels), owners, [f"d{i % 4}" for i in range(40)], 1
    )
    assert no_positive.tolist() == (-features[:, 3]).tolist()
    empty = np.zeros((0, len(FEATURES)))
    assert cross_validated(reranker, empty, np.zeros(0, int), np.zeros(0, int), [], seed=1).tolist() == []
    learned = cross_validated(reranker, features, labels, owners, [f"d{i % 4}" for i in range(40)], seed=1)
    assert learned.min() >= 0 and learned.max() <= 1


def test_the_shipped_reading_is_the_admitted_one_that_fixes_most():
    judged = {
        "dev": rerank.judgement(30, 10, 0.001, 0.05),
        "cross_fitted": rerank.judgement(50, 20, 0.0001, 0.05),
        "cross_fitted_dev": rerank.judgement(45, 15, 0.0001, 0.05),  # the same net as cross_fitted: the earlier wins
    }
    assert rerank.choose(judged) == "cross_fitted"
    assert rerank.choose({**judged, "cross_fitted": rerank.judgement(50, 20, 0.2, 0.05)}) == "cross_fitted_dev"
    not_significant = rerank.judgement(6, 2, 0.14, 0.05)
    more_broken = rerank.judgement(2, 6, 0.99, 0.05)
    assert not not_significant["admitted"] and not more_broken["admitted"]
    assert rerank.choose({"dev": not_significant, "cross_fitted": more_broken}) is None  # the first stage answers


def test_readings_and_judge_are_checked_in_params(tmp_path):
    params = {"rerank": {"training": ["cross_fitted", "dev"], "judge": "held_out"}}
    assert rerank.reading_names(params, tmp_path / "params.yaml") == (("dev", "cross_fitted"), "held_out")
    with pytest.raises(SystemExit, match=r"params.yaml: rerank.training must be a non-empty list of \['dev'"):
        rerank.reading_names({"rerank": {"training": ["test"], "judge": "dev"}}, tmp_path / "params.yaml")
    with pytest.raises(SystemExit, match="rerank.judge must be one of"):
        rerank.reading_names({"rerank": {"training": ["dev"], "judge": "test"}}, tmp_path / "params.yaml")


def test_the_hierarchy_switch_is_one_value_or_the_corpora_that_use_it(tmp_path):
    source = tmp_path / "params.yaml"
    corpora = {"corpora": ["ncbi", "cdr", "cadec"]}
    assert not rerank.hierarchy_switch({"rerank": corpora}, source, "cdr")  # absent: off
    assert rerank.hierarchy_switch({"rerank": {**corpora, "hierarchy": True}}, source, "ncbi")
    chosen = {"rerank": {**corpora, "hierarchy": ["cdr"]}}
    assert [rerank.hierarchy_switch(chosen, source, c) for c in corpora["corpora"]] == [False, True, False]
    with pytest.raises(SystemExit, match=r"params.yaml: rerank.hierarchy names \['bc5cdr'\], which are not in"):
        rerank.hierarchy_switch({"rerank": {**corpora, "hierarchy": ["bc5cdr"]}}, source, "cdr")
    with pytest.raises(SystemExit, match="rerank.hierarchy must be true, false or a list of corpora, got 'yes'"):
        rerank.hierarchy_switch({"rerank": {**corpora, "hierarchy": "yes"}}, source, "cdr")


def test_cross_fitted_candidates_are_written_and_read_back_checked(tmp_path):
    (_, _, candidates), _ = _dev_and_test()
    first, second = np.arange(0, 40, 2), np.arange(1, 40, 2)
    pick = lambda rows: Candidates(
        [candidates.retrieval[i] for i in rows],
        [candidates.best_tuple[i] for i in rows],
        [],
        [candidates.parts[i] for i in rows],
        [candidates.floor[i] for i in rows],
    )
    groups = [Held(first, pick(first)), Held(second, pick(second))]
    write_candidates(tmp_path / "xfit" / CANDIDATES_FILE, groups)
    again = read_candidates(tmp_path / "xfit", 40)
    assert [g.held.tolist() for g in again] == [first.tolist(), second.tolist()]
    assert [g.candidates for g in again] == [g.candidates for g in groups]  # tuples come back as tuples
    with pytest.raises(SystemExit, match="not each of the training split's 41 mentions once"):
        read_candidates(tmp_path / "xfit", 41)
    with pytest.raises(SystemExit, match="run the cross_fit stage first"):
        read_candidates(tmp_path / "elsewhere", 40)
    (tmp_path / "xfit" / CANDIDATES_FILE).write_text('{"groups": [{"held": [0]}]}')
    with pytest.raises(SystemExit, match=r"candidates.json: not cross-fitted candidates .*'candidates'"):
        read_candidates(tmp_path / "xfit", 1)
