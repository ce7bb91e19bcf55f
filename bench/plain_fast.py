"""`experiments/mnist-fast.yaml`'s recipe until 2026-12-03 (before it moved to cnn_bn) written by hand in plain
PyTorch (our own copy: the reference for the no-Ray-tax goal): the classic example's cnn at half width without
dropout, AdamW, one-cycle LR stepped per
batch, bf16 autocast + channels_last on the CPU, batch 128, 2 threads, a fresh permutation every epoch, a
quarter of the conv/fc channels removed with torch-pruning before the second epoch, stop at the end of the
first epoch whose test accuracy reaches --target. Data: the same IDX files, read with raytrain's reader.

    python -m bench.plain_fast [--target 0.99] [--seed 1]     # prints one JSON line at the end
"""

from __future__ import annotations

import argparse
import json
import time

T0 = time.time()

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torch_pruning as tp  # noqa: E402

from raytrain.data.mnist import default_dir, load_mnist  # noqa: E402

LR, WD, PCT = 0.00863033827132216, 0.006980848218943902, 0.2875946557186354  # mnist-fast.yaml's


def net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 12 * 12, 64), nn.ReLU(), nn.Linear(64, 10))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", type=float, default=0.99)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    (xt, yt), (xv, yv) = load_mnist(default_dir())
    xt, xv = torch.from_numpy(xt), torch.from_numpy(xv)  # uint8, normalised per batch
    yt, yv = torch.from_numpy(yt), torch.from_numpy(yv)
    norm = lambda x: ((x.float() / 255.0 - 0.1307) / 0.3081).contiguous(memory_format=torch.channels_last)  # noqa: E731
    data_ready = time.time() - T0
    model = net().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    steps = -(-len(yt) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=args.epochs * steps, pct_start=PCT,
                                                anneal_strategy="cos", cycle_momentum=False)
    epochs, first_step = [], None
    for epoch in range(args.epochs):
        if epoch == 1:  # structured pruning, a quarter of the channels, before the second epoch
            model = model.to(memory_format=torch.contiguous_format)
            ignored = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
            tp.pruner.MetaPruner(model, torch.zeros(1, 1, 28, 28), importance=tp.importance.MagnitudeImportance(p=2),
                                 pruning_ratio=0.25, ignored_layers=ignored, round_to=8).step()
            model = model.to(memory_format=torch.channels_last)
            alive = list(model.parameters())
            opt.param_groups[0]["params"] = alive
            for p in [p for p in opt.state if all(p is not q for q in alive)]:
                del opt.state[p]
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(len(yt))
        for i in range(0, len(yt), args.batch):
            idx = perm[i:i + args.batch]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(norm(xt[idx])).float(), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            first_step = first_step or time.time() - T0
        model.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            correct = sum(int((model(norm(xv[i:i + 1000])).argmax(1) == yv[i:i + 1000]).sum())
                          for i in range(0, len(yv), 1000))
        acc = correct / len(yv)
        epochs.append({"epoch": epoch + 1, "test_accuracy": acc, "epoch_s": time.perf_counter() - t0,
                       "since_start_s": time.time() - T0})
        print(f"epoch {epoch + 1}: test accuracy {acc:.4f}, {epochs[-1]['epoch_s']:.1f} s", flush=True)
        if acc >= args.target:
            break
    print(json.dumps({"epochs": epochs, "reached": epochs[-1]["test_accuracy"] >= args.target,
                      "data_ready_s": data_ready, "first_step_s": first_step,
                      "params": sum(p.numel() for p in model.parameters())}))


if __name__ == "__main__":
    main()
