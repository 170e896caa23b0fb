"""What every stage's `main()` does the same way: logging, its params section, a config from it, metrics out.

- `setup_logging`: INFO on the main process (the only one under `accelerate launch` that reports), WARNING on
  the others; one format for every stage.
- `read_params`: params.yaml as a dict, or an error naming the file.
- `section` / `config_from`: a dotted section of it, and a config dataclass built from one, with an error that
  names the params key and the unknown or missing fields (a typo in params.yaml never silently falls back to
  a default).
- `write_json`: a small JSON file (metrics, settings), written whole or not at all.
- `folder_written_whole`: a folder written whole or not at all.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

Config = TypeVar("Config")


def setup_logging(main_process: bool = True) -> None:
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING, format=LOG_FORMAT)


def read_params(path: str | Path) -> dict:
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise SystemExit(f"{path}: cannot read the params: {error}") from None
    if not isinstance(params, dict):
        raise SystemExit(f"{path}: expected a mapping of params sections, got {type(params).__name__}")
    return params


def section(params: dict, key: str, source: str | Path = "params.yaml") -> Any:
    """The value at dotted `key` ("finetune.config") of `params`, or an error naming the missing part."""
    value = params
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise SystemExit(f"{source}: no key {key!r}")
        value = value[part]
    return value


def config_from(cls: type[Config], values: dict, key: str, source: str | Path = "params.yaml") -> Config:
    """`cls(**values)`, where `values` is params key `key`; unknown or missing fields are an error that names them."""
    if not isinstance(values, dict):
        raise SystemExit(f"{source}: {key} must be a mapping of {cls.__name__} fields, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise SystemExit(f"{source}: {key} has unknown fields {unknown}; {cls.__name__} takes {sorted(fields)}")
    missing = sorted(
        name
        for name, f in fields.items()
        if name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise SystemExit(f"{source}: {key} lacks {missing}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise SystemExit(f"{source}: {key}: {error}") from None


def write_json(path: str | Path, data: Any) -> None:
    """`data` as indented JSON at `path` (folders made), through a temporary file: whole or not at all."""
    with file_written_whole(path) as partial:
        partial.write_text(json.dumps(data, indent=2) + "\n")


@contextmanager
def file_written_whole(path: str | Path) -> Iterator[Path]:
    """A temporary file beside `path` (folders made) to write into: it replaces `path` when the block ends, and is
    deleted instead when the block raises, so that `path` is never left half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


@contextmanager
def folder_written_whole(folder: str | Path) -> Iterator[Path]:
    """A new temporary folder beside `folder` to write into: it replaces `folder` when the block ends, and is
    deleted instead when the block raises, so that `folder` is never left half-written."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        partial.chmod(0o755)
        yield partial
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(partial, folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
