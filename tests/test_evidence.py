"""The measurements the notebook's answers rest on: each against a case whose answer is known."""

import math
import warnings

import numpy as np
import pytest
import torch

import ae.metrics as ae_metrics
import ae_helpers as ah
from ae import analyses, figures, runs


def test_saved_tensors_count_each_storage_once_and_split_activations_from_weights_and_input():
    torch.manual_seed(0)
    model = ah.Autoencoder((8, 4, 2), input_dim=16)
    x = torch.randn(5, 16)
    saved = analyses.saved_tensor_bytes(model, x)
    # The ReLU outputs are kept once each (the ReLU and the next matmul share them): hidden sizes 8, 4
    # in the encoder and 4, 8 in the decoder, plus the linear code (2) that the decoder's matmul saves.
    assert saved["activations"] == 5 * (8 + 4 + 2 + 4 + 8) * 4
    assert saved["input"] == x.numel() * 4
    # Each layer's weight is saved for the gradient of its input, except the first (the images need none).
    weights = [p for p in model.parameters() if p.dim() == 2]
    assert saved["parameters"] == sum(w.numel() for w in weights[1:]) * 4
    with torch.no_grad():
        assert analyses.saved_tensor_bytes(model, x) == {"activations": 0, "parameters": 0, "input": 0}


def test_loss_noise_recovers_the_noise_about_a_trend():
    rng = np.random.default_rng(0)
    values = 0.4 - 0.001 * np.arange(200) + rng.normal(0, 0.002, 200)
    assert analyses.loss_noise(values, last=200) == pytest.approx(0.002, rel=0.15)
    assert analyses.loss_noise(list(np.linspace(1, 0, 60)), last=50) == pytest.approx(
        0, abs=1e-12
    )  # a trend is not noise


def test_window_mean_takes_epochs_first_to_last_inclusive():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]  # epochs 1 to 5
    assert analyses.window_mean(values, 2, 4) == 3.0
    assert analyses.window_mean(values, 5, 5) == 5.0
    assert math.isnan(analyses.window_mean(values, 51, 100))  # a short (quick-mode) run has no such epochs


def _run(train_seconds, val_losses):
    metrics = {"train_seconds": train_seconds, "epochs_run": len(val_losses)}
    return ah.Run(ah.RunConfig(), None, {"val_loss": val_losses}, metrics, None, None)


def test_loss_at_time_is_the_last_epoch_finished_within_the_budget():
    run = _run(10.0, [0.9, 0.8, 0.7, 0.6, 0.5])  # 2 s per epoch
    assert analyses.loss_at_time(run, 5.9) == 0.8
    assert analyses.loss_at_time(run, 6.0) == 0.7
    assert analyses.loss_at_time(run, 100) == 0.5
    assert math.isnan(analyses.loss_at_time(run, 1.0))
    thirds = _run(0.3, [0.9, 0.8, 0.7])  # 0.1 * 3 is 0.30000000000000004 in floats
    assert analyses.loss_at_time(thirds, thirds.metrics["train_seconds"]) == 0.7


def test_steps_run_counts_the_partial_last_batch_and_the_whole_split_when_not_cut():
    def run(**config):
        return ah.Run(ah.RunConfig(**config), None, {}, {"epochs_run": 2}, None, None)

    assert analyses.steps_run(run(train_subset=300, batch_size=128), 60000) == 2 * 3  # 128 + 128 + 44
    assert analyses.steps_run(run(train_subset=256, batch_size=128), 60000) == 2 * 2
    assert analyses.steps_run(run(val_size=1000, batch_size=1000), 6500) == 2 * 6  # 5,500 training images
    assert analyses.steps_run(run(train_subset=300, batch_size=1000), 60000) == 2  # one (full) batch per epoch


