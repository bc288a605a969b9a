"""Saved runs: the experiments behind the notebook's answers, their folders, and training one into a folder.

A run folder holds config.json, history.csv, model.pt (committed for the main runs only), tracking.pt,
the figures, and, written last, metrics.json: a folder is a finished run exactly when metrics.json is
there. ``get_run(name)`` loads a finished run or trains it; ``train_run`` trains, measures and saves.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch
from torch import nn

import ae_helpers as ah
from ae.metrics import measure_run
from ae.plumbing import atomic_write, save_atomically

PROJECT_ROOT = Path(ah.__file__).resolve().parent


def train_run(
    config: ah.RunConfig, data: ah.MNIST | None = None, run_dir=None, device="auto", progress=True, resume=True
) -> ah.Run:
    """Train ``config`` (``ah.train``), measure the best weights (``measure_run``) and, with ``run_dir``,
    write the run folder: a checkpoint every epoch while training (resumed unless ``resume=False``),
    then the results, metrics.json last."""
    data = data if data is not None else ah.load_mnist(normalize=config.normalize)
    checkpoint = open_run_folder(run_dir, config, remove_checkpoint=not resume) if run_dir is not None else None
    run = ah.train(config, data, checkpoint=checkpoint, device=device, progress=progress)
    run.metrics.update(measure_run(run.model, data, *ah.run_split(config, len(data.train_images))))
    if run_dir is not None:
        run.run_dir = Path(run_dir)
        save_run(run)
        checkpoint.unlink(missing_ok=True)
    return run


def open_run_folder(run_dir, config: ah.RunConfig, remove_checkpoint=False) -> Path:
    """Make the folder, mark it unfinished (metrics.json removed) and write its config.json; return the
    checkpoint's path (removed first with ``remove_checkpoint``: the run then starts over)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").unlink(missing_ok=True)  # a run being (re)trained is not finished
    checkpoint = run_dir / "checkpoint.pt"
    if remove_checkpoint:
        checkpoint.unlink(missing_ok=True)
    write_json(run_dir / "config.json", config.to_dict())
    return checkpoint


def write_text(path, text) -> None:
    """Write ``text`` to ``path`` atomically: a reader sees the old file or the new one, never half of it."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path, obj, **options) -> None:
    """Write ``obj`` as indented JSON, atomically (``options`` go to json.dumps)."""
    write_text(path, json.dumps(obj, indent=2, **options) + "\n")


def save_run(run: ah.Run) -> None:
    """Write the run folder; metrics.json goes last and marks the run as finished."""
    d = run.run_dir
    d.mkdir(parents=True, exist_ok=True)
    write_json(d / "config.json", run.config.to_dict())
    rows = [",".join(ah.HISTORY_COLUMNS)]
    for values in zip(*(run.history[k] for k in ah.HISTORY_COLUMNS)):
        rows.append(",".join(str(v) for v in values))
    write_text(d / "history.csv", "\n".join(rows) + "\n")
    if run.model is not None:
        save_atomically({k: v.cpu() for k, v in run.model.state_dict().items()}, d / "model.pt")
    if run.tracking is not None:
        save_atomically(run.tracking, d / "tracking.pt")
    write_json(d / "metrics.json", run.metrics)


def read_history(path) -> dict:
    """history.csv -> dict of column lists (floats; 'nan' stays NaN)."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {k: [int(r[k]) if k == "epoch" else float(r[k]) for r in rows] for k in ah.HISTORY_COLUMNS}


def run_is_complete(run_dir, config: ah.RunConfig | None = None) -> bool:
    """True when the folder holds a finished run (metrics.json written) of ``config`` (if given)."""
    run_dir = Path(run_dir)
    if not (
        (run_dir / "metrics.json").is_file()
        and (run_dir / "config.json").is_file()
        and (run_dir / "history.csv").is_file()
    ):
        return False
    if config is None:
        return True
    try:
        return ah.same_config(json.loads((run_dir / "config.json").read_text()), config)
    except (json.JSONDecodeError, OSError):
        return False


