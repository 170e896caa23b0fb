"""The peers' protocol as a second reading: retrained on train + dev, acc@1 as BioSyn and SapBERT count it.

The main tables train on the training split, choose every setting on dev and score test. BioSyn and SapBERT,
whose acc@1 the accuracy goals quote, instead train on train + dev and score test queries prepared their way.
This stage reads the same test split both ways, for one corpus and seed (`main`):

- **train only**: the hybrid stage's own model (outputs/hybrid/<corpus>-s<seed>/model), unchanged;
- **train + dev**: its retrieval encoder trained again from the same start, with the same params and seed, on
  the training and dev mentions, and the dev mentions indexed too; and its classifier fine-tuned again from the
  same start (`--classifier`: the train-only fine-tuning run, its config and encoder), with the same config and
  seed, on the training and dev mentions for the number of epochs dev chose for the train-only run (its
  `best_epoch`, `--classifier-metrics`; dev is now training data: nothing is chosen again). The classifier
  weight is the train-only run's dev choice too. A third reading, the retrained encoder with the train-only
  classifier, shows what retraining the classifier adds.

Each model is read twice: as the first stage (retrieval + classifier, `FIRST_STAGE`) and as retrieval alone
(the `retrieval` variant, no classifier), since either may be a corpus's champion.

Both are scored on the same queries, prepared as the peers prepare theirs (`protocol_queries`): lowercase,
punctuation removed, abbreviations expanded with Ab3P (the project's own query preprocessing does all three);
mentions without a concept dropped; a composite mention split into its parts when it splits into as many
parts as it has concepts, each part a query with its own concept, and otherwise kept whole, counted right when
the top answer is one of its concepts. Only the ranking counts (acc@1): no composite or no-concept answer, no
second stage (the reranker is trained on dev candidates, which train + dev has seen).

`report` gathers the corpora's and seeds' metrics into one table (mean and SD over seeds).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import mlflow
from transformers import set_seed

from ehrbert import finetune
from ehrbert.composite import split_coordination
from ehrbert.corpora.records import NO_CONCEPT
from ehrbert.hub import resolve_model
from ehrbert.hybrid import HybridConfig
from ehrbert.launch import make_accelerator
from ehrbert.models import classifier, retrieval
from ehrbert.models.hybrid import HybridNormalizer, Settings, decide, read_settings
from ehrbert.models.name_index import NameIndex
from ehrbert.stage import config_from, read_params, setup_logging, write_json
from ehrbert.stats import mean_sd
from ehrbert.tasks import Task, add_data_arguments, load_task
from ehrbert.tracking import read_run_record, start_run

log = logging.getLogger(__name__)

FIRST_STAGE = "hybrid"  # the variant whose classifier weight ranks: composite and no-concept settings do not
READINGS = (
    "train_only_acc1",
    "train_dev_acc1",
    "train_dev_train_only_classifier_acc1",
    "train_only_retrieval_acc1",
    "train_dev_retrieval_acc1",
)


def protocol_queries(task: Task, split: str) -> tuple[list[str], list[set[str]], dict[str, int]]:
    """The peers' queries of `split` (see the module docstring), each with its gold concepts, and counts."""
    queries, gold = [], []
    counts = {"mentions": 0, "no_concept": 0, "composite_split": 0, "composite_whole": 0}
    for mention, query in zip(task.mentions(split), task.queries(split)):
        counts["mentions"] += 1
        if mention.relation == NO_CONCEPT or not mention.concept_ids:
            counts["no_concept"] += 1
            continue
        ids = list(dict.fromkeys(mention.concept_ids))
        parts = split_coordination(query) if len(ids) > 1 else []
        if len(ids) > 1 and len(parts) == len(ids):
            counts["composite_split"] += 1
            queries += parts
            gold += [{c} for c in ids]
        else:
            counts["composite_whole"] += len(ids) > 1
            queries.append(query)
            gold.append(set(ids))
    counts["queries"] = len(queries)
    return queries, gold, counts


def acc_at_1(candidates, settings: Settings, gold: list[set[str]]) -> float:
    """Share of queries whose top answer under `settings` is one of their gold concepts."""
    answers = decide(candidates, settings)
    return sum(bool(a.ranked) and a.ranked[0] in g for a, g in zip(answers, gold)) / len(gold)


def readings(model: HybridNormalizer, settings: Settings, queries: list[str], gold: list[set[str]]) -> tuple:
    """acc@1 of the first stage (`settings`) and of retrieval alone, from one candidate search."""
    candidates = model.candidates(queries)
    return acc_at_1(candidates, settings, gold), acc_at_1(candidates, Settings(), gold)


