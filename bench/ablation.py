"""Train-step time of each speed technique vs fp32 dense, resnet width 2 at batch 256, one worker x 2 CPUs, a
fixed budget of epochs (structured pruning cuts at epoch 1 and fine-tunes for the rest). At width 1 / batch
128 the same techniques gain less (bf16+channels_last 0.43x, structured 0.5 0.44x in an earlier run):
per-step overheads weigh more when the convolutions are small. The fp32 baseline keeps the allocator tuning
on; the row that turns it off shows what it is worth."""

from __future__ import annotations

from bench.common import RESULTS, experiment, rows_of, steady

CONFIGS = {
    "fp32 dense": {},
    "bf16": {"train__precision": "bf16"},
    "channels_last": {"train__channels_last": True},
    "bf16+channels_last": {"train__precision": "bf16", "train__channels_last": True},
    "auto (default)": {"train__precision": "auto", "train__channels_last": "auto"},
    "mobilenet (same width)": {"model__name": "mobilenet"},
    "keep_freed_memory off": {"train__keep_freed_memory": False},
    "magnitude 0.5": {"pruning": {"method": "magnitude", "ratio": 0.5, "start_epoch": 1}},
    "magnitude 0.9": {"pruning": {"method": "magnitude", "ratio": 0.9, "start_epoch": 1}},
    "structured 0.3": {"pruning": {"method": "structured", "ratio": 0.3, "start_epoch": 1}},
    "structured 0.5": {"pruning": {"method": "structured", "ratio": 0.5, "start_epoch": 1}},
    "structured 0.7": {"pruning": {"method": "structured", "ratio": 0.7, "start_epoch": 1}},
}
BASE = {"model__name": "resnet", "model__width": 2.0, "train__batch_size": 256, "data__val_fraction": 0.3,
        "train__optimizer": {"name": "sgd", "lr": 0.2}, "train__schedule": {"name": "cosine", "warmup_epochs": 1}}
GOALS = {"bf16+channels_last": "≤0.35×", "auto (default)": "≤0.35×", "structured 0.5": "≤0.35× at ≤0.3 pt loss"}


def run(epochs: int = 24) -> dict:
    from raytrain import runtime, driver

    out = {}
    with runtime.ray_session(num_cpus=2):
        for label, patch in CONFIGS.items():
            s = driver.run(experiment(train__epochs=epochs, parallel__cpus_per_worker=2, **{**BASE, **patch}))
            r = rows_of(s)
            out[label] = {"step_ms": steady([x["step_ms"] for x in r]), "val_accuracy": s.final["val_accuracy"],
                          "params_nonzero": s.final.get("params_nonzero"), "flops": s.final.get("flops_per_sample"),
                          "precision": s.final.get("precision"), "status": s.status}
    base = out["fp32 dense"]["step_ms"]
    for v in out.values():
        v["step_ratio"] = v["step_ms"] / base
        v["acc_delta_pt"] = 100 * (v["val_accuracy"] - out["fp32 dense"]["val_accuracy"])
    plot(out)
    return {"task": f"resnet width 2 on digits upscaled to 32x32 (539 validation images), batch 256, 1 worker x 2 CPUs, "
                    f"{epochs} epochs, cosine+warmup", "configs": out}


def plot(out: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(out)
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.barh(labels, [out[k]["step_ratio"] for k in labels], color="tab:blue")
    ax.axvline(1.0, color="grey", lw=1)
    for i, k in enumerate(labels):
        ax.text(out[k]["step_ratio"] + 0.02, i, f"{out[k]['step_ratio']:.2f}x  acc {out[k]['val_accuracy']:.3f}", va="center")
    ax.invert_yaxis()
    ax.set_xlabel("train-step time relative to fp32 dense (lower is faster)")
    ax.set_title("raytrain speed techniques (CPU, this machine)")
    fig.tight_layout()
    fig.savefig(RESULTS / "ablation.png", dpi=110)


def rows(a: dict) -> list[tuple[str, str, str]]:
    out = []
    for label, v in (a or {}).get("configs", {}).items():
        note = " (no speed on dense kernels)" if label.startswith("magnitude") else ""
        base = label == "fp32 dense"
        delta = f" ({v['acc_delta_pt']:+.1f} pt)" if not base else ""
        out.append((f"step time {'fp32 dense resnet (baseline)' if base else label}{note}",
                    f"**{v['step_ratio']:.2f}×** ({v['step_ms']:.1f} ms), acc {v['val_accuracy']:.3f}{delta}",
                    GOALS.get(label, "—")))
    return out
