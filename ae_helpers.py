"""The autoencoder of the BMI 219 notebook: data, model, configuration and training loop, in that order.

Where things are (the map of the project's code):

    ae_helpers.py     this file: what a student reads beside the notebook
        load_mnist        data: MNIST in memory, normalized with the training images' mean and std
        Autoencoder       the model: 784 -> layer_sizes -> reversed -> 784, linear code and output
        RunConfig         every choice of a run, one field each, checked when it is made (validate)
        train_epoch       one pass over the images: forward, loss, zero_grad, backward, step
        train             the loop: set up or resume, then per epoch train, evaluate, keep the best,
                          track, checkpoint; then finish with the best weights
        evaluate_loss     the mean loss of a model on images, without autograd
        (then the pieces the loop calls; last, encode and decode_to_pixels: images <-> 2-D codes)
    ae/runs.py        saved runs: get_run(name), EXPERIMENTS, run folders, train_run (train + measure + save)
    ae/metrics.py     measurements: MSE in both units, k-NN accuracy, silhouette, the PCA-2 baseline
    ae/figures.py     plots: images, learning curves, the latent plane, the decoder's manifold
    ae/explorer.py    the latent explorer: LatentExplorer._on_press (a click), _on_motion (a drag) and
                      _on_slider (the x/y sliders) all decode through _decode_point -> decode_at(x, y)
    ae/analyses.py    the measurements that serve single questions of the notebook (tables, grids, budgets)
    ae/plumbing.py    what the loop needs and a student need not read: value checks, devices, progress
                      bars, pixel units, files written whole (this file imports it and re-exports its names)
    ae_cli.py         the command line: fetch MNIST, train one run, train every saved run
    mnist_files.py    fetching and verifying the four MNIST files (SHA-256)

Imports run one way: ``ae.plumbing`` imports nothing of the project, this module imports only it, and
the rest of the package ``ae`` imports this module, never the reverse. The notebook imports this module
as ``ah`` and the package's modules by name (``from ae import runs, figures``): a call then says which
concern it belongs to.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ae.plumbing import (
    as_uint8,
    check_choice,
    check_data,
    check_layer_sizes,
    check_non_negative,
    check_positive,
    describe,
    device_name,
    pixel_values,
    progress_bar,
    resolve_device,
    save_atomically,
)
from mnist_files import DataError, fetch_mnist, raw_folder, read_idx  # noqa: F401  (DataError: for callers)

# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------

IMAGE_SIDE = 28


@dataclass
class MNIST:
    """MNIST in memory: images float32 (N, 784), labels int64 (N,).

    ``mean`` and ``std`` are what the images were standardized with (0 and 1 when not ``normalized``);
    ``pixel_std`` is the training set's pixel std (0.3081), which converts any MSE to normalized units.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    normalized: bool
    mean: float
    std: float
    pixel_mean: float
    pixel_std: float

    def to_pixels(self, images):
        """Undo the normalization: pixel units, 0 (black) to 1 (white); a model's output may fall outside."""
        return images * self.std + self.mean

    def subset(self, n, seed=0) -> MNIST:
        """A copy with ``n`` training images drawn at random (kept in file order); same test set."""
        keep = torch.randperm(len(self.train_images), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        return dataclasses.replace(self, train_images=self.train_images[keep], train_labels=self.train_labels[keep])

    def sorted_by_label(self) -> MNIST:
        """A copy whose training set is ordered by digit (to show what no shuffling does)."""
        order = torch.argsort(self.train_labels, stable=True)
        return dataclasses.replace(self, train_images=self.train_images[order], train_labels=self.train_labels[order])


def load_mnist(root="data", normalize=True, download=True) -> MNIST:
    """Load verified MNIST as tensors; normalize with the mean and std of the 60,000 training images.

    The 5,000 validation images are carved from those 60,000 later (``split_indices``); with or without
    them the statistics agree to 4 decimals (the notebook prints both), and no test image is used.
    """
    raw = fetch_mnist(root, verbose=False) if download else raw_folder(root)
    train_u8 = torch.from_numpy(read_idx(raw / "train-images-idx3-ubyte").copy())
    test_u8 = torch.from_numpy(read_idx(raw / "t10k-images-idx3-ubyte").copy())
    train_images = train_u8.reshape(len(train_u8), -1).float().div_(255)
    test_images = test_u8.reshape(len(test_u8), -1).float().div_(255)
    pixel_mean, pixel_std = train_images.mean().item(), train_images.std().item()
    mean, std = (pixel_mean, pixel_std) if normalize else (0.0, 1.0)
    return MNIST(
        train_images=train_images.sub_(mean).div_(std),
        train_labels=torch.from_numpy(read_idx(raw / "train-labels-idx1-ubyte").astype(np.int64)),
        test_images=test_images.sub_(mean).div_(std),
        test_labels=torch.from_numpy(read_idx(raw / "t10k-labels-idx1-ubyte").astype(np.int64)),
        normalized=normalize,
        mean=mean,
        std=std,
        pixel_mean=pixel_mean,
        pixel_std=pixel_std,
    )


# ----------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU}
DEFAULT_LAYERS = (1000, 500, 250, 2)  # the assignment's encoder: 784 -> 1000 -> 500 -> 250 -> a 2-D code


class Autoencoder(nn.Module):
    """Mirrored MLP autoencoder: 784 -> layer_sizes -> reversed -> 784.

    Hidden layers use ``activation``; the bottleneck (the last of ``layer_sizes``) and the output are
    linear, so codes and reconstructions can take any real value (normalized images are not in [0, 1]).
    """

    def __init__(self, layer_sizes=DEFAULT_LAYERS, activation="relu", input_dim=784):
        super().__init__()
        self.layer_sizes = check_layer_sizes(layer_sizes)
        self.activation, self.input_dim = check_choice("activation", activation, ACTIVATIONS), input_dim
        sizes = (input_dim, *self.layer_sizes)
        self.encoder = _mlp(sizes, ACTIVATIONS[activation])
        self.decoder = _mlp(sizes[::-1], ACTIVATIONS[activation])

    @property
    def latent_dim(self) -> int:
        return self.layer_sizes[-1]

    def encode(self, x):
        """(N, 784) or (N, 1, 28, 28) images (a DataLoader batch) -> (N, latent_dim) codes."""
        if x.dim() > 2:
            x = x.flatten(1)
        if x.dim() != 2 or x.shape[-1] != self.input_dim:
            raise ValueError(
                f"expected images of {self.input_dim} values each, shaped (N, {self.input_dim}) or "
                f"(N, 1, 28, 28); got shape {tuple(x.shape)}."
            )
        return self.encoder(x)

    def decode(self, z):
        """(N, latent_dim) codes -> (N, 784) images, in the units of the training data."""
        return self.decoder(z)

    def forward(self, x):
        """(N, 784) or (N, 1, 28, 28) images -> (N, 784) reconstructions."""
        return self.decoder(self.encode(x))


def _mlp(sizes, activation):
    """Linear layers through ``sizes`` with an ``activation`` layer between them, none after the last."""
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def count_parameters(model) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------

OPTIMIZERS = ("adam", "adamw", "sgd", "sgd_momentum", "rmsprop", "rprop")  # built by make_optimizer
LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss}
SCHEDULES = ("constant", "cosine")
FULL_BATCH = 60000  # more than any training split holds: one step per epoch


