"""Shared fixtures: the real MNIST (fetched and verified once) and small helpers."""

import json
import math
import os
from pathlib import Path

# Tests run on the CPU, also on a machine with a GPU: "auto" would send the tests' CPU tensors to a CUDA
# model. Set before torch is imported, so that it holds here and in every process the tests start.
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import matplotlib  # noqa: E402
import pytest  # noqa: E402

matplotlib.use("Agg")

import ae_helpers as ah  # noqa: E402
from ae import plumbing  # noqa: E402
from support import ROOT  # noqa: E402


@pytest.fixture(autouse=True)
def _no_apple_gpu(monkeypatch):
    """The same for Apple's MPS, which no environment variable hides: "auto" means the CPU in tests."""
    monkeypatch.setattr(plumbing, "_mps_available", lambda: False)


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


def _committed_results():
    return {
        str(p.relative_to(ROOT)): (p.stat().st_size, p.stat().st_mtime_ns)
        for folder in ("default_layers", "mynet")
        for p in sorted((ROOT / folder).rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="session", autouse=True)
def committed_results_stay_untouched():
    """No test, and not the notebook under nbval (which runs after the tests, in this session), writes
    into the committed run folders: quick mode must train in a temporary folder."""
    before = _committed_results()
    yield
    after = _committed_results()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"the test session wrote into the committed results: {changed[:10]}"


def pytest_collection_modifyitems(items):
    """Under mutation testing (`make mutants`, run in mutants/), the fastest tests first: mutmut stops at the
    first failure, so a mutant that a quick test kills does not wait for the slow ones."""
    stats = Path("mutmut-stats.json")
    if "MUTANT_UNDER_TEST" in os.environ and stats.is_file():
        durations = json.loads(stats.read_text())["duration_by_test"]
        items.sort(key=lambda item: durations.get(item.nodeid, math.inf))
