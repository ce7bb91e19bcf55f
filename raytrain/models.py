"""Model zoo (pure PyTorch, nothing of Ray). Every builder takes (in_shape, num_classes, width); models raytrain
did not write ("package.module:function", timm:NAME, torchvision:NAME) resolve in `raytrain.models_external`.

Zoo models are `nn.Sequential`s of top-level blocks on purpose: the pipeline splitter cuts
between blocks, and the dependency-graph pruner sees plain modules.
"""

from __future__ import annotations

import inspect
import logging
from typing import Callable, Optional

import torch
from torch import nn

from raytrain.errors import UserError


def _ch(base: int, width: float) -> int:
    """Channels for `base * width`, a multiple of 8 (MobileNet's make_divisible): oneDNN's bf16 and
    channels_last kernels fall back to slow paths on odd channel counts (docs/models.md)."""
    v = base * width
    c = max(8, int(v + 4) // 8 * 8)
    return c + 8 if c < 0.9 * v else c


def cnn(in_shape, num_classes: int, width: float = 1.0, dropout: float | None = None) -> nn.Sequential:
    """The 2-conv/2-fc net of PyTorch's classic MNIST example (logits instead of log_softmax)."""
    p1, p2 = (0.25, 0.5) if dropout is None else (dropout, dropout)
    c, h, w = _image_shape(in_shape, "cnn")
    c1, c2, hidden = _ch(32, width), _ch(64, width), _ch(128, width)
    flat = c2 * ((h - 4) // 2) * ((w - 4) // 2)
    if flat <= 0:
        raise UserError(f"model.name cnn: input {h}x{w} is too small (needs at least 6x6)")
    return nn.Sequential(
        nn.Conv2d(c, c1, 3), nn.ReLU(), nn.Conv2d(c1, c2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(p1),
        nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Dropout(p2), nn.Linear(hidden, num_classes),
    )


def cnn_bn(in_shape, num_classes: int, width: float = 1.0) -> nn.Sequential:
    """Two stages of two 3x3 conv-BN-ReLU (16 then 32 channels at width 1), each ending in a 2x2 max-pool, and a
    linear head: batch norm lets a large learning rate train it to MNIST's 99% in 2-3 epochs, where the classic
    cnn needs more (docs/search.md). Its convolutions have no bias (the BN after each has one)."""
    c, h, w = _image_shape(in_shape, "cnn_bn")
    if h < 4 or w < 4:
        raise UserError(f"model.name cnn_bn: input {h}x{w} is too small (needs at least 4x4)")
    c1, c2 = _ch(16, width), _ch(32, width)

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    return nn.Sequential(block(c, c1), block(c1, c1), nn.MaxPool2d(2), block(c1, c2), block(c2, c2), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(c2 * (h // 4) * (w // 4), num_classes))


def mlp(in_shape, num_classes: int, width: float = 1.0) -> nn.Sequential:
    """Two hidden layers, no dropout (deterministic: the DDP-equivalence tests rely on it)."""
    n_in, hidden = int(torch.Size(in_shape).numel()), _ch(256, width)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN, identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet(in_shape, num_classes: int, width: float = 1.0) -> nn.Sequential:
    """A small CIFAR-style ResNet: stem, three stages of basic blocks (stride 1, 2, 2), pooled head."""
    c, _, _ = _image_shape(in_shape, "resnet")
    w1, w2, w3 = _ch(16, width), _ch(32, width), _ch(64, width)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(c, w1, 3, 1, 1, bias=False), nn.BatchNorm2d(w1), nn.ReLU()),
        BasicBlock(w1, w1, 1), BasicBlock(w1, w2, 2), BasicBlock(w2, w3, 2),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w3, num_classes)),
    )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection; residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4):
        super().__init__()
        mid = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        out = self.block(x)
        return x + out if self.use_res else out


def mobilenet(in_shape, num_classes: int, width: float = 1.0) -> nn.Sequential:
    """A small MobileNetV2: depthwise-separable inverted residuals with BN; about 3x fewer FLOPs than resnet."""
    c, _, _ = _image_shape(in_shape, "mobilenet")
    w1, w2, w3, head = _ch(16, width), _ch(24, width), _ch(48, width), _ch(128, width)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(c, w1, 3, 1, 1, bias=False), nn.BatchNorm2d(w1), nn.ReLU6()),
        InvertedResidual(w1, w1, 1), InvertedResidual(w1, w2, 2), InvertedResidual(w2, w2, 1),
        InvertedResidual(w2, w3, 2), InvertedResidual(w3, w3, 1),
        nn.Sequential(nn.Conv2d(w3, head, 1, bias=False), nn.BatchNorm2d(head), nn.ReLU6(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(head, num_classes)),
    )


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens (a strided conv), plus a learned position embedding."""

    def __init__(self, c: int, h: int, w: int, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(c, dim, patch, patch)
        self.pos = nn.Parameter(torch.zeros(1, (h // patch) * (w // patch), dim))
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2) + self.pos


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class TokenHead(nn.Module):
    """LayerNorm, mean over tokens, linear classifier."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.ln, self.fc = nn.LayerNorm(dim), nn.Linear(dim, num_classes)

    def forward(self, x):
        return self.fc(self.ln(x).mean(1))


