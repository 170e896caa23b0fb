"""Cross-fitted candidates of the training split: what the rerank stage trains and judges its reranker on.

A reranker learns from the first stage's candidates. The training split's own candidates are not what the first
stage gives an unseen mention: every training mention is an entry of its index, and its classifier was fine-tuned
on it. Dev's candidates are honest but few (NCBI: 787 mentions). Cross-fitting makes training candidates like
test's: the training documents are cut into `rerank.cross_fit.groups` groups (grouped by document, so that a
document's repeated mentions stay together), and each group's candidates come from a first stage that never held
the group:

- the hybrid stage's retrieval encoder (trained on the whole training split: it has met the group's mentions in
  training, about twice each at NCBI's size) over an index of the vocabulary and the other groups' mentions only;
- the hybrid's classifier fine-tuned again from its start, with its config and seed, on the other groups'
  mentions, for the epochs dev chose for it (`ehrbert.peers.retrain_classifier_on_train_and_dev` with those
  mentions as the training split and no dev); none when the hybrid answers without a classifier;
- a vocabulary that takes names from the training split's mentions (CADEC: `names_without`) named again without
  the group's documents, so that no group finds its own mention texts among the names.

The stage (one corpus x one seed, `main`) writes outputs/cross_fit/<corpus>-s<seed>/candidates.json: each group's
positions in the training split and its candidates (`ehrbert.models.hybrid.Candidates`, before any settings
decide them), read back by `read_candidates`; and a metrics file with the groups' sizes and the first stage's
acc@1 on each held-out group under the hybrid's settings. The rerank stage (`ehrbert.rerank`) builds its
training rows from them. The fine-tuning runs are the costly part: NCBI about 5 min a seed on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
from sklearn.model_selection import GroupKFold
from transformers import set_seed

from ehrbert.corpora.cadec_vocabulary import cadec_vocabulary
from ehrbert.corpora.records import Vocabulary
from ehrbert.launch import make_accelerator
from ehrbert.metrics import accuracy_at_k
from ehrbert.models.hybrid import Candidates, HybridNormalizer, decide, read_settings
from ehrbert.models.name_index import NameIndex
from ehrbert.peers import retrain_classifier_on_train_and_dev
from ehrbert.stage import file_written_whole, read_params, setup_logging, write_json
from ehrbert.tasks import add_data_arguments, load_task

log = logging.getLogger(__name__)

CANDIDATES_FILE = "candidates.json"


class Held(NamedTuple):
    """One group of training documents and its candidates from a first stage that never held it."""

    held: np.ndarray  # its mentions' positions in the training split
    candidates: Candidates


class TrainingSubset:
    """A task whose training split is some of another task's training mentions and whose dev split is empty:
    what `retrain_classifier_on_train_and_dev` fine-tunes on for a group's classifier."""

    def __init__(self, task, mentions: list, queries: list[str]):
        self.vocabulary = task.vocabulary
        self.splits_ = {"train": (mentions, queries), "dev": ([], [])}

    def mentions(self, split: str) -> list:
        return self.splits_[split][0]

    def queries(self, split: str) -> list[str]:
        return self.splits_[split][1]


Rename = Callable[[set[str]], Vocabulary]  # a group's document IDs -> the vocabulary named without them
FirstStage = Callable[..., HybridNormalizer]  # (task without the group, its other mentions, their queries) -> model
Classifier = Callable[[list, list[str]], tuple]  # (other mentions, their queries) -> (model, tokenizer)


def names_without(task) -> Rename | None:
    """For a task whose vocabulary takes names from its training split's mentions, the function that names it
    again without a group's documents; None for a task whose vocabulary holds no mention text (MEDIC, a declared
    terminology).

    CADEC's is such a task (`ehrbert.corpora.cadec_vocabulary`): a MedDRA concept is named by the training ADRs'
    texts and notes. Named from the whole training split, the vocabulary would hold a held-out group's own mention
    texts as names of their gold concepts (82 % of CADEC's training mentions, against 53 % of dev's), and the
    group's candidates would be far easier than dev's or test's. The task's own posts (every split) are named
    again, as `ehrbert.tasks.load_cadec_task` names them, with the group's left out of the training split's."""
    if task.name != "cadec":
        return None
    documents = [doc for split in task.splits.values() for doc in split]

    def rename(held: set[str]) -> Vocabulary:
        named = [doc for doc in task.splits["train"] if doc.doc_id not in held]
        return cadec_vocabulary(documents, name_documents=named)

    return rename


