from ehrbert.baseline import DictionaryNormalizer


NAMES = [
    ("wilson disease", "D006527"),
    ("hepatolenticular degeneration", "D006527"),
    ("breast cancer", "D001943"),
    ("breast neoplasms", "D001943"),
    ("ovarian cancer", "D010051"),
    ("cancer", "D009369"),
    ("cancer", "D001943"),  # shared name: the concept it names first wins the tie
]


def test_exact_match_comes_first():
    normalizer = DictionaryNormalizer(NAMES)
    assert normalizer.rank(["hepatolenticular degeneration"], k=1) == [["D006527"]]
    assert normalizer.rank(["cancer"], k=2) == [["D009369", "D001943"]]


def test_votes_break_ties_between_concepts_sharing_a_name():
    # training mentions add a second vote for D001943: it now wins the shared name
    normalizer = DictionaryNormalizer([("cancer", "D001943")] + NAMES)
    assert normalizer.rank(["cancer"], k=1) == [["D001943"]]


def test_nearest_character_ngrams_when_no_exact_match():
    normalizer = DictionaryNormalizer(NAMES)
    ranked = normalizer.rank(["wilsons disease", "ovarian cancers", "breast neoplasm"], k=3)
    assert [r[0] for r in ranked] == ["D006527", "D010051", "D001943"]
    assert all(len(r) == len(set(r)) <= 3 for r in ranked)


def test_empty_names_are_ignored_and_batches_agree():
    normalizer = DictionaryNormalizer(NAMES + [("", "D000001")])
    queries = ["wilson disease", "breast cancers", "ovarian"] * 5
    assert normalizer.rank(queries, k=2, batch_size=4) == normalizer.rank(queries, k=2)
    assert "D000001" not in {c for r in normalizer.rank(queries, k=5) for c in r}