def vit(in_shape, num_classes: int, width: float = 1.0, depth: int = 4) -> nn.Sequential:
    """A small Vision Transformer: patch embedding, `depth` encoder blocks, pooled head. About 16 tokens
    (patch = side / 4); every block has the same cost, the canonical case for pipeline stages."""
    c, h, w = _image_shape(in_shape, "vit")
    patch = max(1, min(h, w) // 4)
    dim = _ch(64, width)
    return nn.Sequential(PatchEmbed(c, h, w, patch, dim), *[EncoderBlock(dim, 4) for _ in range(depth)],
                         TokenHead(dim, num_classes))


class SqueezeExcite(nn.Module):
    """Channel attention: global average, 1x1 reduce, SiLU, 1x1 expand, sigmoid gate on the input."""

    def __init__(self, c: int, squeeze: int):
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.expand(nn.functional.silu(self.reduce(x.mean((2, 3), keepdim=True)))))


class MBConv(nn.Module):
    """EfficientNet's block: 1x1 expand (skipped at ratio 1), kxk depthwise, squeeze-excitation (a quarter of
    the block's input channels), 1x1 linear projection; SiLU; residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, kernel: int):
        super().__init__()
        mid = cin * expand
        layers = [nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.SiLU()] if expand != 1 else []
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(
            *layers, nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False), nn.BatchNorm2d(mid),
            nn.SiLU(), SqueezeExcite(mid, _ch(cin / 4, 1.0)), nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        out = self.block(x)
        return x + out if self.use_res else out


# (expand ratio, channels, stride, kernel, repeats): EfficientNet-B0's stage recipe cut to 28x28/32x32 inputs
# (stride-1 stem, three downsamplings, five stages instead of seven).
EFFICIENTNET_STAGES = ((1, 16, 1, 3, 1), (4, 24, 2, 3, 2), (4, 40, 2, 5, 2), (4, 80, 2, 3, 2), (4, 112, 1, 5, 1))


def efficientnet(in_shape, num_classes: int, width: float = 1.0) -> nn.Sequential:
    """A small EfficientNet: MBConv blocks with depthwise convolutions and squeeze-excitation, SiLU, BN."""
    c, _, _ = _image_shape(in_shape, "efficientnet")
    stem, head = _ch(24, width), _ch(256, width)
    blocks, cin = [], stem
    for expand, base, stride, kernel, repeats in EFFICIENTNET_STAGES:
        cout = _ch(base, width)
        for i in range(repeats):
            blocks.append(MBConv(cin, cout, stride if i == 0 else 1, expand, kernel))
            cin = cout
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(c, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.SiLU()), *blocks,
        nn.Sequential(nn.Conv2d(cin, head, 1, bias=False), nn.BatchNorm2d(head), nn.SiLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(head, num_classes)),
    )


ZOO: dict[str, Callable[..., nn.Module]] = {"cnn": cnn, "cnn_bn": cnn_bn, "mlp": mlp, "resnet": resnet,
                                            "mobilenet": mobilenet, "vit": vit, "efficientnet": efficientnet}


def _image_shape(in_shape, name: str):
    if len(in_shape) != 3:
        raise UserError(f"model.name {name}: needs image input (C, H, W), data has shape {tuple(in_shape)}; "
                        "use mlp or set data.shape")
    return in_shape


def resolve_builder(name: str, kwargs: Optional[dict] = None) -> Callable[..., nn.Module]:
    """`build(in_shape, num_classes, width)` for a zoo name, "package.module:function", "timm:NAME" or
    "torchvision:NAME" (raytrain.models_external), checked here, before anything starts."""
    kwargs = dict(kwargs or {})
    if name in ZOO:
        fn = ZOO[name]
        taken = sorted(set(kwargs) & {"in_shape", "num_classes", "width", "dropout"})
        if taken:
            raise UserError(f"model.kwargs {taken[0]}: set it as model.{taken[0]} (or from the data), not in model.kwargs")
        try:
            inspect.signature(fn).bind((1, 8, 8), 10, 1.0, **kwargs)
        except TypeError:
            extra = [p for p in inspect.signature(fn).parameters if p not in ("in_shape", "num_classes", "width")]
            raise UserError(f"model.kwargs {', '.join(sorted(set(kwargs) - set(extra)))}: {name} takes "
                            f"{', '.join(extra) or 'no other arguments'}") from None
        return lambda in_shape, num_classes, width=1.0, **kw: fn(tuple(in_shape), num_classes, width, **kw, **kwargs)
    if ":" not in name:
        raise UserError(f"model.name {name!r}: not one of {', '.join(ZOO)} nor \"package.module:function\", "
                        "\"timm:NAME\" or \"torchvision:NAME\"")
    from raytrain.models_external import resolve

    build = resolve(name, kwargs)
    return lambda in_shape, num_classes, width=1.0: build(tuple(in_shape), num_classes)


def build_model(name: str, in_shape, num_classes: int, width: float = 1.0, dropout: float | None = None,
                kwargs: Optional[dict] = None) -> nn.Module:
    builder = resolve_builder(name, kwargs)
    extra = {"dropout": dropout} if name == "cnn" else {}
    model = builder(tuple(in_shape), num_classes, width, **extra)
    if not isinstance(model, nn.Module):
        raise UserError(f"model.name {name!r}: returned {type(model).__name__}, not a torch.nn.Module")
    return model


def model_from(cfg, in_shape, num_classes: int, factory: Callable[..., nn.Module] | None = None) -> nn.Module:
    """The model of an experiment's `model:` block, or from `factory` (Python API: `(in_shape, num_classes)`, or
    a constructor taking num_classes= / in_chans=, as for "package.module:function"); model.kwargs go to either."""
    kwargs = getattr(cfg, "kwargs", None) or {}
    if factory is None:
        return build_model(cfg.name, in_shape, num_classes, cfg.width, cfg.dropout, kwargs)
    from raytrain.models_external import builder_for

    return builder_for(factory, "model=", kwargs)(tuple(in_shape), num_classes)


def check_model(name: str, in_shape, num_classes: int, width: float = 1.0, dropout: float | None = None,
                factory: Callable[..., nn.Module] | None = None, kwargs: Optional[dict] = None) -> nn.Module:
    """Build on the driver and run one example through it, so shape errors surface before Ray starts."""
    from types import SimpleNamespace

    if width != 1.0 and factory is None and name not in ZOO:
        logging.getLogger("raytrain").warning(f"model.width {width:g} applies to the zoo models only: {name} is built "
                                              "as it is (pass its own arguments in model.kwargs)")
    cfg = SimpleNamespace(name=name, width=width, dropout=dropout, kwargs=kwargs or {})
    model = model_from(cfg, in_shape, num_classes, factory)
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, *in_shape))
    except Exception as e:
        raise UserError(f"model.name {name!r}: forward pass on input {tuple(in_shape)} failed ({type(e).__name__}: {e})") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"model.name {name!r}: output {got}, expected (batch, {num_classes})")
    return model
