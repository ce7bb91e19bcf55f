"""Models you can use after training, with plain torch and pyarrow (no Ray): load_model, export (a state_dict and
a torch.export program that loads without raytrain), evaluate, predict; and a resumed run keeps its own model.

The runs are real: the cheapest training (digits, one worker, in this process through `raytrain.train`, the run
folder the CLI's) once per module, one of them structurally pruned, one on an ImageFolder tree of PNGs (class names
from the folders)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import raytrain
from raytrain import cli
from raytrain.inference import cache_batches

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
CLI = Path(sys.executable).parent / "raytrain"
DIGITS = ROOT / "experiments" / "digits-cnn.yaml"
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _env(pythonpath: bool = True) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    return {**env, "PYTHONPATH": str(TESTS)} if pythonpath else env


def _train(base: Path, *sets: str) -> Path:
    """experiments/digits-cnn.yaml on one worker in fp32, with `sets` (as `--set`), trained by `raytrain.train` in
    this process (no Ray: one worker); its run folder."""
    exp = raytrain.load_experiment(DIGITS, ["parallel.workers=1", "train.precision=fp32",
                                            "train.schedule.warmup_epochs=0", f"output={base / 'runs'}", *sets])
    result = raytrain.train(exp)
    assert result.status == "completed" and result.mode == "in-process", result
    return Path(result.run_dir)


def _tree(root: Path) -> Path:
    """sklearn's digits as an ImageFolder tree of 8x8 grayscale PNGs: train/<name>/ and val/<name>/."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for i, (img, y) in enumerate(zip(d.images, d.target)):
        folder = root / ("val" if i % 10 == 0 else "train") / NAMES[y]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255 / 16).astype(np.uint8), mode="L").save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("use")
    pruned = _train(base, "name=pruned", "train.epochs=2",
                    "pruning={method: structured, ratio: 0.5, schedule: oneshot, start_epoch: 1}")
    tree = _tree(base / "tree")
    images = _train(base, "name=images", "train.epochs=1", "model.name=mlp", "data.dataset=images",
                    f"data.path={tree}")
    return SimpleNamespace(base=base, pruned=pruned, images=images, tree=tree)


def _result(run: Path) -> dict:
    return json.loads((run / "result.json").read_text())["final"]


def _val_x(clf) -> np.ndarray:
    return np.concatenate([x for x, _ in cache_batches(clf.meta["data"]["val_path"], clf.in_shape)])


def test_load_model_is_the_trained_pruned_model(runs):
    """load_model gives the pruned architecture with the trained weights: its accuracy and loss on the run's
    validation split are what training measured at its end."""
    from raytrain.models import build_model

    clf = raytrain.load_model(runs.pruned)
    final = _result(runs.pruned)
    n = sum(p.numel() for p in clf.net.parameters())
    assert n == final["params_total"] < 0.5 * sum(p.numel() for p in build_model("cnn", (1, 8, 8), 10).parameters())
    ev = raytrain.evaluate(runs.pruned)
    assert ev.count == 180 and ev.accuracy == final["val_accuracy"] and ev.accuracy > 0.5
    assert ev.loss == pytest.approx(final["val_loss"], rel=1e-4)


