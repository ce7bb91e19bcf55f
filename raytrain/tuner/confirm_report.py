"""report.html's confirmation part (`search.confirm`): the headline names the confirmed winner, and a section shows
each finalist's seeds, as a table and a plot (no Ray imported: `raytrain report` needs none)."""

from __future__ import annotations

import html
import math

from raytrain.tuner.finalists import worst_text
from raytrain.tuner.labels import params_text, trial_name


def _fmt(v, spec: str) -> str:
    return "&ndash;" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _runs(c: dict, f: dict) -> list[dict]:
    by_seed = {r["seed"]: r for r in c["runs"] if r["finalist"] == f["finalist"]}
    return [by_seed.get(s, {"seed": s, "status": "no run"}) for s in c["seeds"]]


def headline(summary: dict) -> str:
    """The user's question, answered by the confirmation: which configuration, and how it did on every seed."""
    c, obj = summary["confirmation"], summary.get("objective") or {}
    target, best_yaml = obj.get("time_to_target"), summary.get("best_yaml")
    run = f'<p>Train it: <code>raytrain train {html.escape(best_yaml)}</code></p>' if best_yaml else ""
    if not c["finalists"] or c.get("winner") is None:
        return "<p><b>No finalist finished its confirmation runs</b>; no best.yaml was written.</p>"
    w = c["finalists"][0]
    label = html.escape(params_text(dict(sorted(w["params"].items())), sep=", "))
    def one(r: dict) -> str:
        if not target:
            return _fmt(r.get(obj.get("metric", "val_accuracy")), ".4f")
        t = r.get("time_to_target_s")
        return f"{t:.1f} s" if t is not None else f"missed (val_acc {_fmt(r.get('val_accuracy'), '.4f')})"

    seeds = ", ".join(f"seed {r['seed']}: {one(r)}" for r in _runs(c, w))
    ok = sum(f["all_reached"] for f in c["finalists"])
    what = f"Confirmed fastest to {target:.2%}" if target else "Confirmed best configuration"
    if target and not w["all_reached"]:
        what = f"No finalist reached {target:.2%} on every seed; the closest"
    top = next(f for f in c["finalists"] if f["search_rank"] == min(g["search_rank"] for g in c["finalists"]))
    note = ("" if top is w else
            f" The search's own top trial ({trial_name(top['search_trial_id'])}) ranked {top['confirmed_rank']} here: "
            f"{html.escape(worst_text(top, obj))}.")
    return (f"<p><b>{what}: {label}</b> &mdash; {html.escape(worst_text(w, obj))} ({seeds}), retrained on "
            f"{len(c['seeds'])} fresh seed(s) beside {len(c['finalists']) - 1} other finalist(s).{note}</p>{run}"
            + (f"<p>{ok} of {len(c['finalists'])} finalists reached {target:.2%} on every seed.</p>" if target else ""))


def section(summary: dict) -> str:
    """Each finalist's seeds: a table (the search's own trial beside, not counted) and a plot."""
    c = summary.get("confirmation")
    if not c or not c["finalists"]:
        return ""
    obj = summary.get("objective") or {}
    target, metric = obj.get("time_to_target"), obj.get("metric", "val_accuracy")
    value = "time_to_target_s" if target else metric
    head = "to target (s)" if target else html.escape(metric)
    rows = []
    for f in c["finalists"]:
        runs = _runs(c, f)
        per = lambda k, spec: " / ".join(_fmt(r.get(k), spec) for r in runs)  # noqa: E731
        own = f.get("search_time_to_target_s") if target else f.get("search_val_accuracy")
        rows.append(f"<tr><td>{f['confirmed_rank']}</td><td class='n'>{trial_name(f['search_trial_id'])} (rank "
                    f"{f['search_rank']})</td><td>{html.escape(params_text(dict(sorted(f['params'].items())), sep=', '))}"
                    f"</td><td>{_fmt(own, '.1f' if target else '.4f')}</td><td>{per(value, '.1f' if target else '.4f')}"
                    f"</td><td>{html.escape(worst_text(f, obj))}</td><td>{per('val_accuracy', '.4f')}</td>"
                    f"<td>{per('test_accuracy', '.4f')}</td><td>{html.escape(' / '.join(str(r['status'])[:40] for r in runs))}"
                    f"</td></tr>")
    seeds = " / ".join(str(s) for s in c["seeds"])
    from raytrain.tuner.report import _png

    return f"""<h2>Confirmation</h2>
<p>The top {c['top_k']} configurations of the search, retrained on fresh seeds {html.escape(seeds)} (the search
trained on seed {c['search_seed']}) with the trials' resources, epochs and stop, and no ASHA; ranked by
{html.escape(c['ranked_by'])}. The search's own trial of each is shown beside, not counted (it is the draw that
selected it). Per-seed values are listed in seed order ({html.escape(seeds)}); time to target and validation accuracy
are on the validation split, test accuracy on the test split (read once, at each run's end). Wall time
{c['wall_s']:.0f} s, {c['trial_epochs']} trial-epochs.</p>
<img src="data:image/png;base64,{_png(plot(summary))}">
<table><tr><th>rank</th><th>trial (search rank)</th><th>params</th><th>search trial {head}</th><th>{head} per seed</th>
<th>worst seed</th><th>validation accuracy per seed</th><th>test accuracy per seed</th><th>status</th></tr>
{''.join(rows)}</table>"""


def plot(summary: dict):
    """Per finalist (confirmed order): each seed's time to target (or metric) as a dot, its worst seed as a bar,
    a miss as an x at the top, the search's own trial as a hollow diamond."""
    from raytrain.tuner.report import _figure

    c, obj = summary["confirmation"], summary.get("objective") or {}
    target = obj.get("time_to_target")
    key = "time_to_target_s" if target else obj.get("metric", "val_accuracy")
    fig, ax = _figure()
    values = [r.get(key) for r in c["runs"] if r.get(key) is not None] + \
        [f.get("search_time_to_target_s" if target else "search_val_accuracy") for f in c["finalists"]]
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    top = max(values) * 1.1 if values else 1.0
    colors = {s: f"C{i % 10}" for i, s in enumerate(c["seeds"])}
    for x, f in enumerate(c["finalists"]):
        for j, r in enumerate(_runs(c, f)):
            dx = (j - (len(c["seeds"]) - 1) / 2) * 0.08
            v = r.get(key)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                ax.plot(x + dx, top, "x", color=colors[r["seed"]], ms=9, mew=2)
            else:
                ax.plot(x + dx, v, "o", color=colors[r["seed"]], ms=7)
        worst = f.get("worst_time_to_target_s") if target else f.get("worst")
        if worst is not None:
            ax.hlines(worst, x - 0.3, x + 0.3, color="k", lw=1.5)
        own = f.get("search_time_to_target_s" if target else "search_val_accuracy")
        if own is not None:
            ax.plot(x + 0.25, own, "D", mfc="none", color="0.4", ms=7)
    for s, col in colors.items():
        ax.plot([], [], "o", color=col, label=f"seed {s}")
    ax.plot([], [], "D", mfc="none", color="0.4", label="the search's own trial")
    ax.plot([], [], "k-", label="worst seed")
    ax.set_xticks(range(len(c["finalists"])),
                  [f"{trial_name(f['search_trial_id'])}\n(search rank {f['search_rank']})" for f in c["finalists"]])
    if target:
        ax.set_ylim(bottom=0)
    ax.set_ylabel(f"training seconds to {target:.2%} (validation)" if target else key)
    ax.set_title("confirmation: each finalist's seeds, in confirmed order" + (" (x: target missed)" if target else ""))
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    return fig
