"""Models raytrain did not write: "package.module:function", `timm:NAME` and `torchvision:NAME` (pure PyTorch).

Three calling conventions are recognised from the function's signature, so off-the-shelf constructors
need no wrapper:
  * a factory `(in_shape, num_classes)` (raytrain's own; two required positional parameters);
  * a torchvision-style constructor taking `num_classes=` (e.g. torchvision.models.resnet18);
  * a timm-style one taking `num_classes=` and `in_chans=` (timm's model functions, timm.create_model).
`model.kwargs` passes the rest. torchvision's classifiers take 3-channel images and have no argument to
change that: 1-channel data is repeated to 3 channels in front of the model (`GreyToRGB`), other channel
counts are refused. Every failure (package missing, no such name, a signature it cannot call, a
constructor that raises) is one `UserError` naming `model.name` and saying what to do.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Callable, Optional

from torch import nn

from raytrain.errors import UserError

SHORT_FORMS = ("timm", "torchvision")
RESERVED = ("num_classes", "in_chans")  # raytrain sets these from the data


class GreyToRGB(nn.Module):
    """Repeats a 1-channel image to the 3 channels a torchvision classifier's stem expects."""

    def forward(self, x):
        return x.expand(-1, 3, *x.shape[2:])


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def call(fn: Callable, label: str, *args, **kwargs) -> nn.Module:
    """fn(*args, **kwargs), whose exceptions and non-module results become one line naming `label`."""
    try:
        model = fn(*args, **kwargs)
    except UserError:
        raise
    except Exception as e:  # the constructor is the user's (or a package's): its failure is a config problem
        raise UserError(f"{label}: the constructor raised {_first_line(e)}; check model.kwargs") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"{label}: returned {type(model).__name__}, not a torch.nn.Module")
    return model


