"""CADEC's train / dev / test split: by post, stratified by drug, drawn with a seed (CADEC ships no split)."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence

from ehrbert.corpora.cadec import doc_id_key
from ehrbert.corpora.records import Document

SPLITS = ("train", "dev", "test")


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def split_cadec(
    documents: Sequence[Document], seed: int, dev_fraction: float = 0.1, test_fraction: float = 0.2
) -> dict[str, list[str]]:
    """Split posts into {"train", "dev", "test"} -> doc_ids, stratified by drug (`meta["drug"]`).

    Exactly how, so that anyone can redo it:
    1. Group the doc_ids by drug; sort each group by post number (`LIPITOR.2` before `LIPITOR.10`).
    2. One `random.Random(seed)`; for each drug in alphabetical order, `rng.shuffle(group)`.
    3. For a drug with n posts: the first round_half_up(n * test_fraction) shuffled posts go to test, the
       next round_half_up(n * dev_fraction) to dev, the rest to train. Each split thus holds each drug's
       share to within half a post (train within one).
    4. Each split lists its doc_ids by drug, then post number.

    A drug with few posts gets no dev post when n * dev_fraction < 0.5 (n < 5 at 0.1) and no test post
    when n * test_fraction < 0.5 (n < 3 at 0.2): with 0.1/0.2, FLECTOR (1 post) is train only, and
    CAMBIA, DICLOFENAC-POTASSIUM, PENNSAID, SOLARAZE (3-4 posts) have no dev post.
    """
    if not (0 <= dev_fraction and 0 <= test_fraction and dev_fraction + test_fraction < 1):
        raise ValueError(f"need 0 <= dev_fraction, test_fraction and a sum < 1; got {dev_fraction}, {test_fraction}")
    groups: dict[str, list[str]] = defaultdict(list)
    for doc in documents:
        groups[doc.meta["drug"]].append(doc.doc_id)
    rng = random.Random(seed)
    split_of: dict[str, str] = {}
    for drug in sorted(groups):
        group = sorted(groups[drug], key=doc_id_key)
        rng.shuffle(group)
        n_test = _round_half_up(len(group) * test_fraction)
        n_dev = _round_half_up(len(group) * dev_fraction)
        for i, doc_id in enumerate(group):
            split_of[doc_id] = "test" if i < n_test else "dev" if i < n_test + n_dev else "train"
    ordered = sorted(split_of, key=doc_id_key)
    return {split: [doc_id for doc_id in ordered if split_of[doc_id] == split] for split in SPLITS}