def test_fixed_order_permutes_the_training_images_once_and_leaves_validation_in_place(mnist):
    data = mnist.subset(7000).sorted_by_label()
    config = ah.RunConfig(epochs=1)
    train_idx, val_idx = ah.run_split(config, len(data.train_images))
    moved = analyses.fixed_order(data, config, seed=3)
    assert torch.equal(moved.train_images[val_idx], data.train_images[val_idx])
    assert torch.equal(moved.train_labels[val_idx], data.train_labels[val_idx])
    assert torch.equal(moved.train_labels[train_idx].sort().values, data.train_labels[train_idx].sort().values)
    labels = moved.train_labels[train_idx]
    assert (labels[1:] == labels[:-1]).float().mean() < 0.2  # no longer sorted (sorted: about 1.0)
    assert torch.equal(analyses.fixed_order(data, config, seed=3).train_images, moved.train_images)  # seeded
    assert not torch.equal(analyses.fixed_order(data, config, seed=4).train_images, moved.train_images)


def test_best_by_validation_picks_each_optimizers_lowest_validation_loss_and_skips_diverged_runs():
    def run(val, diverged=False):
        return ah.Run(ah.RunConfig(), None, {}, {"val_mse": val, "diverged": diverged}, None, None)

    runs = {("sgd", 0.1): run(0.7), ("sgd", 1.0): run(0.5), ("sgd", 3.0): run(0.1, diverged=True)}
    runs |= {("adam", 1e-4): run(0.6), ("adam", 1e-3): run(math.nan)}
    best = analyses.best_by_validation(runs)
    assert {opt: lr for opt, (lr, _) in best.items()} == {"sgd": 1.0, "adam": 1e-4}
    table = analyses.grid_table(runs).data
    assert "**0.5000**" in table and "diverged" in table and "**0.6000**" in table