def _option(default, help, choices=None):
    """A RunConfig field: its default, and the help (and choices) the command line shows for it."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class RunConfig:
    """Everything that determines a training run. The same config on the same device: the same losses.

    Each field's help is what ``python ae_cli.py train --help`` prints (the command line is built from
    these fields). A config is checked when it is made: a bad value is a ValueError naming the field.
    """

    layer_sizes: tuple = _option(DEFAULT_LAYERS, "encoder sizes down to the code, e.g. 1000,500,250,2")
    activation: str = _option("relu", "activation of the hidden layers", tuple(ACTIVATIONS))
    optimizer: str = _option("adam", "optimizer", OPTIMIZERS)
    lr: float = _option(5e-4, "learning rate")
    batch_size: int = _option(128, f"images per step ({FULL_BATCH}: one step per epoch)")
    epochs: int = _option(150, "passes over the training images")
    seed: int = _option(0, "seed of the initial weights, the batch order and the input noise")
    loss: str = _option("mse", "reconstruction loss", tuple(LOSSES))
    normalize: bool = _option(True, "standardize the images with the training set's mean and std")
    shuffle: bool = _option(True, "a new batch order every epoch (else file order)")
    val_size: int = _option(5000, "validation images carved from the 60,000 training images")
    train_subset: int = _option(0, "if > 0, train on the first N images of the training split only")
    schedule: str = _option("constant", "learning rate schedule (cosine: decays to 0 over the epochs)", SCHEDULES)
    weight_decay: float = _option(0.0, "weight decay (decoupled for adamw; rprop has none)")
    momentum: float = _option(0.9, "momentum of sgd_momentum")
    bf16: bool = _option(False, "bfloat16 autocast for the training step")
    ema: float = _option(0.0, "if > 0, evaluate and keep a moving average of the weights, this decay per step")
    noise: float = _option(0.0, "if > 0, denoising: Gaussian noise of this std (normalized units) on training inputs")
    track_every: int = _option(10, "reconstruction snapshots every N epochs")
    input_dim: int = _option(784, "values per image (28 x 28)")

    def __post_init__(self):
        self.layer_sizes = check_layer_sizes(self.layer_sizes)
        self.validate()

    def validate(self):
        """Raise ValueError naming the bad field and the valid choices (the one place they are checked)."""
        check_layer_sizes(self.layer_sizes)
        for f in dataclasses.fields(self):
            if f.metadata.get("choices"):
                check_choice(f.name, getattr(self, f.name), f.metadata["choices"])
        for name in ("lr", "batch_size", "track_every", "input_dim"):
            check_positive(name, getattr(self, name), integer=name != "lr")
        for name in ("epochs", "seed", "val_size", "train_subset", "weight_decay", "momentum"):
            check_non_negative(name, getattr(self, name), integer=name not in ("weight_decay", "momentum"))
        if self.optimizer == "rprop" and self.weight_decay:
            raise ValueError("weight_decay must be 0 with rprop (PyTorch's Rprop has none); use adamw for decay.")
        if isinstance(self.ema, bool) or not isinstance(self.ema, (int, float)) or not 0 <= self.ema < 1:
            raise ValueError(f"ema must be a decay in [0, 1) such as 0.999 (0 turns it off), got {self.ema!r}.")
        if isinstance(self.noise, bool) or not isinstance(self.noise, (int, float)) or not 0 <= self.noise < math.inf:
            raise ValueError(
                f"noise must be a standard deviation >= 0 such as 0.5 (0 turns it off), got {self.noise!r}."
            )

    def replace(self, **changes) -> RunConfig:
        """A copy with ``changes`` applied (and checked), e.g. ``config.replace(lr=1e-3)``."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["layer_sizes"] = list(self.layer_sizes)
        return d

    @classmethod
    def from_dict(cls, d) -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config fields {sorted(unknown)}; valid fields: {sorted(known)}.")
        return cls(**d)


