"""Latent-space measures against brute-force references, and the PCA-2 baseline on real data."""

import dataclasses

import numpy as np
import pytest
import torch

import ae.metrics as ae_metrics
import ae_helpers as ah
from ae import figures, runs
from support import ROOT


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
    assert ae_metrics.silhouette_score(codes, labels, chunk=37) == pytest.approx(
        _brute_silhouette(codes.double().numpy(), labels.numpy()), abs=1e-5
    )


def test_silhouette_with_missing_digits_and_clusters_of_one_and_two_codes():
    gen = torch.Generator().manual_seed(1)
    labels = torch.tensor([3] + [5] * 2 + [7] * 3 + [8] * 40)  # digits 0-2, 4, 6, 9 absent
    codes = torch.randn(len(labels), 2, generator=gen) + labels[:, None].float()
    assert ae_metrics.silhouette_score(codes, labels, chunk=7) == pytest.approx(
        _brute_silhouette(codes.double().numpy(), labels.numpy()), abs=1e-5
    )


def test_a_silhouette_of_one_digit_is_refused_and_of_two_computed():
    with pytest.raises(ValueError, match="at least 2 digits; got digits \\[4\\]"):
        ae_metrics.silhouette_score(torch.randn(20, 2), torch.full((20,), 4))
    codes, labels = torch.tensor([[0.0, 0.0], [3.0, 0.0], [4.0, 0.0]]), torch.tensor([1, 6, 6])  # one code of a 1
    assert ae_metrics.silhouette_score(codes, labels) == pytest.approx(_brute_silhouette(codes.numpy(), labels.numpy()))


def _brute_knn(train, train_labels, test, k):
    """Each test code's vote among its k nearest training codes; a tie goes to the nearest one's digit."""
    predicted = []
    for code in test:
        order = np.argsort(np.linalg.norm(train - code, axis=1), kind="stable")[:k]
        votes = np.bincount(train_labels[order], minlength=10)
        tied = np.flatnonzero(votes == votes.max())
        nearest = train_labels[order[0]]
        predicted.append(nearest if nearest in tied else tied[0])
    return np.array(predicted)


@pytest.mark.parametrize("k", [1, 4, 5])
def test_knn_accuracy_matches_a_brute_force_vote_with_ties(k):
    gen = torch.Generator().manual_seed(k)
    train_labels = torch.randint(0, 4, (120,), generator=gen)  # few digits, many ties at k = 4
    train = torch.randn(120, 2, generator=gen) + train_labels[:, None].float()
    test_labels = torch.randint(0, 4, (90,), generator=gen)
    test = torch.randn(90, 2, generator=gen) + test_labels[:, None].float()
    predicted = _brute_knn(train.numpy(), train_labels.numpy(), test.numpy(), k)
    expected = float((predicted == test_labels.numpy()).mean())
    assert ae_metrics.knn_accuracy(train, train_labels, test, test_labels, k=k, chunk=37) == pytest.approx(expected)


def test_knn_ties_go_to_the_nearest_codes_digit():
    train = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.0, 0.0], [9.0, 0.0]])
    test = torch.zeros(1, 2)
    for labels, winner in (([7, 3, 3, 7, 1], 7), ([3, 7, 7, 3, 1], 3)):  # 2 votes each among the 4 nearest
        assert ae_metrics.knn_accuracy(train, torch.tensor(labels), test, torch.tensor([winner]), k=4) == 1.0


def test_knn_accuracy_separated_and_random():
    labels = torch.arange(10).repeat(50)
    centres = torch.randn(10, 2) * 100
    codes = centres[labels] + torch.randn(500, 2)
    assert ae_metrics.knn_accuracy(codes, labels, codes + 0.01, labels) == 1.0
    shuffled = labels[torch.randperm(500, generator=torch.Generator().manual_seed(1))]
    assert ae_metrics.knn_accuracy(codes, shuffled, codes, labels) < 0.3


def test_evaluation_in_batches_matches_one_pass_and_builds_no_graph():
    torch.manual_seed(0)
    model = ah.Autoencoder(layer_sizes=(16, 2), input_dim=12)
    images = torch.randn(25, 12)  # 25 = 3 batches of 7 and one of 4
    with torch.no_grad():
        codes, recon = model.encode(images), model(images)
    out = ah.encode(model, images, batch_size=7)
    assert torch.allclose(out, codes, atol=1e-6) and not out.requires_grad
    both_codes, mse = ae_metrics._codes_and_mse(model, images, batch_size=7)
    assert torch.allclose(both_codes, codes, atol=1e-6) and not both_codes.requires_grad
    assert mse == pytest.approx(float(((recon - images) ** 2).mean()), rel=1e-5)
    assert ah.evaluate_loss(model, images, batch_size=7) == pytest.approx(mse, rel=1e-5)
    l1 = float((recon - images).abs().mean())
    assert ah.evaluate_loss(model, images, loss="l1", batch_size=7) == pytest.approx(l1, rel=1e-5)
    pixels = ah.decode_to_pixels(model, codes.tolist())
    assert torch.allclose(pixels, recon.clamp(0, 1), atol=1e-6) and not pixels.requires_grad
    empty_codes, empty_mse = ae_metrics._codes_and_mse(model, images[:0])
    assert empty_codes.shape == (0, 2) and np.isnan(empty_mse)


