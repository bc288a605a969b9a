"""Latent-space measures against brute-force references, and the PCA-2 baseline on real data."""

import numpy as np
import pytest
import torch

import ae_helpers as ah


def _brute_silhouette(codes, labels):
    d = np.linalg.norm(codes[:, None] - codes[None], axis=-1)
    scores = []
    for i in range(len(codes)):
        own = labels == labels[i]
        a = d[i, own].sum() / max(own.sum() - 1, 1)
        b = min(d[i, labels == k].mean() for k in set(labels.tolist()) if k != labels[i])
        scores.append((b - a) / max(a, b))
    return float(np.mean(scores))


def test_silhouette_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat(20)
    codes = torch.randn(200, 2, generator=gen) + labels[:, None].float() * torch.tensor([1.0, 0.3])
    assert ah.silhouette_score(codes, labels, chunk=37) == pytest.approx(
        _brute_silhouette(codes.double().numpy(), labels.numpy()), abs=1e-5
    )


def test_knn_accuracy_separated_and_random():
    labels = torch.arange(10).repeat(50)
    centres = torch.randn(10, 2) * 100
    codes = centres[labels] + torch.randn(500, 2)
    assert ah.knn_accuracy(codes, labels, codes + 0.01, labels) == 1.0
    shuffled = labels[torch.randperm(500, generator=torch.Generator().manual_seed(1))]
    assert ah.knn_accuracy(codes, shuffled, codes, labels) < 0.3


def test_pca2_baseline_on_real_mnist(mnist):
    # PCA-2 fitted on the 55,000 training images: test MSE 0.5864 and 5-NN accuracy 0.424 (the last row of
    # default_layers/summary.md, quoted in the README).
    baseline = ah.pca_baseline(mnist)
    assert baseline["test_mse"] == pytest.approx(0.587, abs=0.002)
    assert baseline["knn5_accuracy"] == pytest.approx(0.424, abs=0.005)
    # the validation codes (5,000 training images held out) are as separable as the test codes;
    # a label mix-up between splits would drop this to chance (0.1)
    assert baseline["knn5_val_accuracy"] == pytest.approx(baseline["knn5_accuracy"], abs=0.03)


def test_the_manifold_grid_puts_high_y_at_the_top_and_high_x_at_the_right(mnist):
    torch.manual_seed(0)
    model = ah.Autoencoder((32, 2)).eval()
    extent, n = (-2.0, 3.0, -1.0, 4.0), 5  # xmin, xmax, ymin, ymax
    grid = ah.decode_grid(model, extent, n, mnist)
    for row, y in enumerate(np.linspace(4.0, -1.0, n)):  # the top row is the highest y, as imshow draws it
        for col, x in enumerate(np.linspace(-2.0, 3.0, n)):
            with torch.no_grad():
                expected = model.decode(torch.tensor([[x, y]], dtype=torch.float32))[0] * mnist.std + mnist.mean
            cell = grid[row * 28 : (row + 1) * 28, col * 28 : (col + 1) * 28]
            assert torch.allclose(cell, expected.clamp(0, 1).reshape(28, 28), atol=1e-6), (row, col)