# ----------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------


def train_epoch(
    model,
    optimizer,
    images,
    order,
    batch_size,
    loss_fn=F.mse_loss,
    bf16=False,
    average=None,
    noise=0.0,
    noise_generator=None,
) -> torch.Tensor:
    """One pass over ``images[order]`` in batches of ``batch_size``; returns the loss summed over images.

    The image is the target, and the input too, unless ``noise`` > 0: then the input is the image plus
    Gaussian noise of that standard deviation, drawn from ``noise_generator`` (a denoising autoencoder).
    ``average``, a WeightAverage, is updated after every step. Divide the sum by N for the mean.
    """
    model.train()
    total = torch.zeros((), device=images.device)  # summed on the device: no host synchronization per step
    for i in range(0, len(order), batch_size):
        batch = images[order[i : i + batch_size]]  # an index slice of in-memory images: no DataLoader needed
        inputs = batch
        if noise:
            inputs = batch + noise * torch.randn(batch.shape, generator=noise_generator, device=batch.device)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
            output = model(inputs)  # forward
        loss = loss_fn(output.float(), batch)  # how far the reconstruction is from the clean image
        optimizer.zero_grad(set_to_none=True)  # gradients add up in .grad: clear the last step's
        loss.backward()  # backward: d loss / d every weight
        optimizer.step()  # update the weights
        if average is not None:
            average.update(model)
        total += loss.detach() * len(batch)
    return total


