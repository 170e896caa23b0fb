"""Profiles: named sets of params.yaml overrides, one switch away.

params.yaml is the default profile, sized for 2 CPU cores. `profiles/<name>.yaml` has the same
structure and holds only the keys that differ (the `paper` profile: the paper's model size, epochs,
learning rates and patience). A profile runs as a DVC experiment, so its results sit beside the
default ones in `dvc exp show` and params.yaml in git is left alone:

    dvc exp run $(python -m ehrbert.profiles paper)      # what `make run PROFILE=paper` does

This module only turns the profile file into `--set-param key=value` arguments (nested keys
dotted, values as YAML flow text).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def flatten(overrides: dict, prefix: str = "") -> dict[str, object]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists and scalars are leaves."""
    flat: dict[str, object] = {}
    for key, value in overrides.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def set_param_arguments(profile: Path, params: Path) -> list[str]:
    """`--set-param` arguments for every key of `profile`; each key must exist in `params`."""
    overrides = yaml.safe_load(profile.read_text()) or {}
    if not isinstance(overrides, dict):
        raise ValueError(f"{profile}: expected a mapping of params.yaml sections")
    known = flatten(yaml.safe_load(params.read_text()))
    arguments = []
    for key, value in flatten(overrides).items():
        if key not in known:
            raise ValueError(f"{profile}: key {key!r} is not in {params}")
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
        text = text.removesuffix("\n...").removesuffix("...").strip()
        arguments += ["--set-param", f"{key}={text}"]
    return arguments


def profile_path(name: str) -> Path:
    """A profile named as a file, or by its name under profiles/."""
    path = Path(name)
    return path if path.is_file() else ROOT / "profiles" / f"{name}.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print `dvc exp run` arguments for a profile.")
    parser.add_argument("profile", help="a name under profiles/ (e.g. paper) or a YAML file")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    args = parser.parse_args(argv)
    path = profile_path(args.profile)
    try:
        print(shlex.join(set_param_arguments(path, args.params)))
    except (OSError, ValueError, yaml.YAMLError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
