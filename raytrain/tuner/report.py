"""`raytrain report RUN_DIR`: a self-contained report.html (PNG plots inlined) from a search's search.json."""

from __future__ import annotations

import base64
import html
import io
import json
import math

from raytrain import storage
from raytrain.errors import UserError
from raytrain.tuner import confirm_report
from raytrain.tuner.labels import params_text, trial_name


def _figure():
    """A figure rendered straight to PNG (no pyplot: a notebook's backend and state stay as they are)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5))
    return fig, fig.subplots()


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _label(r: dict) -> str:
    """Full dotted names (`pruning.ratio=0.5`): the last part alone is ambiguous across techniques."""
    return params_text(dict(sorted(r["params"].items())), sep=", ")


LEGEND_PARAMS_UP_TO = 12  # trials; with more, the legend names trials only (the ranked table has their values)
LABEL_POINTS_UP_TO = 30  # trials; with more, only the Pareto front's points are labelled


def _styles(summary: dict) -> dict:
    """trial_id -> (color, line style), the same on every plot; by rank, so the best ones are tab's first colors."""
    from matplotlib import colormaps

    rows = sorted(summary["trials"], key=lambda r: r.get("rank", 0))
    cmap = colormaps["tab10" if len(rows) <= 10 else "tab20"]
    return {r["trial_id"]: (cmap(i % cmap.N), ("-", "--", ":", "-.")[(i // cmap.N) % 4]) for i, r in enumerate(rows)}


def split_text(run) -> str:
    """Where every accuracy in the report comes from: the run's validation split, as its experiment defines it."""
    import yaml

    try:
        data = (yaml.safe_load((run / "spec.yaml").read_text()) or {}).get("data") or {}
    except Exception:  # an older or unreadable spec.yaml: the split is still the validation one
        data = {}
    if data.get("val_path"):
        return f"the validation set data.val_path={data['val_path']}"
    frac = data.get("val_fraction")
    held = f"{frac:.0%} of {data.get('dataset', 'the data')} held out (data.val_fraction)" if frac else "held out"
    return f"the validation split ({held}); no trial trains on it"


def _rungs(summary: dict) -> tuple[str, list]:
    """("seconds", rung seconds) for rungs on training seconds, else ("epoch", rung epochs): those any trial reached."""
    if summary.get("rung_seconds"):
        longest = max((h.get("elapsed_s") or 0.0 for r in summary["trials"] for h in r["history"]), default=0.0)
        return "seconds", [s for s in summary["rung_seconds"] if s <= longest]
    rungs = [summary["grace_period"] * summary["reduction_factor"] ** k for k in range(20)]
    return "epoch", [int(r) for r in rungs if r <= summary["max_t"]]


def curves(summary: dict, unit: str, rungs: list):
    """Validation accuracy per epoch (or per training second, rungs on seconds included) for every trial, each
    named in the legend below the plot; an x where ASHA stopped a trial early; the rungs (`_rungs`) dotted."""
    fig, ax = _figure()
    styles, many = _styles(summary), len(summary["trials"]) > LEGEND_PARAMS_UP_TO
    for r in sorted(summary["trials"], key=lambda r: r.get("rank", 0)):
        hist = [h for h in r["history"] if (h.get("elapsed_s") if unit == "seconds" else h.get("epoch"))
                and h.get("val_accuracy") is not None]
        if not hist:
            continue
        xs = [h["elapsed_s"] if unit == "seconds" else h["epoch"] for h in hist]
        ys = [h["val_accuracy"] for h in hist]
        color, style = styles[r["trial_id"]]
        name = f"{trial_name(r['trial_id'])} (rank {r.get('rank')})" + ("" if many else f": {_label(r)}")
        line, = ax.plot(xs, ys, lw=1.4, alpha=0.85, color=color, ls=style, marker="." if unit == "seconds" else "o",
                        ms=3, label=name)
        if str(r["status"]).startswith("stopped by ASHA"):
            ax.plot(xs[-1], ys[-1], "x", color=line.get_color(), ms=9, mew=2)
    for rung in rungs:
        ax.axvline(rung, color="grey", ls=":", lw=0.8)
    ax.set_xlabel("training seconds" if unit == "seconds" else "epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title("learning curves on the validation split (x: stopped by ASHA, grey dotted: rungs)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.13), fontsize=8, frameon=False,
                  ncol=1 if not many else 5)
    return fig


def pareto(summary: dict):
    """Accuracy vs training wall time, marker area by parameter count, each point named by its trial (beyond
    LABEL_POINTS_UP_TO trials, the front's only) in its curve's color; the Pareto front joined."""
    pts = [(r["elapsed_s"], r["val_accuracy"], r.get("params_total") or 1, r) for r in summary["trials"]
           if r.get("elapsed_s") and r.get("val_accuracy") is not None and not math.isnan(r["val_accuracy"])]
    fig, ax = _figure()
    if pts:
        biggest, styles = max(p[2] for p in pts), _styles(summary)
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=[30 + 300 * p[2] / biggest for p in pts], alpha=0.6,
                   c=[styles[p[3]["trial_id"]][0] for p in pts])
        front, best = [], -math.inf
        for t, a, _, r in sorted(pts, key=lambda p: p[0]):
            if a > best:
                front.append((t, a, r))
                best = a
        named = pts if len(pts) <= LABEL_POINTS_UP_TO else [(t, a, None, r) for t, a, r in front]
        for t, a, _, r in named:
            ax.annotate(trial_name(r["trial_id"]), (t, a), xytext=(5, 4), textcoords="offset points", fontsize=8,
                        color=styles[r["trial_id"]][0])
        ax.plot([f[0] for f in front], [f[1] for f in front], "k-", lw=1, alpha=0.5, label="Pareto front")
        target = (summary.get("objective") or {}).get("time_to_target")
        if target:
            ax.axhline(target, color="0.35", ls="--", lw=1, label=f"target {target:.2%}")
        ax.legend(loc="lower right")
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel("final validation accuracy")
    naming = "each trial named" if len(pts) <= LABEL_POINTS_UP_TO else "the front's trials named"
    ax.set_title(f"validation accuracy vs time ({naming}; marker size: parameters)")
    return fig


def rung_table(summary: dict, unit: str, rungs: list) -> list[tuple[str, int, float]]:
    """(rung, trials that reached it, best val accuracy there: each trial's first report at or past it, on
    seconds the best it had reached by then, as ASHA compared it)."""
    out = []
    for rung in rungs:
        accs = []
        for r in summary["trials"]:
            at = [h for h in r["history"] if h.get("val_accuracy") is not None and
                  ((h.get("elapsed_s") or 0.0) >= rung if unit == "seconds" else h.get("epoch") == rung)]
            if at:
                best = at[0].get("best_val_accuracy")  # rungs on seconds: what ASHA compared
                accs.append(at[0]["val_accuracy"] if best is None else best)
        out.append((f"{rung:g} s" if unit == "seconds" else f"epoch {rung}", len(accs),
                    max(accs) if accs else float("nan")))
    return out


def _num(v, fmt):
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def headline(summary: dict) -> str:
    """The user's question first: the fastest configuration to the target (or the best one), ready to run; with a
    confirmation, its winner."""
    if summary.get("confirmation"):
        return confirm_report.headline(summary)
    target = (summary.get("objective") or {}).get("time_to_target")
    ok = [r for r in summary["trials"] if not str(r["status"]).startswith(("error", "skipped", "diverged"))]
    best_yaml = summary.get("best_yaml")
    run = (f'<p>Train it: <code>raytrain train {html.escape(best_yaml)}</code></p>' if best_yaml else "")
    if target is None:
        if not ok:
            return "<p><b>No trial finished.</b></p>"
        b = ok[0]
        return (f"<p><b>Best configuration: {html.escape(_label(b))}</b> &mdash; {summary['objective']['metric']} "
                f"{_num(b.get('val_accuracy'), '.4f')} after {b['epochs']} epochs.</p>{run}")
    reached = [r for r in summary["trials"] if r.get("time_to_target_s") is not None]
    if not reached:
        top = max((r.get("val_accuracy") or 0.0 for r in ok), default=0.0)
        return (f"<p><b>No configuration reached {target:.2%}</b> (best {top:.2%}); widen the search space or "
                "raise asha.max_t.</p>")
    b = reached[0]
    return (f"<p><b>Fastest to {target:.2%}: {html.escape(_label(b))}</b> &mdash; {b['time_to_target_s']:.1f} s of "
            f"training ({_num(b.get('val_accuracy'), '.2%')} at epoch {b['epochs']}).</p>{run}"
            f"<p>{len(reached)} of {len(summary['trials'])} trials reached {target:.2%}.</p>")


def write_report(run_dir) -> str:
    run = storage.resolve(run_dir, "RUN_DIR")
    storage.check_reachable(run, "RUN_DIR")
    path = run / "search.json"
    if not path.exists():
        raise UserError(f"{run_dir}: no search.json (not a finished raytrain search; try raytrain search --resume)")
    summary = json.loads(path.read_text())
    num = _num

    rows = "".join(
        f"<tr><td>{r['rank']}</td><td class='n'>{trial_name(r['trial_id'])}</td><td>{html.escape(_label(r))}</td>"
        f"<td>{r.get('trained_epochs', r['epochs']):g}</td>"
        f"<td>{num(r['val_accuracy'], '.4f')}</td><td>{num(r.get('time_to_target_s'), '.1f')}</td>"
        f"<td>{num(r.get('elapsed_s'), '.1f')}</td><td>{html.escape(str(r['status']))}</td></tr>"
        for r in summary["trials"])
    unit, at = _rungs(summary)
    rungs = "".join(f"<tr><td>{e}</td><td>{n}</td><td>{a:.4f}</td></tr>" for e, n, a in rung_table(summary, unit, at))
    split = html.escape(split_text(run))
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>raytrain search report</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}td.n{{white-space:nowrap}}</style></head><body>
<h1>Search report</h1>{headline(summary)}
<p>Every accuracy here is measured on {split}.</p>{confirm_report.section(summary)}
<h2>Accuracy vs time</h2><img src="data:image/png;base64,{_png(pareto(summary))}">
<p>{html.escape(summary['run_dir'])} &mdash; {len(summary['trials'])} trials, {summary['trial_epochs']} trial-epochs,
{summary['wall_s']:.0f} s wall{html.escape(' (' + summary['budget_note'] + ')') if summary.get('budget_note') else ''}.
Objective: {html.escape(json.dumps(summary['objective']))}; ASHA's rungs compare
{html.escape(summary.get('rung_signal', 'the metric at equal epochs'))}.</p>
<h2>Learning curves</h2><img src="data:image/png;base64,{_png(curves(summary, unit, at))}">
<h2>ASHA rungs</h2><table><tr><th>rung</th><th>trials reaching it</th><th>best validation accuracy</th></tr>{rungs}
</table>
<h2>Trials (ranked)</h2><table><tr><th>rank</th><th>trial</th><th>params</th><th>epochs</th><th>validation accuracy</th>
<th>to target (s)</th>
<th>train (s)</th><th>status</th></tr>{rows}</table></body></html>"""
    out = run / "report.html"
    out.write_text(doc)
    return out.uri
