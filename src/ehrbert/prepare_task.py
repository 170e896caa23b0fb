"""Stage `prepare_task`: read a task declared in params.yaml (`tasks.<name>`), check it, and write it prepared.

A declared task is a user's own vocabulary and annotated mentions in the formats they already have (see
`ehrbert.tasks.TaskSpec` and README, "Your own terminology"). This stage reads its files once: malformed input
is an error naming the file and line, gold IDs the vocabulary lacks fail, are dropped or are kept as the task's
`unknown_ids` says. It writes the task's records (`ehrbert.tasks.save_prepared`), which every later stage loads
by the task's name, and its counts as metrics.

    python -m ehrbert.prepare_task --name <task> --out-dir outputs/tasks/<task> --metrics metrics/tasks/<task>.json
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ehrbert.corpora.records import FormatError
from ehrbert.stage import read_params, setup_logging, write_json
from ehrbert.tasks import SPLITS, TASKS, declared_spec, read_declared_task, save_prepared

log = logging.getLogger(__name__)


def counts(task) -> dict:
    """Concepts, documents and mentions per split, and the share of test mentions whose gold concept has a
    training mention (seen)."""
    seen = {c for m in task.mentions("train") for c in m.concept_ids}
    test = [m for m in task.mentions("test") if m.concept_ids]
    return {
        "concepts": len(task.vocabulary),
        "level": task.level,
        **{f"{split}_documents": len(task.splits[split]) for split in SPLITS},
        **{f"{split}_mentions": len(task.mentions(split)) for split in SPLITS},
        "test_seen_fraction": sum(all(c in seen for c in m.concept_ids) for m in test) / len(test) if test else 0.0,
        "test_in_vocabulary_fraction": (
            sum(all(c in task.vocabulary.index for c in m.concept_ids) for m in test) / len(test) if test else 0.0
        ),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Read, check and prepare a task declared in params.yaml.")
    parser.add_argument("--name", required=True, help="the task: key tasks.<name> of params.yaml")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args(argv)
    setup_logging()
    if args.name in TASKS:
        raise SystemExit(f"{args.params}: tasks.{args.name}: {args.name} is a built-in task's name; choose another")
    spec = declared_spec(read_params(args.params), args.name, args.params)
    try:
        task = read_declared_task(args.name, spec)
    except (FormatError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f"task {args.name}: {error}") from None
    metrics = counts(task)
    log.info("%s: %s", args.name, metrics)
    save_prepared(task, args.out_dir)
    write_json(args.metrics, metrics)


if __name__ == "__main__":
    main()
