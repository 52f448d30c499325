"""Shared fixtures: one local Ray per test session, a temp victim cache, seeded digits."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 2 CPUs and one logical (fake) GPU, started once and shut down at the end."""
    import ray

    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, object_store_memory=256 * 1024**2,
             log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def victim_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("victims"))


@pytest.fixture(scope="session")
def digits_victim(victim_cache):
    """The default digits LeNet victim (trained once per session, cached)."""
    from workloads.victims import VictimConfig, load_or_train

    return load_or_train(VictimConfig(), victim_cache)


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def pytest_collection_modifyitems(config, items):
    """Tests marked `fashion_mnist` skip, with a reason naming the package, where it is not installed."""
    if FASHION_MNIST.exists():
        return
    skip = pytest.mark.skip(reason="needs Debian's package dataset-fashion-mnist, which is not installed "
                                   "(`make install` installs it when run as root; else sudo apt-get install it)")
    for item in items:
        if item.get_closest_marker("fashion_mnist"):
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "dataset-fashion-mnist" in str(r.longrepr)]
    if skipped:
        terminalreporter.write_line(f"NOTE: {len(skipped)} test(s) skipped because Debian's dataset-fashion-mnist is "
                                    f"not installed; run as root: apt-get install dataset-fashion-mnist", yellow=True)
