"""What the training loop needs that a student need not read: checks of a config's values and its data,
progress bars, pixel units, safe writes.

``ae_helpers`` imports this module (and re-exports its names); it imports nothing of the project, so the
layers stay one way: this module, then ``ae_helpers``, then the rest of ``ae``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch


def resolve_device(device="auto") -> torch.device:
    """'auto' -> CUDA, then Apple's MPS, then CPU. A device that does not exist is a ValueError."""
    mps = _mps_available()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; choose 'auto', 'cpu', 'cuda' or 'mps'.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here; use 'cpu' or 'auto'.")
    if dev.type == "mps" and not mps:
        raise ValueError(f"device {device!r} requested but MPS is not available here; use 'cpu' or 'auto'.")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r} is not supported; choose 'auto', 'cpu', 'cuda' or 'mps'.")
    return dev


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def device_name(device) -> str:
    """What a run's metrics record as its device: the GPU's name, Apple's MPS, or the CPU threads."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "mps (Apple GPU)"
    return f"cpu ({torch.get_num_threads()} threads)"


def progress_bar(iterable, show, desc, unit="epoch"):
    """``iterable`` with a progress bar counting ``unit``s when ``show``, else ``iterable`` itself."""
    if not show:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit=unit, leave=True)


def save_atomically(obj, path) -> None:
    """torch.save to a temporary name, then rename: a reader never sees a half-written file."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write(path, write) -> None:
    """Call write(tmp_path), then rename onto ``path`` (a crash leaves the old file, never half a new one)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def describe(config) -> str:
    """A run in one line, for its progress bar: sizes, activation, optimizer, rate, batch size."""
    sizes = "-".join(map(str, config.layer_sizes))
    return f"{sizes} {config.activation} {config.optimizer} lr={config.lr:g} bs={config.batch_size}"


def check_choice(name, value, choices):
    """``value`` if it is one of ``choices``, else a ValueError naming the field and every choice."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}.")
    return value


def check_layer_sizes(layer_sizes) -> tuple:
    """``layer_sizes`` as a tuple of ints, or a ValueError that shows a valid example."""
    sizes = tuple(layer_sizes) if isinstance(layer_sizes, (list, tuple)) else None
    if not sizes or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in sizes):
        raise ValueError(
            f"layer_sizes must be a non-empty list of positive integers such as (1000, 500, 250, 2), "
            f"got {layer_sizes!r}."
        )
    return tuple(int(s) for s in sizes)


def check_positive(name, value, integer):
    """ValueError unless ``value`` is a positive number (an int when ``integer``)."""
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive {'integer' if integer else 'number'}, got {value!r}.")


def check_non_negative(name, value, integer):
    """ValueError unless ``value`` is a finite number >= 0 (an int when ``integer``)."""
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not 0 <= value < math.inf:
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'} >= 0, got {value!r}.")


def pixel_values(images, data=None) -> torch.Tensor:
    """Images in the units of ``data`` -> pixel units, clipped to [0, 1] (None: already pixel units)."""
    return (data.to_pixels(images) if data is not None else images).clamp(0, 1)


def as_uint8(pixels) -> torch.Tensor:
    """Pixel values in [0, 1] -> uint8 0-255, rounded (how images are stored and shown)."""
    return (pixels * 255).round().to(torch.uint8)


def check_data(config, data) -> None:
    """ValueError unless ``data`` is what ``config`` trains on: normalized or not, images of input_dim values."""
    if config.normalize != data.normalized:
        raise ValueError(
            f"config.normalize={config.normalize} but the data {'is' if data.normalized else 'is not'} "
            "normalized; load it with load_mnist(normalize=config.normalize)."
        )
    width = data.train_images.shape[1]
    if config.input_dim != width:
        raise ValueError(
            f"config.input_dim={config.input_dim} but the images have {width} values each; set input_dim={width}."
        )
