"""Measurements of a trained model: MSE in both units, k-NN accuracy and silhouette of the 2-D codes,
per-digit tables, and PCA-2, the linear baseline a 2-D autoencoder has to beat."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import ae_helpers as ah
from ae_helpers import MNIST, encode


def knn_accuracy(train_codes, train_labels, test_codes, test_labels, k=5, chunk=1000) -> float:
    """Accuracy of a k-nearest-neighbour vote (Euclidean) of test codes among training codes."""
    correct = 0
    for i in range(0, len(test_codes), chunk):
        dist = torch.cdist(test_codes[i : i + chunk], train_codes)
        neighbours = train_labels[dist.topk(k, largest=False).indices]
        votes = F.one_hot(neighbours, 10).sum(1).float()
        votes += F.one_hot(neighbours[:, 0], 10) * 0.5  # ties go to the nearest neighbour's digit
        correct += (votes.argmax(1) == test_labels[i : i + chunk]).sum().item()
    return correct / len(test_codes)


def silhouette_score(codes, labels, chunk=1000) -> float:
    """Mean silhouette coefficient of ``codes`` grouped by ``labels`` (Euclidean), in [-1, 1].

    Digits absent from ``labels`` are no one's nearest other cluster; a digit with one code scores 1."""
    onehot = F.one_hot(labels, 10).float()
    counts = onehot.sum(0)
    if (counts > 0).sum() < 2:
        raise ValueError(f"a silhouette needs the codes of at least 2 digits; got digits {labels.unique().tolist()}.")
    scores = []
    for i in range(0, len(codes), chunk):
        sums = torch.cdist(codes[i : i + chunk], codes) @ onehot  # (chunk, 10) summed distances
        own = labels[i : i + chunk]
        a = sums.gather(1, own[:, None])[:, 0] / (counts[own] - 1).clamp(min=1)
        means = (sums / counts).masked_fill(counts == 0, math.inf)  # an absent digit is no one's neighbour
        means.scatter_(1, own[:, None], math.inf)
        b = means.min(1).values
        scores.append((b - a) / torch.maximum(a, b))
    return torch.cat(scores).mean().item()


def per_digit_latent(train_codes, train_labels, test_codes, test_labels, k=5) -> dict:
    """Per digit 0-9: the median distance of its test codes from the median of all test codes (the
    centre of the plane), and the k-NN accuracy of its test codes among the training codes."""
    centre = test_codes.median(0).values
    distance = (test_codes - centre).norm(dim=1)
    out = {"median_distance": [], f"knn{k}_accuracy": []}
    for digit in range(10):
        mask = test_labels == digit
        out["median_distance"].append(distance[mask].median().item())
        out[f"knn{k}_accuracy"].append(knn_accuracy(train_codes, train_labels, test_codes[mask], test_labels[mask], k))
    return out


def per_digit_by_split(model, data: MNIST, train_idx, val_idx, k=5) -> dict:
    """``per_digit_latent`` of a model's validation and of its test codes, each against its training codes:
    {"validation": {...}, "test": {...}}. ``train_idx`` and ``val_idx`` index ``data.train_images``."""
    train_codes, train_labels = encode(model, data.train_images[train_idx]), data.train_labels[train_idx]
    splits = {
        "validation": (data.train_images[val_idx], data.train_labels[val_idx]),
        "test": (data.test_images, data.test_labels),
    }
    return {
        name: per_digit_latent(train_codes, train_labels, encode(model, images), labels, k)
        for name, (images, labels) in splits.items()
    }


def digit_rows(per_digit: dict, k=5) -> dict:
    """The rows of ``digits_table`` for a ``per_digit_by_split`` result: the test codes' median distance
    from the centre, then the k-NN accuracy of the validation and of the test codes."""
    return {
        "median distance from the centre (test codes)": per_digit["test"]["median_distance"],
        f"{k}-NN accuracy, validation codes": per_digit["validation"][f"knn{k}_accuracy"],
        f"{k}-NN accuracy, test codes": per_digit["test"][f"knn{k}_accuracy"],
    }


def mse_units(mse, data: MNIST) -> dict:
    """An MSE in the data's units -> {'normalized': ..., 'pixels': ...}; normalized = pixels / 0.3081**2."""
    pixels = mse * data.std**2
    return {"normalized": pixels / data.pixel_std**2, "pixels": pixels}


def measure_run(model, data: MNIST, train_idx, val_idx) -> dict:
    """MSE on train/val/test (normalized and pixel units); 5-NN accuracy of test and validation codes
    (neighbours among the training codes) and silhouette of test codes.

    ``train_idx`` and ``val_idx`` index ``data.train_images``: the run's own split (``run_split(config)``).
    """
    out, codes = {}, {}
    for name, images in (
        ("train", data.train_images[train_idx]),
        ("val", data.train_images[val_idx]),
        ("test", data.test_images),
    ):
        codes[name], mse = _codes_and_mse(model, images)
        units = mse_units(mse, data)
        out[f"{name}_mse"], out[f"{name}_mse_pixels"] = round(units["normalized"], 5), round(units["pixels"], 6)
    if model.latent_dim == 2:
        out["knn5_accuracy"] = round(
            knn_accuracy(codes["train"], data.train_labels[train_idx], codes["test"], data.test_labels), 4
        )
        if len(val_idx):  # the same on the validation split: what recipes are chosen by
            out["knn5_val_accuracy"] = round(
                knn_accuracy(codes["train"], data.train_labels[train_idx], codes["val"], data.train_labels[val_idx]), 4
            )
        out["silhouette"] = round(silhouette_score(codes["test"], data.test_labels), 4)
    return out


def _codes_and_mse(model, images, batch_size=10000):
    """(N, latent_dim) codes on the CPU and the mean per-pixel MSE, from one pass of the encoder."""
    if not len(images):
        return torch.empty(0, model.latent_dim), math.nan
    device = ah.model_device(model)

    def codes_and_squared_error(batch):
        batch = batch.to(device)
        codes = model.encode(batch)
        return codes.float().cpu(), F.mse_loss(model.decode(codes), batch, reduction="sum")

    codes, sums = zip(*ah.batched_no_grad(codes_and_squared_error, images, batch_size))
    return torch.cat(codes), float(sum(sums)) / images.numel()


class PCA2:
    """PCA to 2 components, fitted on training images: the linear baseline for a 2-D code."""

    def __init__(self, images):
        self.mean = images.mean(0)
        centered = images - self.mean
        _, vectors = torch.linalg.eigh(centered.T.double() @ centered.double())
        self.components = vectors[:, -2:].flip(1).float()  # (784, 2), largest first
        self.latent_dim = 2

    def encode(self, images):
        return (images - self.mean) @ self.components

    def decode(self, codes):
        return codes @ self.components.T + self.mean

    def parameters(self):  # lets encode() and measure_run() find the device, as for a model
        return iter([self.mean])

    def __call__(self, images):
        return self.decode(self.encode(images))


def pca_baseline(data: MNIST) -> dict:
    """Test MSE, 5-NN accuracy and silhouette of PCA-2 (fitted on the training split)."""
    train_idx, val_idx = ah.split_indices(len(data.train_images))
    return measure_run(PCA2(data.train_images[train_idx]), data, train_idx, val_idx)