def test_export_loads_with_plain_torch_and_predicts_the_same(runs, tmp_path, capsys):
    """`raytrain export RUN OUT` (positional OUT): the .pt2 beside OUT loads with torch.export alone, in a
    process that never imports raytrain, and gives the training-time model's logits for the stored features;
    OUT itself is a plain state_dict of the pruned shapes, which load_model rebuilds."""
    out = tmp_path / "exported" / "digits.pt"
    assert cli.main(["export", str(runs.pruned), str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"export: {out}" in printed and f"program: {out.with_suffix('.pt2')}" in printed
    clf = raytrain.load_model(runs.pruned)
    x = _val_x(clf)
    torch.save(torch.from_numpy(x), tmp_path / "x.pt")
    script = ("import sys, torch\n"
              "m = torch.export.load(sys.argv[1]).module()\n"
              "torch.save(m(torch.load(sys.argv[2])), sys.argv[3])\n"
              "assert not any(n.split('.')[0] == 'raytrain' for n in sys.modules), 'raytrain was imported'\n")
    proc = subprocess.run([sys.executable, "-c", script, str(out.with_suffix(".pt2")), str(tmp_path / "x.pt"),
                           str(tmp_path / "y.pt")], cwd=tmp_path, env=_env(pythonpath=False), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with torch.no_grad():
        expected = clf(torch.from_numpy(x))
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), expected, rtol=1e-5, atol=1e-5)
    weights = torch.load(out, weights_only=True)
    assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in clf.net.state_dict().items()}
    with torch.no_grad():
        torch.testing.assert_close(raytrain.load_model(out)(torch.from_numpy(x)), expected)
    assert (raytrain.load_model(out.with_suffix(".pt2"))(torch.from_numpy(x)).argmax(1) == expected.argmax(1)).all()


