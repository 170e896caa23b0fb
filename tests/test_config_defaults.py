"""Science settings live in params.yaml: a config dataclass's defaults are the default profile's values, no others.

Each stage builds its config from its params.yaml section (`ehrbert.stage.config_from`); the defaults exist so
that a reader of the dataclass sees the default profile's science, and code that builds a config by hand gets
the same. This test fails when the two drift apart.
"""

import dataclasses
from pathlib import Path

import pytest
import yaml

from ehrbert.analysis.attention import CaseStudyConfig
from ehrbert.analysis.errors import ErrorAnalysisConfig
from ehrbert.compare import CompareConfig
from ehrbert.finetune import FinetuneConfig
from ehrbert.hybrid import HybridConfig
from ehrbert.models.consistency import ConsistencyConfig
from ehrbert.models.retrieval import RetrievalConfig
from ehrbert.notes_prep import NotesConfig
from ehrbert.pretrain import PretrainConfig
from ehrbert.pretraining_data import PairConfig
from ehrbert.stage import section

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
CONFIGS = [
    (FinetuneConfig, "finetune.config"),
    (HybridConfig, "hybrid.config"),
    (RetrievalConfig, "hybrid.config.retrieval"),
    (NotesConfig, "notes"),
    (PretrainConfig, "pretrain"),
    (PairConfig, "pretrain"),
    (CompareConfig, "compare"),
    (ConsistencyConfig, "consistency"),
    (CaseStudyConfig, "case_study"),
    (ErrorAnalysisConfig, "error_analysis"),
]


def default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
        return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return dataclasses.MISSING


@pytest.mark.parametrize(("config", "key"), CONFIGS, ids=[f"{c.__name__}-{k}" for c, k in CONFIGS])
def test_dataclass_defaults_are_the_default_profile(config, key):
    values = section(PARAMS, key)
    differ = {}
    for field in dataclasses.fields(config):
        if field.name not in values:  # a setting the profile does not name keeps no science default either
            continue
        found = default(field)
        if found is not dataclasses.MISSING and found != values[field.name]:
            differ[field.name] = (found, values[field.name])
    assert not differ, f"{config.__name__} defaults differ from params.yaml {key} (default, params): {differ}"
