"""PyTorch's classic MNIST example (pytorch/examples, mnist/main.py), our own copy, as a plain process: the
same Net (2 conv, 2 fc, dropout 0.25/0.5), Adadelta lr 1.0, StepLR gamma 0.7 per epoch, batch 64, test
batch 1000, normalisation (0.1307, 0.3081), a reshuffle every epoch. Differences, so the reference is fair
and measurable: tensors are read from the same IDX files raytrain reads (no torchvision, which has no
matching build here), torch uses 2 threads (this machine's cores), and it stops at the end of the first
epoch whose test accuracy reaches --target (the example runs 14 epochs).

    python -m bench.plain_mnist --target 0.99 [--device cuda]     # prints one JSON line at the end
"""

from __future__ import annotations

import argparse
import json
import time

T0 = time.time()

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.optim.lr_scheduler import StepLR  # noqa: E402

from raytrain.data.mnist import default_dir, load_mnist  # noqa: E402


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(self.dropout1(x), 1)
        x = self.dropout2(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", type=float, default=0.99)
    ap.add_argument("--epochs", type=int, default=14)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    (xt, yt), (xv, yv) = load_mnist(default_dir())
    norm = lambda x: ((torch.from_numpy(x).float() / 255.0 - 0.1307) / 0.3081).to(dev)  # noqa: E731
    xt, xv, yt, yv = norm(xt), norm(xv), torch.from_numpy(yt).to(dev), torch.from_numpy(yv).to(dev)
    model = Net().to(dev)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = StepLR(opt, step_size=1, gamma=0.7)
    epochs, train_s = [], 0.0
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(len(yt), device=dev)
        for i in range(0, len(yt), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            F.nll_loss(model(xt[idx]), yt[idx]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(xv[i:i + 1000]).argmax(1) == yv[i:i + 1000]).sum()) for i in range(0, len(yv), 1000))
        sched.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        train_s += seconds
        acc = correct / len(yv)
        epochs.append({"epoch": epoch, "test_accuracy": acc, "epoch_s": seconds, "since_start_s": time.time() - T0,
                       "samples_per_s": len(yt) / seconds})
        print(f"epoch {epoch}: test accuracy {acc:.4f}, {seconds:.1f} s", flush=True)
        if acc >= args.target:
            break
    print(json.dumps({"epochs": epochs, "reached": epochs[-1]["test_accuracy"] >= args.target, "train_s": train_s,
                      "to_target_since_start_s": epochs[-1]["since_start_s"], "device": str(dev),
                      "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None}))


if __name__ == "__main__":
    main()
