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


class _Boom(nn.Module):
    """Identity until its `after`-th training forward, then raises (a planted stage failure); if `arm` names a
    file, only while it exists (the first process to remove it raises)."""

    def __init__(self, after: int, arm: str = ""):
        super().__init__()
        self.after, self.arm, self.calls = after, arm, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls == self.after:
                if self.arm:
                    import os

                    try:
                        os.unlink(self.arm)
                    except FileNotFoundError:
                        return x
                raise RuntimeError("planted stage failure")
        return x


def failing_last_stage(in_shape, num_classes, after: int = 5, arm: str = ""):
    """An mlp whose block "3" (cut there with split: ["3"], the last stage) fails on its `after`-th micro-batch
    (see _Boom for `arm`)."""
    n = 1
    for s in in_shape:
        n *= s
    return nn.Sequential(nn.Flatten(), nn.Linear(n, 32), nn.ReLU(), _Boom(after, arm), nn.Linear(32, num_classes))


class _Ballast(nn.Module):
    """`tiny` plus a large persistent buffer, so every checkpoint takes a while to copy (a window to kill in)."""

    def __init__(self, in_shape, num_classes, floats: int):
        super().__init__()
        self.net = tiny(in_shape, num_classes)
        self.register_buffer("ballast", torch.zeros(floats))

    def forward(self, x):
        return self.net(x)


def big_state(in_shape, num_classes, pid_file: str = "", arm: str = ""):
    """A model whose checkpoint is ~100 MB; writes the PID of the process that trains it to `pid_file`; raises a
    RuntimeError on its 30th training step (mid-epoch 2 on digits at batch 64) if it is the first to remove the
    file `arm`. Trains as `tiny` does (the same init for the same seed: the buffer draws no random numbers)."""
    import os

    if pid_file:
        with open(pid_file, "w") as f:
            f.write(str(os.getpid()))
    return _fault_at(_Ballast(in_shape, num_classes, 25_000_000), 30, arm, _planted_error)


class _SmallConvNet(nn.Module):
    """A conv classifier with a fixed number of input channels (what torchvision's constructors build)."""

    def __init__(self, num_classes: int, in_chans: int = 3, width: int = 8):
        super().__init__()
        self.in_chans = in_chans
        self.conv1 = nn.Conv2d(in_chans, width, 3, padding=1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv1(x)).mean((2, 3)))


def resnet18(*, weights=None, progress=True, num_classes=1000, **kwargs):
    """torchvision.models.resnet18's signature: keyword-only, num_classes=, the rest through **kwargs."""
    if weights is not None and num_classes != 1000:
        raise ValueError(f"The parameter 'num_classes' expected value 1000 but got {num_classes} instead.")
    return _SmallConvNet(num_classes, 3, **kwargs)


def timm_resnet(pretrained=False, **kwargs):
    """timm's model functions: (pretrained=False, **kwargs), num_classes= and in_chans= among the kwargs."""
    return _SmallConvNet(kwargs.pop("num_classes", 1000), kwargs.pop("in_chans", 3), **kwargs)


def create_model(model_name, pretrained=False, pretrained_cfg=None, checkpoint_path="", **kwargs):
    """timm.create_model's signature (with timm.is_model below)."""
    if not is_model(model_name):
        raise RuntimeError(f"Unknown model ({model_name})")
    return timm_resnet(pretrained, **kwargs)


def is_model(model_name):
    return model_name in ("resnet18", "small")


def explodes(num_classes=10):
    """A constructor that raises."""
    raise ValueError("planted constructor failure\nsecond line")


def _fault_at(model: nn.Module, step: int, arm: str, fault) -> nn.Module:
    """`model`, whose process runs `fault()` at its `step`-th training forward if it is the first to remove
    the file `arm` (a fault happens once per arming, in whichever process gets there first)."""
    import os

    calls = {"n": 0}

    def hook(module, args):
        if module.training:
            calls["n"] += 1
            if calls["n"] == step:
                try:
                    os.unlink(arm)
                except FileNotFoundError:
                    return
                fault()

    model.register_forward_pre_hook(hook)
    return model


def _planted_error():
    raise RuntimeError("planted training error")


def _sigkill():
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


RAISE_ARM = "/tmp/raytrain-test-raise-once"


def raise_once(in_shape, num_classes):
    """`tiny`, raising a RuntimeError on its 30th training step (mid-epoch 2 on digits at batch 64) while armed."""
    return _fault_at(tiny(in_shape, num_classes), 30, RAISE_ARM, _planted_error)


def ddp_faults(in_shape, num_classes, arm: str = ""):
    """`tiny` for two DDP workers on digits at batch 64 (26 steps a worker an epoch): one worker SIGKILLed on
    its 36th step (mid-epoch 2) if it is the first to remove the file `arm`, while the other waits on it in that
    step's all-reduce."""
    return _fault_at(tiny(in_shape, num_classes), 36, arm, _sigkill)


def kill_at(in_shape, num_classes):
    """`tiny`, whose process SIGKILLs itself at the training step RAYTRAIN_TEST_KILL_AT="<step>:<arm file>"
    names, while that file exists (the test's own arm: the variable is set only in the process it starts)."""
    import os

    step, arm = os.environ["RAYTRAIN_TEST_KILL_AT"].split(":", 1)
    return _fault_at(tiny(in_shape, num_classes), int(step), arm, _sigkill)


def timm_style(num_classes=1000, in_chans=3, width=8):
    """A constructor naming in_chans= (timm style): raytrain passes the data's channels."""
    return _SmallConvNet(num_classes, in_chans, width)


def hold_at(in_shape, num_classes, step: int = 0, arm: str = ""):
    """`tiny`, whose process, at its `step`-th training step (0: never) while the file `arm` exists, creates
    `arm`.held and waits (up to 300 s) until `arm` is gone: a run held mid-epoch, e.g. to kill its driver there."""
    import os
    import time

    model, calls = tiny(in_shape, num_classes), {"n": 0}

    def hook(module, args):
        if module.training:
            calls["n"] += 1
            if calls["n"] == step and os.path.exists(arm):
                open(arm + ".held", "w").close()
                deadline = time.monotonic() + 300
                while os.path.exists(arm) and time.monotonic() < deadline:
                    time.sleep(0.1)

    model.register_forward_pre_hook(hook)
    return model


HOLD_ARM = "/tmp/raytrain-test-hold-seed"  # exists = armed: training under seed HOLD_SEED waits while it does
HOLD_SEED = 1001


def hold_on_seed(in_shape, num_classes):
    """`tiny`; built under seed HOLD_SEED (torch's, set from the experiment's before the model is built), its
    first training step waits (up to 120 s) while HOLD_ARM exists, after creating HOLD_ARM + ".held"."""
    import os
    import time

    model = tiny(in_shape, num_classes)
    if torch.initial_seed() == HOLD_SEED:
        def hook(module, args):
            if module.training and os.path.exists(HOLD_ARM):
                open(HOLD_ARM + ".held", "w").close()
                deadline = time.monotonic() + 120
                while os.path.exists(HOLD_ARM) and time.monotonic() < deadline:
                    time.sleep(0.1)

        model.register_forward_pre_hook(hook)
    return model


from raytrain.callbacks import Callback  # noqa: E402


class Boom(Callback):
    """A user callback that raises at the end of epoch `epoch` (1-based; tests/test_callbacks.py)."""

    def __init__(self, epoch: int = 2):
        self.epoch = epoch

    def on_epoch_end(self, ctx, record):
        if record.epoch == self.epoch:
            raise RuntimeError(f"boom at epoch {record.epoch}")
