"""Model zoo shapes and user-model resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from raytrain.errors import UserError
from raytrain.models import ZOO, build_model, check_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(ZOO))
@pytest.mark.parametrize("in_shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_zoo_output_shape(name, in_shape):
    model = build_model(name, in_shape, 10, width=0.5)
    out = model(torch.randn(3, *in_shape))
    assert out.shape == (3, 10)
    out.sum().backward()  # trainable end to end
    assert all(p.grad is not None for p in model.parameters())


def test_width_scales_parameters():
    small = sum(p.numel() for p in build_model("resnet", (1, 8, 8), 10, 0.5).parameters())
    big = sum(p.numel() for p in build_model("resnet", (1, 8, 8), 10, 1.0).parameters())
    assert big > 3 * small


def test_cnn_is_the_classic_mnist_example():
    m = build_model("cnn", (1, 28, 28), 10)
    assert sum(p.numel() for p in m.parameters()) == 1_199_882  # PyTorch examples/mnist Net


def test_user_model_resolves():
    m = check_model("usermodels:tiny", (1, 8, 8), 10)
    assert m(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("spec,msg", [
    ("nosuchpkg.mod:fn", "cannot import nosuchpkg.mod"),
    ("usermodels:missing", "has no function missing"),
    ("usermodels:wrong_signature", "must accept (in_shape, num_classes)"),
    ("usermodels:not_a_module", "returned str, not a torch.nn.Module"),
    ("usermodels:wrong_output", "expected (batch, 10)"),
    ("vgg", "not one of"),
])
def test_bad_user_model(spec, msg):
    with pytest.raises(UserError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        check_model(spec, (1, 8, 8), 10)


def test_conv_net_on_flat_input_is_refused():
    with pytest.raises(UserError, match="needs image input"):
        build_model("cnn", (64,), 10)


# Off-the-shelf constructors (tests/usermodels.py holds stand-ins with torchvision's and timm's signatures: the
# real packages do not import here, see test_real_packages_when_they_import).

def test_constructor_styles_get_num_classes_and_in_chans():
    tv = check_model("usermodels:resnet18", (3, 8, 8), 7)  # torchvision style: num_classes= only
    assert tv.fc.out_features == 7 and tv.conv1.in_channels == 3
    timm_like = check_model("usermodels:timm_style", (1, 8, 8), 5, kwargs={"width": 16})  # + in_chans=
    assert (timm_like.conv1.in_channels, timm_like.conv1.out_channels, timm_like.fc.out_features) == (1, 16, 5)
    assert check_model("vit", (1, 8, 8), 10, kwargs={"depth": 2})[3].fc.out_features == 10  # zoo builders too
    assert len([m for m in build_model("vit", (1, 8, 8), 10, kwargs={"depth": 2}) if type(m).__name__ == "EncoderBlock"]) == 2


def test_timm_and_torchvision_short_forms():
    """The builders behind timm:NAME and torchvision:NAME, on the stand-ins: timm gets in_chans from the data;
    torchvision's 3-channel models get 1-channel data repeated to 3 and refuse other channel counts."""
    import usermodels as um

    from raytrain.models_external import GreyToRGB, timm_builder, torchvision_builder

    m = timm_builder(um.create_model, "resnet18", "model.name 'timm:resnet18'", {"width": 16}, um.is_model)((1, 8, 8), 4)
    assert (m.conv1.in_channels, m.conv1.out_channels, m.fc.out_features) == (1, 16, 4)
    with pytest.raises(UserError, match=r"timm has no model 'nosuch'"):
        timm_builder(um.create_model, "nosuch", "model.name 'timm:nosuch'", {}, um.is_model)
    tv = torchvision_builder(um.resnet18, "model.name 'torchvision:resnet18'", {})
    grey = tv((1, 8, 8), 10)
    assert isinstance(grey[0], GreyToRGB) and grey(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert not isinstance(tv((3, 8, 8), 10), nn.Sequential)
    with pytest.raises(UserError, match=r"torchvision classifiers take 3-channel images .* use timm:NAME"):
        tv((2, 8, 8), 10)


@pytest.mark.parametrize("spec,kwargs,msg", [
    ("timm:resnet18", {}, "cannot import timm (ModuleNotFoundError: No module named 'timm'); pip install timm"),
    ("torchvision:resnet18", {}, "cannot import torchvision.models (ModuleNotFoundError: No module named "
                                 "'torchvision'); pip install a torchvision"),
    ("usermodels:explodes", {}, "the constructor raised ValueError: planted constructor failure; check model.kwargs"),
    ("usermodels:timm_style", {"num_classes": 3}, "model.kwargs num_classes: raytrain sets it from the data"),
    ("usermodels:timm_style", {"depth": 3}, "model.kwargs do not fit timm_style(num_classes=1000, in_chans=3, width=8)"),
    ("usermodels:create_model", {}, 'create_model takes a model name; write "timm:NAME"'),
    ("vit", {"heads": 3}, "model.kwargs heads: vit takes depth"),
    ("cnn", {"width": 2}, "model.kwargs width: set it as model.width"),
    ("usermodels:resnet18", {}, "expected input[2, 1, 8, 8] to have 3 channels"),
])
def test_unusable_constructor_is_one_line(spec, kwargs, msg):
    import importlib.util

    if spec.split(":")[0] in ("timm", "torchvision") and importlib.util.find_spec(spec.split(":")[0]):
        pytest.skip(f"{spec.split(':')[0]} is installed: the missing-package line cannot be seen")
    with pytest.raises(UserError) as e:
        check_model(spec, (1, 8, 8), 10, kwargs=kwargs)
    assert msg in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_unusable_model_from_the_cli_is_exit_2_without_traceback(tmp_path, capsys):
    from raytrain import cli

    rc = cli.main(["validate", str(ROOT / "experiments" / "digits-cnn.yaml"), "--set", "model.name=timm:resnet18",
                   "--set", f"output={tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("raytrain: model.name 'timm:resnet18': cannot import timm") and \
        err.count("\n") == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("package,name", [("torchvision", "resnet18"), ("timm", "resnet18")])
def test_real_packages_when_they_import(package, name):
    try:
        __import__(package)
    except Exception as e:  # this machine: torchvision's wheels are CUDA builds its CPU torch cannot load
        pytest.skip(f"{package} does not import here ({type(e).__name__}: {str(e).splitlines()[0][:80]})")
    model = check_model(f"{package}:{name}", (1, 32, 32), 10)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_efficientnet_width_channels_last_and_structured_pruning():
    """The zoo's EfficientNet honours model.width, gives the same outputs in channels_last, and keeps working
    (forward, backward, channels_last) after structured pruning removed half its channels."""
    import copy

    from raytrain.models import MBConv, SqueezeExcite
    from raytrain.techniques import pruning

    torch.manual_seed(0)
    model = build_model("efficientnet", (3, 32, 32), 10).eval()
    assert any(isinstance(m, SqueezeExcite) for m in model.modules()) and sum(isinstance(m, MBConv) for m in model) >= 5
    assert any(isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1 for m in model.modules())  # depthwise
    narrow = sum(p.numel() for p in build_model("efficientnet", (3, 32, 32), 10, 0.5).parameters())
    assert narrow < 0.5 * sum(p.numel() for p in model.parameters())
    x = torch.randn(4, 3, 32, 32)
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    torch.testing.assert_close(cl(x.contiguous(memory_format=torch.channels_last)), model(x), rtol=1e-4, atol=1e-4)
    pruned = copy.deepcopy(model)
    pruning.check_supported(pruned, "structured", torch.zeros(1, 3, 32, 32))
    pruning.apply_structured_pruning(pruned, 0.5, torch.zeros(1, 3, 32, 32))
    assert sum(p.numel() for p in pruned.parameters()) < 0.4 * sum(p.numel() for p in model.parameters())
    pruned = pruned.train().to(memory_format=torch.channels_last)
    out = pruned(x.contiguous(memory_format=torch.channels_last))
    out.sum().backward()
    assert out.shape == (4, 10) and all(p.grad is not None for p in pruned.parameters())
