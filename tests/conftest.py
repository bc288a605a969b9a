"""Shared fixtures: the real MNIST (fetched and verified once) and small helpers."""
import sys
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ae_helpers as ah  # noqa: E402


@pytest.fixture(scope="session")
def mnist():
    """The real, verified MNIST, normalized (what the notebook uses)."""
    return ah.load_mnist(ROOT / "data")


@pytest.fixture(scope="session")
def raw_dir(mnist):
    return ah.raw_folder(ROOT / "data")


@pytest.fixture
def small_config():
    """A run that trains in about a second on real MNIST: 2,000 images, a 64-2 net."""
    return ah.RunConfig(layer_sizes=(64, 2), epochs=3, train_subset=2000, batch_size=100, track_every=1)
