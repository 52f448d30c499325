"""A small, meaningful defense context: the digits dataset and a briefly trained LeNet-5 victim."""
import pytest
import torch

from workloads.data import load_dataset
from workloads.defenses import DefenseContext
from workloads.models import build_model
from workloads.training import TrainConfig, fit


@pytest.fixture(scope="session")
def digits_context() -> DefenseContext:
    dataset = load_dataset("digits", seed=0)
    victim = build_model("lenet5", dataset.shape, dataset.num_classes, seed=0)
    fit(victim, dataset.x_train, dataset.y_train, TrainConfig(epochs=15, batch_size=64, lr=3e-3), seed=0,
        device=torch.device("cpu"))
    return DefenseContext(victim=victim, dataset=dataset, arch="lenet5", seed=0)