@dataclass
class Run:
    """A trained (or loaded) run: its config, the model with the best weights, its history and metrics."""

    config: RunConfig
    model: Autoencoder | None
    history: dict  # HISTORY_COLUMNS -> one value per epoch
    metrics: dict = field(default_factory=dict)
    tracking: dict | None = None  # reconstructions of one image per digit at some epochs (Tracking.as_dict)
    run_dir: Path | None = None


HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "test_loss", "lr", "seconds")


def train(config: RunConfig, data: MNIST | None = None, checkpoint=None, device="auto", progress=True) -> Run:
    """Train an autoencoder as ``config`` says; return a Run holding the best-validation weights.

    Each epoch records the training loss (its mean over the epoch's images, as the weights moved; with
    noise, of the noisy inputs; always of the trained weights, not their average) and the validation and
    test losses (of clean inputs, with the weights that are kept). A NaN or infinite training loss stops
    the run with a warning. With ``checkpoint`` (a path), every epoch is saved there and a run cut off resumes from it
    to the same losses. ``run.metrics`` holds what the loop knows (epochs, best epoch, times); the
    measurements of the final weights (``ae.metrics.measure_run``) and the run folder are ``ae.runs``'s.
    """
    # Set up: check the inputs, put the run's images on the device once, seed, build the model.
    config.validate()
    device = resolve_device(device)
    data = data if data is not None else load_mnist(normalize=config.normalize)
    check_data(config, data)
    splits = place_data(config, data, device)
    state = new_training_state(config, splits, data, device)
    # Resume: a checkpoint of this same config continues after its last finished epoch.
    if checkpoint is not None:
        resume_from_checkpoint(state, Path(checkpoint), config, device)
    first_epoch = state.epoch + 1
    if first_epoch == 1:
        state.tracking.snapshot(0, state.kept_model(), splits.tracked, data)  # the untrained reconstructions
    train_seconds, diverged = 0.0, False
    epochs = progress_bar(range(first_epoch, config.epochs + 1), progress, describe(config))
    for epoch in epochs:
        # Train: one pass in a new order (seeded by seed and epoch, so a resumed run repeats it).
        start = time.perf_counter()
        summed_loss = train_epoch(
            state.model,
            state.optimizer,
            splits.train,
            epoch_order(config, len(splits.train), epoch, device),
            batch_size=min(config.batch_size, len(splits.train)),
            loss_fn=LOSSES[config.loss],
            bf16=config.bf16,
            average=state.average,
            noise=config.noise,
            noise_generator=noise_generator(config, epoch, device),
        )
        train_loss = summed_loss.item() / len(splits.train)  # the one host synchronization of the epoch
        train_seconds += time.perf_counter() - start
        lr = state.optimizer.param_groups[0]["lr"]  # the rate this epoch trained with
        if state.scheduler:
            state.scheduler.step()
        # Evaluate the weights that are kept (the average, when there is one) on clean held-out images.
        model = state.kept_model().eval()
        val_loss = evaluate_loss(model, splits.val, config.loss) if len(splits.val) else math.nan
        test_loss = evaluate_loss(model, splits.test, config.loss)
        state.add_epoch(epoch, train_loss, val_loss, test_loss, lr, seconds=time.perf_counter() - start)
        # Stop when the loss is no longer a number: the best weights so far are kept.
        if not math.isfinite(train_loss):
            diverged = True
            _warn_diverged(epoch, train_loss, state.best.epoch)
            break
        # Keep the best weights, chosen on validation (never on test); without a validation split, on training.
        state.keep_if_best(val_loss if len(splits.val) else train_loss, epoch)
        # Track the same ten images, to see the reconstructions improve.
        if epoch % config.track_every == 0 or epoch == config.epochs:
            state.tracking.snapshot(epoch, model, splits.tracked, data)
        if progress:
            epochs.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
        # Checkpoint: a run cut off from here on resumes after this epoch.
        if checkpoint is not None:
            save_atomically({"config": config.to_dict(), **state.state_dict()}, checkpoint)
    # Finish: the best weights, and what the loop knows of the run.
    state.model.load_state_dict(state.best.weights)
    summary = state.summary(diverged, first_epoch, train_seconds, len(splits.train), device)
    return Run(config, state.model.eval(), state.history, summary, state.tracking.as_dict())