def retrain_on_train_and_dev(task: Task, config: HybridConfig, seed: int, accelerator) -> tuple:
    """The retrieval encoder and index of the hybrid stage, with the dev mentions added to the training ones."""
    mentions = task.mentions("train") + task.mentions("dev")
    queries = task.queries("train") + task.queries("dev")
    encoder, tokenizer = retrieval.load_encoder(resolve_model(config.encoder))
    names = retrieval.concept_names(task.vocabulary)
    pairs = retrieval.mention_pairs(mentions, queries, names)
    retrieval.train_encoder(encoder, tokenizer, names, pairs, config.retrieval, seed, accelerator)
    index = (
        NameIndex.build(task.vocabulary, mentions, queries)
        if config.retrieval.index_training_mentions
        else NameIndex.build(task.vocabulary)
    )
    return encoder, tokenizer, index


def retrain_classifier_on_train_and_dev(
    task: Task, classifier_run: Path, classifier_metrics: Path, start: Path, params: dict, seed: int, accelerator
) -> tuple:
    """The train-only fine-tuning run `classifier_run` done again from its start (the encoder at `start`, which
    params.yaml `finetune.models` must give for the run's model) with the dev mentions added to the training ones,
    for the epochs dev chose for it; returns (model, tokenizer, epochs)."""
    record = classifier.training_record(classifier_run)
    paths = {entry["name"]: entry["path"] for entry in params["finetune"]["models"]}
    if Path(paths.get(record["model"], "")) != start:
        raise ValueError(
            f"--classifier-init {start}: {classifier_run} was fine-tuned from finetune.models {record['model']!r}, "
            f"whose path is {paths.get(record['model'])}"
        )
    epochs = json.loads(classifier_metrics.read_text()).get("best_epoch")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"{classifier_metrics}: no best_epoch (a positive integer) of the train-only fine-tuning")
    config = finetune.FinetuneConfig(**{**record["config"], "max_epochs": epochs})
    model, tokenizer = classifier.build(
        resolve_model(str(start)),
        task.vocabulary,
        config.dropout,
        seed,
        config.head_init,
        config.head_scale,
        config.max_length,
    )
    pairs = finetune.training_pairs(task, config, model.config.label2id, splits=("train", "dev"))
    finetune.train(model, tokenizer, pairs, [], [], config, accelerator, seed)
    return accelerator.unwrap_model(model).eval(), tokenizer, epochs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, help="a built-in task (ncbi, cdr, cadec) or a declared one")
    parser.add_argument("--seed", type=int, required=True)
    add_data_arguments(parser)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--hybrid", type=Path, required=True, help="the hybrid stage's output folder (train only)")
    parser.add_argument("--hybrid-run-record", type=Path, help="its run record (the first stage's MLflow run)")
    parser.add_argument(
        "--classifier", type=Path, required=True, help="the train-only fine-tuning run's folder the hybrid's uses"
    )
    parser.add_argument(
        "--classifier-metrics", type=Path, required=True, help="its metrics file (the dev-chosen best_epoch)"
    )
    parser.add_argument("--classifier-init", type=Path, required=True, help="the encoder that run started from")
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args(argv)
    accelerator = make_accelerator()  # the encoder's training may run on several processes (accelerate launch)
    setup_logging(accelerator.is_main_process)
    params = read_params(args.params)
    config = config_from(HybridConfig, params["hybrid"]["config"], "hybrid.config", args.params)
    set_seed(args.seed)
    task = load_task(args.corpus, args, params["cadec_split"])
    model_dir = args.hybrid / "model"
    _, variants, _ = read_settings(model_dir)
    if FIRST_STAGE not in variants:
        raise ValueError(f"{model_dir}: no {FIRST_STAGE!r} variant (hybrid.config.classifier is off?)")
    settings = Settings(classifier_weight=variants[FIRST_STAGE].classifier_weight)

    started = time.perf_counter()
    encoder, tokenizer, index = retrain_on_train_and_dev(task, config, args.seed, accelerator)
    retrained, retrained_tokenizer, epochs = retrain_classifier_on_train_and_dev(
        task, args.classifier, args.classifier_metrics, args.classifier_init, params, args.seed, accelerator
    )
    if not accelerator.is_main_process:
        return
    index.embed(encoder, tokenizer, config.retrieval)
    seconds = time.perf_counter() - started
    train_only = HybridNormalizer.load(model_dir, FIRST_STAGE)

    def with_classifier(model, model_tokenizer) -> HybridNormalizer:
        """The retrained retrieval with `model` as its classifier."""
        return HybridNormalizer(
            encoder,
            tokenizer,
            index,
            config.retrieval,
            model,
            model_tokenizer,
            train_only.classifier_max_length,
            train_only.classifier_top_k,
        )

    queries, gold, counts = protocol_queries(task, "test")
    train_only_acc1, train_only_retrieval_acc1 = readings(train_only, settings, queries, gold)
    train_dev_acc1, train_dev_retrieval_acc1 = readings(
        with_classifier(retrained, retrained_tokenizer), settings, queries, gold
    )
    old_classifier_acc1, _ = readings(
        with_classifier(train_only.classifier, train_only.classifier_tokenizer), settings, queries, gold
    )
    result = {
        "train_only_acc1": train_only_acc1,
        "train_dev_acc1": train_dev_acc1,
        "train_dev_train_only_classifier_acc1": old_classifier_acc1,
        "train_only_retrieval_acc1": train_only_retrieval_acc1,
        "train_dev_retrieval_acc1": train_dev_retrieval_acc1,
        **counts,
        "classifier_weight": settings.classifier_weight,
        "classifier_epochs": epochs,
    }
    tags = {"corpus": args.corpus, "seed": str(args.seed), "protocol": "peers", "first_stage_path": str(model_dir)}
    if args.hybrid_run_record is not None:
        tags["first_stage_run"] = read_run_record(args.hybrid_run_record)["runs"][FIRST_STAGE]
    with start_run(
        experiment=f"peers-{args.corpus}",
        run_name=f"peers-{args.corpus}-s{args.seed}",
        tags=tags,
        params={"hybrid.config": params["hybrid"]["config"]},
    ):
        mlflow.log_params(
            {
                "corpus": args.corpus,
                "seed": args.seed,
                "classifier_weight": settings.classifier_weight,
                "classifier_epochs": epochs,
            }
        )
        mlflow.log_metrics(
            {f"test_{k}": v for k, v in result.items() if k not in ("classifier_weight", "classifier_epochs")}
        )
        mlflow.log_metric("retrain_seconds", round(seconds, 1))  # wall clock: MLflow only, not the DVC metrics
    write_json(args.metrics, result)
    log.info(
        "%s seed %d, peers' protocol (%d queries): acc@1 train only %.4f, train + dev %.4f "
        "(its train-only classifier: %.4f; retrieval alone: %.4f, %.4f)",
        args.corpus,
        args.seed,
        len(queries),
        train_only_acc1,
        train_dev_acc1,
        old_classifier_acc1,
        train_only_retrieval_acc1,
        train_dev_retrieval_acc1,
    )


