"""Stage scaffolding: params sections and config dataclasses fail with the params key named; JSON is written whole."""

import json
from dataclasses import dataclass

import pytest

from ehrbert.finetune import FinetuneConfig
from ehrbert.stage import config_from, read_params, section, write_json


@dataclass
class Tiny:
    models: list[str]
    alpha: float = 0.05


def test_section_names_the_params_file_and_the_missing_key():
    params = {"finetune": {"ablation": {"config": {"head_init": "uniform"}}}}
    assert section(params, "finetune.ablation.config", "params.yaml") == {"head_init": "uniform"}
    with pytest.raises(SystemExit, match="params.yaml: no key 'finetune.missing'"):
        section(params, "finetune.missing", "params.yaml")


def test_config_from_names_unknown_and_missing_fields():
    assert config_from(Tiny, {"models": ["base"]}, "compare") == Tiny(["base"], 0.05)
    with pytest.raises(SystemExit, match=r"params.yaml: compare has unknown fields \['colour'\]"):
        config_from(Tiny, {"models": [], "colour": 1}, "compare")
    with pytest.raises(SystemExit, match=r"params.yaml: compare lacks \['models'\]"):
        config_from(Tiny, {"alpha": 0.1}, "compare")
    with pytest.raises(SystemExit, match="finetune.config: finetune.config.head_init: 'zeros' is not one of"):
        config_from(FinetuneConfig, {"head_init": "zeros"}, "finetune.config")


def test_read_params_names_the_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("- a list, not sections\n")
    with pytest.raises(SystemExit, match=f"{bad}: expected a mapping"):
        read_params(bad)
    with pytest.raises(SystemExit, match="cannot read the params"):
        read_params(tmp_path / "missing.yaml")


def test_write_json_leaves_no_partial_file(tmp_path):
    path = tmp_path / "metrics" / "x.json"
    write_json(path, {"f1": 0.5})
    assert json.loads(path.read_text()) == {"f1": 0.5} and path.read_text().endswith("}\n")
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})  # not JSON: the old file stays whole
    assert json.loads(path.read_text()) == {"f1": 0.5}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]  # and no partial file is left beside it


def test_a_vocabulary_that_cannot_be_written_leaves_nothing_behind(tmp_path):
    from ehrbert.corpora.records import Concept, Vocabulary
    from ehrbert.corpora.terminology import write_tsv

    vocabulary = Vocabulary([Concept("C1", "fine"), Concept("C2", "a\tname with a tab")])
    with pytest.raises(ValueError, match="concept C2"):  # found after C1 was written to the partial file
        write_tsv(vocabulary, tmp_path / "vocabulary.tsv")
    assert list(tmp_path.iterdir()) == []
