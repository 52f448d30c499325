"""Datasets: seeded, disjoint splits; surrogate pools shaped like the victim's inputs."""
import pytest
import torch

from workloads.config import ConfigError
from workloads.data import load_dataset, surrogate_pool, to_shape


def test_digits_splits_are_disjoint_and_cover_the_dataset():
    d = load_dataset("digits", seed=0)
    rows = lambda x: {tuple(r.flatten().tolist()) for r in x}
    train, pool, test = rows(d.x_train), rows(d.x_pool), rows(d.x_test)
    assert len(d.x_train) + len(d.x_pool) + len(d.x_test) == 1797
    # digits has a few exact duplicate images; the splits themselves are index-disjoint, so overlaps stay tiny
    assert len(train & pool) + len(train & test) + len(pool & test) < 10
    assert d.shape == (1, 8, 8) and d.num_classes == 10
    assert 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0


def test_splits_are_fixed_by_seed():
    a, b, c = (load_dataset("digits", seed=s) for s in (0, 0, 1))
    assert torch.equal(a.x_pool, b.x_pool) and not torch.equal(a.x_pool, c.x_pool)


@pytest.mark.fashion_mnist
def test_fashion_mnist_reads_the_debian_idx_files():
    d = load_dataset("fashion_mnist", pool_fraction=1 / 6)
    assert d.shape == (1, 28, 28)
    assert (len(d.x_train), len(d.x_pool), len(d.x_test)) == (50000, 10000, 10000)
    assert set(d.y_test.tolist()) == set(range(10))


def test_offline_torchvision_dataset_names_the_data_root(tmp_path):
    with pytest.raises(ConfigError, match=str(tmp_path)):
        load_dataset("cifar10", data_root=tmp_path)


def test_unknown_dataset_is_rejected_with_a_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'mnist'"):
        load_dataset("mnis")


@pytest.mark.fashion_mnist
def test_surrogates_match_the_victim_shape():
    fm = load_dataset("fashion_mnist", pool_fraction=1 / 6)
    digits = surrogate_pool("dataset", fm, name="digits")
    assert digits.shape == (1797, 1, 28, 28) and 0 <= digits.min() and digits.max() <= 1
    noise = surrogate_pool("noise", fm, size=50)
    assert noise.shape == (50, 1, 28, 28)
    assert surrogate_pool("split", fm) is fm.x_pool


def test_to_shape_converts_channels_and_size():
    rgb = torch.rand(3, 3, 32, 32)
    assert to_shape(rgb, (1, 28, 28)).shape == (3, 1, 28, 28)
    assert to_shape(torch.rand(2, 1, 8, 8), (3, 32, 32)).shape == (2, 3, 32, 32)