def test_export_never_overwrites_and_takes_out_as_an_alias(runs, tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert cli.main(["export", str(runs.pruned), "--out", str(out)]) == 0
    before = (out.read_bytes(), out.with_suffix(".pt2").read_bytes())
    capsys.readouterr()
    assert cli.main(["export", str(runs.pruned), str(out)]) == 2
    assert capsys.readouterr().err.strip() == (f"raytrain: OUT {out}: already exists (export never overwrites; pick "
                                               "another path)")
    assert (out.read_bytes(), out.with_suffix(".pt2").read_bytes()) == before
    lone = tmp_path / "lone.pt2"  # the program's name is taken: nothing is written, not even the state_dict
    lone.write_bytes(b"mine")
    assert cli.main(["export", str(runs.pruned), str(tmp_path / "lone.pt")]) == 2
    assert lone.read_bytes() == b"mine" and not (tmp_path / "lone.pt").exists()
    assert cli.main(["export", str(runs.pruned), str(out), "--out", str(tmp_path / "other.pt")]) == 2


def test_evaluate_and_predict_on_a_parquet(runs, tmp_path):
    """Another dataset in the user's own columns: the same rows score what the validation split scored, and
    predict writes one row per example: the model's argmax and its softmax probability."""
    clf = raytrain.load_model(runs.pruned)
    x = _val_x(clf)
    y = np.concatenate([y for _, y in cache_batches(clf.meta["data"]["val_path"], clf.in_shape)])
    pq.write_table(pa.table({"pixels": pa.array(list(x.reshape(len(x), -1))), "digit": pa.array(y)}),
                   tmp_path / "mine.parquet")
    cols = ["data.features=pixels", "data.shape=[1, 8, 8]"]
    ev = raytrain.evaluate(runs.pruned, tmp_path / "mine.parquet", overrides=cols + ["data.label=digit"])
    assert (ev.count, ev.accuracy) == (len(y), raytrain.evaluate(runs.pruned).accuracy)
    pq.write_table(pa.table({"pixels": pa.array(list(x.reshape(len(x), -1)))}), tmp_path / "unlabelled.parquet")
    for name in ("p.csv", "p.parquet"):
        raytrain.predict(runs.pruned, tmp_path / "unlabelled.parquet", tmp_path / name, overrides=cols)
    got = pq.read_table(tmp_path / "p.parquet").to_pydict()
    with torch.no_grad():
        probs = torch.softmax(clf(torch.from_numpy(x)), 1)
    assert got["row"] == list(range(len(x))) and got["class_id"] == probs.argmax(1).tolist()
    np.testing.assert_allclose(got["probability"], probs.max(1).values.numpy(), rtol=1e-5)
    assert "class_name" not in got  # digits recorded no class names
    from pyarrow import csv

    assert csv.read_csv(tmp_path / "p.csv").column("class_id").to_pylist() == got["class_id"]
    with pytest.raises(raytrain.UserError, match=r"--out .*p.csv: already exists"):
        raytrain.predict(runs.pruned, tmp_path / "unlabelled.parquet", tmp_path / "p.csv", overrides=cols)
    with pytest.raises(raytrain.UserError, match=r"data.features: column 'image' not in .*--set data.features="):
        raytrain.predict(runs.pruned, tmp_path / "unlabelled.parquet", tmp_path / "q.csv")


def test_image_folder_run_predicts_class_names(runs, tmp_path, capsys):
    """A run on an ImageFolder tree: evaluate on its split and on a folder agree, and predict on a folder of
    images names each file's class by the run's class names."""
    final = _result(runs.images)
    assert cli.main(["evaluate", str(runs.images)]) == 0
    assert f"evaluate: accuracy {final['val_accuracy']:.4f}" in capsys.readouterr().out
    ev = raytrain.evaluate(runs.images, runs.tree / "val")
    assert ev.count == 180 and ev.accuracy == pytest.approx(final["val_accuracy"])
    assert cli.main(["predict", str(runs.images), str(runs.tree / "val"), "--out", str(tmp_path / "p.parquet")]) == 0
    got = pq.read_table(tmp_path / "p.parquet").to_pydict()
    assert len(got["row"]) == 180 and got["class_name"] == [sorted(NAMES)[i] for i in got["class_id"]]
    truth = [Path(p).parent.name for p in got["path"]]
    assert sum(a == b for a, b in zip(truth, got["class_name"])) / 180 == pytest.approx(final["val_accuracy"])


def test_a_checkpoint_of_another_model_is_refused_naming_run_and_layer(runs, tmp_path):
    import usermodels

    with pytest.raises(raytrain.UserError) as e:
        raytrain.load_model(runs.pruned, usermodels.tiny)
    assert str(e.value).startswith(f"{runs.pruned}: its checkpoint does not match the model model= (layer 0.bias "
                                   "is in the checkpoint, not in the model)")
    exp = raytrain.load_experiment(DIGITS, ["parallel.workers=1", "train.schedule.warmup_epochs=0", "train.epochs=3",
                                            f"output={tmp_path}"])
    with pytest.raises(raytrain.UserError, match=rf"^--resume {runs.pruned}: its checkpoint does not match the model "
                                                 r"model= \(layer 0.bias "):
        raytrain.train(exp, model=usermodels.tiny, resume=runs.pruned)
    assert [r["epoch"] for r in map(json.loads, (runs.pruned / "metrics.jsonl").read_text().splitlines())] == [1, 2]


def test_resume_from_the_cli_keeps_the_python_runs_model(tmp_path):
    """A run trained from Python with a factory resumes from the CLI with that factory (recorded as
    usermodels:tiny), whatever model the YAML given names; where it cannot be imported the resume is refused in
    one line saying how, and nothing is written."""
    import usermodels

    exp = raytrain.load_experiment(DIGITS, ["parallel.workers=1", "train.schedule.warmup_epochs=0", "train.epochs=1",
                                            "train.precision=fp32", f"output={tmp_path / 'runs'}"])
    run = Path(raytrain.train(exp, model=usermodels.tiny).run_dir)
    assert "name: usermodels:tiny" in (run / "config.yaml").read_text()
    resume = [str(CLI), "train", str(DIGITS), "--resume", str(run), "--set", "train.epochs=2", "--set",
              "parallel.workers=1", "--set", "train.schedule.warmup_epochs=0", "--set", "train.precision=fp32"]
    refused = subprocess.run(resume, cwd=tmp_path, env=_env(pythonpath=False), capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith(f"raytrain: --resume {run}: the run was trained with model 'usermodels:tiny', "
                                     "which cannot be built here (cannot import usermodels"), refused.stderr
    assert "raytrain.train(exp, model=<that factory>, resume=...)" in refused.stderr
    assert not list(run.glob("config.resume-*")) and len((run / "metrics.jsonl").read_text().splitlines()) == 1
    done = subprocess.run(resume, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    tiny = sum(p.numel() for p in usermodels.tiny((1, 8, 8), 10).parameters())
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["params_total"] == tiny
    assert "name: usermodels:tiny" in next(run.glob("config.resume-*.yaml")).read_text()
