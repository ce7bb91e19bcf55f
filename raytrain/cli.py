"""`raytrain` command line: parse -> build -> run -> summarise. The only layer that knows every other one."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from raytrain.errors import EXIT_USER_ERROR, UserError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raytrain", description="Train models faster on Ray.")
    sub = p.add_subparsers(dest="verb", required=True)

    def experiment_verb(name: str, help_text: str) -> argparse.ArgumentParser:
        v = sub.add_parser(name, help=help_text)
        v.add_argument("experiment", help="experiment YAML")
        v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override one key (repeatable), validated like the file")
        return v

    t = experiment_verb("train", "train one experiment on Ray Train")
    t.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    experiment_verb("validate", "check an experiment YAML without running it")
    sr = sub.add_parser("search", help="Ray Tune search (ASHA) over a spec: an experiment YAML + a search: block")
    sr.add_argument("experiment", metavar="SPEC", help="search spec YAML (see search/)")
    sr.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="override one key of the spec (repeatable)")
    sr.add_argument("--resume", type=Path, metavar="RUN_DIR", help="finish an interrupted search (Tuner.restore)")
    ex = sub.add_parser("export", help="write a run's newest checkpoint as one full-model state_dict")
    ex.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    ex.add_argument("--out", type=Path, help="output file (default RUN_DIR/model.pt; never overwritten)")
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
    rp = sub.add_parser("report", help="write report.html (learning curves, rungs, Pareto) for a search run")
    rp.add_argument("run_dir", type=Path)
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
    try:
        return _dispatch(args, launch)
    except UserError as e:
        print(f"raytrain: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("raytrain: interrupted", file=sys.stderr)
        return 130


def _dispatch(args, launch: float) -> int:
    if args.verb == "report":
        from raytrain.search.report import write_report

        print(f"report: {write_report(args.run_dir)}")
        return 0
    if args.verb == "search":
        return _search(args)
    if args.verb == "clusters":
        return _clusters(args)
    if args.verb == "export":
        from raytrain.export import export

        out, source, n = export(args.run_dir, args.out)
        print(f"export: {out} ({n:,} parameters, from {source})")
        return 0
    from raytrain.config import load_experiment

    exp = load_experiment(args.experiment, args.overrides)
    if args.verb == "validate":
        from raytrain.trainer import preflight

        prep = preflight(exp)
        print(f"{args.experiment}: ok ({exp.name}: {exp.model.name} on {exp.data.dataset}, "
              f"{prep.info.n_train} train examples, shape {prep.info.in_shape}, {prep.info.num_classes} classes)")
        return 0
    return _train(exp, args.resume, launch)


def _clusters(args) -> int:
    if args.clusters_verb == "fit":
        from raytrain.clusters.fit import fit

        ok, lines = fit(args.spec, args.cluster)
        print("\n".join(lines))
        return 0 if ok else EXIT_USER_ERROR
    from raytrain.clusters.check import check_file

    crds = args.crds or (Path(os.environ["RAYTRAIN_KUBERAY_CRDS"]) if os.environ.get("RAYTRAIN_KUBERAY_CRDS") else None)
    problems = [p for f in args.files for p in check_file(f, crds)]
    for p in problems:
        print(p, file=sys.stderr)
    strict = "" if crds else " (KubeRay manifests: fields only; pass --crds for the strict schema)"
    if not problems:
        print(f"{len(args.files)} file(s) ok{strict}")
    return EXIT_USER_ERROR if problems else 0


def _train(exp, resume, launch: float) -> int:
    from raytrain import runtime

    runtime.bound_ray_train_waits()  # before ray.data is imported: its logging reads the env at import
    # Importing torch, Ray Train and Ray Data (~2 s) and checking the data and model (a cold data cache:
    # ~1 s) need no cluster, and ray.init spends ~3 s mostly waiting for the processes it starts: do
    # them side by side, so the first step comes that much sooner. Bad input still ends in one line.
    ready = runtime.in_background(_prepare_training, exp)
    with runtime.ray_session():
        trainer, prepared = ready.result()
        url = runtime.dashboard_url()
        if url:
            print(f"[raytrain] Ray dashboard: {url}", flush=True)
        summary = trainer.run(exp, resume, launch, prepared=prepared)
    _print_summary(summary)
    return 0 if summary["status"] != "failed" else 1


def _prepare_training(exp):
    from raytrain import trainer

    return trainer, trainer.preflight(exp)


def _search(args) -> int:
    from raytrain import runtime
    from raytrain.search.spec import load_spec

    spec = load_spec(args.experiment, args.overrides)  # every bad key or value fails here, before Ray
    runtime.bound_ray_train_waits()
    from raytrain.search import driver
    from raytrain.search.report import write_report

    with runtime.ray_session():
        url = runtime.dashboard_url()
        if url:
            print(f"[raytrain] Ray dashboard: {url}", flush=True)
        summary = driver.run(spec, args.resume)
    print("\n== raytrain search ==")
    print(driver.table(summary))
    print(f"\n{len(summary['trials'])} trials, {summary['trial_epochs']} trial-epochs, {summary['wall_s']:.0f} s")
    print(f"results     {summary['run_dir']}/search.json  (TensorBoard: tensorboard --logdir {summary['run_dir']}/tune)")
    if summary.get("best_yaml"):
        print(f"best        {summary['best_yaml']}  (raytrain train {summary['best_yaml']})")
    print(f"report      {write_report(Path(summary['run_dir']))}")
    return 0


def _print_summary(s: dict) -> None:
    m = s["final"]
    print("\n== raytrain summary ==")
    print(f"status      {s['status']}" + (f": {s['error']}" if s.get("error") else ""))
    if "val_accuracy" in m:
        print(f"val acc     {m['val_accuracy']:.4f} after {m.get('epoch')} epoch(s) (val loss {m['val_loss']:.4f})")
        print(f"throughput  {m['samples_per_s']:.0f} samples/s, {m['step_ms']:.1f} ms/step, precision {m['precision']}")
    if "time_to_target_s" in m:
        print(f"to target   {m['time_to_target_s']:.1f} s ({m['time_to_target_epochs']} epochs of training)")
    if "params_total" in m:
        flops = f", {m['flops_per_sample'] / 1e6:.2f} MFLOPs/sample forward" if m.get("flops_per_sample") else ""
        stages = f" (per stage: {', '.join(f'{n:,}' for n in m['stage_params'])})" if m.get("stage_params") else ""
        print(f"model       {m['params_nonzero']:,}/{m['params_total']:,} non-zero params{flops}{stages}")
    startup = f" (first step {s['first_step_s']:.1f} s after launch)" if s.get("first_step_s") else ""
    print(f"wall time   {s['wall_s']:.1f} s{startup}")
    if s.get("startup"):
        print("start-up    " + ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in s["startup"].items()))
    print(f"checkpoint  {s['checkpoint']}")
    print(f"logs        {s['metrics_log']}  (summary: {s['run_dir']}/result.json)")


if __name__ == "__main__":
    sys.exit(main())
