"""data.augment: each transform against an oracle, seeded per (seed, epoch, rank), training batches only, and
a real run with it switched on."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from helpers import run_cli, write_yaml
from raytrain.config_data import AugmentConfig
from raytrain.errors import UserError
from raytrain.epoch import StepEnv
from raytrain.techniques import augment as aug


def _images(n=64, c=3, h=8, w=8) -> torch.Tensor:
    return torch.arange(n * c * h * w, dtype=torch.float32).reshape(n, c, h, w) + 1.0  # no zero pixel


def _gen(seed=0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_random_crop_is_a_window_of_the_padded_image():
    x, p = _images(), 2
    out = aug.random_crop(x, p, _gen())
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    offsets = set()
    for i in range(len(x)):
        hits = [(oy, ox) for oy in range(2 * p + 1) for ox in range(2 * p + 1)
                if torch.equal(out[i], padded[i, :, oy:oy + 8, ox:ox + 8])]
        assert hits, i
        offsets.add(hits[0])
    assert len(offsets) > 10  # offsets are drawn per image
    assert torch.equal(aug.random_crop(x, 0, _gen()), x)


def test_flip_mirrors_about_half_the_images_and_leaves_the_rest():
    x = _images(n=400)
    out = aug.flip(x, _gen())
    flipped = [torch.equal(out[i], x[i].flip(2)) for i in range(len(x))]
    kept = [torch.equal(out[i], x[i]) for i in range(len(x))]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 150 < sum(flipped) < 250


def test_cutout_zeroes_one_square_per_image():
    x, size = _images(n=32, h=16, w=16), 4
    out = aug.cutout(x, size, _gen())
    for i in range(len(x)):
        hole = (out[i] == 0).all(0)
        ys, xs = torch.nonzero(hole, as_tuple=True)
        assert 0 < len(ys) <= size * size
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        assert box == len(ys)  # a (clipped) rectangle
        assert torch.equal(out[i][:, ~hole], x[i][:, ~hole])


def test_resized_crop_of_the_whole_image_is_the_image_and_a_part_is_magnified():
    x = _images(n=4, h=16, w=16)
    same = aug.resized_crop(x, (1.0, 1.0), _gen(), ratio=(1.0, 1.0))
    assert torch.allclose(same, x, atol=1e-3)
    part = aug.resized_crop(x, (0.25, 0.25), _gen(), ratio=(1.0, 1.0))
    assert part.shape == x.shape and not torch.allclose(part, x)
    # a quarter of the area at full size: neighbouring pixels differ by about half as much as in the image
    step = float((x[..., 1:] - x[..., :-1]).abs().mean())
    assert float((part[..., 1:] - part[..., :-1]).abs().mean()) == pytest.approx(step / 2, rel=0.15)


def test_the_same_seed_epoch_and_rank_augment_alike_and_evaluation_is_untouched():
    cfg = AugmentConfig(crop=2, flip=True, cutout=3, resized_crop=(0.5, 1.0))
    x = _images()
    a, b = aug.build(cfg, 7, (3, 8, 8), torch.device("cpu")), aug.build(cfg, 7, (3, 8, 8), torch.device("cpu"))
    a.reseed(3, 1)
    b.reseed(3, 1)
    assert torch.equal(a(x), b(x))
    for other in ((4, 1), (3, 0)):  # another epoch, another rank: another draw
        a.reseed(3, 1)
        b.reseed(*other)
        assert not torch.equal(a(x), b(x)), other
    env = StepEnv(torch.device("cpu"), augment=a)
    batch = {"x": x, "y": torch.zeros(len(x), dtype=torch.long)}
    assert torch.equal(env.inputs(batch)[0], x)  # evaluation batches: never augmented
    assert not torch.equal(env.inputs(batch, train=True)[0], x)
    assert aug.build(AugmentConfig(), 7, (3, 8, 8), torch.device("cpu")) is None
    with pytest.raises(UserError, match="data.augment: needs images"):
        aug.build(AugmentConfig(flip=True), 7, (64,), torch.device("cpu"))


def test_a_run_with_augmentation_trains(tmp_path):
    exp = {"name": "aug", "seed": 0, "data": {"dataset": "digits", "upscale": 2,
                                              "augment": {"crop": 2, "flip": False, "cutout": 2}},
           "model": {"name": "cnn", "width": 0.5}, "output": str(tmp_path / "runs"),
           "train": {"epochs": 2, "batch_size": 32, "optimizer": {"name": "adamw", "lr": 0.003}, "precision": "fp32"},
           "parallel": {"workers": 1, "cpus_per_worker": 1}}
    out = tmp_path / "s.json"
    r = run_cli([sys.executable, "-m", "raytrain", "train", str(write_yaml(tmp_path / "a.yaml", exp)),
                 "--summary-json", str(out)], timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(out.read_text())
    assert s["status"] == "completed" and s["final"]["val_accuracy"] > 0.8, s["final"]
    assert s["config"]["data"]["augment"]["crop"] == 2
    bad = run_cli([sys.executable, "-m", "raytrain", "validate", str(write_yaml(tmp_path / "b.yaml", {
        **exp, "model": {"name": "mlp"}, "data": {"dataset": "parquet", "path": str(tmp_path / "none.parquet"),
                                                  "augment": {"resized_crop": [0.0, 1.0]}}}))], timeout=60)
    assert bad.returncode == 2 and "data.augment.resized_crop" in bad.stderr and bad.stderr.count("\n") == 1, bad.stderr
