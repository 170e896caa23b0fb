"""A reranker trained on cross-fitted candidates of the training split, against the rerank stage's (dev's).

    accelerate launch $ACCELERATE_ARGS benchmarks/cross_fitted_rerank.py [--corpora ncbi cdr cadec] [--seeds 1 2 3]
        [--folds 5] [--encoder shared|per-group] [--first-stage retrieval|hybrid] [--settings dev|training]
        [--report-only]

The rerank stage (`ehrbert.rerank`) trains its reranker on the dev split's candidates, because the training
split's own candidates are not what the first stage gives an unseen mention: every training mention is an index
entry, and the encoder has learned it. Dev is small (NCBI: 787 mentions), and on NCBI it never admits the
reranker. Cross-fitting makes training candidates that are like test's: the training documents are cut into
`--folds` groups, and each group's candidates come from a first stage that never saw the group's mentions.

For each corpus and seed, with the first stage as retrieval alone (`--first-stage retrieval`, `hybrid.config`:
its encoder, its training and index; no classifier, so that the cross-fitted first stages are cheap), or as the
hybrid stage's (`--first-stage hybrid`: its saved normalizer, outputs/hybrid/<corpus>-s<seed>/model, answering as
the rerank stage's first stage, with its classifier and dev-chosen settings; below, the classifier is
cross-fitted too):

- **full**: the encoder trained on the whole training split, from the same start, params and seed as the hybrid
  stage trains it, and the index of the vocabulary and every training mention; the dev and test candidates.
- **each group**: an index of the vocabulary and the other groups' mentions, and the reranker's training
  evidence (mention counts, the share of a query's annotations, the training mentions it compares with) from
  those mentions alone. The group's candidates, features and labels are the reranker's cross-fitted training
  rows. The encoder is `--encoder`: `per-group`, one trained the same way on the other groups' mentions (nothing
  of the first stage has seen the group; six encoders and six embeddings of the vocabulary a seed), or `shared`,
  the whole split's (it has met the group's mentions in training, about twice each at NCBI's size, but no index
  entry or evidence holds them; one encoder a seed). With the hybrid first stage, `shared` is the hybrid's
  saved encoder, and `per-group` an encoder trained as the hybrid stage trains its own, without the group (then
  no part of a group's first stage has seen its mentions); either way each group's classifier is fine-tuned
  again without the group: the hybrid's fine-tuning run done
  once more from its start, on the other groups' mentions, for the epochs dev chose for it
  (`ehrbert.peers.retrain_classifier_on_train_and_dev` with those mentions as the training split and no dev).

A task whose vocabulary takes names from the training split's mentions (CADEC: `names_without`) has it named
again for each group from the other groups' documents, so that no group finds its own mention texts among the
names.

The hybrid first stage's settings (classifier weight, composite and no-concept thresholds) are `--settings`:
`dev`, the stage's, or `training`, chosen the way the hybrid stage chooses them on dev
(`ehrbert.hybrid.choose_settings`) but on the cross-fitted candidates of the whole training split, which no
classifier or index entry answering them has seen. Then dev chose nothing of the first stage, and its judgement of
a reranker is not biased toward the first stage by having chosen it. The same settings decide the training
groups', dev's and test's first-stage answers.

The hybrid's cross-fitted candidates (the fine-tuning runs are the costly part) are kept in
outputs/cross_fitted_rerank/ (not a stage's output), keyed by a hash of the hybrid's saved normalizer and its
classifier's fine-tuning folder, so that `--settings` and the dev settings share one cross-fitting. The key does
not cover this code or params.yaml: delete the folder after changing either.

Readings, the reranker of `ehrbert.models.rerank` with params.yaml `rerank.config`, each judged on dev as the
stage judges its own (used where it fixes more dev mentions than it breaks at rank 1, one-sided exact McNemar
P < `significance`):

- `dev`: the stage's: trained on dev's candidates; dev answers cross-validated over dev documents;
- `cross-fitted`: trained on the training split's cross-fitted candidates; dev is unseen by it;
- `cross-fitted + dev`: trained on both; each dev fold's answers from one trained on the training rows and the
  other dev folds.

Each reading is also judged by the same rule over more held-out mentions: dev's, as above, and every training
mention, each group reranked by the reading's reranker trained without the group's rows (`dev`: the one trained
on all of dev; `cross-fitted`: on the other groups' rows; `cross-fitted + dev`: on those and dev's) against the
group's cross-fitted first stage. NCBI's dev holds 787 mentions, its training split 5,134: a gain of a few tenths
of a point is out of dev's reach and within this judgement's; no test mention takes part in it.

Each finished corpus and seed is kept in reports/cross_fitted_rerank.json, so that an interrupted measurement
goes on where it stopped; writes reports/cross_fitted_rerank.md. It asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import itertools
import json
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np
from data_paths import data_paths  # benchmarks/ (this script's folder) is on the path
from document_consistency import p_paired
from transformers import set_seed

from ehrbert.cross_fit import (  # the cross_fit stage's cross-fitting, shared with this measurement
    Held,
    TrainingSubset,
    cross_fitted_candidates,
    in_split_order,
    indexed_without,
    names_without,
)
from ehrbert.hub import resolve_model
from ehrbert.hybrid import HybridConfig, choose_settings, score
from ehrbert.launch import make_accelerator
from ehrbert.metrics import seen_concepts
from ehrbert.models import retrieval
from ehrbert.models.classifier import training_record
from ehrbert.models.hybrid import HybridNormalizer, Settings
from ehrbert.models.name_index import NameIndex
from ehrbert.models.rerank import RerankConfig, Reranker, reorder
from ehrbert.peers import retrain_classifier_on_train_and_dev
from ehrbert.rerank import (  # the rerank stage's rows and held-out judgement
    Group,
    cross_validated,
    decided_groups,
    dev_with_training_rows,
    flips,
    held_out_training,
    rows,
    training_rows,
)
from ehrbert.stage import config_from, read_params
from ehrbert.stats import mean_sd
from ehrbert.tasks import load_task

ROOT = Path(__file__).resolve().parents[1]
READINGS = ("first stage", "dev", "cross-fitted", "cross-fitted + dev")
KEYS = ("acc1", "acc1_seen", "acc1_unseen", "f1")
ENCODERS = ("per-group", "shared")  # the cross-fitted first stages' encoder: trained without the group, or not
FIRST_STAGES = ("retrieval", "hybrid")  # retrieval alone, or the hybrid stage's (classifier cross-fitted too)
SETTINGS = ("dev", "training")  # the hybrid first stage's settings: the stage's (chosen on dev), or chosen on training
CACHE = ROOT / "outputs/cross_fitted_rerank"  # the hybrid's cross-fitted candidates, kept (not a stage's output)
FLIPS = ("dev_fixed", "dev_broken", "train_fixed", "train_broken", "test_fixed", "test_broken")


def first_stage(task, config: HybridConfig, seed: int, mentions: list, queries: list[str], accelerator):
    """Retrieval alone, trained and indexed on `mentions` (with their `queries`) as the hybrid stage does it."""
    set_seed(seed)
    encoder, tokenizer = retrieval.load_encoder(resolve_model(config.encoder))
    names = retrieval.concept_names(task.vocabulary)
    pairs = retrieval.mention_pairs(mentions, queries, names)
    retrieval.train_encoder(encoder, tokenizer, names, pairs, config.retrieval, seed, accelerator)
    index = NameIndex.build(task.vocabulary, mentions, queries)
    index.embed(encoder, tokenizer, config.retrieval)
    return HybridNormalizer(encoder, tokenizer, index, config.retrieval, classifier_top_k=config.classifier_top_k)


def classifier_run(params: dict, corpus: str, seed: int) -> str:
    """The name of the fine-tuning run whose classifier the hybrid stage interpolates: its folder is
    outputs/finetune/<name>, its metrics metrics/finetune/<name>.json."""
    return f"{params['hybrid']['config']['classifier_model']}-{corpus}-s{seed}"


def classifier_without(task, corpus: str, seed: int, params: dict, mentions: list, queries: list[str], accelerator):
    """(model, tokenizer) of the hybrid's classifier fine-tuned again on `mentions` alone (see above)."""
    run = classifier_run(params, corpus, seed)
    record = training_record(ROOT / "outputs/finetune" / run)
    start = Path(next(m["path"] for m in params["finetune"]["models"] if m["name"] == record["model"]))
    model, tokenizer, _ = retrain_classifier_on_train_and_dev(  # paths relative to the repository, as params.yaml
        TrainingSubset(task, mentions, queries),
        Path(f"outputs/finetune/{run}"),
        Path(f"metrics/finetune/{run}.json"),
        start,
        params,
        seed,
        accelerator,
    )
    return model, tokenizer