def group_task(task, rename: Rename | None, held: np.ndarray):
    """`task` with its vocabulary named without the documents of the training mentions at `held` (`names_without`),
    or `task` itself."""
    if rename is None:
        return task
    mentions = task.mentions("train")
    return dataclasses.replace(task, vocabulary=rename({mentions[i].doc_id for i in held}))


def indexed_without(full: HybridNormalizer, task, mentions: list, queries: list[str]) -> HybridNormalizer:
    """`full`'s encoder over an index of the task's vocabulary and `mentions` alone (their vectors taken from
    `full`'s index, which holds every training mention, or embedded where a name is not there: a vocabulary named
    without the group can name a concept otherwise, `names_without`), answering with `full`'s settings."""
    index = NameIndex.build(task.vocabulary, mentions, queries)
    if all(text in full.index.position for text in index.texts):
        index.embeddings = full.index.embeddings[[full.index.position[text] for text in index.texts]]
    else:
        index.embed(full.encoder, full.tokenizer, full.config)
    return HybridNormalizer(
        full.encoder,
        full.tokenizer,
        index,
        full.config,
        classifier_max_length=full.classifier_max_length,
        classifier_top_k=full.classifier_top_k,
        settings=full.settings,
    )


def cross_fitted_candidates(
    task, groups: int, first_stage: FirstStage, classifier: Classifier | None = None, rename: Rename | None = None
) -> list[Held]:
    """Every group of training documents (`groups` document-grouped folds) with its candidates from
    `first_stage(task without the group, the other mentions, their queries)`; with `classifier`, its classifier
    is `classifier(the other mentions, their queries)`; with `rename`, the vocabulary is named without the group
    (`names_without`)."""
    mentions, queries = task.mentions("train"), task.queries("train")
    documents = [m.doc_id for m in mentions]
    if len(set(documents)) < groups:
        raise ValueError(f"{task.name}: {len(set(documents))} training document(s), fewer than {groups} groups")
    out = []
    for k, (rest, held) in enumerate(GroupKFold(groups).split(queries, groups=documents)):
        started = time.perf_counter()
        rest_mentions, rest_queries = [mentions[i] for i in rest], [queries[i] for i in rest]
        model = first_stage(group_task(task, rename, held), rest_mentions, rest_queries)
        if classifier is not None:
            model.classifier, model.classifier_tokenizer = classifier(rest_mentions, rest_queries)
        out.append(Held(held, model.candidates([queries[i] for i in held])))
        log.info("group %d/%d: %d mentions, %.0f s", k + 1, groups, len(held), time.perf_counter() - started)
    return out


def in_split_order(held_groups: list[Held]) -> Candidates:
    """The groups' candidates as one `Candidates` in the training split's order (a field that every group leaves
    empty, the classifier's without one, stays empty)."""
    order = np.argsort(np.concatenate([group.held for group in held_groups]))

    def merged(name: str) -> list:
        values = [value for group in held_groups for value in getattr(group.candidates, name)]
        return [values[i] for i in order] if values else []

    return Candidates(**{f.name: merged(f.name) for f in dataclasses.fields(Candidates)})


def write_candidates(path: Path, held_groups: list[Held]) -> None:
    """`held_groups` as JSON at `path`, whole or not at all."""
    groups = [{"held": g.held.tolist(), "candidates": dataclasses.asdict(g.candidates)} for g in held_groups]
    with file_written_whole(path) as partial:
        partial.write_text(json.dumps({"groups": groups}) + "\n", encoding="utf-8")


