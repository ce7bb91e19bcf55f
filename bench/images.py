"""Encoded images: training from PNG-encoded Parquet (the Hugging Face `{bytes, path}` struct) vs the same
images stored as uint8 arrays, resnet on 3x32x32, materialised (decoded once into the cache) and streamed
(decoded in Ray Data's tasks, 1 CPU beside the 1-CPU worker), with `data.augment` when the schema has it.
The four arms alternate, twice each, in one run; each figure is the better of its two (epochs after the
first). Input wait is the share of training time the loop spent waiting for its next batch.

The images: MNIST digits (or sklearn's digits when MNIST is absent) resized to 32x32 and tinted with a seeded
colour per image, so PNG holds three real channels. Generated under runs/bench, not committed.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import OUT, ROOT, cli, mnist_available, rows_of, steady

N_TRAIN = int(os.environ.get("BENCH_IMAGES_N", "10000"))
N_VAL, FILES, SIDE = max(N_TRAIN // 5, 64), 8, 32
EPOCHS = int(os.environ.get("BENCH_IMAGES_EPOCHS", "3"))
# data.augment for every arm when the schema has the key (set BENCH_AUGMENT to its YAML flow value).
AUGMENT = os.environ.get("BENCH_AUGMENT", "{crop: 4, flip: true}")


def _images(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 32, 32, 3) uint8 tinted digits and their labels."""
    from PIL import Image

    if mnist_available():
        from raytrain.data.mnist import default_dir, load_mnist

        (x, y), _ = load_mnist(default_dir())
        x = x[:, 0]
    else:
        from sklearn.datasets import load_digits

        d = load_digits()
        x, y = (d.images * 255 / 16).astype(np.uint8), d.target
    rng = np.random.default_rng(0)
    idx = rng.choice(len(y), n, replace=n > len(y))
    gray = np.stack([np.asarray(Image.fromarray(a).resize((SIDE, SIDE), Image.BILINEAR)) for a in x[idx]])
    tint = rng.uniform(0.35, 1.0, size=(n, 1, 1, 3))
    return (gray[..., None] * tint).round().astype(np.uint8), y[idx].astype(np.int64)


def _png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _write(root, x: np.ndarray, y: np.ndarray, files: int) -> None:
    """The same rows twice: root/png (struct{bytes, path}) and root/arrays (3072 uint8 values, CHW)."""
    for kind in ("png", "arrays"):
        (root / kind).mkdir(parents=True, exist_ok=True)
    for i, idx in enumerate(np.array_split(np.arange(len(y)), files)):
        png = pa.StructArray.from_arrays([pa.array([_png(a) for a in x[idx]], pa.binary()),
                                          pa.array([f"{j}.png" for j in idx])], ["bytes", "path"])
        pq.write_table(pa.table({"image": png, "label": pa.array(y[idx])}), root / "png" / f"part-{i:02d}.parquet")
        chw = x[idx].transpose(0, 3, 1, 2).reshape(len(idx), -1)
        arr = pa.FixedSizeListArray.from_arrays(pa.array(chw.ravel(), pa.uint8()), chw.shape[1])
        pq.write_table(pa.table({"image": arr, "label": pa.array(y[idx])}), root / "arrays" / f"part-{i:02d}.parquet")


def make_dataset():
    root = OUT / f"images-{N_TRAIN}"
    if not (root / "done").is_file():
        x, y = _images(N_TRAIN + N_VAL)
        _write(root / "train", x[:N_TRAIN], y[:N_TRAIN], FILES)
        _write(root / "val", x[N_TRAIN:], y[N_TRAIN:], 1)
        (root / "done").write_text("ok")
    return root


def _augment() -> list[str]:
    """--set data.augment=... when the schema has the key (checked here, so a wrong value fails before any run)."""
    from raytrain.config import DataConfig

    if "augment" not in DataConfig.model_fields:
        return []
    import yaml

    DataConfig.model_validate({"augment": yaml.safe_load(AUGMENT)})  # a bad BENCH_AUGMENT: its pydantic error
    return ["--set", f"data.augment={AUGMENT}"]


