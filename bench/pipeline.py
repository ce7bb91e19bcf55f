"""Pipeline benchmark (`python -m bench --only pipeline`): memory per stage against the whole model,
and step time of GPipe vs 1F1B vs no pipeline at M = 2, 4, 8, 16 micro-batches, with the bubble
theory (K-1)/(M+K-1) beside a measured idle fraction.

Measured on real gloo processes (raytrain.parallel.spawn), one thread per stage, against one process
with as many threads as there are stages (same cores). Activation memory is what autograd saves for
backward (saved-tensor hooks, parameters excluded), tracked live so the peak is the schedule's own.
Idle fraction of a stage = 1 - (its forward+backward compute for the M micro-batches, timed alone)
/ (pipelined step time).
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from raytrain.models import build_model
from raytrain.parallel import pipeline as pl
from raytrain.parallel.spawn import run_ranks

MODEL, SHAPE, CLASSES, BATCH, STAGES = "vit", (1, 28, 28), 10, 256, 2
STEPS, WARMUP = 8, 2


class SavedBytes:
    """Live and peak bytes of tensors autograd saves for backward (parameters excluded)."""

    def __init__(self, params):
        self.skip = {p.data_ptr() for p in params}
        self.live = self.peak = 0

    def __enter__(self):
        outer = self

        class Held:
            def __init__(self, t):
                self.t, self.n = t, t.numel() * t.element_size() if t.data_ptr() not in outer.skip else 0
                outer.live += self.n
                outer.peak = max(outer.peak, outer.live)

            def __del__(self):
                outer.live -= self.n

        self.hooks = torch.autograd.graph.saved_tensors_hooks(Held, lambda h: h.t)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(BATCH, *SHAPE, generator=g), torch.randint(0, CLASSES, (BATCH,), generator=g)


def _model():
    torch.manual_seed(0)
    return build_model(MODEL, SHAPE, CLASSES)


def _busy_seconds(part, example_in, microbatches: int) -> float:
    """Forward + backward of one stage over `microbatches` micro-batches, no communication."""
    t0 = time.perf_counter()
    for _ in range(microbatches):
        x = example_in.detach().requires_grad_(example_in.requires_grad)
        out = part(x)
        out.float().sum().backward()
    return time.perf_counter() - t0


def stage_rank(schedule: str, microbatches: int) -> dict:
    x, y = _data()
    mb = BATCH // microbatches
    mesh = pl.make_mesh(STAGES, "cpu")
    reference_parts = pl.split_model(_model(), STAGES)
    io = pl.stage_io(reference_parts, torch.zeros(mb, *SHAPE))
    pipe = pl.build_pipeline(_model(), mesh, schedule, microbatches, torch.device("cpu"), torch.zeros(mb, *SHAPE))
    opt = torch.optim.SGD(pipe.parameters(), lr=0.01)
    times, peak = [], 0
    for i in range(WARMUP + STEPS):
        n, labels = pl.share_batch(mesh, y if mesh.pp_rank == 0 else None, BATCH, torch.device("cpu"))
        opt.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        with SavedBytes(pipe.parameters()) as saved:
            pl.run_step(pipe, x, labels, n, train=True)
        times.append(time.perf_counter() - t0)
        peak = max(peak, saved.peak)
        opt.step()
    part = reference_parts[mesh.pp_rank]
    busy = statistics.median(_busy_seconds(part, io[mesh.pp_rank][0], microbatches) for _ in range(3))
    step = statistics.median(times[WARMUP:])
    return {"step_s": step, "busy_s": busy, "idle_fraction": max(0.0, 1 - busy / step), "peak_activation_bytes": peak,
            "param_bytes": sum(p.numel() * p.element_size() for p in pipe.parameters())}


def whole_model(threads: int) -> dict:
    torch.set_num_threads(threads)
    x, y = _data()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    times, peak = [], 0
    for i in range(WARMUP + STEPS):
        opt.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        with SavedBytes(model.parameters()) as saved:
            F.cross_entropy(model(x), y).backward()
        times.append(time.perf_counter() - t0)
        peak = max(peak, saved.peak)
        opt.step()
    return {"step_s": statistics.median(times[WARMUP:]), "peak_activation_bytes": peak,
            "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}


def run() -> dict:
    base_threads = STAGES
    whole = whole_model(base_threads)
    rows = []
    for schedule in ("gpipe", "1f1b"):
        for m in (2, 4, 8, 16):
            ranks = run_ranks(stage_rank, STAGES, schedule, m, timeout=600)
            rows.append({
                "schedule": schedule, "microbatches": m, "step_s": max(r["step_s"] for r in ranks),
                "step_vs_no_pipeline": max(r["step_s"] for r in ranks) / whole["step_s"],
                "bubble_theory": (STAGES - 1) / (m + STAGES - 1),
                "idle_fraction_measured": statistics.mean(r["idle_fraction"] for r in ranks),
                "max_stage_param_ratio": max(r["param_bytes"] for r in ranks) / whole["param_bytes"],
                "max_stage_activation_ratio": max(r["peak_activation_bytes"] for r in ranks) / whole["peak_activation_bytes"],
            })
            print(rows[-1], flush=True)
    return {"model": MODEL, "input": list(SHAPE), "batch": BATCH, "stages": STAGES,
            "no_pipeline": {**whole, "threads": base_threads}, "rows": rows}


def rows(p: dict) -> list[tuple[str, str, str]]:
    if not p:
        return []
    by = {(r["schedule"], r["microbatches"]): r for r in p["rows"]}
    mem = [f"{s} M={m}: {by[(s, m)]['max_stage_activation_ratio']:.2f}" for s, m in (("gpipe", 8), ("1f1b", 8)) if (s, m) in by]
    out = [(f"pipeline K=2 ({p['model']}, batch {p['batch']}): largest stage vs whole model, params / peak activations",
            f"**{max(r['max_stage_param_ratio'] for r in p['rows']):.2f}** / **{'**, **'.join(mem)}**", "≤0.55")]
    for s in ("gpipe", "1f1b"):
        cells = ", ".join(f"M={r['microbatches']}: {r['step_vs_no_pipeline']:.2f}× (bubble {r['bubble_theory']:.2f}, "
                          f"idle {r['idle_fraction_measured']:.2f})" for r in p["rows"] if r["schedule"] == s)
        out.append((f"pipeline {s} step time vs no pipeline (theory bubble, measured idle)", cells,
                    "report (2 cores: not faster)"))
    return out
