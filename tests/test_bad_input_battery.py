"""Reliability: the bad-input battery, table-driven, through the CLI. Every malformed input - experiment
YAML, search spec, --set override, Parquet data, user model, cluster YAML, run folder - gets exactly one
line on stderr naming the culprit, exit code 2, no traceback, and leaves an earlier run byte-for-byte intact."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from raytrain.cli import main

ROOT = Path(__file__).resolve().parents[1]
SECRET = "wJalrXUtnFEMIexample"  # a credential-like value, planted in inputs
EXP = {"name": "b", "data": {"dataset": "digits"}, "model": {"name": "mlp", "width": 0.5},
       "train": {"epochs": 1, "batch_size": 64, "precision": "fp32"}, "parallel": {"workers": 1}}


def _yaml(tmp: Path, filename: str, doc, **patch) -> str:
    doc = yaml.safe_load(yaml.safe_dump(doc))
    for dotted, value in patch.items():
        node = doc
        *parents, last = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path = tmp / filename
    path.write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc)
    return str(path)


def _exp(tmp: Path, **patch) -> list[str]:
    return ["train", _yaml(tmp, "exp.yaml", {**EXP, "output": str(tmp / "runs")}, **patch)]


def _validate(tmp: Path, **patch) -> list[str]:
    return ["validate", _yaml(tmp, "exp.yaml", {**EXP, "output": str(tmp / "runs")}, **patch)]


def _spec(tmp: Path, **search) -> list[str]:
    doc = {**EXP, "output": str(tmp / "runs"), "search": {"space": {"train.optimizer.lr": {"grid": [0.01, 0.1]}}, **search}}
    return ["search", _yaml(tmp, "spec.yaml", doc)]


def _parquet(tmp: Path, table: pa.Table | None = None, text: str | None = None, **patch) -> list[str]:
    path = tmp / "data.parquet"
    if text is not None:
        path.write_text(text)
    elif table is not None:
        pq.write_table(table, path)
    data = {"dataset": "parquet", "path": str(path), "features": "x", "label": "y", **patch}
    return _validate(tmp, data=data)


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _good_x(n: int = 8):
    return pa.array(np.ones((n, 4), np.float32).tolist(), pa.list_(pa.float32()))


def _cluster(tmp: Path, name: str, mutate) -> list[str]:
    doc = yaml.safe_load((ROOT / "clusters" / name).read_text())
    mutate(doc)
    return ["clusters", "check", _yaml(tmp, name, doc)]


def _open_6379(d):
    d["provider"]["security_group"]["IpPermissions"].append(
        {"FromPort": 6379, "ToPort": 6379, "IpProtocol": "TCP", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]})


CASES = {
    # experiment YAML
    "yaml unknown top key": (lambda t: _exp(t, trainn={}), "trainn: unknown key"),
    "yaml unknown nested key": (lambda t: _exp(t, train__optimzer={}), "train.optimzer: unknown key"),
    "yaml wrong type": (lambda t: _exp(t, train__epochs="five"), "train.epochs: Input should be a valid integer"),
    "yaml negative lr": (lambda t: _exp(t, train__optimizer={"lr": -1}), "train.optimizer.lr: Input should be greater than 0"),
    "yaml syntax": (lambda t: ["train", _yaml(t, "e.yaml", "train: {epochs: [1,\n")], "not valid YAML"),
    "yaml not a mapping": (lambda t: ["train", _yaml(t, "e.yaml", "- 1\n- 2\n")], "top level must be a mapping"),
    "yaml missing file": (lambda t: ["train", str(t / "nope.yaml")], "nope.yaml: file not found"),
    "yaml batch vs workers": (lambda t: _exp(t, train__batch_size=65, parallel__workers=2),
                              "train.batch_size 65 must be divisible by parallel.workers 2"),
    "yaml fp16 on cpu": (lambda t: _exp(t, train__precision="fp16"), "train.precision fp16"),
    "yaml pipeline 1f1b": (lambda t: _exp(t, parallel__workers=2, parallel__pipeline={"stages": 2, "microbatches": 1}),
                           "parallel.pipeline.microbatches 1"),
    "yaml warmup": (lambda t: _exp(t, train__schedule={"name": "cosine", "warmup_epochs": 2}),
                    "train.schedule.warmup_epochs 2.0 must be shorter than train.epochs 1"),
    "yaml bad run name": (lambda t: _exp(t, name="../x"), "name: String should match pattern"),
    # credentials never come from the YAML, nor from a URI in it (any filesystem)
    "yaml credentials key": (lambda t: _exp(t, aws_secret_access_key=SECRET), "aws_secret_access_key: unknown key"),
    "yaml credentials in a URI": (lambda t: _exp(t, output=f"s3://AKIAEXAMPLE:{SECRET}@b/runs"),
                                  "output s3://...@b/runs: credentials in the URI"),
    "yaml credential option, gs": (lambda t: _exp(t, output=f"gs://b/runs?access_token={SECRET}"),
                                   "unknown URI option 'access_token'"),
    "yaml credential option, fsspec": (lambda t: _exp(t, output=f"abfs://c/runs?account_key={SECRET}"),
                                       "URI option 'account_key' looks like a credential"),
    # --set overrides
    "set without =": (lambda t: _exp(t) + ["--set", "train.epochs"], "--set train.epochs: expected key.path=value"),
    "set unknown key": (lambda t: _exp(t) + ["--set", "train.epohcs=3"], "train.epohcs: unknown key"),
    "set bad yaml": (lambda t: _exp(t) + ["--set", "train.epochs=[1,"], "value is not valid YAML"),
    "set into scalar": (lambda t: _exp(t) + ["--set", "name.x=1"], "name is not a mapping"),
    # search spec
    "spec unknown key": (lambda t: _spec(t, sampels=2), "search.sampels: unknown key"),
    "spec given to validate": (lambda t: ["validate", _spec(t)[1]],
                               "search: unknown key in an experiment: this is a search spec, run `raytrain search "),
    "spec grace > max_t": (lambda t: _spec(t, asha={"max_t": 2, "grace_period": 3}), "grace_period 3 exceeds max_t 2"),
    "spec unknown space key": (lambda t: _spec(t, space={"train.lrr": {"grid": [1]}}),
                               "search.space.train.lrr: value 1 rejected: train.lrr: unknown key"),
    "spec rejected value": (lambda t: _spec(t, space={"train.epochs": {"grid": [0]}}), "search.space.train.epochs: value 0"),
    "spec bad kind": (lambda t: _spec(t, space={"train.optimizer.lr": {"normal": [0, 1]}}), "give exactly one of grid"),
    # Parquet data
    "parquet missing feature column": (lambda t: _parquet(t, pa.table({"z": _good_x(), "y": pa.array(np.arange(8) % 2)})),
                                       "data.features: column 'x' not in"),
    "parquet missing label column": (lambda t: _parquet(t, pa.table({"x": _good_x(), "c": pa.array(np.arange(8) % 2)})),
                                     "data.label: column 'y' not in"),
    "parquet label dtype": (lambda t: _parquet(t, pa.table({"x": _good_x(), "y": pa.array([[1]] * 8)})),
                            "data.label: column 'y' must hold integer class ids or class names (strings), not list"),
    "parquet one class name": (lambda t: _parquet(t, pa.table({"x": _good_x(), "y": pa.array(["a"] * 8)})),
                               "data.label: column 'y' holds 1 class name(s) (a); a classifier needs at least 2"),
    "parquet feature dtype": (lambda t: _parquet(t, pa.table({"x": pa.array(["s"] * 8), "y": pa.array(np.arange(8) % 2)})),
                              "data.features: column 'x' must hold arrays or lists of numbers, or encoded images, not "
                              "string: store PNG/JPEG bytes"),
    "parquet corrupt image": (lambda t: _parquet(t, pa.table({"x": pa.array([_png()] * 5 + [b"\x89PNG junk"] + [_png()] * 2),
                                                              "y": pa.array(np.arange(8) % 2)})),
                              "data.features: column 'x', row 5: not a readable image"),
    "images not a folder": (lambda t: _validate(t, data={"dataset": "images", "path": str(t / "gone")}),
                            "gone: no such folder; ImageFolder layout is <path>/train/<class>/<image>"),
    "parquet ragged": (lambda t: _parquet(t, pa.table({"x": pa.array([[1.0]] * 7 + [[1.0, 2.0]]),
                                                       "y": pa.array(np.arange(8) % 2)})), "is ragged"),
    "parquet empty": (lambda t: _parquet(t, pa.table({"x": pa.array([], pa.list_(pa.float32())), "y": pa.array([], pa.int64())})),
                      "dataset is empty"),
    "parquet not parquet": (lambda t: _parquet(t, text="a,b\n1,2\n"), "not a readable Parquet file"),
    "parquet missing file": (lambda t: _validate(t, data={"dataset": "parquet", "path": str(t / "gone.parquet")}),
                             "gone.parquet: no such file or directory"),
    # user model
    "model missing module": (lambda t: _validate(t, model={"name": "no_such_pkg.models:net"}), "cannot import no_such_pkg.models"),
    "model missing function": (lambda t: _validate(t, model={"name": "usermodels:nope"}), "has no function nope"),
    "model wrong signature": (lambda t: _validate(t, model={"name": "usermodels:wrong_signature"}), "must accept (in_shape, num_classes)"),
    "model not a module": (lambda t: _validate(t, model={"name": "usermodels:not_a_module"}), "not a torch.nn.Module"),
    "model wrong output": (lambda t: _validate(t, model={"name": "usermodels:wrong_output"}), "expected (batch, 10)"),
    "model too many stages": (lambda t: _validate(t, model={"name": "usermodels:tiny"}, parallel={"workers": 8, "pipeline":
                              {"stages": 8, "microbatches": 8}}, train={"batch_size": 64, "epochs": 1}),
                              "parallel.pipeline.stages: 8 stage(s) but the model has only 4 top-level blocks"),
    # cluster YAMLs
    "cluster unknown field": (lambda t: _cluster(t, "aws-gpu.yaml", lambda d: d.update(max_worker=3)),
                              "'max_worker' was unexpected"),
    "cluster open GCS": (lambda t: _cluster(t, "aws-gpu.yaml", _open_6379), "on 6379 (GCS)"),
    "cluster gpu mismatch": (lambda t: _cluster(t, "kuberay-gpu.yaml", lambda d: d["spec"]["workerGroupSpecs"][0]
                                                ["rayStartParams"].update({"num-gpus": "2"})),
                             "rayStartParams.num-gpus: 2 but"),
    # run folders
    "export not a run": (lambda t: ["export", str(t)], "not a raytrain run folder"),
    "report not a search": (lambda t: ["report", str(t / "nothing")], "nothing: no search.json"),
}


@pytest.fixture
def earlier_run(tmp_path):
    """An earlier run's folder; every case must leave it exactly as it was."""
    run = tmp_path / "runs" / "b" / "20260101-000000"
    (run / "train" / "checkpoint_000").mkdir(parents=True)
    for rel, body in {"config.yaml": "name: b\n", "metrics.jsonl": '{"epoch": 1}\n', "result.json": "{}",
                      "train/checkpoint_000/state.pt": "weights"}.items():
        (run / rel).write_text(body)
    return run


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_one_line_exit_2(name, tmp_path, capsys, earlier_run):
    make, culprit = CASES[name]
    before = _snapshot(earlier_run)
    args = make(tmp_path)
    assert main(args) == 2
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert culprit in lines[0], lines[0]
    assert "Traceback" not in out + err and SECRET not in out + err  # a credential typed in is never repeated
    assert _snapshot(earlier_run) == before
    assert sorted(p.name for p in (tmp_path / "runs" / "b").iterdir()) == [earlier_run.name]  # no new run folder


