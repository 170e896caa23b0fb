"""Beyond the paper, a second stage: a reranker trained on the hybrid normalizer's dev candidates.

The stage (one corpus x one seed) takes the hybrid stage's normalizer (`ehrbert.hybrid`, its last variant: the
classifier, composite and no-concept answers switched on there) and trains the reranker of
`ehrbert.models.rerank` on the candidates the normalizer gives the dev split's mentions.

Whether to use it is decided on dev only: its answers for each dev document come from a reranker trained
on the other documents (`rerank.config.folds` document-grouped folds), and it is used when it makes more dev
mentions right at rank 1 than it makes wrong, and an exact one-sided McNemar test of those two counts gives
P < `rerank.config.significance` (a dev gain that chance explains is not taken). Either way the stage logs
one MLflow run, variant ``hybrid_rerank``, beside the hybrid's variants (`ehrbert.compare` puts it in Table 2
and the component table, with p-values against ``hybrid_no_concept``); when dev did not choose the reranker, it
answers as the first stage does and its `rerank_used` param says so. The reranker that answers on test is
trained on the whole dev split.

Outputs: model/ (the hybrid's folder plus reranker/, answering as ``hybrid_rerank`` by default, every earlier
variant still there), the test predictions, the metrics and the run record.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import mlflow
import numpy as np
from scipy.stats import binomtest
from sklearn.model_selection import GroupKFold

from ehrbert.corpora.records import Mention
from ehrbert.hybrid import HybridConfig, predictions_frame, score, variant_label
from ehrbert.metrics import accuracy_at_k, seen_concepts
from ehrbert.models.hybrid import RERANKER_DIR, Answer, HybridNormalizer, decide, read_settings
from ehrbert.models.rerank import RerankConfig, Reranker, reorder
from ehrbert.predictions import write_predictions
from ehrbert.stage import config_from, folder_written_whole, read_params, setup_logging, write_json
from ehrbert.tasks import add_data_arguments, load_task, score_detected
from ehrbert.tracking import log_detected_run, read_run_record, start_run, write_run_record

log = logging.getLogger(__name__)

VARIANT = "hybrid_rerank"
MODEL_DIR = "model"


def cross_validated(reranker: Reranker, features, labels, owners, documents: list[str], seed: int) -> np.ndarray:
    """Each dev pair's probability from a reranker fitted without its document (GroupKFold over documents)."""
    groups = np.asarray([documents[i] for i in owners])
    folds = min(reranker.config.folds, len(set(groups.tolist())))
    out = -features[:, 3] if len(features) else np.zeros(0)  # the first stage's order, where nothing is learned
    if folds < 2:
        log.warning("dev has %d document(s) with candidates: too few to cross-validate a reranker", folds)
        return out
    for train, held_out in GroupKFold(folds).split(features, labels, groups):
        if labels[train].min() == labels[train].max():  # one class only: nothing to learn, first-stage order
            continue
        model = reranker.new_model(seed).fit(features[train], labels[train])
        out[held_out] = model.predict_proba(features[held_out])[:, 1]
    return out


