"""`raytrain` command line: a thin layer over `raytrain.api` (parse -> call -> print). Bad input is one
line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from raytrain import _ray_compat
from raytrain.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, Interrupted, UserError


VERBOSE_HELP = "also print Ray's, Ray Data's and Tune's own console output (Tune's status tables)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raytrain", description="Train models faster on Ray.")
    p.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = p.add_subparsers(dest="verb", required=True)

    def experiment_verb(name: str, help_text: str, metavar: str = "EXPERIMENT") -> argparse.ArgumentParser:
        v = sub.add_parser(name, help=help_text)
        v.add_argument("experiment", metavar=metavar, help="experiment YAML" if metavar == "EXPERIMENT" else
                       "search spec YAML (an experiment + a search: block)")
        v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override one key (repeatable), validated like the file")
        v.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
        return v

    t = experiment_verb("train", "train one experiment (in this process for one worker, else on Ray Train)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run (path or URI) from its newest readable checkpoint")
    t.add_argument("--summary-json", metavar="FILE", help="also write the run's summary (result.json) to FILE")
    experiment_verb("validate", "check an experiment YAML, its data and model, without running it")
    sr = experiment_verb("search", "Ray Tune search (ASHA) over a spec", metavar="SPEC")
    sr.add_argument("--resume", metavar="RUN_DIR", help="finish an interrupted search (path or URI)")
    sr.add_argument("--summary-json", metavar="FILE", help="also write the search's summary (search.json) to FILE")
    ex = sub.add_parser("export", help="write a run's newest checkpoint as a state_dict and a torch.export program")
    ex.add_argument("run_dir", metavar="RUN_DIR", help="run folder (path or URI)")
    ex.add_argument("out", nargs="?", metavar="OUT", help="state_dict file or URI (default RUN_DIR/model.pt; the "
                    "program goes beside it as .pt2; never overwritten)")
    ex.add_argument("--out", dest="out_opt", metavar="OUT", help="the same as OUT")
    ev = sub.add_parser("evaluate", help="accuracy of a run's model on its validation or test split, or other data "
                        "(no Ray)")
    ev.add_argument("run_dir", metavar="RUN_DIR", help="run folder (path or URI)")
    ev.add_argument("--split", choices=("val", "test"), default=None, help="which of the run's splits (default val; "
                    "test: MNIST's official test set, data.test_path, an ImageFolder tree's test/)")
    ev.add_argument("--data", metavar="PATH", help="every row of this Parquet file/folder/URI or image folder "
                    "(<class>/<image>) instead of the run's validation split")
    ev.add_argument("--set", dest="overrides", action="append", default=[], metavar="data.KEY=VALUE",
                    help="change the run's data block (repeatable), e.g. data.features=pixels")
    pr = sub.add_parser("predict", help="write a run's predictions for a Parquet or a folder of images (no Ray)")
    pr.add_argument("run_dir", metavar="RUN_DIR", help="run folder (path or URI)")
    pr.add_argument("inputs", metavar="INPUT", help="Parquet file/folder/URI with the run's feature column, or a "
                    "folder of images")
    pr.add_argument("--out", required=True, metavar="FILE", help=".parquet or .csv (never overwritten)")
    pr.add_argument("--set", dest="overrides", action="append", default=[], metavar="data.KEY=VALUE",
                    help="change the run's data block (repeatable), e.g. data.features=pixels")
    cl = sub.add_parser("clusters", help="check cluster YAMLs, or see where a run's workers would land")
    cv = cl.add_subparsers(dest="clusters_verb", required=True)
    ck = cv.add_parser("check", help="Ray's launcher validator / KubeRay fields and CRDs, plus security lints")
    ck.add_argument("files", nargs="+", type=Path, metavar="FILE")
    ck.add_argument("--crds", type=Path, default=None, metavar="DIR",
                    help="folder with KubeRay's ray.io_rayclusters.yaml / ray.io_rayjobs.yaml for strict schema checks "
                         "(default: $RAYTRAIN_KUBERAY_CRDS)")
    cf = cv.add_parser("fit", help="which node pool each worker lands on, and how many trials run at once")
    cf.add_argument("spec", type=Path, metavar="SPEC", help="search spec or experiment YAML")
    cf.add_argument("cluster", type=Path, metavar="CLUSTER", help="cluster-launcher YAML or KubeRay manifest")
    rp = sub.add_parser("report", help="write report.html (fastest config first, curves, Pareto) for a search")
    rp.add_argument("run_dir", metavar="RUN_DIR", help="search folder (path or URI)")
    return p


def main(argv: list[str] | None = None) -> int:
    launch = time.time()
    # User models ("package.module:function") import from the launch directory, as under `python -m raytrain`
    # (the console script's sys.path lacks it); workers get it through PYTHONPATH (raytrain.runtime).
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed its one-line usage error
        return EXIT_USER_ERROR if e.code else 0
    _ray_compat.set_env_defaults(args.verbose)  # before ray.data is imported: its logging reads the env at import
    try:
        return _dispatch(args, launch)
    except UserError as e:
        print(f"raytrain: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Interrupted as e:  # SIGTERM while training: checkpointed at a step
        print(f"raytrain: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("raytrain: interrupted", file=sys.stderr)
        return 130


def _dispatch(args, launch: float) -> int:
    from raytrain import api

    if args.verb == "report":
        from raytrain.tuner.report import write_report

        print(f"report: {write_report(args.run_dir)}")
        return 0
    if args.verb == "search":
        result = api.search(args.experiment, overrides=args.overrides, resume=args.resume, verbose=args.verbose)
        _print_search(result)
        _dump(args.summary_json, result.summary)
        return 0
    if args.verb == "clusters":
        return _clusters(args)
    if args.verb == "export":
        from raytrain.modelfile import export

        if args.out and args.out_opt and args.out != args.out_opt:
            raise UserError(f"export: OUT {args.out} and --out {args.out_opt} differ; give one")
        out, program, source, n = export(args.run_dir, args.out or args.out_opt)
        print(f"export: {out} ({n:,} parameters, from {source})")
        if program:
            print(f"program: {program} (torch.export.load(path).module()(x): logits for features as stored)")
        return 0
    if args.verb == "evaluate":
        ev = api.evaluate(args.run_dir, args.data, args.overrides, split=args.split)
        print(f"evaluate: accuracy {ev.accuracy:.4f}, loss {ev.loss:.4f} on {ev.count} examples of {ev.data} "
              f"(checkpoint {ev.checkpoint})")
        return 0
    if args.verb == "predict":
        from raytrain.inference import predict

        out, n = predict(args.run_dir, args.inputs, args.out, args.overrides)
        print(f"predict: {n} rows -> {out}")
        return 0
    exp = api.load_experiment(args.experiment, args.overrides)
    if args.verb == "validate":
        info = api.validate(exp)
        print(f"{args.experiment}: ok ({exp.name}: {exp.model.name} on {exp.data.dataset}, {info.n_train} train / "
              f"{info.n_val} val / {info.n_test or 'no'} test examples, shape {info.in_shape}, {info.num_classes} "
              f"classes, ingest {info.ingest})")
        return 0
    result = api._train(exp, model=None, datasets=None, resume=args.resume, callbacks=None, verbose=args.verbose,
                        launch=launch)
    _print_summary(result.summary)
    print(next_commands(result.summary, args.experiment))
    _dump(args.summary_json, result.summary)
    return 0 if result.status != "failed" else 1


def _dump(path, summary: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(summary, indent=2, default=str))


def _clusters(args) -> int:
    from raytrain import api

    if args.clusters_verb == "fit":
        ok, lines = api.fit(args.spec, args.cluster)
        print("\n".join(lines))
        return 0 if ok else EXIT_USER_ERROR
    crds = args.crds or (Path(os.environ["RAYTRAIN_KUBERAY_CRDS"]) if os.environ.get("RAYTRAIN_KUBERAY_CRDS") else None)
    problems = [p for f in args.files for p in api.check_cluster(f, crds)]
    for p in problems:
        print(p, file=sys.stderr)
    strict = "" if crds else " (KubeRay manifests: fields only; pass --crds for the strict schema)"
    warnings = [w for f in args.files for w in _cluster_warnings(f)]
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if not problems:
        print(f"{len(args.files)} file(s) ok{strict}")
    return EXIT_USER_ERROR if problems else 0


def _cluster_warnings(path: Path) -> list[str]:
    from raytrain.clusters.check import warnings_for

    return warnings_for(path)


def _print_search(result) -> None:
    from raytrain.tuner import driver

    s = result.summary
    run = _short(s["run_dir"])
    print("\n== raytrain search ==")
    print(driver.table(s))
    if s.get("confirmation"):
        from raytrain.tuner.finalists import table

        print("\n" + table(s["confirmation"], s.get("objective") or {}))
    print(f"\n{len(s['trials'])} trials, {s['trial_epochs']} trial-epochs, {s['wall_s']:.0f} s"
          + (f" (budget: {s['budget_note']})" if s.get("budget_note") else ""))
    print(f"results     {run}/search.json")
    print(f"curves      tensorboard --logdir {run}/tune")
    print(f"report      {_short(result.report)}")
    if result.best_yaml:
        what = "the confirmed winner's" if s.get("confirmation") else "the best trial's"
        print(f"next: raytrain train {_short(result.best_yaml)}  ({what} experiment)")


def _short(where: str) -> str:
    from raytrain.console import shown

    return shown(where)


def next_commands(s: dict, experiment: str) -> str:
    """One line: the commands that make sense after this run (what its checkpoint and status allow)."""
    run, exp, epochs = _short(s["run_dir"]), experiment, int(s["final"].get("epoch") or 1)
    if s["status"] == "failed":
        steps = [f"raytrain validate {exp}"] + ([f"raytrain train {exp} --resume {run}"] if s.get("checkpoint") else [])
    elif s["status"] == "diverged":
        steps = [f"raytrain train {exp} --set train.optimizer.lr=<lower>"]
    else:  # a completed run may go on for more epochs; one stopped early has its answer
        steps = [f"raytrain export {run}", f"raytrain evaluate {run}"]
        if s["status"] == "completed":
            steps.append(f"raytrain train {exp} --resume {run} --set train.epochs={2 * epochs}")
    return "next: " + "  |  ".join(steps)


def _print_summary(s: dict) -> None:
    m, splits = s["final"], s.get("splits") or {}
    print("\n== raytrain summary ==")
    print(f"status      {s['status']}" + (f": {s['error']}" if s.get("error") else ""))
    if "val_accuracy" in m:
        print(f"val acc     {m['val_accuracy']:.4f} after {m.get('epoch')} epoch(s) (val loss {m['val_loss']:.4f})"
              + (f" on {splits['val']['source']}" if splits.get("val") else ""))
        if m.get("test_accuracy") is not None:
            print(f"test acc    {m['test_accuracy']:.4f} (test loss {m['test_loss']:.4f}) on "
                  f"{splits.get('test', {}).get('source', 'the test split')}, read once at the end")
        elif splits.get("test"):
            print(f"test acc    {splits['test']['source']}")
        print(f"throughput  {m['samples_per_s']:.0f} samples/s, {m['step_ms']:.1f} ms/step, precision {m['precision']}")
    if "time_to_target_s" in m:
        print(f"to target   {m['time_to_target_s']:.1f} s ({m['time_to_target_epochs']} epochs of training)")
    elif missed_target(s):
        metric, target = missed_target(s)
        print(f"to target   NOT REACHED: {metric} {m[metric]:.4f} < target {target:g} (the recipe claims it; more "
              f"epochs or another seed may be needed)")
    if "params_total" in m:
        flops = f", {m['flops_per_sample'] / 1e6:.2f} MFLOPs/sample forward" if m.get("flops_per_sample") else ""
        stages = f" (per stage: {', '.join(f'{n:,}' for n in m['stage_params'])})" if m.get("stage_params") else ""
        print(f"model       {m['params_nonzero']:,}/{m['params_total']:,} non-zero params{flops}{stages}")
    startup = f" (first step {s['first_step_s']:.1f} s after launch)" if s.get("first_step_s") else ""
    print(f"wall time   {s['wall_s']:.1f} s{startup}, {s['mode']}, data {s['ingest']}")
    if s.get("startup"):
        print("start-up    " + ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in s["startup"].items()))
    if s.get("startup_side_by_side"):
        side = s["startup_side_by_side"]
        print("            (side by side from launch: " + ", ".join(f"{k.replace('_', ' ')} done at {v:.1f} s"
                                                                for k, v in side.items()) + ")")
    print(f"checkpoint  {s['checkpoint']}")
    print(f"logs        {s['metrics_log']}  (summary: {s['run_dir']}/result.json)")


def missed_target(s: dict):
    """(metric, target) when the run set an early-stopping target and ended without reaching it, else None."""
    stop = ((s.get("config") or {}).get("train") or {}).get("early_stopping") or {}
    metric, target = stop.get("metric"), stop.get("target")
    final = s.get("final") or {}
    if target is None or metric not in final or "time_to_target_s" in final or s.get("status") == "failed":
        return None
    return metric, target


def entry() -> None:
    """The console script: `main`, then exit without tearing the interpreter down module by module (torch,
    Ray and pyarrow take a noticeable part of the user's wait to do so, docs/startup.md; Ray is already shut
    down, files are closed)."""
    rc = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    entry()