def trained_without(full: HybridNormalizer, task, config: HybridConfig, seed: int, mentions, queries, accelerator):
    """`first_stage` on `mentions` alone (an encoder trained and an index built without the others), answering
    with `full`'s classifier length, depth and settings."""
    model = first_stage(task, config, seed, mentions, queries, accelerator)
    model.classifier_max_length, model.classifier_top_k = full.classifier_max_length, full.classifier_top_k
    model.settings = full.settings
    return model


def first_stage_without(full: HybridNormalizer, config: HybridConfig, seed: int, shared: bool, accelerator):
    """A group's first stage from (the task without the group, the other groups' mentions, their queries): `full`'s
    encoder over an index without the group (`shared`), or an encoder trained without it (`trained_without`)."""
    if shared:
        return lambda task, mentions, queries: indexed_without(full, task, mentions, queries)
    return lambda task, mentions, queries: trained_without(full, task, config, seed, mentions, queries, accelerator)


def rows_for(model: HybridNormalizer, reranker: Reranker, queries: list[str], mentions: list) -> tuple:
    """(answers, features, owners, labels) of `queries` under `model` (with its settings), with `reranker`'s
    evidence."""
    return rows(reranker, model.candidates(queries), model.settings, queries, mentions)


def fitted_scores(groups: list[Group], fitted):
    """i -> the probabilities that `fitted(i)`, a reranker never trained on group i's rows, gives those rows."""
    return lambda i: fitted(i).predict_proba(groups[i].features)[:, 1]