def style(fn: Callable) -> Optional[str]:
    """"shape" for `(in_shape, num_classes)` factories, "classes" for `num_classes=` constructors, None if it
    cannot tell (a builtin without a signature: called as a factory, as before)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in params if p.kind in positional and p.default is p.empty]
    takes_classes = "num_classes" in sig.parameters or any(p.kind == p.VAR_KEYWORD for p in params)
    if takes_classes and not required:
        return "classes"
    try:
        sig.bind((1, 8, 8), 10)
        return "shape"
    except TypeError:
        return "unknown"


def _accepts(fn: Callable, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _check_kwargs(fn: Callable, label: str, kwargs: dict, *args, **fixed) -> None:
    taken = sorted(set(kwargs) & set(RESERVED))
    if taken:
        raise UserError(f"model.kwargs {taken[0]}: raytrain sets it from the data; remove it from model.kwargs")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # no signature to check against: the call decides
    try:
        sig.bind(*args, **fixed, **kwargs)
    except TypeError as e:
        raise UserError(f"{label}: model.kwargs do not fit {getattr(fn, '__name__', fn)}{sig} ({e})") from None


def builder_for(fn: Callable, label: str, kwargs: Optional[dict] = None) -> Callable[..., nn.Module]:
    """`build(in_shape, num_classes) -> nn.Module` for any supported callable (see the module docstring)."""
    kwargs = dict(kwargs or {})
    kind = style(fn)
    module = getattr(fn, "__module__", "") or ""
    if getattr(fn, "__name__", "") == "create_model":  # timm's factory takes a model name, not a shape
        raise UserError(f"{label}: create_model takes a model name; write \"timm:NAME\" (e.g. timm:resnet18)")
    if kind == "classes" and module.split(".")[0] == "torchvision":
        return torchvision_builder(fn, label, kwargs)
    if kind == "classes":
        timm_like = _accepts(fn, "in_chans") or module.split(".")[0] == "timm"
        _check_kwargs(fn, label, kwargs, num_classes=1, **({"in_chans": 3} if timm_like else {}))

        def build(in_shape, num_classes):
            chans = {"in_chans": int(in_shape[0])} if timm_like and len(in_shape) == 3 else {}
            return call(fn, label, num_classes=num_classes, **chans, **kwargs)
        return build
    if kind == "unknown":
        raise UserError(f"{label}: {getattr(fn, '__name__', fn)}{inspect.signature(fn)} must accept (in_shape, "
                        "num_classes), or num_classes= (torchvision style) or num_classes= and in_chans= (timm style); "
                        "wrap it in a function (in_shape, num_classes) -> nn.Module")
    if kind == "shape":
        _check_kwargs(fn, label, kwargs, (1, 8, 8), 10)
    return lambda in_shape, num_classes: call(fn, label, tuple(in_shape), num_classes, **kwargs)


def torchvision_builder(fn: Callable, label: str, kwargs: dict) -> Callable[..., nn.Module]:
    """A torchvision classifier constructor `fn(num_classes=, **kwargs)` on 3-channel images (1-channel data
    repeated to 3 in front of it)."""
    _check_kwargs(fn, label, kwargs, num_classes=1)

    def build(in_shape, num_classes):
        if len(in_shape) != 3 or in_shape[0] not in (1, 3):
            raise UserError(f"{label}: torchvision classifiers take 3-channel images (C, H, W), the data has shape "
                            f"{tuple(in_shape)}; use timm:NAME (it takes in_chans) or a factory of your own")
        model = call(fn, label, num_classes=num_classes, **kwargs)
        return nn.Sequential(GreyToRGB(), model) if in_shape[0] == 1 else model
    return build


def timm_builder(create_model: Callable, name: str, label: str, kwargs: dict,
                 is_model: Optional[Callable[[str], bool]] = None) -> Callable[..., nn.Module]:
    """`create_model(name, num_classes=, in_chans=, **kwargs)` (timm's signature)."""
    if is_model is not None and not is_model(name):
        raise UserError(f"{label}: timm has no model {name!r} (timm.list_models('*{name[:6]}*') lists the names)")
    _check_kwargs(create_model, label, kwargs, name, num_classes=1, in_chans=3)

    def build(in_shape, num_classes):
        chans = {"in_chans": int(in_shape[0])} if len(in_shape) == 3 else {}
        return call(create_model, label, name, num_classes=num_classes, **chans, **kwargs)
    return build


def _import(mod_name: str, label: str, hint: str):
    try:
        return importlib.import_module(mod_name)
    except Exception as e:  # any import-time failure of user code is the user's to fix
        missing = isinstance(e, ModuleNotFoundError) and e.name and mod_name.startswith(e.name)
        raise UserError(f"{label}: cannot import {mod_name} ({_first_line(e)}){hint if missing else ''}") from None


def resolve(name: str, kwargs: Optional[dict] = None) -> Callable[..., nn.Module]:
    """`build(in_shape, num_classes)` for "package.module:function", "timm:NAME" or "torchvision:NAME"."""
    label = f"model.name {name!r}"
    mod_name, sep, fn_name = name.partition(":")
    if not sep or not mod_name or not fn_name:
        raise UserError(f"{label}: not a zoo model nor \"package.module:function\", \"timm:NAME\" or "
                        "\"torchvision:NAME\"")
    kwargs = dict(kwargs or {})
    if mod_name == "timm":
        timm = _import("timm", label, "; pip install timm (it needs a torchvision built for your torch)")
        return timm_builder(timm.create_model, fn_name, label, kwargs, getattr(timm, "is_model", None))
    if mod_name == "torchvision":
        models = _import("torchvision.models", label, "; pip install a torchvision built for your torch")
        names = models.list_models(module=models) if hasattr(models, "list_models") else None
        fn = getattr(models, fn_name, None)
        if (names is not None and fn_name not in names) or not callable(fn) or inspect.ismodule(fn):
            raise UserError(f"{label}: torchvision.models has no classifier {fn_name!r} "
                            "(torchvision.models.list_models(module=torchvision.models) lists them)")
        return torchvision_builder(fn, label, kwargs)
    module = _import(mod_name, label, "; install it, or put it on PYTHONPATH or in the launch directory")
    fn = module
    for part in fn_name.split("."):
        fn = getattr(fn, part, None)
    if not callable(fn):
        raise UserError(f"{label}: {mod_name} has no function {fn_name}")
    return builder_for(fn, label, kwargs)
