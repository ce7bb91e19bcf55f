"""Training augmentation on whole batches, on the device the step runs on: random crop with padding,
horizontal flip, random-resized crop and cutout (the standard fast-training recipes' set).

Why batches, not per-example transforms: per-example work in Python (or a DataLoader worker) is what makes
input the bottleneck on fast accelerators; here each transform is a few tensor ops for the whole batch, with
no copy back to the host. Each function is pure given its generator, so each has an oracle test. The
`Augment` object owns the generator, reseeded by (seed, epoch, rank) at each epoch, so a resumed run
augments its epochs as an uninterrupted one does. Inputs are NCHW floats before normalisation (padding and
cutout are black, as torchvision's transforms before Normalize).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F


def random_crop(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad each side by `pad`, then cut each image back to its size at a random offset."""
    if pad <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=x.device)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (n, h, 1)
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (n, 1, w)
    picked = padded[torch.arange(n, device=x.device)[:, None, None], :, rows, cols]  # (n, h, w, c)
    return picked.permute(0, 3, 1, 2).contiguous()


def flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the images left to right."""
    mask = torch.rand(x.shape[0], generator=gen, device=x.device) < 0.5
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def cutout(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Zero a `size` x `size` square (clipped at the border) centred at a random pixel of each image."""
    if size <= 0:
        return x
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1, 1), generator=gen, device=x.device)
    cx = torch.randint(0, w, (n, 1, 1), generator=gen, device=x.device)
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    lo = size // 2
    hole = (ys >= cy - lo) & (ys < cy - lo + size) & (xs >= cx - lo) & (xs < cx - lo + size)
    return x * (~hole)[:, None].to(x.dtype)


def resized_crop(x: torch.Tensor, scale: tuple[float, float], gen: torch.Generator,
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """A random region of each image (area fraction in `scale`, aspect in `ratio`) resized back to the
    image size, bilinear (one `grid_sample` for the batch)."""
    n = x.shape[0]
    dev = x.device
    area = torch.empty(n, device=dev).uniform_(scale[0], scale[1], generator=gen)
    log_r = torch.empty(n, device=dev).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    r = torch.exp(log_r)
    sw, sh = torch.sqrt(area * r).clamp(max=1.0), torch.sqrt(area / r).clamp(max=1.0)  # fractions of the side
    tx = (torch.rand(n, generator=gen, device=dev) * 2 - 1) * (1 - sw)
    ty = (torch.rand(n, generator=gen, device=dev) * 2 - 1) * (1 - sh)
    theta = torch.zeros(n, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sw, tx, sh, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class Augment:
    """The configured transforms (`data.augment`), in a fixed order: resized crop, crop, flip, cutout."""

    def __init__(self, cfg, seed: int, device: torch.device):
        self.cfg, self.seed = cfg, seed
        self.gen = torch.Generator(device=device)
        self.reseed(0, 0)

    def reseed(self, epoch: int, rank: int, step: int = 0) -> None:
        """Draws of `epoch` on `rank` from its step `step` on: each batch's draws depend only on (seed, epoch,
        rank, step), so a run resumed mid-epoch augments its remaining batches as the uninterrupted run did."""
        self.epoch, self.rank, self.step = epoch, rank, step

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        c, g = self.cfg, self.gen
        g.manual_seed(((self.seed * 1_000_003 + self.epoch) * 4099 + self.rank) * 1_000_033 + self.step)
        self.step += 1
        if c.resized_crop:
            x = resized_crop(x, tuple(c.resized_crop), g)
        x = random_crop(x, c.crop, g)
        if c.flip:
            x = flip(x, g)
        return cutout(x, c.cutout, g)


def build(cfg, seed: int, in_shape: tuple, device: torch.device) -> Optional[Augment]:
    """An `Augment` for image-shaped inputs (C, H, W) when any transform is on, else None."""
    if cfg is None or not cfg.enabled():
        return None
    if len(in_shape) != 3:
        from raytrain.errors import UserError

        raise UserError(f"data.augment: needs images (C, H, W); the data's examples have shape {tuple(in_shape)}")
    return Augment(cfg, seed, device)
