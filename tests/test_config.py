"""The experiment YAML contract: round-trip, overrides, and one-line refusals (exit 2, no traceback)."""

from __future__ import annotations

import pytest
import yaml

from helpers import write_yaml
from raytrain.cli import main
from raytrain.config import Experiment
from raytrain.configio import apply_overrides, load_experiment, to_yaml
from raytrain.errors import UserError


def test_round_trip(tmp_path, exp_dict):
    exp = load_experiment(write_yaml(tmp_path / "e.yaml", exp_dict))
    again = load_experiment(write_yaml(tmp_path / "again.yaml", yaml.safe_load(to_yaml(exp))))
    assert again == exp
    assert exp.per_worker_batch == 64 and exp.train.optimizer.lr == 0.05


def test_defaults_match_documented_contract():
    exp = Experiment()
    assert (exp.train.epochs, exp.train.batch_size, exp.parallel.workers) == (5, 128, 2)
    assert exp.checkpoint.every_epochs == 1 and exp.checkpoint.keep == 2 and exp.output == "runs"


def test_overrides_apply_in_order_and_parse_yaml_values(tmp_path, exp_dict):
    path = write_yaml(tmp_path / "e.yaml", exp_dict)
    exp = load_experiment(path, ["train.epochs=7", "parallel.workers=2", "train.optimizer.name=adamw",
                                 "train.epochs=3", "train.early_stopping={target: 0.9}"])
    assert exp.train.epochs == 3 and exp.parallel.workers == 2 and exp.train.optimizer.name == "adamw"
    assert exp.train.early_stopping.target == 0.9


def test_override_into_scalar_is_refused():
    with pytest.raises(UserError, match="--set name.x=1: name is not a mapping"):
        apply_overrides({"name": "a"}, ["name.x=1"])


BAD = [
    ({"trian": {}}, "trian: unknown key"),
    ({"train": {"epochs": "many"}}, "train.epochs: Input should be a valid integer"),
    ({"train": {"epochs": -1}}, "train.epochs: Input should be greater than or equal to 1"),
    ({"train": {"optimizer": {"name": "rmsprop"}}}, "train.optimizer.name: Input should be"),
    ({"data": {"dataset": "cifar"}}, "data.dataset: Input should be"),
    ({"data": {"val_fraction": 1.5}}, "data.val_fraction"),
    ({"train": {"batch_size": 65}, "parallel": {"workers": 2}}, "train.batch_size 65 must be divisible"),
    ({"train": {"precision": "fp16"}}, "use bf16"),
    ({"train": {"epochs": 2, "schedule": {"name": "cosine", "warmup_epochs": 3}}}, "warmup_epochs 3.0 must be shorter"),
    ({"train": {"schedule": {"name": "exponential"}}}, "train.schedule.name"),
    ({"pruning": {"method": "magnitude", "ratio": 1.0}}, "pruning.ratio: Input should be less than 1"),
    ({"pruning": {"method": "magnitude", "ratio": -0.1}}, "pruning.ratio"),
    ({"pruning": {"method": "structured", "ratio": 0.5, "schedule": "gradual", "start_epoch": 3, "end_epoch": 1},
      "train": {"epochs": 5}}, "pruning.end_epoch 1 is before pruning.start_epoch 3"),
    ({"data": {"dataset": "parquet"}}, "data.path is required"),
    ({"name": "../escape"}, "name: String should match pattern"),
    ({"model": {"name": "mlp", "dropout": 0.1}}, "model.dropout applies to cnn only"),
]


@pytest.mark.parametrize("patch,expected", BAD, ids=[b[1][:30] for b in BAD])
def test_bad_experiment_is_one_line_exit_2(tmp_path, exp_dict, capsys, patch, expected):
    data = dict(exp_dict)
    for key, value in patch.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    path = write_yaml(tmp_path / "bad.yaml", data)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_missing_file_and_bad_yaml(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: file not found" in capsys.readouterr().err
    bad = tmp_path / "broken.yaml"
    bad.write_text("train: {epochs: [1\n")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "broken.yaml" in err and "not valid YAML" in err and err.count("\n") == 1


def test_bad_override_names_the_key(tmp_path, exp_dict, capsys):
    path = write_yaml(tmp_path / "e.yaml", exp_dict)
    assert main(["validate", str(path), "--set", "train.epoch=2"]) == 2
    assert "train.epoch: unknown key" in capsys.readouterr().err
    assert main(["validate", str(path), "--set", "noequals"]) == 2
    assert "expected key.path=value" in capsys.readouterr().err


def test_validate_ok(tmp_path, exp_dict, capsys):
    assert main(["validate", str(write_yaml(tmp_path / "e.yaml", exp_dict))]) == 0
    assert "ok" in capsys.readouterr().out


def test_unknown_verb_exit_2(capsys):
    assert main(["fly"]) == 2