def flips(gold: list[Mention], first: list[Answer], reranked: list[Answer]) -> tuple[int, int, float]:
    """(mentions the reranker makes right at rank 1, mentions it makes wrong, the one-sided exact McNemar P of
    that split): a gain on dev counts only when chance is an unlikely explanation."""
    right = lambda m, a: bool(a.ranked) and a.ranked[0] in m.concept_ids
    pairs = [(right(m, a), right(m, b)) for m, a, b in zip(gold, first, reranked) if m.concept_ids]
    fixed = sum(not a and b for a, b in pairs)
    broken = sum(a and not b for a, b in pairs)
    if fixed + broken == 0:
        return 0, 0, 1.0
    return fixed, broken, float(binomtest(fixed, fixed + broken, 0.5, alternative="greater").pvalue)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, help="a task the hybrid stage trained (hybrid.corpora)")
    parser.add_argument("--seed", type=int, required=True)
    add_data_arguments(parser)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--hybrid", type=Path, required=True, help="the hybrid stage's output folder (its model/)")
    parser.add_argument("--hybrid-run-record", type=Path, help="that stage's run record (its MLflow run IDs)")
    parser.add_argument("--out-dir", type=Path, required=True, help="model/ and the test predictions")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--run-record", type=Path, required=True, help="JSON file for the MLflow run ID")
    args = parser.parse_args(argv)
    setup_logging()
    params = read_params(args.params)
    config = config_from(RerankConfig, params["rerank"]["config"], "rerank.config", args.params)
    hybrid_config = config_from(HybridConfig, params["hybrid"]["config"], "hybrid.config", args.params)
    stage_params = {"rerank.config": params["rerank"]["config"], "cadec_split": params["cadec_split"]}

    task = load_task(args.corpus, args, params["cadec_split"])
    seen = seen_concepts(task.mentions("train"))
    source = args.hybrid / MODEL_DIR
    _, _, first_stage = read_settings(source)  # the hybrid's default: its last variant
    model = HybridNormalizer.load(source, first_stage)
    dev_queries, test_queries = task.queries("dev"), task.queries("test")
    dev = model.candidates(dev_queries)
    test = model.candidates(test_queries)

    started = time.perf_counter()
    reranker = Reranker.build(config, task.vocabulary, task.mentions("train"), task.queries("train"))
    dev_mentions = task.mentions("dev")
    dev_answers = decide(dev, model.settings, k=config.depth)
    features, owners = reranker.features(dev_queries, dev_answers, dev)
    labels = Reranker.labels(dev_answers, owners, dev_mentions, config.candidates)
    held_out = reorder(
        dev_answers,
        owners,
        cross_validated(reranker, features, labels, owners, [m.doc_id for m in dev_mentions], args.seed),
        config.candidates,
    )
    dev_first = accuracy_at_k(dev_mentions, [a.ranked for a in dev_answers], 1)
    dev_reranked = accuracy_at_k(dev_mentions, [a.ranked for a in held_out], 1)
    fixed, broken, p_value = flips(dev_mentions, dev_answers, held_out)
    used = fixed > broken and p_value < config.significance
    if used:
        reranker.fit(features, labels, args.seed)
    fit_seconds = time.perf_counter() - started
    log.info(
        "dev acc@1, cross-validated: first stage %.4f, reranked %.4f (%d fixed, %d broken, P = %.3g): reranker %s",
        dev_first,
        dev_reranked,
        fixed,
        broken,
        p_value,
        "used" if used else "not used",
    )

    args.out_dir.mkdir(parents=True, exist_ok=True)
    args.run_record.unlink(missing_ok=True)  # written last: a stale record never outlives a failed run
    model.variants[VARIANT] = model.settings
    model.reranker, model.reranked = (reranker, [VARIANT]) if used else (None, [])
    model_dir = args.out_dir / MODEL_DIR
    with folder_written_whole(model_dir) as partial:
        shutil.copytree(source, partial, dirs_exist_ok=True)
        shutil.rmtree(partial / RERANKER_DIR, ignore_errors=True)
        if used:
            reranker.save(partial / RERANKER_DIR)
        model.save_settings(partial, default_variant=VARIANT)
    model.rerank = used

    started = time.perf_counter()
    answers = model.answer(test_queries, test)
    rerank_seconds = time.perf_counter() - started
    result = score(task, "test", answers, seen)
    result["dev_f1"] = score(task, "dev", held_out if used else dev_answers, seen)["f1"]
    if model.settings.no_concept_threshold is None:
        for key in ("no_concept_precision", "no_concept_recall", "no_concept_f1"):
            result.pop(key)
    detected = score_detected(task, model.detector, lambda queries: [a.concept_ids for a in model.predict(queries)])
    result.update({f"text_{k}": v for k, v in detected.items()})
    predictions = args.out_dir / f"{VARIANT}_test_predictions.tsv"
    write_predictions(predictions_frame(task, "test", test_queries, answers), predictions)

    label = variant_label(first_stage, params["hybrid"]["retrieval_label"], hybrid_config) + " + reranker"
    tags = {
        "corpus": args.corpus,
        "seed": str(args.seed),
        "mentions": "gold",
        "encoder_path": hybrid_config.encoder,
        "model": VARIANT,
        "model_label": label,
        "model_path": str(model_dir),
        "variant": VARIANT,
        "first_stage_path": str(source),
    }
    if args.hybrid_run_record is not None:
        tags["first_stage_run"] = read_run_record(args.hybrid_run_record)["runs"][first_stage]
    runs = {}
    with start_run(
        experiment=f"finetune-{args.corpus}",
        run_name=f"{VARIANT}-{args.corpus}-s{args.seed}",
        tags=tags,
        params=stage_params,
    ) as run:
        mlflow.log_params(
            {
                **{f"rerank_{k}": v for k, v in asdict(config).items()},
                **asdict(model.settings),
                "first_stage_variant": first_stage,
                "rerank_used": used,
                "max_length": model.config.max_length,
                "corpus": args.corpus,
                "seed": args.seed,
            }
        )
        mlflow.log_metrics({("dev_f1" if k == "dev_f1" else f"test_{k}"): v for k, v in result.items()})
        mlflow.log_metrics(
            {
                "dev_acc1_first_stage": dev_first,
                "dev_acc1_reranked_cv": dev_reranked,
                "dev_fixed": fixed,
                "dev_broken": broken,
                "dev_p_value": p_value,
                "rerank_fit_seconds": round(fit_seconds, 1),
                "rerank_test_seconds": round(rerank_seconds, 1),
            }
        )
        mlflow.log_artifact(str(predictions))
        runs[VARIANT] = run.info.run_id
    if task.level == "mention":  # the clinical corpus is also scored from detected mentions
        runs[f"{VARIANT}-predicted"] = log_detected_run(
            f"finetune-{args.corpus}",
            f"{VARIANT}-{args.corpus}-s{args.seed}",
            tags,
            stage_params,
            runs[VARIANT],
            detected,
        )
    write_json(
        args.metrics,
        {
            VARIANT: {
                "rerank_used": used,
                "dev_acc1_first_stage": dev_first,
                "dev_acc1_reranked_cv": dev_reranked,
                "dev_fixed": fixed,
                "dev_broken": broken,
                "dev_p_value": p_value,
                "test": result,
            }
        },
    )
    write_run_record(
        args.run_record,
        runs,
        experiment=f"finetune-{args.corpus}",
        corpus=args.corpus,
        seed=args.seed,
        model_dir=str(model_dir),
    )
    log.info(
        "%s: test F1 %.4f, acc@1 %.4f (seen %.4f, unseen %.4f)",
        VARIANT,
        result["f1"],
        result["acc1"],
        result["acc1_seen"],
        result["acc1_unseen"],
    )


if __name__ == "__main__":
    main()