# --------------------------------------------------------------------------- where a run folder already exists
# The same invariant where it can break: a real finished run, and inputs that are only refused once Ray is up
# (resource checks), on --resume (which writes into the run folder), or after reading Parquet footers.

@pytest.fixture(scope="module")
def real_run(ray_local, tmp_path_factory):
    """A real finished run (one epoch, in-process): every case below must leave it exactly as it was."""
    from raytrain import driver
    from raytrain.configio import load_experiment

    root = tmp_path_factory.mktemp("real")
    exp = root / "exp.yaml"
    exp.write_text(yaml.safe_dump({**EXP, "output": str(root / "runs")}))
    summary = driver.run(load_experiment(exp))
    assert summary.status == "completed", summary
    return root, Path(summary.run_dir), exp


def _parquet_dir_with_a_corrupt_file(root: Path) -> Path:
    d = root / "parts"
    if not d.is_dir():
        d.mkdir()
        for i in range(4):
            pq.write_table(pa.table({"x": _good_x(16), "y": pa.array(np.arange(16) % 2)}), d / f"part-000{i}.parquet")
        (d / "part-0002.parquet").write_bytes(b"PAR1" + b"\x00" * 64)  # torn mid-directory
    return d


def _spec_at(root: Path) -> str:
    """A valid search spec writing beside the real run."""
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump({**EXP, "output": str(root / "runs"),
                                    "search": {"space": {"train.optimizer.lr": {"grid": [0.01, 0.1]}}}}))
    return str(path)


