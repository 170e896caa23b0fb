"""Write a built-in task in the exchange formats a user's own task is declared in: its vocabulary as the TSV
terminology format (`ehrbert.corpora.terminology.write_tsv`) and each split as BioC XML
(`ehrbert.corpora.annotations.write_bioc`), gold IDs as the built-in task scores them (primary IDs).

Stage `example_task` makes README's worked example with it: MEDIC as a TSV plus NCBI disease as BioC, declared
in params.yaml as the task ``ncbi_bioc``, which must give the built-in ``ncbi`` task's numbers.

    python -m ehrbert.export --task ncbi --ncbi-dir data/ncbi_disease \
        --ncbi-vocabulary data/medic/CTD_diseases.tsv.gz --out-dir outputs/examples/ncbi_bioc
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ehrbert.corpora.annotations import write_bioc
from ehrbert.corpora.terminology import write_tsv
from ehrbert.stage import folder_written_whole, read_params, setup_logging
from ehrbert.tasks import SPLITS, TASKS, Task, add_data_arguments, load_task

log = logging.getLogger(__name__)

VOCABULARY_FILE = "vocabulary.tsv"


def export(task: Task, folder: Path) -> None:
    """`task` into `folder` (vocabulary.tsv, train.xml, dev.xml, test.xml), whole or not at all."""
    with folder_written_whole(folder) as partial:
        write_tsv(task.vocabulary, partial / VOCABULARY_FILE)
        for split in SPLITS:
            write_bioc(task.splits[split], partial / f"{split}.xml", source=f"{task.name} {split}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a built-in task as a TSV vocabulary and BioC XML splits.")
    parser.add_argument("--task", required=True, choices=TASKS)
    add_data_arguments(parser)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    setup_logging()
    task = load_task(args.task, args, read_params(args.params)["cadec_split"])
    export(task, args.out_dir)
    log.info("%s: %d concepts, %s into %s", args.task, len(task.vocabulary), ", ".join(SPLITS), args.out_dir)


if __name__ == "__main__":
    main()
