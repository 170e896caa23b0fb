"""The model registry: a trained normalizer folder packaged as the project's pyfunc and registered with an alias.

`log_normalizer` packages a saved normalizer folder (the classifier's or the hybrid's, a DVC output of the
stage that trained it) with its concept names as an MLflow pyfunc model (`ehrbert.serving.NormalizerModel`).
`register_champion` registers the model of one run under a name with an alias (MLflow 3 aliases, not
stages); the folder comes from the pipeline's outputs, the version is linked to the run that made it, and no
version is added when one from the same run, packaged with the same code, is already registered. A version
carries the code that serves it (the `ehrbert` package, `code_paths`), tagged with its digest (`code_digest`):
when the serving code changes, the next `compare` registers the same run again, so the champion is served by
the code of the commit that registered it.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput
from mlflow.entities.model_registry import ModelVersion
from mlflow.models.model import ModelInfo
from transformers import AutoConfig

from ehrbert.models import fast
from ehrbert.models.hybrid import HybridNormalizer, is_hybrid
from ehrbert.serving import (
    CONCEPTS_FILE,
    INPUT_EXAMPLE,
    PACKAGE_DIR,
    REQUIREMENTS,
    SIGNATURE,
    NormalizerModel,
    write_concepts,
)

log = logging.getLogger(__name__)

# How a registered hybrid version is served: the fast form's options that `make bench` chose (reports/benchmark.md:
# the fastest that keeps acc@1 within 0.2 of the torch form on the NCBI and BC5CDR champions).
SERVED_OPTIONS = fast.FastOptions()


def log_normalizer(
    model_dir: str | Path,
    concept_names: Mapping[str, str],
    name: str = "normalizer",
    max_length: int = 32,
    batch_size: int = 256,
    model_id: str | None = None,
    variant: str | None = None,
) -> ModelInfo:
    """Log the normalizer folder `model_dir` as a pyfunc model: into the logged model `model_id` when
    given (see `register_champion`), else as a new one (in the active run, if any).

    `concept_names` ({concept ID: name}) should cover the model's `id2label`; IDs without a name are
    served with an empty name and logged as a warning. `variant` picks one of a hybrid folder's variants.
    """
    if is_hybrid(model_dir):
        labels = HybridNormalizer.concept_ids_in(model_dir)
        variants = HybridNormalizer.variants_in(model_dir)
        if variant is not None and variant not in variants:
            raise ValueError(f"{model_dir}: no variant {variant!r}; it has {', '.join(variants)}")
    else:
        labels = set(AutoConfig.from_pretrained(str(model_dir)).id2label.values())
    unnamed = labels - set(concept_names)
    if unnamed:
        log.warning("%d of %d concepts have no name, e.g. %s", len(unnamed), len(labels), sorted(unnamed)[:3])
    with tempfile.TemporaryDirectory() as folder:
        concepts = Path(folder) / CONCEPTS_FILE
        write_concepts({c: concept_names.get(c, "") for c in sorted(labels)}, concepts)
        artifacts = {"normalizer": str(model_dir), "concepts": str(concepts)}
        # named apart from the fine-tuning run's `batch_size`: MLflow logs these as an active run's params
        # `runtime` a key of its own in every version, so that a loader can ask for the other runtime
        config = {
            "max_length": max_length,
            "predict_batch_size": batch_size,
            "variant": variant or "",
            "runtime": "torch",
        }
        if is_hybrid(model_dir):  # its fast form, served unless EHRBERT_RUNTIME=torch (ehrbert.models.fast)
            fast.build(model_dir, Path(folder) / "fast")
            artifacts["fast"] = str(Path(folder) / "fast")
            config |= {"runtime": "onnx", **asdict(SERVED_OPTIONS)}
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=NormalizerModel(),
            artifacts=artifacts,
            code_paths=[str(PACKAGE_DIR)],
            signature=SIGNATURE,
            input_example=INPUT_EXAMPLE,
            model_config=config,
            # pinned from this environment; saves MLflow from loading the model to guess them
            pip_requirements=[f"{package}=={version(package)}" for package in REQUIREMENTS],
            model_id=model_id,
        )


CODE_TAG = "code_digest"


def code_digest() -> str:
    """sha256 (16 hex digits) of the package's source files, as a version packages them."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def find_version(client: MlflowClient, name: str, run_id: str, code: str | None = None) -> ModelVersion | None:
    """The newest version of registered model `name` made from run `run_id` (with code digest `code`), if any."""
    versions = [
        v
        for v in client.search_model_versions(f"name = '{name}'")
        if v.run_id == run_id and (code is None or v.tags.get(CODE_TAG) == code)
    ]
    return max(versions, key=lambda v: int(v.version), default=None)


def register_champion(
    run_id: str,
    name: str,
    model_dir: Path,
    concept_names: Callable[[], Mapping[str, str]],
    tags: Mapping[str, str] | None = None,
    description: str = "",
    alias: str = "champion",
    max_length: int = 32,
    variant: str | None = None,
) -> tuple[ModelVersion, bool]:
    """Point `name@alias` at `model_dir`, the normalizer that run `run_id` made; (version, whether it is new).

    When a version of `name` from `run_id` packaged with today's code (`code_digest`) exists, it is reused (alias
    moved, tags updated) and nothing is logged. Otherwise `model_dir` (the stage's DVC output; `variant` for a
    hybrid folder) is packaged as a pyfunc logged model whose source is that run (in its experiment, with its
    parameters, listed among its outputs), and registered, so the version links to the run's metrics. The
    finished run is not reopened.
    `concept_names` is called only for a new version, so an unchanged champion costs no vocabulary loading.
    """
    client = MlflowClient()
    code = code_digest()
    existing = find_version(client, name, run_id, code)
    created = existing is None
    if created:
        run = client.get_run(run_id)
        logged = client.create_logged_model(
            run.info.experiment_id, name="normalizer", source_run_id=run_id, params=run.data.params
        )
        if not Path(model_dir).is_dir():
            raise FileNotFoundError(
                f"{model_dir}: the model folder of run {run_id} is missing (`dvc pull` or `dvc repro`)"
            )
        info = log_normalizer(
            model_dir, concept_names(), max_length=max_length, model_id=logged.model_id, variant=variant
        )
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        existing = mlflow.register_model(info.model_uri, name)
        log.info("registered %s version %s from run %s", name, existing.version, run_id)
    for key, value in {**(tags or {}), CODE_TAG: code}.items():
        client.set_model_version_tag(name, existing.version, key, str(value))
    if description:
        client.update_model_version(name, existing.version, description=description)
    client.set_registered_model_alias(name, alias, existing.version)
    return client.get_model_version(name, existing.version), created
