"""The training-state folders a run resumes from (pretraining every n optimizer steps, fine-tuning every epoch).

`save` has `Accelerator.save_state` write `<root>/step_<n>/` (n: the run's own unit of progress), lets the run
add files of its own, and when every process has finished writing, the main process adds `checkpoint.json`
(step, fingerprint of what made the run, anything else the run wants back). A folder without that marker was
cut off mid-save and is never resumed from. A run resumes (`resume_point`) only from a checkpoint whose
fingerprint equals its own: the same science, data, initial weights and process layout.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from accelerate import Accelerator

log = logging.getLogger(__name__)

MARKER = "checkpoint.json"
_STEP_FOLDER = re.compile(r"step_(\d+)")


def digest(path: str | Path) -> str:
    """sha256 of a file, or of a folder's files (names and contents, sorted); a name that is no path is hashed as
    text."""
    path = Path(path)
    sha = hashlib.sha256()
    if not path.exists():
        sha.update(str(path).encode())
        return sha.hexdigest()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        sha.update(str(file.relative_to(path) if path.is_dir() else file.name).encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
    return sha.hexdigest()


def fingerprint(values: dict) -> str:
    """A short stable hash of JSON-able `values`."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def step_folder(root: Path, step: int) -> Path:
    return root / f"step_{step}"


def mark_complete(folder: Path, record: dict) -> None:
    """Written last, by the main process only: from now on `folder` counts as a checkpoint."""
    (folder / MARKER).write_text(json.dumps(record, indent=2) + "\n")


def completed(root: Path) -> list[tuple[int, Path, dict]]:
    """(step, folder, record) of every completed checkpoint under `root`, oldest first."""
    found = []
    for folder in root.glob("step_*") if root.is_dir() else []:
        match = _STEP_FOLDER.fullmatch(folder.name)
        if match and (folder / MARKER).is_file():
            found.append((int(match[1]), folder, json.loads((folder / MARKER).read_text())))
    return sorted(found, key=lambda item: item[0])


def latest(root: Path, fingerprint_: str) -> tuple[int, Path, dict] | None:
    """The newest completed checkpoint made by a run with this fingerprint, if any."""
    matching = [item for item in completed(root) if item[2].get("fingerprint") == fingerprint_]
    return matching[-1] if matching else None


def prune(root: Path, keep: int, protect: Path | None = None) -> list[Path]:
    """Delete all but the newest `keep` completed checkpoints (keep <= 0: delete none), never `protect`.

    Unfinished `step_*` folders older than the newest completed one are deleted too. Returns what was deleted.
    """
    done = completed(root)
    if not done:
        return []
    doomed = [folder for _, folder, _ in done[:-keep]] if keep > 0 else []
    newest = done[-1][0]
    for folder in root.glob("step_*"):
        match = _STEP_FOLDER.fullmatch(folder.name)
        if match and int(match[1]) < newest and not (folder / MARKER).is_file():
            doomed.append(folder)
    doomed = [folder for folder in doomed if protect is None or folder.resolve() != protect.resolve()]
    for folder in doomed:
        shutil.rmtree(folder, ignore_errors=True)
    return doomed


def discard(root: Path) -> list[Path]:
    """Delete every `step_*` folder under `root` (checkpoints of another configuration)."""
    doomed = list(root.glob("step_*")) if root.is_dir() else []
    for folder in doomed:
        shutil.rmtree(folder, ignore_errors=True)
    return doomed


def save(
    accelerator: Accelerator,
    root: Path,
    step: int,
    record: dict,
    keep: int,
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Every process's training state into `root/step_<step>`, then `write_extra(folder)` on the main process
    (state that `save_state` does not hold), then the marker; older checkpoints beyond `keep` are pruned."""
    folder = step_folder(root, step)
    accelerator.save_state(str(folder))
    if accelerator.is_main_process and write_extra is not None:
        write_extra(folder)
    accelerator.wait_for_everyone()  # every process's RNG state is written before the folder counts
    if accelerator.is_main_process:
        mark_complete(folder, {**record, "step": step})
        prune(root, keep)
    accelerator.wait_for_everyone()
    return folder


def resume_point(accelerator: Accelerator, root: Path, fingerprint_: str, resume: bool = True):
    """The checkpoint (step, folder, record) to resume from, if any (`resume` False: none); the checkpoints that
    cannot be resumed are deleted then."""
    found = latest(root, fingerprint_) if resume else None
    accelerator.wait_for_everyone()  # every process has looked before anything is deleted
    if found is None and accelerator.is_main_process:
        for folder in discard(root):
            log.warning("discarded %s: made by another configuration, or resuming was turned off", folder)
    accelerator.wait_for_everyone()
    return found