# --- the table ------------------------------------------------------------------------------------------


def report(argv: list[str] | None = None) -> None:
    """reports/peers.md: per corpus of params.yaml `peers`, mean (SD) over its seeds of both readings
    (metrics/peers/<corpus>-s<seed>.json)."""
    parser = argparse.ArgumentParser(description="the peers' protocol table")
    parser.add_argument("--metrics", type=Path, required=True, help="the folder of the stage's metrics files")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="its `peers` corpora and seeds")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    wanted = read_params(args.params)["peers"]
    corpora, seeds = wanted["corpora"], wanted["seeds"]
    lines = [
        "# acc@1 under the peers' protocol (test)",
        "",
        "Written by `python -m ehrbert.peers report` (stage `peers_report`) from metrics/peers; what the two "
        "readings are: `ehrbert.peers`. Mean (SD) over seeds "
        f"{', '.join(map(str, seeds))}; no second stage. First stage: retrieval + classifier at the train-only "
        "run's dev-chosen weight, both models retrained on train + dev (and, for what retraining the classifier "
        "adds, the retrained retrieval with the train-only classifier); retrieval alone: the same retrieval "
        "without the classifier.",
        "",
        "| corpus | queries | composite split / kept whole | no-concept dropped | first stage, train only | "
        "train + dev | train + dev, train-only classifier | retrieval alone, train only | train + dev |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for corpus in corpora:
        rows = []
        for seed in seeds:
            path = args.metrics / f"{corpus}-s{seed}.json"
            if not path.exists():
                raise FileNotFoundError(f"{path}: no metrics for {corpus} seed {seed} (stage peers)")
            rows.append(json.loads(path.read_text()))
        lines.append(
            f"| {corpus} | {rows[0]['queries']} | {rows[0]['composite_split']} / {rows[0]['composite_whole']} | "
            f"{rows[0]['no_concept']} | " + " | ".join(mean_sd([r[key] for r in rows]) for key in READINGS) + " |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:2] == ["report"]:
        report(sys.argv[2:])
    else:
        main()
