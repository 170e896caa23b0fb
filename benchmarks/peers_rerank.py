"""The champion under the peers' protocol: the first stage retrained on train + dev, with its second stage.

    python benchmarks/peers_rerank.py [--corpora ncbi cdr] [--seeds 1 2 3]

The `peers` stage (`ehrbert.peers`) reads the first stage only. The champion of every corpus is the reranked first
stage (`hybrid_rerank`, stage `rerank`), so this reads what the peers' protocol makes of it, per corpus and seed:

- the first stage retrained on train + dev as the `peers` stage retrains it (`ehrbert.peers`: the retrieval
  encoder and the classifier trained again from the same start, config and seed, dev mentions indexed too; the
  classifier weight the train-only run's dev chose);
- the rerank stage's shipped reranker (outputs/rerank/<corpus>-s<seed>/model) over its candidates, its trees as
  shipped. They were trained on the training split's cross-fitted candidates and dev's, so no mention they saw is
  a test mention: under this protocol dev is training data. Its evidence (each concept's training mentions and
  mention counts, the share of a query's training mentions each concept annotates) is read from train + dev, as
  the retrained index reads them; the same trees with the train-only evidence are a second reading.
- Where the stage shipped no reranker for a seed, its champion is the first stage, and so is the reading.

Queries: the peers' (`ehrbert.peers.protocol_queries`: lowercase, no punctuation, Ab3P, composite mentions split);
acc@1: the top answer is one of the query's gold concepts. The train-only model is read the same way beside it.
Test is read, nothing is chosen: every setting is the pipeline's.

Needs the pipeline's outputs for each corpus and seed: outputs/rerank, outputs/hybrid, outputs/finetune and its
metrics, outputs/pretrain (`dvc repro rerank@<corpus>-<seed>` makes them). Each finished seed is kept in
reports/peers_rerank.json, so that an interrupted measurement goes on where it stopped. Writes
reports/peers_rerank.md. It asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from data_paths import data_paths  # benchmarks/ (this script's folder) is on the path
from scipy.stats import ttest_rel
from transformers import set_seed

from ehrbert.hybrid import HybridConfig
from ehrbert.launch import make_accelerator
from ehrbert.models.hybrid import Candidates, HybridNormalizer, Settings, decide
from ehrbert.models.rerank import Reranker
from ehrbert.peers import protocol_queries, retrain_classifier_on_train_and_dev, retrain_on_train_and_dev
from ehrbert.stage import config_from, read_params
from ehrbert.stats import mean_sd
from ehrbert.tasks import load_task

ROOT = Path(__file__).resolve().parents[1]
READINGS = {
    "train_only": "first stage, train only",
    "train_only_rerank": "+ reranker, train only",
    "train_dev": "first stage, train + dev",
    "train_dev_rerank_train_evidence": "+ reranker, train-only evidence",
    "train_dev_rerank": "+ reranker, train + dev evidence",
}


def inputs(corpus: str, seed: int, classifier_model: str) -> dict[str, Path]:
    """The pipeline's outputs one seed reads, relative to the repository as params.yaml names them (the retrained
    classifier's start is checked against `finetune.models`); a missing one stops it, naming the stage to run."""
    paths = {
        "rerank": Path(f"outputs/rerank/{corpus}-s{seed}/model"),
        "classifier": Path(f"outputs/finetune/{classifier_model}-{corpus}-s{seed}"),
        "classifier_metrics": Path(f"metrics/finetune/{classifier_model}-{corpus}-s{seed}.json"),
        "start": Path(f"outputs/pretrain/{classifier_model}"),
    }
    missing = [str(p) for p in paths.values() if not (ROOT / p).exists()]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: run `dvc repro rerank@{corpus}-{seed}` first")
    return paths


def acc_at_1(answers, gold: list[set[str]]) -> float:
    return sum(bool(a.ranked) and a.ranked[0] in g for a, g in zip(answers, gold)) / len(gold)


def read(candidates: Candidates, reranker: Reranker | None, settings: Settings, queries, gold) -> tuple:
    """acc@1 of the first stage's `candidates` under `settings` and, with `reranker`, of its reranked answers
    (without one, the first stage's twice: the champion of a seed that ships no reranker is its first stage)."""
    if reranker is None:
        first = acc_at_1(decide(candidates, settings), gold)
        return first, first
    answers = decide(candidates, settings, k=reranker.config.depth)
    return acc_at_1(answers, gold), acc_at_1(reranker.rerank(queries, answers, candidates), gold)


def with_evidence(shipped: Reranker, vocabulary, mentions: list, queries: list[str]) -> Reranker:
    """`shipped`'s trees over evidence read from `mentions` (with their `queries`) instead of its own."""
    reranker = Reranker.build(shipped.config, vocabulary, mentions, queries, hierarchy=shipped.parents is not None)
    reranker.model = shipped.model
    return reranker


