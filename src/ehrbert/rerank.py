"""Beyond the paper, a second stage: a reranker over the hybrid normalizer's candidates, trained on dev's or on
the training split's cross-fitted candidates, and shipped where held-out mentions say it helps.

The stage (one corpus x one seed) takes the hybrid stage's normalizer (`ehrbert.hybrid`, its last variant: the
classifier, composite and no-concept answers switched on there) and the reranker of `ehrbert.models.rerank`.
params.yaml `rerank.training` lists the training rows it may learn from (its readings):

- `dev`: the candidates the normalizer gives dev's mentions;
- `cross_fitted`: the training split's cross-fitted candidates (stage `cross_fit`, `ehrbert.cross_fit`: each
  group of training documents answered by a first stage whose index and classifier never held it), with the
  reranker's evidence (mention counts, the training mentions it compares with) built without the group too;
- `cross_fitted_dev`: both.

`rerank.judge` decides which, if any, is shipped, judging each reading on mentions it never trained on by the
same rule: a reading is admitted when it makes more of those mentions right at rank 1 than it makes wrong, and
an exact one-sided McNemar test of those two counts gives P < `rerank.config.significance` (a gain that chance
explains is not taken); of the admitted readings the one with the most mentions fixed net of those broken is
shipped (the earlier in `READINGS` on a tie), and none when none is admitted.

- `dev`: dev's mentions alone, each dev document answered by a reranker trained without it (for `dev` and
  `cross_fitted_dev`, `rerank.config.folds` document-grouped folds).
- `held_out`: dev's as above and every training mention together, each group of training documents reranked by
  the reading's reranker trained without the group's rows (`dev`'s: the one trained on all of dev), against the
  group's cross-fitted first stage. NCBI's dev holds 787 mentions and its training split 5,134: a gain of a few
  tenths of a point is out of dev's reach alone and within this judgement's; no test mention takes part.

`rerank.hierarchy` switches on the reranker's hierarchy features (`ehrbert.models.rerank.HIERARCHY_FEATURES`)
for every reading, for every corpus or for the corpora it lists; `benchmarks/rerank_hierarchy.py` measures the
switch against the pipeline's own runs.

Either way the stage logs one MLflow run, variant ``hybrid_rerank``, beside the hybrid's variants
(`ehrbert.compare` puts it in Table 2 and the component table, with p-values against ``hybrid_no_concept``);
when no reading is shipped it answers as the first stage does, and its `rerank_used` and `rerank_reading` params
say so. The shipped reranker is trained on all of its reading's rows.

Outputs: model/ (the hybrid's folder plus reranker/, answering as ``hybrid_rerank`` by default, every earlier
variant still there), the test predictions, the metrics (each reading's judgement) and the run record.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import mlflow
import numpy as np
from scipy.stats import binomtest
from sklearn.model_selection import GroupKFold

from ehrbert.corpora.records import Mention
from ehrbert.cross_fit import Held, group_task, names_without, read_candidates
from ehrbert.hybrid import HybridConfig, predictions_frame, score, variant_label
from ehrbert.metrics import accuracy_at_k, seen_concepts
from ehrbert.models.hybrid import RERANKER_DIR, Answer, Candidates, HybridNormalizer, Settings, decide, read_settings
from ehrbert.models.rerank import RerankConfig, Reranker, reorder
from ehrbert.predictions import write_predictions
from ehrbert.stage import config_from, folder_written_whole, read_params, setup_logging, write_json
from ehrbert.tasks import add_data_arguments, load_task, score_detected
from ehrbert.tracking import log_detected_run, read_run_record, start_run, write_run_record

log = logging.getLogger(__name__)

VARIANT = "hybrid_rerank"
MODEL_DIR = "model"
READINGS = ("dev", "cross_fitted", "cross_fitted_dev")  # the training rows a reranker may learn from
JUDGES = ("dev", "held_out")  # the held-out mentions that judge a reading: dev's, or dev's and training's


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


class Group(NamedTuple):
    """One group of training documents, answered by a first stage and evidence that never held it."""

    held: np.ndarray  # its mentions' positions in the training split
    answers: list[Answer]  # their first-stage answers
    features: np.ndarray
    owners: np.ndarray
    labels: np.ndarray
    evidence: Reranker  # the reranker's evidence (vocabulary names, training mentions) built without the group


def rows(reranker: Reranker, candidates: Candidates, settings: Settings, queries: list[str], mentions: list) -> tuple:
    """(first-stage answers, features, owners, labels) of `queries`' `candidates` decided by `settings`, with
    `reranker`'s evidence."""
    answers = decide(candidates, settings, k=reranker.config.depth)
    features, owners = reranker.features(queries, answers, candidates)
    return answers, features, owners, Reranker.labels(answers, owners, mentions, reranker.config.candidates)