def _parquet_exp(root: Path, ingest: str) -> str:
    path = root / f"parquet-{ingest}.yaml"
    data = {"dataset": "parquet", "path": str(_parquet_dir_with_a_corrupt_file(root)), "features": "x", "label": "y",
            "ingest": ingest}
    path.write_text(yaml.safe_dump({**EXP, "output": str(root / "runs"), "data": data}))
    return str(path)


RUN_CASES = {
    "resume with a bad override": (lambda root, run, exp: ["train", str(exp), "--resume", str(run), "--set", "train.epochs=0"],
                                   "train.epochs: Input should be greater than or equal to 1"),
    "resume of a folder that is not a run": (lambda root, run, exp: ["train", str(exp), "--resume", str(run.parent)],
                                             "--resume {run.parent}: not a raytrain run folder"),
    "search resume of a run that is not a search": (
        lambda root, run, exp: ["search", _spec_at(root), "--resume", str(run)],
        "--resume {run}: not a raytrain search folder"),
    "resume asking more CPUs than the cluster has": (
        lambda root, run, exp: ["train", str(exp), "--resume", str(run), "--set", "parallel.workers=4"],
        "4 worker(s) need 4 CPU but the cluster has 2"),
    "resume asking more GPUs than the cluster has": (  # more than any host has: the same on a GPU host
        lambda root, run, exp: ["train", str(exp), "--resume", str(run), "--set", "parallel.use_gpu=true",
                                "--set", "parallel.gpus_per_worker=1024"],
        "parallel.use_gpu: 1 worker(s) need 1024 GPU but the cluster has"),
    "new run asking more CPUs than the cluster has": (lambda root, run, exp: ["train", str(exp), "--set", "parallel.workers=4"],
                                                      "4 worker(s) need 4 CPU but the cluster has 2"),
    "resume onto corrupt Parquet": (lambda root, run, exp: ["train", _parquet_exp(root, "materialize"), "--resume", str(run)],
                                    "not a readable Parquet file"),
    "stream a folder with a corrupt file": (lambda root, run, exp: ["train", _parquet_exp(root, "stream")],
                                            "data.path: " + "{root}/parts/part-0002.parquet is not a readable Parquet file"),
}


@pytest.mark.parametrize("name", list(RUN_CASES))
def test_refused_where_a_run_exists_leaves_it_untouched(name, real_run, capsys):
    root, run, exp = real_run
    make, culprit = RUN_CASES[name]
    before = _snapshot(run)
    assert main(make(root, run, exp)) == 2
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and culprit.format(root=root, run=run) in lines[0], err
    assert "Traceback" not in out + err
    assert _snapshot(run) == before  # not even a config.resume-*.yaml
    assert [p.name for p in run.parent.iterdir()] == [run.name]  # no new run folder
    assert [p.name for p in (root / "runs").iterdir() if not p.name.startswith(".")] == ["b"]  # nor search folder