def test_lr_grid_trains_each_rate_reuses_done_runs_and_keeps_a_diverged_run_quietly(mnist, small_config):
    done = {("sgd_momentum", 1e-2): "already trained"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the divergence warning must not escape
        runs = analyses.lr_grid(small_config.replace(epochs=1), {"sgd_momentum": (1e-2, 1e-1, 1e6)}, mnist, done=done)
    assert runs[("sgd_momentum", 1e-2)] == "already trained"
    assert runs[("sgd_momentum", 1e-1)].config.lr == 1e-1
    assert runs[("sgd_momentum", 1e6)].metrics["diverged"]


def test_gradient_signs_of_identical_batches_never_disagree(mnist):
    torch.manual_seed(0)
    model = ah.Autoencoder((32, 2))
    same = mnist.train_images[:64].repeat(5, 1)  # five copies of one batch
    signs = analyses.gradient_signs(model, same, batch_size=64, n_batches=5)
    assert signs == {"flip": 0.0, "vote": 0.0}
    different = analyses.gradient_signs(model, mnist.train_images, batch_size=64, n_batches=5)
    assert 0 < different["vote"] < different["flip"] < 0.5


def test_gradient_signs_vote_weighs_batches_equally_whatever_their_size():
    class Constant(torch.nn.Module):  # outputs w everywhere: the gradient of mean((w - x)^2) is 2 (w - mean(x))
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return self.w.expand_as(x)

    # Three batches with gradients +1, +1 and -10 at w = 0: two signs of three say +, the mean says -.
    signs = analyses.gradient_signs(Constant(), torch.tensor([[-0.5], [-0.5], [5.0]]), batch_size=1, n_batches=3)
    assert signs == {"flip": 0.0, "vote": 1.0}


def test_per_digit_latent_finds_the_collapsed_digit():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat(100)
    directions = torch.stack([torch.cos(torch.arange(10) * 0.6), torch.sin(torch.arange(10) * 0.6)], 1)
    radius = torch.where(labels == 3, 0.05, 5.0)
    codes = directions[labels] * radius[:, None] * (1 + torch.rand(1000, generator=gen))[:, None]
    codes += torch.tensor([20.0, -30.0])  # the centre is the codes' median, wherever the plane lies
    stats = ae_metrics.per_digit_latent(codes, labels, codes + 1e-4, labels)
    assert int(np.argmin(stats["median_distance"])) == 3
    assert stats["median_distance"][3] < 0.2 < 4 < min(d for i, d in enumerate(stats["median_distance"]) if i != 3)
    assert stats["knn5_accuracy"] == [1.0] * 10


def test_per_digit_latent_votes_with_its_k():
    gen = torch.Generator().manual_seed(1)
    train, test = torch.randn(300, 2, generator=gen), torch.randn(200, 2, generator=gen)
    train_labels, test_labels = torch.randint(0, 10, (300,), generator=gen), torch.randint(0, 10, (200,), generator=gen)
    for k in (1, 3):
        stats = ae_metrics.per_digit_latent(train, train_labels, test, test_labels, k=k)
        mine = [test_labels == digit for digit in range(10)]
        assert stats[f"knn{k}_accuracy"] == [
            ae_metrics.knn_accuracy(train, train_labels, test[m], test_labels[m], k) for m in mine
        ]


def test_latent_scatter_mixes_the_digits_and_the_centre_panel_holds_the_dense_centre():
    import matplotlib.pyplot as plt

    labels = torch.arange(10).repeat_interleave(50)
    codes = (
        torch.randn(500, 2, generator=torch.Generator().manual_seed(0)) * torch.where(labels == 3, 0.01, 10.0)[:, None]
    )
    fig = figures.plot_latent(codes, labels)
    colours = fig.axes[0].collections[0].get_facecolors()
    first = {tuple(c) for c in colours[:50]}
    assert len(first) >= 6  # file order would draw fifty 0s first, then fifty 1s ...
    plt.close(fig)
    x, y, r = figures.dense_centre(codes, fraction=0.1)
    inside = ((codes - torch.tensor([x, y])).abs().amax(1) <= r).float().mean()
    assert inside == pytest.approx(0.1, abs=0.01)
    fig = figures.plot_latent_centre(codes, labels, fraction=0.1)
    zoom = fig.axes[1]
    assert zoom.get_xlim()[1] - zoom.get_xlim()[0] < 0.05 * (fig.axes[0].get_xlim()[1] - fig.axes[0].get_xlim()[0])
    plt.close(fig)


def test_config_replace_changes_one_field_and_checks_it():
    config = ah.RunConfig(epochs=3)
    assert config.replace(lr=1e-3) == ah.RunConfig(epochs=3, lr=1e-3)
    with pytest.raises(ValueError, match="optimizer"):
        config.replace(optimizer="adagrad")


def test_digits_table_has_a_column_per_digit_and_a_row_per_label():
    table = analyses.digits_table({"5-NN": [i / 10 for i in range(10)], "distance": [1.0] * 10}).data.splitlines()
    assert table[0] == "| digit | 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 | 9 |"
    assert table[2].startswith("| 5-NN | 0.000 | 0.100 |") and table[2].endswith("| 0.900 |")
    assert table[3].startswith("| distance | 1.000 |") and len(table) == 4


def test_per_digit_by_split_scores_validation_and_test_codes_against_the_training_codes(mnist):
    model = ah.Autoencoder(runs.MYNET_LAYERS)  # untrained: any encoder will do
    train_idx, val_idx = ah.split_indices(len(mnist.train_images), 500)
    train_idx = train_idx[:2000]
    per_digit = ae_metrics.per_digit_by_split(model, mnist, train_idx, val_idx, k=3)
    train_codes = ah.encode(model, mnist.train_images[train_idx])
    for split, images, labels in (
        ("validation", mnist.train_images[val_idx], mnist.train_labels[val_idx]),
        ("test", mnist.test_images, mnist.test_labels),
    ):
        direct = ae_metrics.per_digit_latent(
            train_codes, mnist.train_labels[train_idx], ah.encode(model, images), labels, 3
        )
        assert per_digit[split] == direct
    rows = ae_metrics.digit_rows(per_digit, k=3)
    assert rows == {
        "median distance from the centre (test codes)": per_digit["test"]["median_distance"],
        "3-NN accuracy, validation codes": per_digit["validation"]["knn3_accuracy"],
        "3-NN accuracy, test codes": per_digit["test"]["knn3_accuracy"],
    }
    assert "5-NN accuracy, test codes" in ae_metrics.digit_rows(
        ae_metrics.per_digit_by_split(model, mnist, train_idx, val_idx)
    )