def decided_groups(
    task, config: RerankConfig, held_groups: list[Held], settings: Settings, hierarchy: bool = False
) -> list[Group]:
    """Each cross-fitted group's first-stage answers under `settings`, and the reranker's rows for them from
    evidence (mention counts, shares, the training mentions compared with, the vocabulary's names:
    `ehrbert.cross_fit.names_without`) built without the group."""
    mentions, queries = task.mentions("train"), task.queries("train")
    rename = names_without(task)
    out = []
    for held, candidates in held_groups:
        rest = np.setdiff1d(np.arange(len(mentions)), held)
        vocabulary = group_task(task, rename, held).vocabulary
        evidence = Reranker.build(
            config, vocabulary, [mentions[i] for i in rest], [queries[i] for i in rest], hierarchy=hierarchy
        )
        group_queries, group_mentions = [queries[i] for i in held], [mentions[i] for i in held]
        out.append(Group(held, *rows(evidence, candidates, settings, group_queries, group_mentions), evidence))
    return out


def training_rows(groups: list[Group], without: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of every group's rows but `without`'s."""
    kept = [g for i, g in enumerate(groups) if i != without]
    return np.concatenate([g.features for g in kept]), np.concatenate([g.labels for g in kept])


def held_out_training(groups: list[Group], mentions: list, scores, k: int) -> tuple[list, list, list]:
    """(gold mentions, first-stage answers, reranked answers) of the training split, group by group, each group's
    rows reordered by `scores(i)`, from a model that never trained on group i's rows."""
    gold, first, reranked = [], [], []
    for i, group in enumerate(groups):
        gold += [mentions[j] for j in group.held]
        first += group.answers
        reranked += reorder(group.answers, group.owners, scores(i), k)
    return gold, first, reranked


def scorer(reranker: Reranker, trained: tuple, seed: int):
    """features -> each pair's probability from a reranker trained once on the `trained` rows (features, labels);
    the first stage's order where those rows hold one class only (nothing to learn)."""
    x, y = trained
    if len(y) == 0 or y.min() == y.max():
        return lambda features: -features[:, 3] if len(features) else np.zeros(0)
    model = reranker.new_model(seed).fit(x, y)
    return lambda features: model.predict_proba(features)[:, 1]


def probabilities(reranker: Reranker, trained: tuple, features: np.ndarray, seed: int) -> np.ndarray:
    """Each of `features`' pairs' probability from a reranker trained on the `trained` rows (`scorer`)."""
    return scorer(reranker, trained, seed)(features)


def reading_rows(reading: str, dev: tuple, groups: list[Group], without: int | None = None) -> tuple:
    """(features, labels) that `reading` trains on: dev's, the cross-fitted groups' (but `without`'s), or both."""
    parts = []
    if reading in ("cross_fitted", "cross_fitted_dev"):
        parts.append(training_rows(groups, without))
    if reading in ("dev", "cross_fitted_dev"):
        parts.append(dev[:2])
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])


def dev_probabilities(reranker: Reranker, reading: str, dev: tuple, documents: list[str], groups, seed: int):
    """Each dev pair's probability from `reading`'s reranker trained without the pair's document: cross-validated
    over dev documents where the reading trains on dev (with the training rows in every fold for
    `cross_fitted_dev`), else the one trained on the training rows."""
    features, labels, owners = dev
    if reading == "dev":
        return cross_validated(reranker, features, labels, owners, documents, seed)
    train = training_rows(groups)
    if reading == "cross_fitted":
        return probabilities(reranker, train, features, seed)
    return dev_with_training_rows(reranker, dev, documents, train, seed)


def dev_with_training_rows(reranker: Reranker, dev: tuple, documents: list[str], train: tuple, seed: int) -> np.ndarray:
    """Each dev pair's probability from a reranker trained on the `train` rows (features, labels) and the other
    dev documents' (`rerank.config.folds` document-grouped folds)."""
    features, labels, owners = dev
    document_of = np.asarray([documents[i] for i in owners])
    folds = min(reranker.config.folds, len(set(document_of.tolist())))
    if folds < 2:
        return probabilities(reranker, train, features, seed)
    out = np.zeros(len(features))
    for rest, held in GroupKFold(folds).split(features, labels, document_of):
        x, y = np.concatenate([train[0], features[rest]]), np.concatenate([train[1], labels[rest]])
        out[held] = probabilities(reranker, (x, y), features[held], seed)
    return out


