"""User-model fixtures for "package.module:function" model specs (importable from tests/)."""

import torch
from torch import nn


def tiny(in_shape, num_classes):
    n = 1
    for s in in_shape:
        n *= s
    return nn.Sequential(nn.Flatten(), nn.Linear(n, 32), nn.ReLU(), nn.Linear(32, num_classes))


def wrong_signature(width):
    return nn.Linear(1, 1)


def not_a_module(in_shape, num_classes):
    return "a string"


def wrong_output(in_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(3))


CRASH_ARM = "/tmp/raytrain-test-crash-once"  # exists = armed; the first process to unlink it dies


def crash_once(in_shape, num_classes):
    """`tiny` (same init for the same seed), whose worker process is SIGKILLed on its 30th training step
    (mid-epoch 2 on digits at batch 64) while armed."""
    import os
    import signal

    model = tiny(in_shape, num_classes)
    calls = {"n": 0}

    def hook(module, args):
        if module.training:
            calls["n"] += 1
            if calls["n"] == 30:
                try:
                    os.unlink(CRASH_ARM)
                except FileNotFoundError:
                    return
                os.kill(os.getpid(), signal.SIGKILL)

    model.register_forward_pre_hook(hook)
    return model


class _Boom(nn.Module):
    """Identity until its `after`-th training forward, then raises (a planted stage failure)."""

    def __init__(self, after: int):
        super().__init__()
        self.after, self.calls = after, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls == self.after:
                raise RuntimeError("planted stage failure")
        return x


def failing_last_stage(in_shape, num_classes):
    """An mlp whose block "3" (cut there with split: ["3"], the last stage) fails on its 5th micro-batch."""
    n = 1
    for s in in_shape:
        n *= s
    return nn.Sequential(nn.Flatten(), nn.Linear(n, 32), nn.ReLU(), _Boom(5), nn.Linear(32, num_classes))


PID_FILE = "/tmp/raytrain-test-big-state.pid"  # the process that built `big_state` last


class _Ballast(nn.Module):
    """`tiny` plus a large persistent buffer, so every checkpoint takes a while to copy (a window to kill in)."""

    def __init__(self, in_shape, num_classes, floats: int):
        super().__init__()
        self.net = tiny(in_shape, num_classes)
        self.register_buffer("ballast", torch.zeros(floats))

    def forward(self, x):
        return self.net(x)


def big_state(in_shape, num_classes):
    """A model whose checkpoint is ~400 MB; records the PID of the process that trains it."""
    import os

    with open(PID_FILE, "w") as f:
        f.write(str(os.getpid()))
    return _Ballast(in_shape, num_classes, 100_000_000)
