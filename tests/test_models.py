"""Model zoo shapes and user-model resolution."""

from __future__ import annotations

import pytest
import torch

from raytrain.errors import UserError
from raytrain.models import ZOO, build_model, check_model


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