def training_probabilities(reranker: Reranker, reading: str, dev: tuple, groups: list[Group], seed: int):
    """i -> the probabilities of training group i's rows from `reading`'s reranker trained without them (`dev`'s:
    the one trained on all of dev)."""
    if reading == "dev":
        score = scorer(reranker, dev[:2], seed)
        return lambda i: score(groups[i].features)
    return lambda i: probabilities(reranker, reading_rows(reading, dev, groups, i), groups[i].features, seed)


def choose(judgements: dict[str, dict], readings: tuple[str, ...] = READINGS) -> str | None:
    """The reading to ship: of those `judgements` admit (`admitted`), the one with the most mentions fixed net of
    those broken (`net`), the earlier in `readings` on a tie; None when none is admitted."""
    admitted = [r for r in readings if r in judgements and judgements[r]["admitted"]]
    return max(admitted, key=lambda r: (judgements[r]["net"], -readings.index(r)), default=None)


def judgement(fixed: int, broken: int, p_value: float, significance: float) -> dict:
    """A reading's judgement on its held-out mentions: admitted when it fixes more than it breaks and chance is an
    unlikely explanation (P < `significance`)."""
    return {
        "fixed": fixed,
        "broken": broken,
        "p_value": p_value,
        "net": fixed - broken,
        "admitted": fixed > broken and p_value < significance,
    }


def judgement_metrics(judgements: dict[str, dict]) -> dict[str, float]:
    """Each reading's judgements as flat MLflow metrics: `<reading>_dev_acc1`, `<reading>_<dev|held_out|training>_
    <fixed|broken|p_value>`."""
    out = {}
    for reading, entry in judgements.items():
        out[f"{reading}_dev_acc1"] = entry["dev_acc1"]
        for where in ("dev", "held_out", "training"):
            for key in ("fixed", "broken", "p_value"):
                if key in entry.get(where, {}):
                    out[f"{reading}_{where}_{key}"] = entry[where][key]
    return out


def reading_names(params: dict, source: Path) -> tuple[tuple[str, ...], str]:
    """params.yaml `rerank.training` (a non-empty list of `READINGS`) and `rerank.judge` (one of `JUDGES`)."""
    training, judge = params["rerank"].get("training"), params["rerank"].get("judge")
    if not isinstance(training, list) or not training or any(r not in READINGS for r in training):
        raise SystemExit(f"{source}: rerank.training must be a non-empty list of {list(READINGS)}, got {training!r}")
    if judge not in JUDGES:
        raise SystemExit(f"{source}: rerank.judge must be one of {list(JUDGES)}, got {judge!r}")
    return tuple(r for r in READINGS if r in training), judge


