"""User-model fixtures for "package.module:function" model specs (importable from tests/)."""

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