def chosen_on_training(task, config: HybridConfig, held_groups: list[Held], seen: set[str]) -> tuple[Settings, dict]:
    """The first stage's settings chosen as the hybrid stage chooses them on dev (`ehrbert.hybrid.choose_settings`),
    but on the training split's cross-fitted candidates: its last variant's settings, and every choice's table."""
    as_dev = dataclasses.replace(task, splits={**task.splits, "dev": task.splits["train"]})
    variants = choose_settings(as_dev, in_split_order(held_groups), config, seen)
    return variants[-1][1], {k: v for _, _, tables in variants for k, v in tables.items()}


def kept_candidates(cache: Path, fingerprint: str, make) -> tuple[list[Held], float]:
    """(groups, the seconds they took) kept in `cache` for this `fingerprint` of the first stage, else `make()`'s,
    then kept: the classifiers fine-tuned again make them the measurement's costly part."""
    if cache.exists():
        kept = KeptGroups(io.BytesIO(cache.read_bytes())).load()
        if kept["fingerprint"] == fingerprint:
            return kept["groups"], kept["seconds"]
    groups, seconds = timed(make)
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(".partial")
    partial.write_bytes(pickle.dumps({"fingerprint": fingerprint, "groups": groups, "seconds": seconds}))
    partial.replace(cache)
    return groups, seconds


class KeptGroups(pickle.Unpickler):
    """Reads kept groups whatever module wrote them: this script run as `__main__`, or imported by another
    benchmark (`cross_encoder.py`)."""

    def find_class(self, module: str, name: str):
        return Held if name == "Held" else super().find_class(module, name)


