"""raytrain from Python: the functions the CLI is a thin layer over.

Inside an existing Ray session (`ray.is_initialized()`: a notebook, a test fixture) they use it and
leave it running; otherwise they start the same embedded Ray as the CLI and shut it down afterwards.
Environment variables, PYTHONPATH, logging and torch's thread count are as they were when a call
returns or raises. Bad input raises `raytrain.UserError` carrying the one-line message the CLI prints.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from raytrain import console, runtime
from raytrain.config import Experiment
from raytrain.configio import load_experiment as _load
from raytrain.errors import UserError

PathLike = Union[str, Path]


@dataclass
class RunResult:
    """What `train` returns (the same as the run folder's result.json)."""
    run_dir: str
    """The run folder (local path or URI): config.yaml, metrics.jsonl, result.json, train/checkpoint_*."""
    status: str
    """completed, an early-stop reason, diverged, or failed."""
    metrics: dict
    """The last epoch's metrics (val_accuracy, val_loss, samples_per_s, time_to_target_s, ...)."""
    checkpoint: Optional[str]
    """The newest checkpoint folder."""
    error: Optional[str]
    """The root cause in one line when status is failed."""
    startup: dict
    """Seconds in each start-up phase, from the call to the first finished step."""
    wall_s: float
    """Seconds from the call to its return."""
    mode: str
    """in-process (one worker in this process) or worker-group (Ray Train)."""
    summary: dict = field(repr=False, default_factory=dict)
    """Everything result.json holds."""


@dataclass
class SearchResult:
    """What `search` returns (the same as the search folder's search.json)."""
    run_dir: str
    """The search folder: tune/, search.json, best.yaml, report.html."""
    trials: list[dict]
    """Every trial, ranked by the objective: params, status, epochs, accuracy, time to target, history."""
    best_yaml: Optional[str]
    """A ready-to-run experiment with the winning values (`train(load_experiment(best_yaml))`)."""
    report: Optional[str]
    """report.html."""
    wall_s: float
    summary: dict = field(repr=False, default_factory=dict)

    @property
    def best(self) -> Optional[dict]:
        """The top-ranked trial that finished properly, or None."""
        from raytrain.tuner.tuning import best

        return best(self.trials)


def load_experiment(path: PathLike, overrides: Optional[list[str]] = None) -> Experiment:
    """Read and validate an experiment YAML; `overrides` are `"key.path=value"` strings like `--set`."""
    return _load(path, overrides)


def _experiment(exp: Union[Experiment, PathLike]) -> Experiment:
    return exp if isinstance(exp, Experiment) else _load(exp)


def validate(exp: Union[Experiment, PathLike], model: Optional[Callable] = None):
    """Check an experiment's storage, data and model without training; returns the data's `DataInfo`."""
    from raytrain import driver

    return driver.preflight(_experiment(exp), model).info


def _check_storage(output: str, resume: Optional[PathLike]) -> None:
    from raytrain import storage

    storage.check_reachable(storage.resolve(output), "output")
    if resume is not None:
        storage.check_reachable(storage.resolve(str(resume), "--resume"), "--resume")


def _preflight(exp: Experiment, model: Optional[Callable]):
    from raytrain import driver  # torch, Ray Train, Ray Data: imported on this thread while Ray starts

    prepared = driver.preflight(exp, model)
    driver.warm_up()
    prepared.checked_at = time.time()
    return prepared


def factory_name(fn: Callable) -> str:
    """"module:qualname" for a model factory, recorded as model.name so the CLI can resume and export the
    run when the function is importable (a lambda or a notebook's function can only be resumed from Python)."""
    mod, qual = getattr(fn, "__module__", None) or "__main__", getattr(fn, "__qualname__", repr(fn))
    try:
        obj = importlib.import_module(mod)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except Exception:
        obj = None
    if obj is not fn:
        console.LOGGER.warning(f"model factory {mod}:{qual} is not importable by name: resume and export this run "
                               "from Python (train(..., model=...)), not from the CLI")
    return f"{mod}:{qual}"


def train(exp: Union[Experiment, PathLike], *, model: Optional[Callable] = None, datasets: Optional[dict] = None,
          resume: Optional[PathLike] = None, callbacks: Optional[list] = None, verbose: bool = False) -> RunResult:
    """Train one experiment; returns its `RunResult` (the run folder is the same as the CLI's).

    model: a factory `(in_shape, num_classes) -> nn.Module` used instead of `model.name` (it must pickle
        to Ray's workers; a module-level function is recorded by name for the CLI).
    datasets: {"train": ray.data.Dataset, "val": ray.data.Dataset} (and "test": a test set, read once at the
        end) with the columns `data.features` and `data.label` name, checked like Parquet and ingested like
        every dataset.
    resume: a run folder (path or URI) to continue from its newest readable checkpoint.
    callbacks: `raytrain.Callback` instances, after the YAML's `callbacks:` (they must pickle to Ray's workers
        when the run has a worker group).
    verbose: also Ray's, Ray Data's and Tune's own console output (by default only lines to act on).
    """
    return _train(exp, model=model, datasets=datasets, resume=resume, callbacks=callbacks, verbose=verbose,
                  launch=time.time())


def _train(exp, *, model, datasets, resume, callbacks, verbose, launch: float) -> RunResult:
    """`train`, timed from `launch` (the CLI passes when the command started: time to first step is the
    user's wait, imports included)."""
    exp = _experiment(exp)
    callbacks = list(callbacks or [])
    if model is not None:
        exp = exp.model_copy(update={"model": exp.model.model_copy(update={"name": factory_name(model)})})
    _check_storage(exp.output, resume)  # a bad URI or an unreachable store: one line, before Ray starts
    if resume is not None:  # the run's own model, or one line saying why it cannot be (never another model)
        from raytrain.modelfile import resumed

        exp = resumed(exp, str(resume), model)
    from raytrain import driver

    if driver.without_ray(exp, datasets):  # one worker, materialised data, this machine: no Ray to start
        with runtime.preserved(), console.attached(verbose, ray=False), runtime.sigterm_as_interrupt():
            s = driver.run(exp, resume, launch, factory=model, ray="none", callbacks=callbacks)
        return _run_result(s)
    with runtime.preserved(), console.attached(verbose):
        # The data and model checks need no cluster and ray.init mostly waits for the processes it starts:
        # side by side, the first step comes that much sooner. Bad input still ends in one UserError.
        ready = runtime.in_background(_preflight, exp, model) if datasets is None else None
        with runtime.ray_session() as kind:
            ray_up = time.time()
            prepared = ready.result() if ready is not None else None
            if prepared is not None:
                prepared.ray_up_at = ray_up

            url = runtime.dashboard_url()
            if url and kind == "embedded":
                console.LOGGER.info(f"Ray dashboard: {url}")
            s = driver.run(exp, resume, launch, prepared=prepared, factory=model, datasets=datasets, ray=kind,
                           callbacks=callbacks)
    return _run_result(s)


def _run_result(s) -> RunResult:
    return RunResult(run_dir=s.run_dir, status=s.status, metrics=s.final, checkpoint=s.checkpoint, error=s.error,
                     startup=s.startup, wall_s=s.wall_s, mode=s.mode, summary=s.as_dict())


def search(spec: Union[PathLike, Any], *, overrides: Optional[list[str]] = None,
           resume: Optional[PathLike] = None, verbose: bool = False) -> SearchResult:
    """Run (or, with `resume`, finish) a Tune search over a spec: an experiment YAML with a `search:` block.
    Each trial event is one console line; `verbose` adds Tune's status tables and Ray's own output."""
    from raytrain.tuner import driver
    from raytrain.tuner.report import write_report
    from raytrain.tuner.spec import SearchSpec, load_spec

    spec = spec if isinstance(spec, SearchSpec) else load_spec(spec, overrides)
    _check_storage(spec.base.output, resume)
    with runtime.preserved(), console.attached(verbose), runtime.ray_session() as kind:
        url = runtime.dashboard_url()
        if url and kind == "embedded":
            console.LOGGER.info(f"Ray dashboard: {url}")
        s = driver.run(spec, str(resume) if resume is not None else None)
    report = write_report(s["run_dir"])
    return SearchResult(s["run_dir"], s["trials"], s.get("best_yaml"), report, s["wall_s"], s)


def export(run_dir: PathLike, out: Optional[PathLike] = None) -> str:
    """Write a run's newest readable checkpoint as one plain state_dict (default RUN_DIR/model.pt) and, beside
    it with the suffix .pt2, a torch.export program (input normalisation inside) that loads with plain torch:
    `torch.export.load(path).module()`. Never overwrites; returns the state_dict's path."""
    from raytrain.modelfile import export as _export

    return _export(str(run_dir), str(out) if out is not None else None)[0]


def load_model(path: PathLike, model: Optional[Callable] = None):
    """The trained model of a run folder (its newest readable checkpoint, pruned structure included) or of a
    file `export` wrote, in eval mode on the CPU. It takes features as the dataset stores them and returns
    logits (the run's input normalisation is inside); `.net` is the network itself, `.classes` the class
    names (or None). A .pt2 program loads as torch.export's module. `model`: the factory of a run trained
    from Python whose factory is not importable by name. No Ray is started."""
    from raytrain.modelfile import load_model as _load_model

    return _load_model(str(path), model)


def evaluate(run_dir: PathLike, data: Optional[PathLike] = None, overrides: Optional[list[str]] = None,
             model: Optional[Callable] = None, split: Optional[str] = None):
    """Accuracy of a run's newest checkpoint on one of its splits (`split`: "val", the default, held out
    exactly as training held it out; or "test", where the dataset has a test set), or on every row of `data`
    (a Parquet file/folder/URI with the run's feature and label columns, or an image folder
    `<class>/<image>`); `overrides` are `"data.key=value"` changes to the run's data block. Returns an
    `Evaluation` (accuracy, loss, count, data, checkpoint). No Ray is started."""
    from raytrain.inference import evaluate as _evaluate

    return _evaluate(str(run_dir), str(data) if data is not None else None, overrides, model, split)


def predict(run_dir: PathLike, inputs: PathLike, out: PathLike, overrides: Optional[list[str]] = None,
            model: Optional[Callable] = None) -> str:
    """Write predictions of a run's newest checkpoint for every row of `inputs` (a Parquet file/folder/URI
    with the run's feature column, or a folder of images) to `out` (.parquet or .csv, never overwritten):
    row, class_id, class_name (when the run recorded class names), probability, and path for images.
    Returns `out`. No Ray is started."""
    from raytrain.inference import predict as _predict

    return _predict(str(run_dir), str(inputs), str(out), overrides, model)[0]


def check_cluster(path: PathLike, crds: Optional[PathLike] = None) -> list[str]:
    """Problems in a cluster-launcher YAML or KubeRay manifest, one line each (empty: fine)."""
    from raytrain.clusters.check import check_file

    return [str(p) for p in check_file(Path(path), Path(crds) if crds else None)]


def fit(spec: PathLike, cluster: PathLike) -> tuple[bool, list[str]]:
    """Where a run's (or each trial's) workers land on a cluster file's node pools: (fits, lines)."""
    from raytrain.clusters.fit import fit as _fit

    return _fit(Path(spec), Path(cluster))


from raytrain.callbacks import Callback  # noqa: E402  (public, and cheap: no torch or Ray)
from raytrain import PUBLIC as __all__  # noqa: E402,F401  (the one list of public names)
