"""Architectures: LeNet-5 takes 8x8 and 28x28 inputs; ResNet-18 takes CIFAR images; all expose features/head."""
import pytest
import torch

from workloads.config import ConfigError
from workloads.models import build_model


@pytest.mark.parametrize("arch,shape", [("lenet5", (1, 8, 8)), ("lenet5", (1, 28, 28)), ("resnet18", (3, 32, 32))])
def test_logits_have_one_column_per_class(arch, shape):
    model = build_model(arch, shape, 10, seed=0).eval()
    x = torch.rand(2, *shape)
    assert model(x).shape == (2, 10)
    assert torch.allclose(model.head(model.features(x)), model(x))


def test_seed_fixes_initial_weights():
    a, b = build_model("lenet5", (1, 8, 8), 10, seed=3), build_model("lenet5", (1, 8, 8), 10, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_unknown_arch_is_a_config_error():
    with pytest.raises(ConfigError, match="arch: unknown value 'lenet'"):
        build_model("lenet", (1, 8, 8), 10)
