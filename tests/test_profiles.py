import shlex

import pytest
import yaml

from ehrbert.profiles import flatten, main, set_param_arguments


def test_flatten_dots_nested_keys_and_keeps_lists_whole():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": "x"}) == {"a.b": 1, "a.c.d": [1, 2], "e": "x"}


def test_arguments_for_dvc_exp_run(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {"lr": 1e-4, "seeds": [1], "name": "x"}}))
    profile = tmp_path / "big.yaml"
    profile.write_text(yaml.safe_dump({"train": {"lr": 1e-5, "seeds": [1, 2, 3]}}))
    assert set_param_arguments(profile, params) == [
        "--set-param",
        "train.lr=1.0e-05",
        "--set-param",
        "train.seeds=[1, 2, 3]",
    ]


def test_unknown_key_is_an_error_naming_the_file(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("train: {lr: 1}\n")
    profile = tmp_path / "typo.yaml"
    profile.write_text("train: {lr_: 2}\n")
    with pytest.raises(ValueError, match=r"typo.yaml: key 'train.lr_' is not in"):
        set_param_arguments(profile, params)
    assert main([str(profile), "--params", str(params)]) == 2


def test_paper_profile_only_overrides_known_keys(capsys):
    assert main(["paper"]) == 0
    arguments = shlex.split(capsys.readouterr().out)
    assert arguments[0::2] == ["--set-param"] * (len(arguments) // 2) and arguments


def test_hub_checkpoints_of_a_profile_are_checked_before_it_runs(tmp_path, capsys):
    from ehrbert import hub

    assert hub.hub_folders(hub.profile_path("paper")) == {
        "hub/bert-base-cased": "bert-base-cased",
        "hub/dmis-lab/biobert-base-cased-v1.1": "dmis-lab/biobert-base-cased-v1.1",
    }
    assert hub.main(["check", "paper", "--root", str(tmp_path)]) == 2
    message = capsys.readouterr().err
    assert "hub/bert-base-cased" in message and "make checkpoints PROFILE=paper" in message
    for folder in ("hub/bert-base-cased", "hub/dmis-lab/biobert-base-cased-v1.1"):  # what `make checkpoints` leaves
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "config.json").write_text("{}")
    assert hub.main(["check", "paper", "--root", str(tmp_path)]) == 0