def measure(corpus: str, seed: int, params: dict) -> dict:
    """One corpus and seed: every reading of READINGS, the query counts, the retrained classifier's epochs and the
    wall time."""
    config = config_from(HybridConfig, params["hybrid"]["config"], "hybrid.config", ROOT / "params.yaml")
    paths = inputs(corpus, seed, config.classifier_model)
    task = load_task(corpus, data_paths(params["data"], ROOT), params["cadec_split"])
    champion = HybridNormalizer.load(paths["rerank"])  # its default: hybrid_rerank
    settings = Settings(classifier_weight=champion.settings.classifier_weight)  # ranking only, as `peers` reads
    shipped = champion.reranker if champion.rerank else None
    queries, gold, counts = protocol_queries(task, "test")
    started = time.perf_counter()
    set_seed(seed)
    accelerator = make_accelerator()
    encoder, tokenizer, index = retrain_on_train_and_dev(task, config, seed, accelerator)
    retrained, retrained_tokenizer, epochs = retrain_classifier_on_train_and_dev(
        task, paths["classifier"], paths["classifier_metrics"], paths["start"], params, seed, accelerator
    )
    index.embed(encoder, tokenizer, config.retrieval)
    train_dev = HybridNormalizer(
        encoder,
        tokenizer,
        index,
        config.retrieval,
        retrained,
        retrained_tokenizer,
        champion.classifier_max_length,
        champion.classifier_top_k,
    )
    result = {"reranker": shipped is not None, "classifier_weight": settings.classifier_weight, **counts}
    before, after = champion.candidates(queries), train_dev.candidates(queries)
    result["train_only"], result["train_only_rerank"] = read(before, shipped, settings, queries, gold)
    result["train_dev"], result["train_dev_rerank_train_evidence"] = read(after, shipped, settings, queries, gold)
    evidence = (
        with_evidence(
            shipped,
            task.vocabulary,
            task.mentions("train") + task.mentions("dev"),
            task.queries("train") + task.queries("dev"),
        )
        if shipped
        else None
    )
    result["train_dev_rerank"] = read(after, evidence, settings, queries, gold)[1]
    result["classifier_epochs"] = epochs
    result["seconds"] = round(time.perf_counter() - started)
    return result


def report(results: dict, corpora: list[str], seeds: list[int]) -> str:
    lines = [
        "# The champion under the peers' protocol (test acc@1)",
        "",
        "`python benchmarks/peers_rerank.py` (see its docstring). The champion (`hybrid_rerank`): the first stage "
        "and the reranker the rerank stage shipped for that seed (none: the first stage is the champion). Train + "
        "dev: the first stage retrained as the `peers` stage retrains it; the reranker's trees as shipped, with its "
        "evidence (concepts' training mentions) from train only or from train + dev. Queries as the peers prepare "
        "them. Mean (SD) over seeds; P: paired t-test over seeds against the first stage of the same protocol.",
        "",
        "| corpus | seed | queries | reranker shipped | " + " | ".join(READINGS.values()) + " |",
        "|---|---|---|---|" + "---|" * len(READINGS),
    ]
    for corpus in corpora:
        rows = [results[f"{corpus}-s{seed}"] for seed in seeds if f"{corpus}-s{seed}" in results]
        for seed in seeds:
            row = results.get(f"{corpus}-s{seed}")
            if row:
                cells = " | ".join(f"{100 * row[k]:.2f}" for k in READINGS)
                lines.append(
                    f"| {corpus} | {seed} | {row['queries']} | {'yes' if row['reranker'] else 'no'} | {cells} |"
                )
        if len(rows) > 1:
            cells = " | ".join(mean_sd([r[k] for r in rows]) for k in READINGS)
            lines.append(f"| {corpus} | mean | | {sum(r['reranker'] for r in rows)} of {len(rows)} | {cells} |")
            against = {"train_only_rerank": "train_only"} | {
                k: "train_dev" for k in READINGS if k.startswith("train_dev_")
            }
            p = {k: ttest_rel([r[k] for r in rows], [r[base] for r in rows]).pvalue for k, base in against.items()}
            cells = " | ".join(f"{p[k]:.3g}" if k in p else "" for k in READINGS)
            lines.append(f"| {corpus} | P | | | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", nargs="+", default=["ncbi", "cdr"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--out", type=Path, default=ROOT / "reports/peers_rerank")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    params = read_params(ROOT / "params.yaml")
    model = params["hybrid"]["config"]["classifier_model"]
    for corpus in args.corpora:
        for seed in args.seeds:
            inputs(corpus, seed, model)
    store = args.out.with_suffix(".json")
    results = json.loads(store.read_text()) if store.exists() else {}
    for corpus in args.corpora:
        for seed in args.seeds:
            key = f"{corpus}-s{seed}"
            if key not in results:
                results[key] = measure(corpus, seed, params)
                store.write_text(json.dumps(results, indent=1) + "\n")
                print(key, results[key], file=sys.stderr, flush=True)
    corpora = list(dict.fromkeys([key.rsplit("-s", 1)[0] for key in results] + args.corpora))
    args.out.with_suffix(".md").write_text(report(results, corpora, args.seeds))


if __name__ == "__main__":
    main()