def load_weights(model, path) -> nn.Module:
    """Load a model.pt into ``model``; never unpickles code (weights_only=True)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"{path} is not a weights file saved by this project ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160]}). Retrain the run or restore the file."
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state dict of tensors; retrain the run or restore the file.")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(
            f"{path} holds weights of another architecture than "
            f"{'-'.join(map(str, model.layer_sizes))} ({str(exc).splitlines()[1].strip()[:200]}). "
            "Build the model with the layer_sizes in the run's config.json."
        ) from None
    return model


def load_run(run_dir, require_model=False) -> ah.Run:
    """Load a finished run folder. The model is None when model.pt is absent (not committed)."""
    run_dir = Path(run_dir)
    if not run_is_complete(run_dir):
        raise FileNotFoundError(
            f"{run_dir} holds no finished run (metrics.json is missing: the run never started, "
            "is still training or was interrupted). Train it: `python ae_cli.py "
            "experiments --only ...` resumes it, or train_run(config, run_dir=...)."
        )
    config = ah.RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    model = None
    if (run_dir / "model.pt").is_file():
        model = load_weights(ah.build_model(config), run_dir / "model.pt").eval()
    elif require_model:
        raise FileNotFoundError(
            f"{run_dir}/model.pt is missing (weights are committed only for the main runs). "
            f"Retrain it: `python ae_cli.py experiments --only {run_dir.as_posix()} --force`."
        )
    tracking = None
    if (run_dir / "tracking.pt").is_file():
        tracking = torch.load(run_dir / "tracking.pt", map_location="cpu", weights_only=True)
    return ah.Run(
        config,
        model,
        read_history(run_dir / "history.csv"),
        json.loads((run_dir / "metrics.json").read_text()),
        tracking,
        run_dir,
    )


RETRAIN = False  # the notebook's switch: True retrains the saved runs instead of loading them


def get_run(name, data: ah.MNIST | None = None, retrain=None, need_model=False, progress=True, root=None) -> ah.Run:
    """The saved run ``name`` (a key of EXPERIMENTS, such as "default_layers/adam_lr5e-4").

    Loaded from ``root/name`` (default: the project's folder) when that folder holds a finished run of
    exactly the config EXPERIMENTS gives it (and its weights, if ``need_model``); otherwise trained
    there. ``retrain`` (default: the module's RETRAIN) always trains.
    """
    if name not in EXPERIMENTS:
        raise ValueError(f"no saved run named {name!r}; choose one of: {', '.join(EXPERIMENTS)}.")
    run_dir = Path(root if root is not None else PROJECT_ROOT) / name
    return load_or_train(
        EXPERIMENTS[name], run_dir, data, RETRAIN if retrain is None else retrain, need_model, progress
    )


def load_or_train(config: ah.RunConfig, run_dir, data=None, retrain=False, need_model=False, progress=True) -> ah.Run:
    """Load ``run_dir`` if it holds a finished run of exactly ``config``; otherwise train it there."""
    run_dir = Path(run_dir)
    if not retrain and run_is_complete(run_dir, config):
        run = load_run(run_dir)
        if run.model is not None or not need_model:
            return run
    elif not retrain and run_is_complete(run_dir):
        print(f"{run_dir} was trained with another config; retraining it.")
    return train_run(config, data, run_dir=run_dir, progress=progress)


# ----------------------------------------------------------------------------
# The saved runs: what `get_run(name)` loads and `make results` trains
# ----------------------------------------------------------------------------

MAIN_EPOCHS, SWEEP_EPOCHS = ah.RunConfig.epochs, 20
MYNET_LAYERS = (500, 200, 2)
MAIN_EPOCHS, SWEEP_EPOCHS = 150, 20
MYNET_LAYERS = (500, 200, 2)

EXPERIMENTS = {
    # The main runs: 150 epochs, as the original submission.
    "default_layers/adam_lr5e-4": ah.RunConfig(epochs=MAIN_EPOCHS),
    "mynet/adam_lr5e-4": ah.RunConfig(layer_sizes=MYNET_LAYERS, epochs=MAIN_EPOCHS),
    # Learning rate, activation and optimizer sweeps: 20 epochs each, same seed.
    "default_layers/adam_lr1e-4": ah.RunConfig(lr=1e-4, epochs=SWEEP_EPOCHS),
    "default_layers/adam_lr1e-3": ah.RunConfig(lr=1e-3, epochs=SWEEP_EPOCHS),
    "default_layers/adam_lr1e-2": ah.RunConfig(lr=1e-2, epochs=SWEEP_EPOCHS),
    "default_layers/sigmoid_adam_lr1e-4": ah.RunConfig(activation="sigmoid", lr=1e-4, epochs=SWEEP_EPOCHS),
    "default_layers/sgd_lr5e-4": ah.RunConfig(optimizer="sgd", epochs=SWEEP_EPOCHS),
    "default_layers/sgd_momentum_lr5e-4": ah.RunConfig(optimizer="sgd_momentum", epochs=SWEEP_EPOCHS),
    "default_layers/rmsprop_lr5e-4": ah.RunConfig(optimizer="rmsprop", epochs=SWEEP_EPOCHS),
    "default_layers/rprop_lr5e-4": ah.RunConfig(optimizer="rprop", epochs=SWEEP_EPOCHS),
    "default_layers/adam_lr5e-4_epochs20": ah.RunConfig(epochs=SWEEP_EPOCHS),
    # The original submission's SGD with momentum at 5e-4 gave NaN from epoch 43: the full 150 epochs.
    "default_layers/sgd_momentum_lr5e-4_epochs150": ah.RunConfig(optimizer="sgd_momentum", epochs=MAIN_EPOCHS),
    # One step per epoch: the whole training set as one batch.
    "default_layers/fullbatch_adam_lr5e-4": ah.RunConfig(batch_size=ah.FULL_BATCH, epochs=MAIN_EPOCHS),
    # Better recipes for the same architectures: the learning rate decays to 0 (cosine) by the end,
    # set where the constant-rate run's validation loss stopped improving (mynet: epoch 63 of 150;
    # default: still improving at 109); for mynet also decoupled weight decay against overfitting.
    "mynet/adam_lr5e-4_cosine60": ah.RunConfig(layer_sizes=MYNET_LAYERS, epochs=60, schedule="cosine"),
    "mynet/adamw_lr5e-4_wd0.05_cosine60": ah.RunConfig(
        layer_sizes=MYNET_LAYERS, epochs=60, schedule="cosine", optimizer="adamw", weight_decay=0.05
    ),
    "default_layers/adam_lr5e-4_cosine": ah.RunConfig(epochs=MAIN_EPOCHS, schedule="cosine"),
    # How much of mynet's result is luck: the same run with two more seeds (initial weights and batch
    # order; the validation split stays fixed).
    **{
        f"mynet/adam_lr5e-4_seed{seed}": ah.RunConfig(layer_sizes=MYNET_LAYERS, epochs=MAIN_EPOCHS, seed=seed)
        for seed in (1, 2)
    },
    # Averaged weights (an exponential moving average of the weights, evaluated and kept instead of the
    # last step's): horizons of about 1,000 and 10,000 steps (2 and 23 epochs).
    "mynet/adam_lr5e-4_ema0.999": ah.RunConfig(layer_sizes=MYNET_LAYERS, epochs=MAIN_EPOCHS, ema=0.999),
    "mynet/adam_lr5e-4_ema0.9999": ah.RunConfig(layer_sizes=MYNET_LAYERS, epochs=MAIN_EPOCHS, ema=0.9999),
    **{
        f"mynet/adam_lr5e-4_ema0.999_seed{seed}": ah.RunConfig(
            layer_sizes=MYNET_LAYERS, epochs=MAIN_EPOCHS, ema=0.999, seed=seed
        )
        for seed in (1, 2)
    },
    "mynet/adam_lr5e-4_ema0.999_cosine": ah.RunConfig(
        layer_sizes=MYNET_LAYERS, epochs=MAIN_EPOCHS, ema=0.999, schedule="cosine"
    ),
    "default_layers/adam_lr5e-4_ema0.999": ah.RunConfig(epochs=MAIN_EPOCHS, ema=0.999),
    # Denoising against mynet's overfitting: each training input gets fresh Gaussian noise (std 0.5 in
    # normalized units), the target stays the clean image. With averaged weights over three seeds, and
    # alone; std 1.0 once (the level is chosen by validation 5-NN); the default network with both.
    **{
        f"mynet/adam_lr5e-4_ema0.999_noise0.5{f'_seed{seed}' if seed else ''}": ah.RunConfig(
            layer_sizes=MYNET_LAYERS, epochs=MAIN_EPOCHS, ema=0.999, noise=0.5, seed=seed
        )
        for seed in (0, 1, 2)
    },
    "mynet/adam_lr5e-4_noise0.5": ah.RunConfig(layer_sizes=MYNET_LAYERS, epochs=MAIN_EPOCHS, noise=0.5),
    "mynet/adam_lr5e-4_ema0.999_noise1.0": ah.RunConfig(
        layer_sizes=MYNET_LAYERS, epochs=MAIN_EPOCHS, ema=0.999, noise=1.0
    ),
    "default_layers/adam_lr5e-4_ema0.999_noise0.5": ah.RunConfig(epochs=MAIN_EPOCHS, ema=0.999, noise=0.5),
    # The trials that chose mynet's denoising recipe before the runs above, compared on the validation
    # split only: 100 epochs with averaged weights; averaging alone, noise 0.5 (two seeds each), noise 1.0
    # and leaky ReLU.
    **{
        f"mynet/trial100_ema0.999{name}": ah.RunConfig(layer_sizes=MYNET_LAYERS, epochs=100, ema=0.999, **changes)
        for name, changes in {
            "": {},
            "_seed1": {"seed": 1},
            "_noise0.5": {"noise": 0.5},
            "_noise0.5_seed1": {"noise": 0.5, "seed": 1},
            "_noise1.0": {"noise": 1.0},
            "_leaky_relu": {"activation": "leaky_relu"},
        }.items()
    },
}