def evaluate_loss(model, images, loss="mse", batch_size=10000) -> float:
    """Mean per-pixel loss of ``model`` on ``images`` (N, 784), in the data's units."""
    fn = LOSSES[loss]
    sums = batched_no_grad(lambda batch: fn(model(batch), batch, reduction="sum"), images, batch_size)
    return float(sum(sums)) / images.numel()


def batched_no_grad(fn, images, batch_size=10000) -> list:
    """[fn(batch) for each batch of ``images``], without autograd: evaluation keeps no graph (less memory)."""
    with torch.no_grad():
        return [fn(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]


# ----------------------------------------------------------------------------
# The pieces the loop calls
# ----------------------------------------------------------------------------


def split_indices(n=60000, val_size=5000, seed=2024):
    """Fixed train/validation split of range(n): (train_idx, val_idx), each sorted.

    The split has its own seed, so runs with different training seeds are compared on the same images.
    """
    if not 0 <= val_size < n:
        raise ValueError(f"val_size must be between 0 and {n - 1}, got {val_size}.")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def run_split(config: RunConfig, n=60000):
    """(train_idx, val_idx) of a run: the fixed validation split, the training part cut to train_subset."""
    train_idx, val_idx = split_indices(n, config.val_size)
    return (train_idx[: config.train_subset] if config.train_subset else train_idx), val_idx


@dataclass
class Splits:
    """A run's images, placed on its device: train, validation and test, and the fixed images tracked."""

    train_idx: torch.Tensor  # indices into data.train_images
    val_idx: torch.Tensor
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    tracked: dict  # {"test": (10, 784), "train": (10, 784)}: one image of each digit


def place_data(config: RunConfig, data: MNIST, device) -> Splits:
    """Move the run's splits to ``device`` once: every batch is then an index slice, no DataLoader."""
    train_idx, val_idx = run_split(config, len(data.train_images))
    train = data.train_images[train_idx].to(device)
    tracked = {
        "test": data.test_images[tracking_indices(data.test_labels)].to(device),
        "train": train[tracking_indices(data.train_labels[train_idx])],
    }
    return Splits(
        train_idx, val_idx, train, data.train_images[val_idx].to(device), data.test_images.to(device), tracked
    )


def tracking_indices(labels, per_class=1):
    """Indices of the first ``per_class`` images of each digit 0-9 (fixed images to track)."""
    return torch.cat([torch.nonzero(labels == d)[:per_class, 0] for d in range(10)])


def build_model(config: RunConfig) -> Autoencoder:
    """The (untrained) autoencoder a config describes."""
    return Autoencoder(config.layer_sizes, config.activation, config.input_dim)


def make_optimizer(model, config: RunConfig):
    """The optimizer the config names, with fused or foreach steps where PyTorch offers them (one kernel
    for all parameters). Every option the config sets reaches it (lr, weight_decay, momentum)."""
    name = check_choice("optimizer", config.optimizer, OPTIMIZERS)  # a config changed after it was made
    params, lr, decay = model.parameters(), config.lr, config.weight_decay
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=decay, fused=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=decay, fused=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=decay, fused=True)
    if name == "sgd_momentum":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=decay, fused=True)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=decay, foreach=True)
    return torch.optim.Rprop(params, lr=lr, foreach=True)  # "rprop": it has no weight decay


def make_schedule(optimizer, config: RunConfig):
    """The learning-rate schedule: None for a constant rate; cosine decays it to 0 over the epochs."""
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(config.epochs, 1))
    return None