def timed(make) -> tuple:
    """(make(), the seconds it took)."""
    started = time.perf_counter()
    return make(), time.perf_counter() - started


def fingerprint_of(*folders: Path) -> str:
    """sha256 over every file of `folders` (paths and contents)."""
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(folder)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def measure(
    corpus: str, seed: int, folds: int, params: dict, accelerator, shared: bool, hybrid: bool, on_training: bool
) -> dict:
    """Every reading's dev judgement and dev and test scores for one corpus and seed (`shared`: the cross-fitted
    first stages share the whole split's encoder; `hybrid`: the first stage is the hybrid stage's, its
    classifier cross-fitted too; `on_training`: its settings chosen on the cross-fitted training candidates)."""
    task = load_task(corpus, data_paths(params["data"], ROOT), params["cadec_split"])
    config = config_from(HybridConfig, params["hybrid"]["config"], "hybrid.config", ROOT / "params.yaml")
    rerank = config_from(RerankConfig, params["rerank"]["config"], "rerank.config", ROOT / "params.yaml")
    significance, k = rerank.significance, rerank.candidates
    seen = seen_concepts(task.mentions("train"))

    classifier, cache = None, None
    if hybrid:
        folder = ROOT / f"outputs/hybrid/{corpus}-s{seed}/model"
        if not folder.is_dir():
            raise SystemExit(f"{folder}: no saved normalizer; run `dvc repro hybrid@{corpus}-{seed}` first")
        model = HybridNormalizer.load(folder)  # its default: the rerank stage's first stage
        classifier = lambda mentions, queries: classifier_without(
            task, corpus, seed, params, mentions, queries, accelerator
        )
        run = ROOT / "outputs/finetune" / classifier_run(params, corpus, seed)
        name = f"{corpus}-s{seed}-{folds}-folds{'' if shared else '-per-group'}.pkl"
        cache = (CACHE / name, fingerprint_of(folder, run))
    else:
        model = first_stage(task, config, seed, task.mentions("train"), task.queries("train"), accelerator)
    without = first_stage_without(model, config, seed, shared, accelerator)
    make = lambda: cross_fitted_candidates(task, folds, without, classifier, names_without(task))
    held_groups, cross_seconds = kept_candidates(*cache, make) if cache else timed(make)
    choices = {}
    if on_training:
        model.settings, choices = chosen_on_training(task, config, held_groups, seen)
    groups = decided_groups(task, rerank, held_groups, model.settings)
    train_rows = training_rows(groups)
    evidence = Reranker.build(rerank, task.vocabulary, task.mentions("train"), task.queries("train"))
    dev_mentions, test_mentions = task.mentions("dev"), task.mentions("test")
    dev_first, dev_x, dev_owners, dev_y = rows_for(model, evidence, task.queries("dev"), dev_mentions)
    test_first, test_x, test_owners, _ = rows_for(model, evidence, task.queries("test"), test_mentions)
    documents = [m.doc_id for m in dev_mentions]

    def on_test(model) -> list:
        return reorder(test_first, test_owners, model.predict_proba(test_x)[:, 1], k)

    dev_model = evidence.new_model(seed).fit(dev_x, dev_y)
    cross_fitted_model = evidence.new_model(seed).fit(*train_rows)

    with_dev = lambda x, y: (np.concatenate([x, dev_x]), np.concatenate([y, dev_y]))
    dev_answers = {
        "first stage": dev_first,
        "dev": reorder(dev_first, dev_owners, cross_validated(evidence, dev_x, dev_y, dev_owners, documents, seed), k),
        "cross-fitted": reorder(dev_first, dev_owners, cross_fitted_model.predict_proba(dev_x)[:, 1], k),
        "cross-fitted + dev": reorder(
            dev_first,
            dev_owners,
            dev_with_training_rows(evidence, (dev_x, dev_y, dev_owners), documents, train_rows, seed),
            k,
        ),
    }
    test_answers = {
        "first stage": test_first,
        "dev": on_test(dev_model),
        "cross-fitted": on_test(cross_fitted_model),
        "cross-fitted + dev": on_test(evidence.new_model(seed).fit(*with_dev(*train_rows))),
    }
    held_out = {  # each reading's reranker for training group i, never trained on that group's rows
        "dev": lambda i: dev_model,
        "cross-fitted": lambda i: evidence.new_model(seed).fit(*training_rows(groups, i)),
        "cross-fitted + dev": lambda i: evidence.new_model(seed).fit(*with_dev(*training_rows(groups, i))),
    }
    out = {"cross_fit_seconds": round(cross_seconds, 1), "training_rows": len(train_rows[1]), "dev_rows": len(dev_y)}
    if hybrid:
        out["settings"] = dataclasses.asdict(model.settings)
        out["settings_chosen_on"] = "training" if on_training else "dev"
    if choices:
        out["training_choices"] = choices
    for reading in READINGS:  # the wider judgement where a reranker held out each training group
        training = (
            held_out_training(groups, task.mentions("train"), fitted_scores(groups, held_out[reading]), k)
            if reading in held_out
            else None
        )
        dev, test = (dev_first, dev_answers[reading]), (test_first, test_answers[reading])
        out[reading] = judged(task, seen, significance, dev, test, training, reranks=reading != "first stage")
    return out