class _WeightsElsewhere(torch.nn.Module):
    """A stand-in model whose weights sit on another device (meta): it records where its inputs were sent."""

    latent_dim = 2

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(1, device="meta"))
        self.seen = []

    def encode(self, x):
        self.seen.append((x.device.type, x.dtype))
        return torch.zeros(len(x), 2)

    def decode(self, z):
        self.seen.append((z.device.type, z.dtype))
        return torch.zeros(len(z), 784)


def test_evaluation_sends_images_and_codes_to_the_models_device_as_float32():
    model = _WeightsElsewhere()
    assert ah.encode(model, torch.rand(5, 784), batch_size=2).shape == (5, 2)
    assert model.seen == [("meta", torch.float32)] * 3
    model.seen.clear()
    assert ah.decode_to_pixels(model, np.zeros((3, 2))).shape == (3, 784)  # float64 codes, from numpy
    assert model.seen == [("meta", torch.float32)]


def test_pca2_reconstructs_images_that_lie_on_a_plane_exactly():
    gen = torch.Generator().manual_seed(0)
    mean, plane = torch.rand(784, generator=gen), torch.linalg.qr(torch.randn(784, 2, generator=gen))[0]
    images = mean + (torch.randn(300, 2, generator=gen) * torch.tensor([3.0, 1.0])) @ plane.T
    pca = ae_metrics.PCA2(images)
    assert torch.allclose(pca(images), images, atol=1e-4)
    assert ah.evaluate_loss(pca, images) < 1e-8
    codes = ah.encode(pca, images)
    assert codes.shape == (300, 2) and codes[:, 0].var() > codes[:, 1].var()  # the larger component first


def test_pca2_baseline_on_real_mnist(mnist):
    # PCA-2 fitted on the 55,000 training images: test MSE 0.5864 and 5-NN accuracy 0.424 (the last row of
    # default_layers/summary.md, quoted in the README).
    baseline = ae_metrics.pca_baseline(mnist)
    assert baseline["test_mse"] == pytest.approx(0.587, abs=0.002)
    assert baseline["knn5_accuracy"] == pytest.approx(0.424, abs=0.005)
    # the validation codes (5,000 training images held out) are as separable as the test codes;
    # a label mix-up between splits would drop this to chance (0.1)
    assert baseline["knn5_val_accuracy"] == pytest.approx(baseline["knn5_accuracy"], abs=0.03)


def test_the_manifold_grid_puts_high_y_at_the_top_and_high_x_at_the_right(mnist):
    torch.manual_seed(0)
    model = ah.Autoencoder((32, 2)).eval()
    extent, n = (-2.0, 3.0, -1.0, 4.0), 5  # xmin, xmax, ymin, ymax
    grid = figures.decode_grid(model, extent, n, mnist)
    for row, y in enumerate(np.linspace(4.0, -1.0, n)):  # the top row is the highest y, as imshow draws it
        for col, x in enumerate(np.linspace(-2.0, 3.0, n)):
            with torch.no_grad():
                expected = model.decode(torch.tensor([[x, y]], dtype=torch.float32))[0] * mnist.std + mnist.mean
            cell = grid[row * 28 : (row + 1) * 28, col * 28 : (col + 1) * 28]
            assert torch.allclose(cell, expected.clamp(0, 1).reshape(28, 28), atol=1e-6), (row, col)


def test_mse_units_convert_between_normalized_and_pixel_units(mnist):
    raw = dataclasses.replace(mnist, mean=0.0, std=1.0)  # the same images in pixel units
    assert ae_metrics.mse_units(1.0, mnist) == pytest.approx({"normalized": 1.0, "pixels": mnist.pixel_std**2})
    assert ae_metrics.mse_units(1.0, raw) == pytest.approx({"normalized": 1 / mnist.pixel_std**2, "pixels": 1.0})


def test_a_committed_run_measures_every_metric_it_saved(mnist):
    # Every key measure_run returns, against the run's metrics.json (the same code wrote it, on another CPU:
    # equal to float32 noise); pixel units are the normalized ones times 0.3081^2.
    run = runs.load_run(ROOT / "mynet/adam_lr5e-4", require_model=True)
    measured = ae_metrics.measure_run(run.model, mnist, *ah.split_indices())
    assert set(measured) == {f"{s}_mse{u}" for s in ("train", "val", "test") for u in ("", "_pixels")} | {
        "knn5_accuracy",
        "knn5_val_accuracy",
        "silhouette",
    }
    for key, value in measured.items():
        assert value == pytest.approx(run.metrics[key], abs=2e-4, rel=1e-3), key
        digits = 6 if key.endswith("_pixels") else 5 if key.endswith("_mse") else 4  # as metrics.json keeps them
        assert round(value, digits) == value, key
        if key.endswith("_pixels"):
            assert value == pytest.approx(measured[key[: -len("_pixels")]] * mnist.pixel_std**2, rel=1e-4), key


def test_knn_accuracies_keep_4_decimals_whatever_the_number_of_codes(mnist):
    torch.manual_seed(0)
    model = ah.Autoencoder((16, 2)).eval()
    data = dataclasses.replace(mnist, test_images=mnist.test_images[:7], test_labels=mnist.test_labels[:7])
    metrics = ae_metrics.measure_run(model, data, torch.arange(300), torch.arange(300, 307))  # 7 codes voted on: k/7
    for key in ("knn5_accuracy", "knn5_val_accuracy"):
        assert 0 < metrics[key] < 1 and metrics[key] == round(metrics[key], 4), key