class WeightAverage:
    """Exponential moving average of a model's weights (Polyak averaging).

    After each step ``average = decay * average + (1 - decay) * weights``, in one foreach call and
    without a host synchronization. The averaged copy, ``.model``, is what gets evaluated: it sits at
    the centre of the region the noisy late steps wander in, which often generalizes better than any
    one of them. The horizon is about 1 / (1 - decay) steps.
    """

    def __init__(self, model, decay):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)

    def update(self, model):
        with torch.no_grad():
            torch._foreach_lerp_(list(self.model.parameters()), list(model.parameters()), 1 - self.decay)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)


@dataclass
class Best:
    """The best weights so far: the loss they were chosen by (validation; training without a validation
    split), their epoch (0: the initial weights) and a copy of them."""

    loss: float
    epoch: int
    weights: dict


@dataclass
class Tracking:
    """Reconstructions of the tracked images (uint8 pixels, on the CPU) at some epochs, and the originals."""

    test_originals: torch.Tensor
    train_originals: torch.Tensor
    epochs: list = field(default_factory=list)
    test: list = field(default_factory=list)
    train: list = field(default_factory=list)

    def snapshot(self, epoch, model, tracked: dict, data: MNIST) -> None:
        """Reconstruct the tracked images with ``model`` and keep them as ``epoch``'s row."""
        self.epochs.append(epoch)
        model.eval()
        with torch.no_grad():
            for name in ("test", "train"):
                getattr(self, name).append(as_uint8(pixel_values(model(tracked[name]), data)).cpu())

    def as_dict(self) -> dict:
        """What tracking.pt holds: each split's rows stacked into (epochs, 10, 784)."""
        rows = {name: torch.stack(getattr(self, name)) for name in ("test", "train")}
        return {**dataclasses.asdict(self), **rows}


@dataclass
class TrainingState:
    """Everything a run carries from epoch to epoch; ``state_dict`` is what a checkpoint holds."""

    model: Autoencoder
    optimizer: torch.optim.Optimizer
    scheduler: object | None  # a learning-rate scheduler, or None for a constant rate
    average: WeightAverage | None  # a moving average of the weights, or None
    history: dict  # HISTORY_COLUMNS -> one value per epoch
    tracking: Tracking
    best: Best
    epoch: int = 0  # the last epoch finished

    def kept_model(self) -> nn.Module:
        """The weights that are evaluated, kept and saved: the average when there is one."""
        return self.average.model if self.average else self.model

    def add_epoch(self, epoch, train_loss, val_loss, test_loss, lr, seconds) -> None:
        """Append an epoch's row to the history; ``epoch`` is then the last one finished."""
        row = dict(epoch=epoch, train_loss=train_loss, val_loss=val_loss, test_loss=test_loss, lr=lr, seconds=seconds)
        for column in HISTORY_COLUMNS:
            self.history[column].append(row[column])
        self.epoch = epoch

    def keep_if_best(self, loss, epoch) -> None:
        if loss < self.best.loss:
            self.best = Best(loss=loss, epoch=epoch, weights=_copy_weights(self.kept_model()))

    def summary(self, diverged, first_epoch, train_seconds, n_train, device) -> dict:
        """What the loop knows of the run: epochs, best epoch, times and this call's throughput."""
        epochs_here = self.epoch - first_epoch + 1  # a resumed run trained fewer epochs in this call
        return {
            "epochs_run": len(self.history["epoch"]),
            "best_epoch": self.best.epoch,
            "diverged": diverged,
            "seconds": round(sum(self.history["seconds"]), 1),
            "device": device_name(device),
            "train_seconds": round(train_seconds, 2),
            "samples_per_second": round(n_train * epochs_here / train_seconds) if train_seconds else None,
        }

    PARTS = ("model", "optimizer", "scheduler", "average")  # objects with state_dict (None when off)

    def state_dict(self) -> dict:
        parts = {name: getattr(self, name) for name in self.PARTS}
        state = {name: part.state_dict() if part else None for name, part in parts.items()}
        records = {"tracking": dataclasses.asdict(self.tracking), "best": dataclasses.asdict(self.best)}
        return {**state, **records, "epoch": self.epoch, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        for name in self.PARTS:
            if getattr(self, name):
                getattr(self, name).load_state_dict(state[name])
        self.history, self.epoch = state["history"], state["epoch"]
        self.tracking, self.best = Tracking(**state["tracking"]), Best(**state["best"])


def new_training_state(config: RunConfig, splits: Splits, data: MNIST, device) -> TrainingState:
    """Seed, then build the model, its optimizer, schedule and weight average: epoch 0 of a run."""
    torch.manual_seed(config.seed)
    model = build_model(config).to(device)
    optimizer = make_optimizer(model, config)
    average = WeightAverage(model, config.ema) if config.ema else None
    originals = {name: as_uint8(pixel_values(splits.tracked[name], data)).cpu() for name in ("test", "train")}
    state = TrainingState(
        model=model,
        optimizer=optimizer,
        scheduler=make_schedule(optimizer, config),
        average=average,
        history={column: [] for column in HISTORY_COLUMNS},
        tracking=Tracking(test_originals=originals["test"], train_originals=originals["train"]),
        best=Best(loss=math.inf, epoch=0, weights={}),
    )
    state.best.weights = _copy_weights(state.kept_model())  # until an epoch beats them, the initial weights
    return state


def _copy_weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def resume_from_checkpoint(state: TrainingState, checkpoint: Path, config: RunConfig, device) -> bool:
    """Load ``checkpoint`` into ``state`` when it exists and was written by this same config; True if so.
    A checkpoint of another config is left to be overwritten: the run starts over, and says so."""
    if not checkpoint.exists():
        return False
    saved = torch.load(checkpoint, map_location=device, weights_only=True)  # weights only: never unpickles code
    if not same_config(saved["config"], config):
        print(f"{checkpoint} was written by another config; training {describe(config)} from epoch 1.")
        return False
    state.load_state_dict(saved)
    return True


def same_config(saved: dict, config: RunConfig) -> bool:
    """Compared as configs: a field added later, at its default, does not make old runs stale."""
    try:
        return RunConfig.from_dict(saved) == config
    except (TypeError, ValueError):  # fields this version does not know, or invalid values
        return False


def epoch_seed(seed, epoch) -> int:
    """The seed of one epoch's batch order and input noise: a resumed run repeats them exactly."""
    return seed * 100003 + epoch


def epoch_order(config: RunConfig, n, epoch, device) -> torch.Tensor:
    """The order in which an epoch visits the n training images: a fresh permutation, or file order."""
    if not config.shuffle:
        return torch.arange(n, device=device)
    return torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(config.seed, epoch))).to(device)


