"""The measurements that serve single questions of the notebook: tables of runs, learning-rate grids,
training budgets, memory kept for the backward pass, and how minibatch gradient signs agree."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

import ae_helpers as ah
from ae import runs
from ae_helpers import MNIST, Run, RunConfig


def fixed_order(data: MNIST, config: RunConfig, seed) -> MNIST:
    """A copy whose training images (those ``config`` trains on) are permuted once, seeded; the validation
    images stay in place. Trained with ``shuffle=False``: one fixed random order, the same every epoch."""
    train_idx, _ = ah.run_split(config, len(data.train_images))
    moved = train_idx[torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(seed))]
    images, labels = data.train_images.clone(), data.train_labels.clone()
    images[train_idx], labels[train_idx] = data.train_images[moved], data.train_labels[moved]
    return dataclasses.replace(data, train_images=images, train_labels=labels)


def train_many(configs: dict, data: MNIST, progress=False) -> dict:
    """Train each {label: RunConfig} in memory (no run folder); return {label: Run}."""
    return {label: runs.train_run(config, data, progress=progress) for label, config in configs.items()}


# Plain column headers, with units, for the metric keys of a run (MSE in normalized units: Q1.3).
HEADERS = {
    "epochs_run": "epochs",
    "best_epoch": "best epoch (validation)",
    "steps": "steps",
    "train_mse": "training MSE",
    "val_mse": "validation MSE",
    "test_mse": "test MSE",
    "val_l1": "validation L1",
    "test_l1": "test L1",
    "knn5_val_accuracy": "5-NN accuracy, validation",
    "knn5_accuracy": "5-NN accuracy, test",
    "silhouette": "silhouette score, test",
    "train_seconds": "training time (s)",
    "seconds": "wall time (s)",
    "samples_per_second": "images per second",
}

# Plain names of the optimizers a RunConfig names.
OPTIMIZER_NAMES = {
    "sgd": "SGD",
    "sgd_momentum": "SGD + momentum 0.9",
    "rmsprop": "RMSprop",
    "adam": "Adam",
    "adamw": "AdamW",
    "rprop": "Rprop",
}


def runs_table(labelled: dict, columns=("epochs_run", "train_mse", "val_mse", "test_mse", "knn5_val_accuracy")):
    """A Markdown table of the runs' metrics, {label: Run or metrics dict}: a row per run, a column per
    metric key, headed in plain words (``HEADERS``; ``columns`` may also be {key: header})."""
    from IPython.display import Markdown

    headers = columns if isinstance(columns, dict) else {c: HEADERS.get(c, c) for c in columns}
    rows = []
    for label, run in labelled.items():
        metrics = run.metrics if isinstance(run, Run) else run
        rows.append([label, *(format_value(metrics.get(c, "")) for c in headers)])
    return Markdown(markdown_table(["run", *headers.values()], rows))


def format_value(value) -> str:
    """A table cell: integers with thousands separators, floats to 4 significant digits (at most 1
    decimal from 10 on, none from 1,000 on), NaN as "n/a"."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.4g}"


def digits_table(rows: dict):
    """A Markdown table with one column per digit 0-9, {row label: ten values} (e.g. from
    ``per_digit_latent``)."""
    from IPython.display import Markdown

    body = [[label, *(f"{v:.3f}" for v in values)] for label, values in rows.items()]
    return Markdown(markdown_table(["digit", *range(10)], body))


def markdown_table(header, rows) -> str:
    """A Markdown table: a header row, then one row per list of values."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


def lr_grid(base: RunConfig, grid: dict, data: MNIST, done=None) -> dict:
    """Train ``base`` with each optimizer and learning rate of ``grid`` ({optimizer: rates}); returns
    {(optimizer, lr): Run}. Runs in ``done`` (same keys) are reused. A run that diverges is kept
    (``metrics["diverged"]``) without its warning."""
    grid_runs = {}
    for optimizer, rates in grid.items():
        for lr in rates:
            if done and (optimizer, lr) in done:
                grid_runs[optimizer, lr] = done[optimizer, lr]
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                config = base.replace(optimizer=optimizer, lr=lr)
                grid_runs[optimizer, lr] = runs.train_run(config, data, progress=False)
    return grid_runs


def best_by_validation(grid_runs: dict) -> dict:
    """{optimizer: (lr, Run)}: each optimizer's run with the lowest validation MSE (diverged runs excluded)."""
    best = {}
    for (optimizer, lr), run in grid_runs.items():
        if run.metrics["diverged"] or not math.isfinite(run.metrics["val_mse"]):
            continue
        if optimizer not in best or run.metrics["val_mse"] < best[optimizer][1].metrics["val_mse"]:
            best[optimizer] = (lr, run)
    return best