def read_candidates(folder: Path, mentions: int) -> list[Held]:
    """The groups that `write_candidates` wrote in `folder`, checked against a training split of `mentions`
    mentions: every position held by exactly one group."""
    path = Path(folder) / CANDIDATES_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        out = []
        for group in data["groups"]:
            c = group["candidates"]
            candidates = Candidates(
                retrieval=c["retrieval"],
                best_tuple=[tuple(t) for t in c["best_tuple"]],
                classifier=c["classifier"],
                parts=[[(concept, score) for concept, score in p] for p in c["parts"]],
                floor=c["floor"],
            )
            held = np.asarray(group["held"], dtype=int)
            if any(len(getattr(candidates, f)) != len(held) for f in ("retrieval", "best_tuple", "parts", "floor")):
                raise ValueError(f"a group of {len(held)} mentions has candidates for another number")
            out.append(Held(held, candidates))
    except FileNotFoundError:
        raise SystemExit(f"{path}: no cross-fitted candidates; run the cross_fit stage first") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(f"{path}: not cross-fitted candidates as the cross_fit stage writes them: {error}") from None
    positions = np.sort(np.concatenate([g.held for g in out])) if out else np.zeros(0, dtype=int)
    if not np.array_equal(positions, np.arange(mentions)):
        raise SystemExit(
            f"{path}: its groups hold {len(positions)} positions, not each of the training split's {mentions} "
            "mentions once (made for another corpus or split?)"
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, help="a task the hybrid stage trained (hybrid.corpora)")
    parser.add_argument("--seed", type=int, required=True)
    add_data_arguments(parser)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--hybrid", type=Path, required=True, help="the hybrid stage's output folder (its model/)")
    parser.add_argument(
        "--classifier", type=Path, required=True, help="the fine-tuning run's folder whose classifier the hybrid uses"
    )
    parser.add_argument(
        "--classifier-metrics", type=Path, required=True, help="its metrics file (the dev-chosen best_epoch)"
    )
    parser.add_argument("--classifier-init", type=Path, required=True, help="the encoder that run started from")
    parser.add_argument("--out-dir", type=Path, required=True, help=f"where {CANDIDATES_FILE} is written")
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args(argv)
    accelerator = make_accelerator()  # each group's classifier may train on several processes (accelerate launch)
    setup_logging(accelerator.is_main_process)
    params = read_params(args.params)
    groups = params["rerank"].get("cross_fit", {}).get("groups")
    if not isinstance(groups, int) or groups < 2:
        raise SystemExit(f"{args.params}: rerank.cross_fit.groups must be an integer of at least 2, got {groups!r}")
    set_seed(args.seed)
    task = load_task(args.corpus, args, params["cadec_split"])
    source = args.hybrid / "model"
    _, _, first_stage = read_settings(source)  # the hybrid's default, its last variant: the rerank stage's too
    full = HybridNormalizer.load(source, first_stage)

    def classifier(mentions: list, queries: list[str]) -> tuple:
        model, tokenizer, _ = retrain_classifier_on_train_and_dev(
            TrainingSubset(task, mentions, queries),
            args.classifier,
            args.classifier_metrics,
            args.classifier_init,
            params,
            args.seed,
            accelerator,
        )
        return model, tokenizer

    started = time.perf_counter()
    held_groups = cross_fitted_candidates(
        task,
        groups,
        lambda without, mentions, queries: indexed_without(full, without, mentions, queries),
        classifier if full.classifier is not None else None,
        names_without(task),
    )
    seconds = time.perf_counter() - started
    if not accelerator.is_main_process:
        return
    mentions = task.mentions("train")
    accuracies = []
    for group in held_groups:
        answers = decide(group.candidates, full.settings, k=1)
        accuracies.append(accuracy_at_k([mentions[i] for i in group.held], [a.ranked for a in answers], 1))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_candidates(args.out_dir / CANDIDATES_FILE, held_groups)
    sizes = [len(g.held) for g in held_groups]
    overall = float(np.average(accuracies, weights=sizes))
    write_json(
        args.metrics,
        {
            "first_stage_variant": first_stage,
            "groups": groups,
            "group_mentions": sizes,
            "group_acc1": accuracies,
            "train_acc1_cross_fitted": overall,
        },
    )
    log.info(
        "%s seed %d: %d groups, the cross-fitted first stage's acc@1 on the training split %.4f (%.0f s)",
        args.corpus,
        args.seed,
        groups,
        overall,
        seconds,
    )


if __name__ == "__main__":
    main()
