"""The raw-input paths of params.yaml `data`, read as the stages read them, for the benchmarks that load a task."""

from __future__ import annotations

import argparse
from pathlib import Path

from ehrbert.tasks import add_data_arguments

KEYS = ("ncbi_dir", "ncbi_vocabulary", "cdr_dir", "cdr_vocabulary", "cadec_dir")


def data_paths(data: dict, root: Path) -> argparse.Namespace:
    """`ehrbert.tasks.load_task`'s paths from params.yaml's `data` section, each under `root` (the repository)."""
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    return parser.parse_args([f"--{key.replace('_', '-')}={root / data[key]}" for key in KEYS])


def stage_arguments(data: dict) -> list[str]:
    """The data arguments a stage's command line takes, from params.yaml's `data` (paths as written there,
    relative to the repository), and the declared tasks' folder."""
    return [part for key in KEYS for part in (f"--{key.replace('_', '-')}", data[key])] + [
        "--tasks-dir",
        "outputs/tasks",
    ]