def hierarchy_switch(params: dict, source: Path, corpus: str) -> bool:
    """params.yaml `rerank.hierarchy` for `corpus`: the reranker's hierarchy features. True or false for every
    corpus (absent: false), or the list of the corpora (of `rerank.corpora`) that use them: dev may take them for
    one corpus and not another."""
    hierarchy = params["rerank"].get("hierarchy", False)
    if isinstance(hierarchy, bool):
        return hierarchy
    if not isinstance(hierarchy, list) or not all(isinstance(name, str) for name in hierarchy):
        raise SystemExit(f"{source}: rerank.hierarchy must be true, false or a list of corpora, got {hierarchy!r}")
    known = params["rerank"].get("corpora", [])
    unknown = [name for name in hierarchy if name not in known]
    if unknown:
        raise SystemExit(f"{source}: rerank.hierarchy names {unknown}, which are not in rerank.corpora {known}")
    return corpus in hierarchy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, help="a task the hybrid stage trained (hybrid.corpora)")
    parser.add_argument("--seed", type=int, required=True)
    add_data_arguments(parser)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--hybrid", type=Path, required=True, help="the hybrid stage's output folder (its model/)")
    parser.add_argument("--hybrid-run-record", type=Path, help="that stage's run record (its MLflow run IDs)")
    parser.add_argument(
        "--cross-fitted", type=Path, help="the cross_fit stage's folder: the training split's cross-fitted candidates"
    )
    parser.add_argument("--out-dir", type=Path, required=True, help="model/ and the test predictions")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--run-record", type=Path, required=True, help="JSON file for the MLflow run ID")
    args = parser.parse_args(argv)
    setup_logging()
    params = read_params(args.params)
    config = config_from(RerankConfig, params["rerank"]["config"], "rerank.config", args.params)
    hybrid_config = config_from(HybridConfig, params["hybrid"]["config"], "hybrid.config", args.params)
    readings, judge = reading_names(params, args.params)
    hierarchy = hierarchy_switch(params, args.params, args.corpus)
    stage_params = {
        "rerank.config": params["rerank"]["config"],
        "rerank.training": list(readings),
        "rerank.judge": judge,
        "rerank.hierarchy": hierarchy,
        "cadec_split": params["cadec_split"],
    }

    task = load_task(args.corpus, args, params["cadec_split"])
    seen = seen_concepts(task.mentions("train"))
    source = args.hybrid / MODEL_DIR
    _, _, first_stage = read_settings(source)  # the hybrid's default: its last variant
    model = HybridNormalizer.load(source, first_stage)
    dev_queries, test_queries = task.queries("dev"), task.queries("test")
    dev = model.candidates(dev_queries)
    test = model.candidates(test_queries)

    started = time.perf_counter()
    reranker = Reranker.build(
        config, task.vocabulary, task.mentions("train"), task.queries("train"), hierarchy=hierarchy
    )
    dev_mentions = task.mentions("dev")
    documents = [m.doc_id for m in dev_mentions]
    dev_answers, features, owners, labels = rows(reranker, dev, model.settings, dev_queries, dev_mentions)
    dev_rows = (features, labels, owners)
    groups = []
    if judge == "held_out" or readings != ("dev",):
        if args.cross_fitted is None:
            raise SystemExit(
                f"{args.params}: rerank.training {list(readings)} judged on {judge!r} needs the training split's "
                "cross-fitted candidates: --cross-fitted (the cross_fit stage's folder)"
            )
        held_groups = read_candidates(args.cross_fitted, len(task.mentions("train")))
        groups = decided_groups(task, config, held_groups, model.settings, hierarchy)
    dev_first = accuracy_at_k(dev_mentions, [a.ranked for a in dev_answers], 1)
    judgements, reranked_dev = {}, {}
    for reading in readings:
        reranked_dev[reading] = reorder(
            dev_answers,
            owners,
            dev_probabilities(reranker, reading, dev_rows, documents, groups, args.seed),
            config.candidates,
        )
        fixed, broken, p_value = flips(dev_mentions, dev_answers, reranked_dev[reading])
        entry = {
            "dev_acc1": accuracy_at_k(dev_mentions, [a.ranked for a in reranked_dev[reading]], 1),
            "dev": judgement(fixed, broken, p_value, config.significance),
        }
        if judge == "held_out":
            scores = training_probabilities(reranker, reading, dev_rows, groups, args.seed)
            gold, first, reranked = held_out_training(groups, task.mentions("train"), scores, config.candidates)
            both = flips(gold + dev_mentions, first + dev_answers, reranked + reranked_dev[reading])
            entry["training"] = dict(zip(("fixed", "broken"), flips(gold, first, reranked)[:2]))
            entry["held_out"] = judgement(*both, config.significance)
        judgements[reading] = entry
        log.info(
            "reading %s: dev acc@1 %.4f against the first stage's %.4f (%d fixed, %d broken)%s",
            reading,
            entry["dev_acc1"],
            dev_first,
            fixed,
            broken,
            f"; with training held out {entry['held_out']['fixed']} fixed, {entry['held_out']['broken']} broken, "
            f"P = {entry['held_out']['p_value']:.3g}"
            if judge == "held_out"
            else "",
        )
    chosen = choose({reading: entry[judge] for reading, entry in judgements.items()}, readings)
    used = chosen is not None
    if used:
        reranker.fit(*reading_rows(chosen, dev_rows, groups), args.seed)
    fit_seconds = time.perf_counter() - started
    log.info("judged on %s: %s", judge, f"the reranker trained on {chosen} shipped" if used else "no reranker shipped")

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
    result["dev_f1"] = score(task, "dev", reranked_dev[chosen] if used else dev_answers, seen)["f1"]
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
                "rerank_reading": chosen or "none",
                "rerank_judge": judge,
                "max_length": model.config.max_length,
                "corpus": args.corpus,
                "seed": args.seed,
            }
        )
        mlflow.log_metrics({("dev_f1" if k == "dev_f1" else f"test_{k}"): v for k, v in result.items()})
        mlflow.log_metrics(
            {
                "dev_acc1_first_stage": dev_first,
                **judgement_metrics(judgements),
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
                "reading": chosen,
                "judge": judge,
                "dev_acc1_first_stage": dev_first,
                "readings": judgements,
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