def grid_table(grid_runs: dict, key="val_mse"):
    """A Markdown table of a learning-rate grid: a row per optimizer (its plain name), a column per rate,
    ``key`` in each cell (best of the row in bold; "diverged" where the loss became NaN)."""
    from IPython.display import Markdown

    rates = sorted({lr for _, lr in grid_runs})
    best = best_by_validation(grid_runs) if key == "val_mse" else {}
    rows = []
    for optimizer in dict.fromkeys(o for o, _ in grid_runs):
        cells = []
        for lr in rates:
            run = grid_runs.get((optimizer, lr))
            text = "" if run is None else "diverged" if run.metrics["diverged"] else f"{run.metrics[key]:.4f}"
            cells.append(f"**{text}**" if optimizer in best and best[optimizer][0] == lr else text)
        rows.append([OPTIMIZER_NAMES.get(optimizer, optimizer), *cells])
    header = f"{HEADERS.get(key, key)} at learning rate"
    return Markdown(markdown_table([header, *(f"{lr:g}" for lr in rates)], rows))


def saved_tensor_bytes(model, images) -> dict:
    """Bytes autograd keeps for the backward pass of one forward of ``images``, each storage counted once
    (a ReLU's output is saved by the ReLU and by the next layer's matmul; it is one block of memory).

    Returns {"activations": ..., "parameters": ..., "input": ...}: memory the forward creates and keeps
    only for the backward pass, and the weights (saved as transposed views) and the input, which exist
    anyway.
    """
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(images)
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    inputs = {images.untyped_storage().data_ptr()}
    return {
        "activations": sum(n for ptr, n in storages.items() if ptr not in parameters | inputs),
        "parameters": sum(n for ptr, n in storages.items() if ptr in parameters),
        "input": sum(n for ptr, n in storages.items() if ptr in inputs),
    }


def loss_noise(values, last=50) -> float:
    """Epoch-to-epoch noise of a loss curve: the SD of its last ``last`` values about a straight-line fit."""
    y = np.asarray(values[-last:], dtype=float)
    x = np.arange(len(y))
    return float(np.std(y - np.polyval(np.polyfit(x, y, 1), x), ddof=1))


def window_mean(values, first, last) -> float:
    """Mean of a per-epoch curve over epochs ``first`` to ``last`` (1-based, both included); NaN when the
    curve has none of them."""
    window = values[first - 1 : last]
    return float(np.mean(window)) if len(window) else math.nan


def steps_run(run: Run, n_images) -> int:
    """Optimizer steps a run took when trained on ``n_images`` training images (its training split is
    cut from them as in training): epochs run times batches per epoch, the last batch partial."""
    train_idx, _ = ah.run_split(run.config, n_images)
    batch_size = min(run.config.batch_size, len(train_idx))
    return run.metrics["epochs_run"] * math.ceil(len(train_idx) / batch_size)


def epoch_end_times(run: Run) -> np.ndarray:
    """Training time (s, evaluation excluded) at the end of each epoch of a run; its epochs take equal time."""
    per_epoch = run.metrics["train_seconds"] / run.metrics["epochs_run"]
    return per_epoch * np.arange(1, run.metrics["epochs_run"] + 1)


def loss_at_time(run: Run, seconds, split="val") -> float:
    """The ``split`` loss at the last epoch whose training ended within ``seconds`` of training time
    (a run's own ``train_seconds`` includes its last epoch). NaN when not even one epoch did."""
    epochs = int(np.sum(epoch_end_times(run) <= seconds * (1 + 1e-9)))  # the tolerance: float rounding
    return float(run.history[f"{split}_loss"][epochs - 1]) if epochs else math.nan


def gradient_signs(model, images, batch_size, n_batches) -> dict:
    """How minibatch gradient signs relate to the gradient of all their images together, at fixed weights.

    Of the gradient components (the parameters): ``flip``, the fraction whose sign differs between the
    first two batches; ``vote``, the fraction where the majority of the batches' signs (what sign-based
    steps such as Rprop's add up to) points against the sign of the batches' mean gradient (what steps
    that weigh each batch by its gradient's size add up to).
    """
    sign_sum, grad_sum, first, flip = 0, 0, None, None
    for i in range(n_batches):
        batch = images[i * batch_size : (i + 1) * batch_size]
        model.zero_grad()
        F.mse_loss(model(batch), batch).backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters()])
        sign_sum, grad_sum = sign_sum + grad.sign(), grad_sum + grad
        if first is None:
            first = grad
        elif flip is None:
            flip = ((first * grad) < 0).float().mean().item()
    model.zero_grad()
    decided = sign_sum != 0
    vote = ((sign_sum.sign() != grad_sum.sign()) & decided).float().sum().item() / decided.sum().item()
    return {"flip": flip, "vote": vote}
