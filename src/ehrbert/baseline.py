"""Dictionary normalizer: the baseline that stands where DNorm and MetaMap stand in the paper.

It is *not* DNorm (no learned pairwise ranking); it is named for what it does:

1. exact match of the preprocessed mention against the preprocessed vocabulary names and synonyms;
2. otherwise the nearest name by TF-IDF cosine over character n-grams (scikit-learn).

Variant ``vocab`` uses the vocabulary alone. Variant ``vocab+train`` also adds every training-split
mention as an extra name of its gold concept, a DNorm-like use of the training data; no dev or test
mention ever becomes a name. An exact-match name shared by several concepts goes to the concept it
names most often in that list (training mentions included), then to the one whose preferred name
it is, then to the first in vocabulary order.

    python -m ehrbert.baseline --ncbi-dir ... --ncbi-vocabulary ... --cdr-dir ... --cdr-vocabulary ... --cadec-dir ... \
        --out-dir outputs/baseline --metrics metrics/baseline.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer

from ehrbert.corpora.records import Vocabulary
from ehrbert.metrics import evaluate
from ehrbert.predictions import predictions_table, write_predictions
from ehrbert.stage import read_params, setup_logging, write_json
from ehrbert.tasks import SPLITS, TASKS, Task, add_data_arguments, load_task
from ehrbert.text import normalize

log = logging.getLogger(__name__)

VARIANTS = ("vocab", "vocab+train")


class DictionaryNormalizer:
    def __init__(self, names: Iterable[tuple[str, str]], ngram_range: tuple[int, int] = (2, 4)):
        """`names`: (preprocessed name, concept ID) pairs; order sets the tie-break."""
        votes: dict[str, Counter] = defaultdict(Counter)
        first_seen: dict[tuple[str, str], int] = {}
        for position, (name, concept_id) in enumerate(names):
            if name:
                votes[name][concept_id] += 1
                first_seen.setdefault((name, concept_id), position)
        self.names = list(votes)
        # (exact-match) name -> its concepts, best first
        self.concepts = {
            name: sorted(counts, key=lambda c: (-counts[c], first_seen[(name, c)])) for name, counts in votes.items()
        }
        self.vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=ngram_range, dtype=np.float32)
        self.matrix = self.vectorizer.fit_transform(self.names)  # (names, features), rows L2-normalized

    def rank(self, queries: list[str], k: int = 5, batch_size: int = 512) -> list[list[str]]:
        """Up to k concept IDs per query, best first: the exact match (if any), then TF-IDF neighbours."""
        ranked = []
        for start in range(0, len(queries), batch_size):
            batch = queries[start : start + batch_size]
            scores = (self.vectorizer.transform(batch) @ self.matrix.T).toarray()  # (B, names)
            width = min(len(self.names), 4 * k)
            top = np.argpartition(-scores, width - 1, axis=1)[:, :width]
            for query, row, candidates in zip(batch, scores, top):
                ids = list(self.concepts.get(query, ()))
                for j in candidates[np.argsort(-row[candidates], kind="stable")]:
                    ids.extend(self.concepts[self.names[j]])
                ranked.append(list(dict.fromkeys(ids))[:k])
        return ranked


def vocabulary_names(vocabulary: Vocabulary) -> list[tuple[str, str]]:
    """Preferred names first (they win ties), then synonyms."""
    preferred = [(normalize(c.name), c.concept_id) for c in vocabulary.concepts]
    synonyms = [(normalize(s), c.concept_id) for c in vocabulary.concepts for s in c.synonyms]
    return preferred + synonyms


def training_names(task: Task) -> list[tuple[str, str]]:
    """Every training mention as a name of each of its gold concepts."""
    return [(q, cid) for m, q in zip(task.mentions("train"), task.queries("train")) for cid in m.concept_ids]


def run_task(task: Task, variant: str, ngram_range: tuple[int, int], k: int) -> tuple[dict, pd.DataFrame]:
    """Test-set metrics and per-mention predictions of one baseline variant on one task."""
    names = vocabulary_names(task.vocabulary)
    if variant == "vocab+train":
        names = training_names(task) + names
    normalizer = DictionaryNormalizer(names, ngram_range=ngram_range)
    mentions, queries = task.mentions("test"), task.queries("test")
    ranked = normalizer.rank(queries, k=k)
    metrics = evaluate(task.splits["test"], mentions, ranked, level=task.level)
    predictions = predictions_table(task, "test", queries, ranked)
    return metrics, predictions


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Dictionary baseline on every task (test split).")
    add_data_arguments(parser)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args(argv)
    setup_logging()
    params = read_params(args.params)
    config, split = params["baseline"], params["cadec_split"]
    ngram_range = (config["ngram_min"], config["ngram_max"])

    results: dict[str, dict] = {}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in (*TASKS, *params.get("tasks", {})):  # the built-in tasks, then those declared in params.yaml
        task = load_task(name, args, split)
        log.info(
            "%s: vocabulary %d concepts; %s",
            name,
            len(task.vocabulary),
            ", ".join(f"{s} {len(task.mentions(s))} mentions" for s in SPLITS),
        )
        results[name] = {}
        for variant in config["variants"]:
            started = time.perf_counter()
            metrics, predictions = run_task(task, variant, ngram_range, k=config["top_k"])
            results[name][variant] = metrics
            write_predictions(predictions, args.out_dir / f"{name}_{variant}_test.tsv")
            # wall clock goes to the log only: the tracked metrics stay equal when the stage reruns
            log.info("%s %s (%.1f s): %s", name, variant, time.perf_counter() - started, json.dumps(metrics))
    write_json(args.metrics, results)


if __name__ == "__main__":
    main()
