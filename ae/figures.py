"""Figures: image grids, learning curves, the latent plane, the decoder's manifold, and a run's saved figures."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.colors import ListedColormap

from ae.plumbing import atomic_write
from ae.runs import PROJECT_ROOT
from ae_helpers import IMAGE_SIDE, MNIST, Run, decode_to_pixels, encode

# Ten colours for ten digits that stay apart under deuteranopia and protanopia (Petroff's sequence);
# each digit's label is also written at its cluster's centre, so no reading depends on colour alone.
DIGIT_COLOURS = tuple(matplotlib.color_sequences["petroff10"])
DIGIT_CMAP = ListedColormap(DIGIT_COLOURS, name="digits")
SPLIT_COLOURS = {"train": DIGIT_COLOURS[0], "val": DIGIT_COLOURS[1], "test": DIGIT_COLOURS[2]}


def tile(images, ncols) -> torch.Tensor:
    """(N, 784) or (N, 28, 28) images -> one (rows x 28, ncols x 28) image, row by row."""
    images = torch.as_tensor(images).reshape(-1, ncols, IMAGE_SIDE, IMAGE_SIDE)
    return images.permute(0, 2, 1, 3).reshape(len(images) * IMAGE_SIDE, ncols * IMAGE_SIDE)


def show_images(images, labels=None, ncols=10, title=None, scale=1.0):
    """Show (N, 784) images in pixel units [0, 1] as a grid; labels as subplot titles."""
    import matplotlib.pyplot as plt

    images = torch.as_tensor(images).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    nrows = math.ceil(len(images) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 0.9 * scale, nrows * 1.0 * scale), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, image) in enumerate(zip(axes.flat, images)):
        ax.imshow(image.cpu(), cmap="gray", vmin=0, vmax=1)
        if labels is not None:
            ax.set_title(str(int(labels[i])), fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_learning_curves(
    runs: dict, splits=("train", "val", "test"), units="normalized", title=None, ax=None, logy=False
):
    """Loss per epoch for several runs: {label: Run or history dict}. NaN epochs are left out."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    styles = {"train": "-", "val": "--", "test": ":"}
    names = {"train": "training", "val": "validation", "test": "test"}
    for i, (label, run) in enumerate(runs.items()):
        history = run.history if isinstance(run, Run) else run
        epochs = np.array(history["epoch"])
        for split in splits:
            # One run: a colour per split (not only a dash); several runs: a colour per run.
            colour = SPLIT_COLOURS[split] if len(runs) == 1 else DIGIT_COLOURS[i % 10]
            values = np.array(history[f"{split}_loss"], dtype=float)
            finite = np.isfinite(values)
            ax.plot(
                epochs[finite],
                values[finite],
                styles[split],
                color=colour,
                label=f"{label} ({names[split]})" if len(splits) > 1 else label,
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"MSE ({units})")
    if logy:
        ax.set_yscale("log")
    ax.set_title(title or "Learning curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the plot, off the data
    ax.figure.tight_layout()
    return ax.figure


def plot_latent(codes, labels, title="Test set in the latent plane", ax=None, s=2, seed=0, extent=None):
    """Scatter of 2-D codes coloured by digit, drawn in a random order (seeded) so that no digit is
    hidden under the digits drawn after it; each digit's label sits at its median code, the legend
    outside the plot. ``extent`` (xmin, xmax, ymin, ymax) sets the view (default: all but the outer
    0.2% of codes on each side); the points outside the view are counted under the x-axis."""
    import matplotlib.patheffects as effects
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    if ax is None:
        _, ax = plt.subplots(figsize=(6.6, 5.5))
    codes, labels = torch.as_tensor(codes).cpu().float(), torch.as_tensor(labels).cpu()
    order = torch.randperm(len(codes), generator=torch.Generator().manual_seed(seed))
    colours = DIGIT_CMAP(labels[order].numpy())
    ax.scatter(codes[order, 0], codes[order, 1], s=s, c=colours, rasterized=True)
    xmin, xmax, ymin, ymax = extent or latent_extent(codes, 0.002)  # a few far outliers would squash the rest
    pad_x, pad_y = 0.05 * (xmax - xmin), 0.05 * (ymax - ymin)
    view = (xmin - pad_x, xmax + pad_x, ymin - pad_y, ymax + pad_y)
    ax.set_xlim(*view[:2])
    ax.set_ylim(*view[2:])
    outline = [effects.withStroke(linewidth=3, foreground="white")]
    for digit in labels.unique().tolist():
        x, y = codes[labels == digit].median(0).values.tolist()
        if view[0] <= x <= view[1] and view[2] <= y <= view[3]:
            ax.text(x, y, str(digit), fontsize=11, weight="bold", ha="center", va="center", path_effects=outline)
    outside = points_outside(codes, view)
    ax.set_xlabel(f"latent dimension 1\n({outside:,} of {len(codes):,} points lie outside this view)")
    ax.set_ylabel("latent dimension 2")
    ax.set_title(title)
    handles = [Line2D([], [], ls="", marker="o", markersize=5, color=DIGIT_CMAP(d), label=str(d)) for d in range(10)]
    ax.legend(handles=handles, title="digit", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.figure.tight_layout()
    return ax.figure


def points_outside(codes, view) -> int:
    """How many 2-D codes fall outside the view (xmin, xmax, ymin, ymax)."""
    codes = torch.as_tensor(codes)
    x, y = codes[:, 0], codes[:, 1]
    inside = (x >= view[0]) & (x <= view[1]) & (y >= view[2]) & (y <= view[3])
    return int((~inside).sum())


def dense_centre(codes, fraction=0.15):
    """(x, y, half_width): a square around the median code that holds about ``fraction`` of the codes."""
    codes = torch.as_tensor(codes).cpu().float()
    centre = codes.median(0).values
    half_width = torch.quantile((codes - centre).abs().amax(1), fraction).item()
    return centre[0].item(), centre[1].item(), half_width


def plot_latent_centre(codes, labels, title="Test set in the latent plane", fraction=0.15):
    """Two panels: the whole latent plane with the dense centre outlined, and the centre enlarged."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    x, y, r = dense_centre(codes, fraction)
    fig, (whole, zoom) = plt.subplots(1, 2, figsize=(12, 5.2))
    plot_latent(codes, labels, title=title, ax=whole)
    whole.get_legend().remove()
    whole.add_patch(Rectangle((x - r, y - r), 2 * r, 2 * r, fill=False, ec="k", lw=1))
    plot_latent(
        codes,
        labels,
        title=f"the centre enlarged: {fraction:.0%} of the codes",
        ax=zoom,
        s=4,
        extent=(x - r, x + r, y - r, y + r),
    )
    fig.tight_layout()
    return fig


def latent_extent(codes, quantile=0.01):
    """(xmin, xmax, ymin, ymax) covering all but the outer ``quantile`` of codes on each side."""
    codes = torch.as_tensor(codes)
    lo, hi = torch.quantile(codes, quantile, dim=0), torch.quantile(codes, 1 - quantile, dim=0)
    return lo[0].item(), hi[0].item(), lo[1].item(), hi[1].item()


def decode_grid(model, extent, n=15, data: MNIST | None = None):
    """Decode an n x n grid over extent -> (n*28, n*28) image in pixel units; top row = high y."""
    xs = torch.linspace(extent[0], extent[1], n)
    ys = torch.linspace(extent[3], extent[2], n)
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], -1).reshape(-1, 2)
    return tile(decode_to_pixels(model, grid, data), n)


def plot_manifold(model, codes, data: MNIST, n=15, title="Decoder over the latent plane", extent=None, ax=None):
    """Decoded images over a regular grid of the latent plane (the static explorer). ``extent``
    (xmin, xmax, ymin, ymax): the part of the plane (default: all but the outer 1% of codes on each side)."""
    import matplotlib.pyplot as plt

    extent = extent or latent_extent(codes)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 6))
    fig = ax.figure
    ax.imshow(decode_grid(model, extent, n, data), cmap="gray", extent=extent, aspect="auto")
    ax.set_xlabel("latent dimension 1")
    ax.set_ylabel("latent dimension 2")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_tracking(tracking, split="test", title=None):
    """Rows: the original images, then reconstructions at each tracked epoch."""
    import matplotlib.pyplot as plt

    epochs = tracking["epochs"]
    rows = [tracking[f"{split}_originals"]] + list(tracking[split])
    fig, axes = plt.subplots(len(rows), 1, figsize=(6, 0.62 * len(rows) + 0.5), squeeze=False)
    for ax, row, name in zip(axes[:, 0], rows, ["original"] + [f"epoch {e}" for e in epochs]):
        ax.imshow(tile(row, len(row)), cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title or f"Reconstructions of fixed {split} images during training")
    fig.tight_layout()
    return fig


def _save_figure(fig, path, dpi=80):
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    plt.close(fig)


def draw_run_figures(run: Run, data: MNIST) -> None:
    """Write the run's figures: learning curve, latent scatter, manifold, tracking strips."""
    import matplotlib.pyplot as plt

    d = run.run_dir
    name = d.resolve().relative_to(PROJECT_ROOT).as_posix() if d.resolve().is_relative_to(PROJECT_ROOT) else d.name
    _save_figure(plot_learning_curves({name: run}, title=f"Learning curve: {name}"), d / "learning_curve.png")
    if run.tracking is not None:
        for split in ("test", "train"):
            folder = d / f"{split}_data_tracking"
            folder.mkdir(exist_ok=True)
            for epoch, row in zip(run.tracking["epochs"], run.tracking[split]):
                strip = tile(torch.cat([run.tracking[f"{split}_originals"], row]), len(row)).numpy()
                atomic_write(
                    folder / f"epoch_{epoch:03d}.png",
                    lambda tmp, strip=strip: plt.imsave(tmp, strip, cmap="gray", vmin=0, vmax=255, format="png"),
                )
            _save_figure(plot_tracking(run.tracking, split), d / f"{split}_tracking.png")
    if run.model is not None and run.model.latent_dim == 2:
        codes = encode(run.model, data.test_images)
        title = f"{name}: 5-NN accuracy {run.metrics.get('knn5_accuracy', float('nan')):.3f}"
        _save_figure(plot_latent_centre(codes, data.test_labels, title=title), d / "latent_space.png", dpi=90)
        _save_figure(
            plot_manifold(run.model, codes, data, title=f"{name}: decoder over the latent plane"),
            d / "latent_manifold.png",
        )