def _train(root, kind: str, ingest: str) -> dict:
    shape = ", shape: [3, 32, 32]" if kind == "arrays" else ""
    data = (f"{{dataset: parquet, path: {root / 'train' / kind}, val_path: {root / 'val' / kind}, features: image, "
            f"label: label, num_classes: 10, ingest: {ingest}{shape}}}")
    r = cli("train", str(ROOT / "experiments" / "digits-cnn.yaml"), "--set", f"name=images-{kind}-{ingest}",
            "--set", f"data={data}", *_augment(), "--set", "model={name: resnet}", "--set", f"train.epochs={EPOCHS}",
            "--set", "train.batch_size=128", "--set", "train.schedule={name: constant}",
            "--set", "train.early_stopping=null", "--set", "parallel={workers: 1, cpus_per_worker: 1}",
            "--set", f"output={OUT}")
    s = r["summary"]
    epochs = rows_of(s) if s.get("run_dir") else []
    if s.get("status") != "completed" or not epochs:
        raise RuntimeError(f"images {kind} {ingest}: {s.get('status')} {s.get('error')} {r['stdout'][-1000:]}")
    rate = steady([e["samples_per_s"] for e in epochs])
    train_s = [N_TRAIN / e["samples_per_s"] for e in epochs]
    wait = steady([e["input_wait_s"] / t for e, t in zip(epochs, train_s)])
    return {"samples_per_s": rate, "input_wait_frac": wait, "val_accuracy": epochs[-1]["val_accuracy"],
            "data_prepare_s": (s.get("startup") or {}).get("data_prepare"), "mode": s.get("mode"),
            "process_wall_s": r["process_wall_s"]}


def run() -> dict:
    root = make_dataset()
    arms: dict = {}
    for _ in range(2):
        for ingest in ("materialize", "stream"):
            for kind in ("arrays", "png"):
                arms.setdefault(f"{kind}-{ingest}", []).append(_train(root, kind, ingest))
    best = {k: max(v, key=lambda a: a["samples_per_s"]) for k, v in arms.items()}
    out = {"arms": best, "all": arms, "augment": AUGMENT if _augment() else None, "n_train": N_TRAIN,
           "epochs": EPOCHS, "png_bytes": sum(f.stat().st_size for f in (root / "train" / "png").glob("*.parquet")),
           "task": "resnet, 3x32x32, 1 worker x 1 CPU (streaming: +1 CPU of Ray Data tasks), on 2 cores"}
    for ingest in ("materialize", "stream"):
        out[f"ratio_{ingest}"] = best[f"png-{ingest}"]["samples_per_s"] / best[f"arrays-{ingest}"]["samples_per_s"]
    return out


def rows(r: dict) -> list[tuple[str, str, str]]:
    if not r or "arms" not in r:
        return []
    a = r["arms"]
    aug = f", augment {r['augment']}" if r.get("augment") else ", no augmentation"
    out = []
    for ingest, name in (("materialize", "materialised"), ("stream", "streamed")):
        p, s = a[f"png-{ingest}"], a[f"arrays-{ingest}"]
        out.append((f"samples/s, PNG-encoded Parquet vs the same images as uint8 arrays ({name}; resnet, 3×32×32, "
                    f"{r['n_train']:,} images{aug})",
                    f"{p['samples_per_s']:.0f} vs {s['samples_per_s']:.0f} = **{r[f'ratio_{ingest}']:.2f}** "
                    f"(val acc {p['val_accuracy']:.3f} vs {s['val_accuracy']:.3f})", "≥0.9"))
    out.append(("input wait, share of training time, PNG materialised / streamed (arrays: materialised / streamed)",
                f"**{a['png-materialize']['input_wait_frac']:.1%} / {a['png-stream']['input_wait_frac']:.1%}** "
                f"({a['arrays-materialize']['input_wait_frac']:.1%} / {a['arrays-stream']['input_wait_frac']:.1%})",
                "≤5%"))
    prep = a["png-materialize"].get("data_prepare_s")
    if prep is not None:
        out.append(("the PNG decode before a materialised run (driver, into the cache; the first of the two runs)",
                    f"{max(x['data_prepare_s'] or 0 for x in r['all']['png-materialize']):.1f} s for "
                    f"{r['n_train']:,} + val images ({r['png_bytes'] / 1e6:.1f} MB of PNG)", "(reading)"))
    return out
