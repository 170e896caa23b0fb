"""A cross-encoder over the hybrid's candidates: the mention and each candidate read together by one transformer,
alone and as more features of the rerank stage's trees.

    accelerate launch $ACCELERATE_ARGS benchmarks/cross_encoder.py [--corpora ncbi cdr cadec] [--seeds 1 2 3]
        [--folds 5] [--epochs 1] [--train-candidates 5] [--context 0] [--max-length 64] [--report-only]

The rerank stage's reranker (`ehrbert.models.rerank`) is gradient-boosted trees over hand-made features of a
mention and a candidate: scores, ranks, training evidence, character n-gram and word overlap. A cross-encoder
reads the pair itself: the mention's text and the candidate's names and training mentions, in one sequence,
scored by a transformer with one output (`AutoModelForSequenceClassification`, `num_labels=1`). Trained on the
candidates the first stage really gives unseen mentions, it might learn the corpus's conventions ("familial
melanoma" is annotated *Melanoma*) that no hand-made feature names.

The first stage is the hybrid stage's saved normalizer (outputs/hybrid/<corpus>-s<seed>/model, its dev-chosen
settings). Its training candidates are `benchmarks/cross_fitted_rerank.py`'s, `--encoder shared --first-stage
hybrid`: `--folds` groups of training documents, each group's candidates from an index, evidence and a
classifier that never held it (kept in outputs/cross_fitted_rerank/, made there when missing).

- **The model.** A candidate reads as its first `names` vocabulary names, then " | " and its first `mentions`
  training mentions (from evidence without the mention's own group: `cross_fitted_rerank.decided_groups`). The
  mention reads as its query (the first stage's preprocessed text), or with `--context N` as its query, the
  tokenizer's separator and its sentence (at most N words each side of the mention; Punkt's sentence bounds):
  a second configuration, kept and reported apart (`-sentence<N>`) and compared with the mention alone. The
  start is the retrieval encoder's start (`hybrid.config.encoder`, the sentence-trained MiniLM here), with a new
  one-output head.
- **Training: listwise, on two halves.** Each training mention with a gold concept among its first
  `--candidates` (rerank.config) is a list: its first `--train-candidates` candidates and any gold one below
  them; the loss is the cross-entropy of the softmax over the list against its gold candidates. The groups are cut
  into two halves (odd and even groups); a cross-encoder is trained on each half and scores the other half's
  rows, so that every training row's score comes from a model that never trained on it, as a test row's does. Dev
  and test rows are scored by both, their logits averaged: a little smoother than one model's logit, so the trees
  trained on training rows meet a slightly different feature on dev and test (its effect is not measured).
- **Readings**, each judged as the rerank stage judges its own (used where it fixes more dev mentions than it
  breaks at rank 1, one-sided exact McNemar P < `significance`), and by the wider held-out judgement of
  `cross_fitted_rerank.py` (dev and every training mention, each group by a model that never trained on it):
  - `cross-encoder`: the first `--candidates` candidates sorted by the cross-encoder's score alone;
  - `trees, dev` (the stage's reranker) and `trees + cross-encoder, dev`: the trees trained on dev's rows, dev
    cross-validated over dev documents; the second with three more features: the cross-encoder's logit, its rank
    among the mention's candidates and its gap to the mention's best;
  - `trees, cross-fitted` and `trees + cross-encoder, cross-fitted`: the trees trained on the training split's
    cross-fitted rows (dev unseen by them);
  - `trees, cross-fitted + dev` and `trees + cross-encoder, cross-fitted + dev`: the trees trained on the training
    split's cross-fitted rows and dev's (each dev fold's answers from trees trained without it).
- **Cost.** The seconds of training and of scoring, and the cross-encoder's latency for one mention (its
  candidates in one batch, one process) over the first `--latency-mentions` test mentions: what a served reranker
  would add to each request.

`--epochs E` above 1 is a configuration of its own too (`-epochs<E>`), compared with one epoch likewise. Not
measured here: a cross-encoder started from a biomedical checkpoint (none is at hand).

The cross-encoders' scores of each corpus and seed are kept in outputs/cross_encoder/ (not a stage's output),
keyed by the hybrid's saved normalizer, its classifier's fine-tuning folder and the cross-encoder's settings (not
by this code: delete the folder after changing it). Each finished corpus and seed is kept in
reports/cross_encoder.json, so that an interrupted measurement goes on where it stopped; writes
reports/cross_encoder.md. It asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cross_fitted_rerank as bench  # benchmarks/ (this script's folder) is on the path
import numpy as np
import torch
from data_paths import data_paths
from document_consistency import p_paired
from nltk.tokenize.punkt import PunktSentenceTokenizer
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup, set_seed

from ehrbert.hub import resolve_model
from ehrbert.hybrid import HybridConfig
from ehrbert.metrics import seen_concepts
from ehrbert.models.hybrid import HybridNormalizer
from ehrbert.models.rerank import RerankConfig, Reranker, reorder
from ehrbert.rerank import cross_validated
from ehrbert.stage import config_from, read_params
from ehrbert.tasks import load_task

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "outputs/cross_encoder"  # each corpus and seed's cross-encoder scores, kept (not a stage's output)
READINGS = (
    "first stage",
    "cross-encoder",
    "trees, dev",
    "trees + cross-encoder, dev",
    "trees, cross-fitted",
    "trees + cross-encoder, cross-fitted",
    "trees, cross-fitted + dev",
    "trees + cross-encoder, cross-fitted + dev",
)


@dataclass
class CrossEncoderConfig:
    model: str  # a folder or package:<module>; its weights start the cross-encoder
    epochs: int = 1
    learning_rate: float = 5e-5
    warmup: float = 0.1  # share of the steps with a rising learning rate
    batch_mentions: int = 8  # lists (mentions) a step
    train_candidates: int = 5  # a list's first-stage candidates (plus its gold ones below them)
    max_length: int = 64  # word pieces of a (mention, candidate) pair
    names: int = 3  # vocabulary names a candidate reads as
    mentions: int = 3  # training mentions a candidate reads as, after its names
    context: int = 0  # words of the mention's sentence each side of it that the mention reads with (0: none)

    def key(self) -> str:
        """The settings as the kept scores are keyed by; `context` only where it is on, so that scores kept
        before it existed stay valid."""
        settings = asdict(self)
        if not self.context:
            del settings["context"]
        return json.dumps(settings, sort_keys=True)

    def variant(self) -> str:
        """The suffix of this configuration's kept scores and results: `sentence<N>` with the mention's sentence,
        `epochs<E>` for more than one epoch, joined by "-"; empty for the mention alone, one epoch."""
        parts = []
        if self.context:
            parts.append(f"sentence{self.context}")
        if self.epochs != 1:
            parts.append(f"epochs{self.epochs}")
        return "-".join(parts)


def candidate_text(evidence: Reranker, concept: str, config: CrossEncoderConfig) -> str:
    """The concept as the cross-encoder reads it: its first names, then " | " and its first training mentions
    that are not among those names (rows of `evidence`, built without the mention's own group)."""
    names = [evidence.texts[j] for j in evidence.names.get(concept, [])[: config.names]]
    seen = [t for t in (evidence.texts[j] for j in evidence.mentions.get(concept, [])) if t not in names]
    text = " ; ".join(names)
    return text + (" | " + " ; ".join(seen[: config.mentions]) if seen[: config.mentions] else "")


def mention_contexts(task, split: str, words: int) -> list[str]:
    """Each mention of `split` (`task.mentions` order) in its sentence: at most `words` words each side of it.
    Sentence bounds are Punkt's (NLTK's, untrained: no data to download); a mention across a bound keeps its
    first sentence's start and its own end."""
    punkt = PunktSentenceTokenizer()
    texts = {doc.doc_id: doc.text for doc in task.splits[split]}
    bounds = {doc_id: list(punkt.span_tokenize(text)) for doc_id, text in texts.items()}
    out = []
    for mention in task.mentions(split):
        text = texts[mention.doc_id]
        start, end = next(((a, b) for a, b in bounds[mention.doc_id] if a <= mention.start < b), (mention.start, 0))
        before = text[start : mention.start].split()[-words:] if words else []
        after = text[mention.end : max(end, mention.end)].split()[:words]
        out.append(" ".join([*before, text[mention.start : mention.end], *after]))
    return out


def mention_texts(queries: list[str], contexts: list[str] | None, separator: str) -> list[str]:
    """What each mention reads as: its query, then the tokenizer's separator and its sentence where given."""
    if contexts is None:
        return list(queries)
    return [f"{query} {separator} {context}" for query, context in zip(queries, contexts)]


def pair_texts(queries, answers, owners: np.ndarray, evidence: Reranker, config: CrossEncoderConfig, k: int):
    """One (mention, candidate) text pair a row of the reranker's features (`Reranker.features`' row order)."""
    concepts = [c for i in dict.fromkeys(owners.tolist()) for c in answers[i].ranked[:k]]
    texts: dict[str, str] = {}
    for concept in concepts:
        if concept not in texts:
            texts[concept] = candidate_text(evidence, concept, config)
    return [(queries[i], texts[c]) for c, i in zip(concepts, owners.tolist())]


def mention_rows(owners: np.ndarray) -> list[np.ndarray]:
    """The rows of each mention, in order: `Reranker.features` writes a mention's rows one after the other."""
    if not len(owners):
        return []
    starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
    return [np.arange(start, end) for start, end in zip(starts.tolist(), np.r_[starts[1:], len(owners)].tolist())]


def listwise_lists(owners: np.ndarray, labels: np.ndarray, train_candidates: int) -> list[np.ndarray]:
    """The rows of each mention that has a gold candidate: its first `train_candidates` and any gold one below;
    a mention with no gold candidate, or with only one row, teaches nothing and is left out."""
    lists = []
    for rows in mention_rows(owners):
        start = rows[0]
        if not labels[rows].any():
            continue
        kept = rows[(rows - start < train_candidates) | (labels[rows] == 1)]
        if len(kept) > 1:
            lists.append(kept)
    return lists


def encode(tokenizer, pairs: list[tuple[str, str]], config: CrossEncoderConfig, device) -> dict:
    left, right = zip(*pairs)
    return tokenizer(
        list(left), list(right), padding=True, truncation=True, max_length=config.max_length, return_tensors="pt"
    ).to(device)


def train_cross_encoder(config: CrossEncoderConfig, pairs, labels: np.ndarray, lists, seed: int, accelerator):
    """(model, tokenizer, its loss history: the mean loss of every 50 steps) trained listwise on `lists` (rows
    of `pairs` and `labels`). On N processes every process draws the same lists a step and encodes its share."""
    set_seed(seed)
    path = resolve_model(config.model)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(path)
    steps = config.epochs * math.ceil(len(lists) / config.batch_mentions)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    schedule = get_linear_schedule_with_warmup(optimizer, round(config.warmup * steps), steps)
    trained, optimizer = accelerator.prepare(model, optimizer)
    world, rank = accelerator.num_processes, accelerator.process_index
    rng = random.Random(seed)
    history, window = [], []
    trained.train()
    for _ in range(config.epochs):
        order = rng.sample(range(len(lists)), len(lists))
        for start in range(0, len(order), config.batch_mentions):
            chunk = order[start : start + config.batch_mentions]
            chunk += order[: max(0, world - len(chunk))]  # a list for every process, even on the last step
            mine = [lists[i] for i in chunk][rank::world]
            rows = np.concatenate(mine)
            with accelerator.autocast():
                logits = trained(**encode(tokenizer, [pairs[r] for r in rows], config, accelerator.device))
            logits = logits.logits.squeeze(-1).float()
            gold = torch.as_tensor(labels[rows] == 1, device=logits.device)
            loss, at = 0.0, 0
            for rows_of_list in mine:
                part, positive = logits[at : at + len(rows_of_list)], gold[at : at + len(rows_of_list)]
                loss = loss + torch.logsumexp(part, 0) - torch.logsumexp(part[positive], 0)
                at += len(rows_of_list)
            loss = loss / len(mine)
            accelerator.backward(loss)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            window.append(loss.item())
            if len(window) == 50:
                history.append(round(sum(window) / len(window), 4))
                window = []
    if window:
        history.append(round(sum(window) / len(window), 4))
    return accelerator.unwrap_model(trained).eval(), tokenizer, history


def cross_scores(model, tokenizer, pairs, config: CrossEncoderConfig, batch: int = 256) -> np.ndarray:
    """The cross-encoder's logit of each pair (pairs of like length batched together)."""
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    out = np.zeros(len(pairs), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, len(order), batch):
            chunk = order[start : start + batch]
            logits = model(**encode(tokenizer, [pairs[i] for i in chunk], config, model.device)).logits
            out[chunk] = logits.squeeze(-1).float().cpu().numpy()
    return out


def with_scores(features: np.ndarray, owners: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """`features` with three more columns: the cross-encoder's logit, its rank among the mention's rows (0 =
    best) and its gap to the mention's best logit."""
    rank, gap = np.zeros(len(logits)), np.zeros(len(logits))
    for rows in mention_rows(owners):
        order = np.argsort(-logits[rows], kind="stable")
        rank[rows[order]] = np.arange(len(rows))
        gap[rows] = logits[rows].max() - logits[rows]
    return np.column_stack([features, logits, rank, gap])


def single_mention_latency(model, tokenizer, pairs, owners: np.ndarray, config, mentions: int) -> dict:
    """Milliseconds to score one mention's candidates (one batch, one request at a time), over the first
    `mentions` mentions: p50 and p99."""
    seconds = []
    for rows in mention_rows(owners)[:mentions]:
        started = time.perf_counter()
        cross_scores(model, tokenizer, [pairs[r] for r in rows], config)
        seconds.append(time.perf_counter() - started)
    return {
        "p50_ms": round(1000 * float(np.percentile(seconds, 50)), 1),
        "p99_ms": round(1000 * float(np.percentile(seconds, 99)), 1),
    }


def measure(corpus: str, seed: int, folds: int, params: dict, accelerator, config: CrossEncoderConfig, latency: int):
    task = load_task(corpus, data_paths(params["data"], ROOT), params["cadec_split"])
    hybrid_config = config_from(HybridConfig, params["hybrid"]["config"], "hybrid.config", ROOT / "params.yaml")
    rerank = config_from(RerankConfig, params["rerank"]["config"], "rerank.config", ROOT / "params.yaml")
    significance, k = rerank.significance, rerank.candidates
    seen = seen_concepts(task.mentions("train"))
    folder = ROOT / f"outputs/hybrid/{corpus}-s{seed}/model"
    if not folder.is_dir():
        raise SystemExit(f"{folder}: no saved normalizer; run `dvc repro hybrid@{corpus}-{seed}` first")
    model = HybridNormalizer.load(folder)
    classifier = lambda mentions, queries: bench.classifier_without(
        task, corpus, seed, params, mentions, queries, accelerator
    )
    without = bench.first_stage_without(model, hybrid_config, seed, True, accelerator)
    make = lambda: bench.cross_fitted_candidates(task, folds, without, classifier, bench.names_without(task))
    run = ROOT / "outputs/finetune" / bench.classifier_run(params, corpus, seed)
    cache = bench.CACHE / f"{corpus}-s{seed}-{folds}-folds.pkl"
    first_stage_print = bench.fingerprint_of(folder, run)  # the hybrid's files and its classifier's run
    held_groups, cross_seconds = bench.kept_candidates(cache, first_stage_print, make)
    groups = bench.decided_groups(task, rerank, held_groups, model.settings)
    evidence = Reranker.build(rerank, task.vocabulary, task.mentions("train"), task.queries("train"))
    train_mentions = task.mentions("train")
    dev_mentions, test_mentions = task.mentions("dev"), task.mentions("test")
    dev_first, dev_x, dev_owners, dev_y = bench.rows_for(model, evidence, task.queries("dev"), dev_mentions)
    test_first, test_x, test_owners, _ = bench.rows_for(model, evidence, task.queries("test"), test_mentions)
    separator = AutoTokenizer.from_pretrained(resolve_model(config.model)).sep_token
    read = {
        split: mention_texts(
            task.queries(split), mention_contexts(task, split, config.context) if config.context else None, separator
        )
        for split in ("train", "dev", "test")
    }
    dev_pairs = pair_texts(read["dev"], dev_first, dev_owners, evidence, config, k)
    test_pairs = pair_texts(read["test"], test_first, test_owners, evidence, config, k)
    group_pairs = [
        pair_texts([read["train"][j] for j in g.held], g.answers, g.owners, g.evidence, config, k) for g in groups
    ]

    fingerprint = first_stage_print + config.key() + f"{latency}"
    make = lambda: halves_scores(
        config, groups, group_pairs, dev_pairs, test_pairs, test_owners, seed, accelerator, latency
    )
    scores = kept_scores(CACHE / f"{bench.kept_key(corpus, seed, config.variant())}.pkl", fingerprint, make)
    group_logits, dev_logits, test_logits = scores["groups"], scores["dev"], scores["test"]

    dev_documents = [m.doc_id for m in dev_mentions]
    dev_xc, test_xc = with_scores(dev_x, dev_owners, dev_logits), with_scores(test_x, test_owners, test_logits)
    with_ce = [g._replace(features=with_scores(g.features, g.owners, s)) for g, s in zip(groups, group_logits)]
    plain = bench.training_rows(groups)
    augmented = bench.training_rows(with_ce)

    def trees(dev_features, test_features, group_rows, train_rows, with_dev: bool = True) -> tuple:
        """(dev probabilities, test probabilities, group i -> a model never trained on group i) of the trees:
        trained on dev (dev cross-validated) when `train_rows` is None, else on the cross-fitted training rows, and
        dev's too `with_dev` (each dev fold then from one trained on the other folds)."""
        new = evidence.new_model
        if train_rows is None:
            cv = cross_validated(evidence, dev_features, dev_y, dev_owners, dev_documents, seed)
            fitted = new(seed).fit(dev_features, dev_y)
            return cv, fitted.predict_proba(test_features)[:, 1], lambda i: fitted
        if not with_dev:
            fitted = new(seed).fit(*train_rows)
            on_dev, on_test = fitted.predict_proba(dev_features)[:, 1], fitted.predict_proba(test_features)[:, 1]
            return on_dev, on_test, lambda i: new(seed).fit(*bench.training_rows(group_rows, i))
        cv = bench.dev_with_training_rows(evidence, (dev_features, dev_y, dev_owners), dev_documents, train_rows, seed)
        both = lambda x, y: (np.concatenate([x, dev_features]), np.concatenate([y, dev_y]))
        on_test = new(seed).fit(*both(*train_rows)).predict_proba(test_features)[:, 1]
        return cv, on_test, lambda i: new(seed).fit(*both(*bench.training_rows(group_rows, i)))

    probabilities = {
        "trees, dev": trees(dev_x, test_x, groups, None),
        "trees + cross-encoder, dev": trees(dev_xc, test_xc, with_ce, None),
        "trees, cross-fitted": trees(dev_x, test_x, groups, plain, with_dev=False),
        "trees + cross-encoder, cross-fitted": trees(dev_xc, test_xc, with_ce, augmented, with_dev=False),
        "trees, cross-fitted + dev": trees(dev_x, test_x, groups, plain),
        "trees + cross-encoder, cross-fitted + dev": trees(dev_xc, test_xc, with_ce, augmented),
    }
    out = {
        "config": asdict(config),
        "cross_fit_seconds": round(cross_seconds, 1),
        **scores["facts"],
        "test_ms_a_mention_batched": round(1000 * scores["facts"]["test_seconds"] / max(1, len(test_mentions)), 2),
    }
    for reading in READINGS:
        if reading == "first stage":
            dev_answers, test_answers = dev_first, test_first
        elif reading == "cross-encoder":
            dev_answers = reorder(dev_first, dev_owners, dev_logits, k)
            test_answers = reorder(test_first, test_owners, test_logits, k)
        else:
            cv, on_test, _ = probabilities[reading]
            dev_answers = reorder(dev_first, dev_owners, cv, k)
            test_answers = reorder(test_first, test_owners, on_test, k)
        training = None
        if reading == "cross-encoder":  # each training group reordered by a model never trained on it
            training = bench.held_out_training(groups, train_mentions, lambda i: group_logits[i], k)
        elif reading != "first stage":
            rows = with_ce if "cross-encoder" in reading else groups
            fitted = bench.fitted_scores(rows, probabilities[reading][2])
            training = bench.held_out_training(groups, train_mentions, fitted, k)
        dev, test = (dev_first, dev_answers), (test_first, test_answers)
        out[reading] = bench.judged(task, seen, significance, dev, test, training, reranks=reading != "first stage")
    return out


def halves_scores(config, groups, group_pairs, dev_pairs, test_pairs, test_owners, seed, accelerator, latency):
    """The cross-encoders' logits of every training group's rows (from the half that did not train on them), of
    dev's and of test's (both halves' mean), and the facts of their training and scoring."""
    halves = [[i for i in range(len(groups)) if i % 2 == h] for h in (0, 1)]
    group_logits: list = [None] * len(groups)
    dev_logits, test_logits = np.zeros(len(dev_pairs)), np.zeros(len(test_pairs))
    facts = {"training_lists": 0, "cross_encoder_train_seconds": 0.0, "cross_encoder_score_seconds": 0.0}
    facts["loss_history"] = []
    for h, half in enumerate(halves):
        pairs = [p for i in half for p in group_pairs[i]]
        labels = np.concatenate([groups[i].labels for i in half])
        owners = np.concatenate([groups[i].owners + offset for i, offset in zip(half, offsets(groups, half))])
        lists = listwise_lists(owners, labels, config.train_candidates)
        facts["training_lists"] += len(lists)
        started = time.perf_counter()
        cross, tokenizer, history = train_cross_encoder(config, pairs, labels, lists, seed, accelerator)
        facts["cross_encoder_train_seconds"] += round(time.perf_counter() - started, 1)
        facts["loss_history"].append(history)
        print(f"  half {h + 1}/2: {len(lists)} lists, loss {history}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        for i in halves[1 - h]:
            group_logits[i] = cross_scores(cross, tokenizer, group_pairs[i], config)
        dev_logits += cross_scores(cross, tokenizer, dev_pairs, config) / 2
        test_started = time.perf_counter()
        test_logits += cross_scores(cross, tokenizer, test_pairs, config) / 2
        facts["test_seconds"] = round(time.perf_counter() - test_started, 2)
        facts["cross_encoder_score_seconds"] += round(time.perf_counter() - started, 1)
        if h == 0 and latency:
            facts["single_mention_latency"] = single_mention_latency(
                cross, tokenizer, test_pairs, test_owners, config, latency
            )
    return {"groups": group_logits, "dev": dev_logits, "test": test_logits, "facts": facts}


def kept_scores(cache: Path, fingerprint: str, make) -> dict:
    """`make()`'s scores, kept in `cache` for this `fingerprint` (the first stage, the config): training the
    cross-encoders is the measurement's costly part, the readings over their scores take seconds."""
    if cache.exists():
        kept = pickle.loads(cache.read_bytes())
        if kept["fingerprint"] == fingerprint:
            return kept["scores"]
    scores = make()
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(".partial")
    partial.write_bytes(pickle.dumps({"fingerprint": fingerprint, "scores": scores}))
    partial.replace(cache)
    return scores


def offsets(groups: list, half: list[int]) -> list[int]:
    """Where each group's mention numbers start when the half's groups are put one after the other (a group's
    `owners` count its own mentions from 0)."""
    starts, at = [], 0
    for i in half:
        starts.append(at)
        at += len(groups[i].held)
    return starts


def variants(results: dict) -> list[str]:
    """The configurations kept in `results` (key `<corpus>-s<seed>[-variant]`), the mention alone first."""
    found = {key.split("-", 2)[2] if key.count("-") >= 2 else "" for key in results}
    return sorted(found, key=lambda v: (v != "", v))


def variant_label(variant: str) -> str:
    """A configuration's suffix as the report names it: ", in its sentence (±12 words), 2 epochs"."""
    words = {"sentence": "in its sentence (±{} words)", "epochs": "{} epochs"}
    labels = []
    for part in filter(None, variant.split("-")):
        name = part.rstrip("0123456789")
        labels.append(words[name].format(part.removeprefix(name)) if name in words else part)
    return "".join(f", {label}" for label in labels)


def report(results: dict, corpora: list[str], seeds: list[int]) -> str:
    lines = [
        "# A cross-encoder over the hybrid's candidates",
        "",
        "`benchmarks/cross_encoder.py` (see its docstring): the hybrid stage's first stage with its dev-chosen "
        "settings; a MiniLM cross-encoder (the mention's text, alone or in its sentence, against a candidate's names "
        "and training mentions) trained listwise on the training split's cross-fitted candidates, two halves each "
        "scoring the other; the rerank stage's trees with and without the cross-encoder's score as features, "
        "trained on dev or on the cross-fitted training rows and dev. Mean (SD) over the seeds measured. Columns as "
        "in [cross_fitted_rerank.md](cross_fitted_rerank.md): dev acc@1 (cross-validated over dev documents where "
        "dev trains), dev mentions fixed / broken at rank 1 against the first stage over all seeds and the seeds on "
        "which dev's rule (McNemar) would use the reading; the held-out training + dev rule likewise; test acc@1 "
        "with the paired t-test's P over seeds against the first stage. The last two rows of a block are what each "
        "rule would ship on each seed.",
        "",
        "| corpus | seeds | reading | dev acc@1 | dev fixed / broken | used on | held-out training fixed / "
        "broken | used on, held out | test acc@1 | P | seen / unseen | test F1 | test fixed / broken |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes, compared = [], []
    for variant in variants(results):
        for corpus in corpora:
            measured = [s for s in seeds if bench.kept_key(corpus, s, variant) in results]
            if not measured:
                continue
            rows = [results[bench.kept_key(corpus, s, variant)] for s in measured]
            head = f"{corpus}{variant_label(variant)} | {', '.join(map(str, measured))}"
            first = [r["first stage"]["test"]["acc1"] for r in rows]
            lines += [bench.line(head, reading, [r[reading] for r in rows], first) for reading in READINGS]
            for rule, label in (("used", "chosen on dev"), ("used_held_out", "chosen on held-out training + dev")):
                chosen = [bench.choose(r, rule, READINGS) for r in rows]
                cells = [r[reading] | {"used": reading != "first stage"} for r, reading in zip(rows, chosen)]
                lines.append(bench.line(head, f"*{label}*", cells, first, held_out=False))
            notes.append(cost_note(f"{corpus}{variant_label(variant)}", measured, rows))
            if variant:
                compared += against_alone(results, corpus, variant, seeds)
    if compared:
        compared = [
            "",
            "Each configuration against the mention alone trained for one epoch, on the seeds both measured: test "
            "acc@1 and F1 (mean of the seeds), the difference and its paired t-test's P over seeds.",
            "",
            "| corpus | configuration | seeds | reading | acc@1 | alone | difference | P | F1 | alone | difference |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *compared,
        ]
    return "\n".join([*lines, *compared, "", *notes]) + "\n"


def against_alone(results: dict, corpus: str, variant: str, seeds: list[int]) -> list[str]:
    """Table lines: each reading with the cross-encoder under `variant` against the same reading with the
    mention alone, over the seeds both have."""
    both = [s for s in seeds if bench.kept_key(corpus, s, variant) in results and bench.kept_key(corpus, s) in results]
    if not both:
        return []
    out = []
    for reading in (r for r in READINGS if "cross-encoder" in r):
        cells = {}
        for key in ("acc1", "f1"):
            cells[key] = [
                [results[bench.kept_key(corpus, s, suffix)][reading]["test"][key] for s in both]
                for suffix in (variant, "")
            ]
        (acc, acc_alone), (f1, f1_alone) = cells["acc1"], cells["f1"]
        out.append(
            f"| {corpus} | {variant_label(variant).removeprefix(', ')} | {', '.join(map(str, both))} | {reading} | "
            f"{percent(acc):.2f} | {percent(acc_alone):.2f} | {difference(acc, acc_alone)} | "
            f"{p_paired(acc_alone, acc)} | {percent(f1):.2f} | {percent(f1_alone):.2f} | {difference(f1, f1_alone)} |"
        )
    return out


def percent(values: list[float]) -> float:
    return 100 * sum(values) / len(values)


def difference(values: list[float], against: list[float]) -> str:
    """The difference of the two means in points, signed ("+0.00" rather than "-0.00")."""
    return f"{round(percent(values) - percent(against), 2) + 0.0:+.2f}"


def cost_note(label: str, measured: list[int], rows: list[dict]) -> str:
    each = lambda key, scale=1: " / ".join(f"{r[key] / scale:.1f}" for r in rows)
    latency = " / ".join(
        f"{r['single_mention_latency']['p50_ms']:.1f} (p99 {r['single_mention_latency']['p99_ms']:.1f})"
        if "single_mention_latency" in r
        else "–"
        for r in rows
    )
    lists = " / ".join(str(r["training_lists"]) for r in rows)
    return (
        f"- {label}, seed by seed ({', '.join(map(str, measured))}; wall times depend on what else shares the "
        f"2 CPU cores, fp32): training lists {lists}; training the two cross-encoders "
        f"{each('cross_encoder_train_seconds', scale=60)} min; scoring every row "
        f"{each('cross_encoder_score_seconds', scale=60)} min; test scored in batches "
        f"{each('test_ms_a_mention_batched')} ms a mention; one mention a request, p50 {latency} ms."
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", nargs="+", default=["ncbi", "cdr", "cadec"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--folds", type=int, default=5, help="groups of training documents")
    parser.add_argument("--epochs", type=int, default=CrossEncoderConfig.epochs)
    parser.add_argument("--train-candidates", type=int, default=CrossEncoderConfig.train_candidates)
    parser.add_argument(
        "--context",
        type=int,
        default=CrossEncoderConfig.context,
        help="words of the mention's sentence each side of it that the mention reads with (0: none); raise "
        "--max-length with it (128 for 12 words: longer pairs lose the end of their longer side)",
    )
    parser.add_argument("--max-length", type=int, default=CrossEncoderConfig.max_length, help="word pieces a pair")
    parser.add_argument("--latency-mentions", type=int, default=200, help="test mentions timed one at a time")
    parser.add_argument("--out", type=Path, default=ROOT / "reports/cross_encoder")
    parser.add_argument("--report-only", action="store_true", help="write the report from the kept results")
    args = parser.parse_args(argv)
    os.chdir(ROOT)  # params.yaml's paths are relative to the repository
    params = read_params(ROOT / "params.yaml")
    config = CrossEncoderConfig(
        params["hybrid"]["config"]["encoder"],
        epochs=args.epochs,
        train_candidates=args.train_candidates,
        max_length=args.max_length,
        context=args.context,
    )
    results = bench.kept_results(
        args.out.with_suffix(".json"),
        args,
        config.variant(),
        lambda corpus, seed, accelerator: measure(
            corpus, seed, args.folds, params, accelerator, config, args.latency_mentions
        ),
        READINGS,
    )
    args.out.with_suffix(".md").write_text(report(results, args.corpora, args.seeds), encoding="utf-8")


if __name__ == "__main__":
    main()