def judged(task, seen: set[str], significance: float, dev: tuple, test: tuple, training: tuple | None, reranks: bool):
    """One reading's judgement and scores. `dev` and `test`: (first-stage answers, the reading's answers);
    `training`: (gold mentions, first-stage answers, the reading's answers) of the held-out training mentions,
    for the wider judgement over them and dev together; `reranks`: False for the first stage itself, which is
    never "used"."""
    dev_mentions, test_mentions = task.mentions("dev"), task.mentions("test")
    fixed, broken, p_value = flips(dev_mentions, *dev)
    test_fixed, test_broken, _ = flips(test_mentions, *test)
    dev_scores, test_scores = score(task, "dev", dev[1], seen), score(task, "test", test[1], seen)
    out = {
        "dev_acc1": dev_scores["acc1"],
        "dev_f1": dev_scores["f1"],
        "dev_fixed": fixed,
        "dev_broken": broken,
        "dev_p_value": p_value,
        "used": reranks and fixed > broken and p_value < significance,
        "test": {key: test_scores[key] for key in KEYS},
        "test_fixed": test_fixed,
        "test_broken": test_broken,
    }
    if training is not None:
        gold, first, reranked = training
        train_fixed, train_broken, _ = flips(gold, first, reranked)
        both_fixed, both_broken, both_p = flips(gold + dev_mentions, first + dev[0], reranked + dev[1])
        out |= {
            "train_fixed": train_fixed,
            "train_broken": train_broken,
            "held_out_p_value": both_p,
            "used_held_out": both_fixed > both_broken and both_p < significance,
        }
    return out


