"""Quick mode: the whole notebook in a few minutes, for CI and the tests. Nothing a reader sees.

The notebook reads the same in both modes. A kernel started with ``AE_QUICK=1`` and
``IPYTHONDIR=tools/ipython`` in its environment runs ``tools/ipython/profile_default/startup/``, which
calls ``activate()`` before the first cell. From then on:

- every training is shortened (``shorten``): 1 epoch on at most 2,000 images;
- a saved run (``runs.get_run``) is trained, shortened, in a temporary folder instead of being
  loaded, so the committed results are never read as quick ones nor written over.

``make test`` and the notebook tests set both variables (``QUICK_ENV`` in tests/support.py).
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
from pathlib import Path

QUICK_IMAGES = 2000


def shorten(config):
    """The quick version of a RunConfig: 1 epoch on at most 2,000 training images, tracked at that epoch."""
    subset = min(config.train_subset or QUICK_IMAGES, QUICK_IMAGES)
    return dataclasses.replace(
        config, epochs=1, train_subset=subset, batch_size=min(config.batch_size, subset), track_every=1
    )


def activate(root=None) -> Path:
    """Switch this process to quick mode; returns the folder the saved runs are trained in.

    ``root``: that folder (default: a new temporary one). Calling it again changes nothing more.
    """
    from ae import runs

    if getattr(runs.train_run, "quick", False):
        return runs.get_run.quick_root
    root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="ae-quick-"))
    runs.train_run = _shortened(runs.train_run, config_at=0)
    runs.load_or_train = _shortened(runs.load_or_train, config_at=0)
    runs.get_run = _in_folder(runs.get_run, root)
    return root


def _shortened(function, config_at):
    """``function`` called with its config (positional argument ``config_at``) shortened."""

    @functools.wraps(function)
    def quick(*args, **kwargs):
        args = list(args)
        if len(args) > config_at:
            args[config_at] = shorten(args[config_at])
        else:
            kwargs["config"] = shorten(kwargs["config"])
        return function(*args, **kwargs)

    quick.quick = True
    return quick


def _in_folder(get_run, root):
    """``get_run`` that keeps its runs in ``root`` (one folder per run name), never in the project's."""

    @functools.wraps(get_run)
    def quick(name, *args, **kwargs):
        kwargs.pop("root", None)
        return get_run(name, *args, root=root, **kwargs)

    quick.quick_root = root
    return quick
