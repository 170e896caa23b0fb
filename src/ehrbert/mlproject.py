"""MLproject, generated from dvc.yaml: every pipeline stage as an MLflow entry point with the same command.

`dvc repro` is how the pipeline runs; `mlflow run . -e <stage> --env-manager local` runs one stage's command
by hand, for example with other paths. So that the two never drift apart, MLproject is written by this module
from the stages DVC resolves (a matrix stage from its first item), and a test checks that the committed file is
what this module writes:

    python -m ehrbert.mlproject > MLproject

Each `--flag value` of a stage's command becomes a parameter (`flag` with `-` as `_`) whose default is the value
dvc.yaml gives it, except that an output of the stage, or its training states under `checkpoints/`, defaults to
the same path under `manual/`: a run by hand never overwrites what DVC tracks (models, metrics, run records), nor
the checkpoints a killed `dvc repro` resumes from. A flag given several values, or several times,
stays as written. Training stages keep `accelerate launch $ACCELERATE_ARGS`, so Accelerate's configuration is
chosen the same way under both tools.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEADER = """\
# Generated from dvc.yaml by `python -m ehrbert.mlproject > MLproject`; do not edit (a test compares the two).
# Every pipeline stage as an MLflow entry point: `mlflow run . -e <stage> --env-manager local [-P name=value]`.
# The defaults are the paths and values dvc.yaml gives the stage (a matrix stage: its first item); outputs go
# under manual/, so that a run by hand never overwrites what DVC tracks.
name: ehrbert
python_env: python_env.yaml

entry_points:
  fetch_data:
    parameters:
      mirror: {type: string, default: ../shared/data}
    command: "python -m ehrbert.rawdata fetch --mirror {mirror}"
"""


MANUAL = "manual"  # where a run by hand writes what the stage's outputs would be
CHECKPOINTS = "checkpoints/"  # training states: written by a stage, though not a DVC out


def resolved_commands(root: Path) -> dict[str, tuple[str, list[str]]]:
    """{stage name: (its command, its output paths)} as DVC resolves dvc.yaml and params.yaml; a matrix stage by
    its first item."""
    from dvc.repo import Repo

    commands: dict[str, tuple[str, list[str]]] = {}
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            name = getattr(stage, "name", None)
            if name:
                commands.setdefault(name.split("@")[0], (stage.cmd, [str(out.def_path) for out in stage.outs]))
    return commands


def is_output(value: str, outputs: list[str]) -> bool:
    """`value` is one of the outputs, inside one, a folder that holds one, or training states."""
    return value.startswith(CHECKPOINTS) or any(
        value == o or o.startswith(value.rstrip("/") + "/") or value.startswith(o + "/") for o in outputs
    )


def entry_point(command: str, outputs: list[str]) -> tuple[dict[str, str], str]:
    """(parameters with defaults, MLproject command) for one stage command with these output paths."""
    words = shlex.split(command)
    flags = [w for w in words if w.startswith("--")]
    parameters: dict[str, str] = {}
    out: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        values = []
        j = i + 1
        while j < len(words) and not words[j].startswith("--"):
            values.append(words[j])
            j += 1
        single = word.startswith("--") and len(values) == 1 and flags.count(word) == 1
        if single and not word.startswith("--config_file"):
            name = word[2:].replace("-", "_")
            parameters[name] = f"{MANUAL}/{values[0]}" if is_output(values[0], outputs) else values[0]
            out += [word, "{" + name + "}"]
            i = j
        else:
            out.append(word if word.startswith("$") else shlex.quote(word))
            i += 1
    return parameters, " ".join(out)


def render(commands: dict[str, tuple[str, list[str]]]) -> str:
    lines = [HEADER]
    for stage, (command, outputs) in commands.items():
        parameters, text = entry_point(command, outputs)
        lines.append(f"  {stage}:")
        if parameters:
            lines.append("    parameters:")
            lines += [
                f"      {name}: {{type: string, default: {shlex.quote(value)}}}" for name, value in parameters.items()
            ]
        lines.append(f"    command: {_yaml_string(text)}")
        lines.append("")
    return "\n".join(lines)


def _yaml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write MLproject from dvc.yaml to standard output.")
    parser.add_argument("--root", type=Path, default=ROOT)
    args = parser.parse_args(argv)
    sys.stdout.write(render(resolved_commands(args.root)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