def report(results: dict, corpora: list[str], seeds: list[int], folds: int) -> str:
    lines = [
        "# A reranker trained on cross-fitted candidates",
        "",
        f"`benchmarks/cross_fitted_rerank.py` (see its docstring): first stage retrieval alone, or the hybrid "
        "stage's (`hybrid`: its classifier and dev-chosen settings, or with `settings on training` those settings "
        f"chosen on the cross-fitted training candidates instead); {folds} groups of "
        "training documents, each group's candidates from a first stage indexed without it, its encoder trained "
        "without it (`per-group`) or the whole split's (`shared`), the hybrid's classifier fine-tuned again without "
        "it. Mean (SD) over the seeds measured. Dev: acc@1 "
        "(the `dev` reading's cross-validated over dev documents), mentions fixed / broken at rank 1 against the "
        "first stage over all seeds, and the seeds on which the stage's rule (McNemar) would use it. Test: always "
        "used, with the paired t-test's P over seeds against the first stage, and the mentions fixed / broken. "
        "Held out: the same rule over every mention of training (each group reranked by a reranker that never "
        "trained on its rows, against the group's cross-fitted first stage) and dev together; training fixed / "
        "broken and the seeds on which that rule would use it. The last two rows of a corpus are what each rule "
        "would ship on each seed: of the readings it admits, the one with the most mentions fixed net of those "
        "broken where it judged (the first stage if none); their `used on` counts the seeds that ship a reranker.",
        "",
        "| corpus | encoder | seeds | reading | dev acc@1 | dev fixed / broken | used on | held-out training fixed / "
        "broken | used on, held out | test acc@1 | P | seen / unseen | test F1 | test fixed / broken |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for corpus in corpora:
        for first_stage_name, encoder, settings in itertools.product(FIRST_STAGES, ENCODERS, SETTINGS):
            key = result_key(encoder, first_stage_name, settings)
            suffix = encoder + ("" if first_stage_name == "retrieval" else f", {first_stage_name}")
            suffix += ", settings on training" if settings == "training" else ""
            measured = [s for s in seeds if f"{corpus}-s{s}-{key}" in results]
            if not measured:
                continue
            rows = [results[f"{corpus}-s{s}-{key}"] for s in measured]
            lines += table_rows(f"{corpus} | {suffix} | {', '.join(map(str, measured))}", rows)
            seconds = sum(r["cross_fit_seconds"] for r in rows) / len(rows)
            notes.append(
                f"- {corpus}, {suffix}: {rows[0]['training_rows']} cross-fitted training rows against "
                f"{rows[0]['dev_rows']} dev rows a seed; the {folds} cross-fitted first stages took "
                f"{seconds / 60:.1f} min a seed (2 CPU cores)."
            )
    return "\n".join([*lines, "", *notes]) + "\n"


def result_key(encoder: str, first_stage_name: str, settings: str = "dev") -> str:
    """The results' key suffix of a first stage (retrieval alone keeps the keys it had before the hybrid, and the
    stage's dev-chosen settings theirs before `--settings`)."""
    key = encoder if first_stage_name == "retrieval" else f"{encoder}-{first_stage_name}"
    return key if settings == "dev" else f"{key}-{settings}"


def table_rows(head: str, rows: list[dict]) -> list[str]:
    """One table line per reading, over `rows` (one a seed), then one for what each rule would choose."""
    first = [r["first stage"]["test"]["acc1"] for r in rows]
    lines = [line(head, reading, [r[reading] for r in rows], first) for reading in READINGS]
    if all("used_held_out" in r["dev"] for r in rows):
        for rule, label in (("used", "chosen on dev"), ("used_held_out", "chosen on held-out training + dev")):
            chosen = [choose(r, rule) for r in rows]
            cells = [r[reading] | {"used": reading != "first stage"} for r, reading in zip(rows, chosen)]
            lines.append(line(head, f"*{label}*", cells, first, held_out=False))
    return lines


def choose(row: dict, rule: str, readings: tuple[str, ...] = READINGS) -> str:
    """The reading `rule` ("used": dev's judgement; "used_held_out": held-out training and dev's) would ship for
    one seed: of `readings` (the first stage first) it admits, the one with the most mentions fixed net of those
    broken where it judged (the plainer reading, earlier in `readings`, on a tie); the first stage when it admits
    none."""
    net = lambda c: (
        c["dev_fixed"] - c["dev_broken"] + (c["train_fixed"] - c["train_broken"] if rule == "used_held_out" else 0)
    )
    admitted = [reading for reading in readings[1:] if row[reading][rule]]
    return max(admitted, key=lambda reading: (net(row[reading]), -readings.index(reading)), default=readings[0])


def line(head: str, label: str, cells: list[dict], first: list[float], held_out: bool = True) -> str:
    """A table line over `cells` (one reading's results a seed); P is paired over seeds against `first`."""
    test = {key: mean_sd([c["test"][key] for c in cells]) for key in KEYS}
    changed = [c["test"]["acc1"] for c in cells] != first
    p_value = p_paired(first, [c["test"]["acc1"] for c in cells]) if changed else "–"
    total = {key: sum(c.get(key, 0) for c in cells) for key in FLIPS}
    judged = "– | –"
    if held_out and all("used_held_out" in c for c in cells):
        admitted = sum(c["used_held_out"] for c in cells)
        judged = f"{total['train_fixed']} / {total['train_broken']} | {admitted} of {len(cells)}"
    return (
        f"| {head} | {label} | {mean_sd([c['dev_acc1'] for c in cells])} | "
        f"{total['dev_fixed']} / {total['dev_broken']} | {sum(c['used'] for c in cells)} of {len(cells)} | "
        f"{judged} | {test['acc1']} | {p_value} | {test['acc1_seen']} / {test['acc1_unseen']} | {test['f1']} | "
        f"{total['test_fixed']} / {total['test_broken']} |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", nargs="+", default=["ncbi", "cdr", "cadec"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--folds", type=int, default=5, help="groups of training documents")
    parser.add_argument(
        "--encoder", choices=ENCODERS, default="shared", help="the cross-fitted first stages' encoder (see above)"
    )
    parser.add_argument(
        "--first-stage", choices=FIRST_STAGES, default="retrieval", help="retrieval alone or the hybrid's (see above)"
    )
    parser.add_argument(
        "--settings",
        choices=SETTINGS,
        default="dev",
        help="the hybrid first stage's settings: the stage's, chosen on dev, or chosen on the cross-fitted training "
        "candidates in the same way (dev then judges a reranker without having chosen the first stage)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "reports/cross_fitted_rerank")
    parser.add_argument("--report-only", action="store_true", help="write the report from the kept results")
    args = parser.parse_args(argv)
    if args.settings == "training" and args.first_stage != "hybrid":
        parser.error("--settings training chooses the hybrid's settings: --first-stage hybrid")
    os.chdir(ROOT)  # params.yaml's paths are relative to the repository
    params = read_params(ROOT / "params.yaml")
    shared, hybrid, on_training = args.encoder == "shared", args.first_stage == "hybrid", args.settings == "training"
    key = result_key(args.encoder, args.first_stage, args.settings)
    results = kept_results(
        args.out.with_suffix(".json"),
        args,
        key,
        lambda corpus, seed, accelerator: measure(
            corpus, seed, args.folds, params, accelerator, shared, hybrid, on_training
        ),
        READINGS,
    )
    args.out.with_suffix(".md").write_text(report(results, args.corpora, args.seeds, args.folds), encoding="utf-8")


def kept_key(corpus: str, seed: int, suffix: str = "") -> str:
    """A kept result's key: `<corpus>-s<seed>`, then `-<suffix>` where there is one."""
    return f"{corpus}-s{seed}" + (f"-{suffix}" if suffix else "")


def kept_results(store: Path, args, suffix: str, measure, readings: tuple[str, ...]) -> dict:
    """The results kept in `store`, with each of `args.corpora` x `args.seeds` not there yet (key
    `<corpus>-s<seed>[-suffix]`) measured by `measure(corpus, seed, accelerator)` and kept at once, unless
    `args.report_only`: an interrupted measurement goes on where it stopped."""
    results = json.loads(store.read_text()) if store.exists() else {}
    if args.report_only:
        return results
    accelerator = make_accelerator()
    for corpus in args.corpora:
        for seed in args.seeds:
            key = kept_key(corpus, seed, suffix)
            if key in results:
                continue
            results[key] = measure(corpus, seed, accelerator)
            store.write_text(json.dumps(results, indent=1) + "\n")
            summary = {r: round(results[key][r]["test"]["acc1"], 4) for r in readings}
            print(key, summary, file=sys.stderr, flush=True)
    return results


if __name__ == "__main__":
    main()