def noise_generator(config: RunConfig, epoch, device) -> torch.Generator | None:
    """The generator of an epoch's input noise (seeded like its order); None without noise."""
    if not config.noise:
        return None
    return torch.Generator(device).manual_seed(epoch_seed(config.seed, epoch))


def _warn_diverged(epoch, loss, best_epoch):
    warnings.warn(
        f"training diverged at epoch {epoch}: the loss became {loss}. "
        f"Stopped here; the best weights so far (epoch {best_epoch}) are kept. "
        "Try a smaller learning rate (for SGD with momentum, 10x smaller) or Adam.",
        RuntimeWarning,
        stacklevel=3,
    )


# ----------------------------------------------------------------------------
# Codes: images to 2-D codes and back (the latent plane, the explorer)
# ----------------------------------------------------------------------------


def model_device(model) -> torch.device:
    """The device a model's weights are on (inputs must go there)."""
    return next(model.parameters()).device


def encode(model, images, batch_size=10000) -> torch.Tensor:
    """(N, 784) images -> (N, latent_dim) codes, on the CPU."""
    device = model_device(model)
    return torch.cat(batched_no_grad(lambda batch: model.encode(batch.to(device)).float().cpu(), images, batch_size))


def decode_to_pixels(model, codes, data: MNIST | None = None) -> torch.Tensor:
    """(N, latent_dim) codes -> (N, 784) images in pixel units, clipped to [0, 1], on the CPU.

    ``data`` gives the normalization to undo (None: the model works in pixel units).
    """
    codes = torch.as_tensor(codes, dtype=torch.float32, device=model_device(model))
    with torch.no_grad():
        return pixel_values(model.decode(codes).float().cpu(), data)
