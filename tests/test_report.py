"""report.html readable on its own (issue 34): every trial named on every plot, full dotted parameter names, the
split each accuracy comes from; rendered in a real browser (Debian's headless Chromium; skipped where absent)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from raytrain.tuner import report

PARAMS = [{"pruning.ratio": 0.0, "train.schedule.name": "cosine", "train.optimizer.lr": 0.0889},
          {"pruning.ratio": 0.5, "train.schedule.name": "onecycle", "train.optimizer.lr": 0.154},
          {"pruning.ratio": 0.5, "train.schedule.name": "constant", "train.optimizer.lr": 0.0101}]
LABELS = ["pruning.ratio=0, train.optimizer.lr=0.0889, train.schedule.name=cosine",  # full dotted names, sorted
          "pruning.ratio=0.5, train.optimizer.lr=0.154, train.schedule.name=onecycle",
          "pruning.ratio=0.5, train.optimizer.lr=0.0101, train.schedule.name=constant"]


def _search(tmp_path: Path, n: int = 3) -> Path:
    """A finished search's folder as `raytrain search` leaves it: search.json and the experiment (spec.yaml)."""
    trials = []
    for i in range(n):
        epochs = 4 if i % 3 != 2 else 1
        trials.append({"trial_id": f"0723a_{i:05d}", "rank": i + 1, "params": PARAMS[i % 3], "epochs": epochs,
                       "trained_epochs": epochs, "val_accuracy": 0.95 - 0.1 * i / n, "elapsed_s": 1.0 + i,
                       "time_to_target_s": None, "params_total": 50_000 - 1000 * i,
                       "status": "completed" if epochs == 4 else "stopped by ASHA after epoch 1",
                       "history": [{"epoch": e, "val_accuracy": 0.5 + 0.1 * e - 0.1 * i / n, "elapsed_s": 0.5 * e}
                                   for e in range(1, epochs + 1)]})
    summary = {"run_dir": str(tmp_path), "wall_s": 20.0, "trials": trials, "trial_epochs": sum(t["epochs"] for t in trials),
               "max_t": 4, "grace_period": 1, "reduction_factor": 2, "rung_seconds": None,
               "objective": {"metric": "val_accuracy", "mode": "max", "time_to_target": None}}
    (tmp_path / "search.json").write_text(json.dumps(summary))
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({"name": "q", "data": {"dataset": "digits", "val_fraction": 0.1}}))
    return tmp_path


def test_every_plot_names_every_trial(tmp_path):
    """The learning curves' legend names each trial (number, rank, full dotted parameters); the accuracy-vs-time
    points are labelled with the same names; both say the accuracies are on the validation split. With many
    trials the legend keeps the names and the ranked table the values."""
    summary = json.loads((_search(tmp_path) / "search.json").read_text())
    legend = [t.get_text() for t in report.curves(summary, "epoch", [1, 2]).axes[0].get_legend().get_texts()]
    assert legend == [f"trial {i} (rank {i}): {label}" for i, label in enumerate(LABELS, 1)]
    ax = report.pareto(summary).axes[0]
    assert sorted(t.get_text() for t in ax.texts) == ["trial 1", "trial 2", "trial 3"]
    assert "validation" in ax.get_ylabel()
    (tmp_path / "many").mkdir()
    many = json.loads((_search(tmp_path / "many", 14) / "search.json").read_text())
    names = [t.get_text() for t in report.curves(many, "epoch", [1]).axes[0].get_legend().get_texts()]
    assert names == [f"trial {i} (rank {i})" for i in range(1, 15)]


def _browser() -> str | None:
    return next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.skipif(_browser() is None, reason="no headless Chromium here (.ci/run installs Debian's chromium)")
def test_report_reads_on_its_own_in_a_browser(tmp_path):
    """report.html as a browser shows it: the text says which split every accuracy is from and names each trial
    with its full dotted parameters; the page's screenshot holds both plots (colored pixels of the trials' lines,
    which text and tables alone have none of)."""
    from PIL import Image

    (tmp_path / "search").mkdir()
    run = _search(tmp_path / "search")
    page = Path(report.write_report(str(run)))
    shot = tmp_path / "report.png"
    browser = [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1100,2400"]
    # one browser start for both: the DOM (on stdout) and the screenshot
    done = subprocess.run([*browser, "--dump-dom", f"--screenshot={shot}", page.as_uri()], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    text = done.stdout
    assert "Every accuracy here is measured on the validation split (10% of digits held out (data.val_fraction))" in text
    for i, label in enumerate(LABELS, 1):
        assert f'<td class="n">trial {i}</td><td>{label}</td>' in text, text
    hsv = np.asarray(Image.open(shot).convert("HSV"))
    saturated = int(((hsv[..., 1] > 120) & (hsv[..., 2] > 60)).sum())  # pixels in the trials' colors
    assert saturated > 2000, saturated
