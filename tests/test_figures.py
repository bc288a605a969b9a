"""The figures and tables a reader sees: colour-blind-safe digits labelled at their centres, nothing
clipped without saying so, legends off the data, plain headers, and the static copy of the explorer."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

import ae.explorer as ae_explorer
import ae_helpers as ah
from ae import analyses, figures


def _spokes():
    labels = torch.arange(10).repeat_interleave(50)
    angles = labels.float() * (2 * torch.pi / 10)
    radii = torch.rand(500, generator=torch.Generator().manual_seed(0)) * 10
    codes = torch.stack([radii * angles.cos(), radii * angles.sin()], 1)
    return codes, labels


def test_digits_are_drawn_in_petroffs_colour_blind_safe_sequence():
    assert tuple(matplotlib.color_sequences["petroff10"]) == figures.DIGIT_COLOURS
    codes, labels = _spokes()
    fig = figures.plot_latent(codes, labels)
    drawn = {tuple(np.round(c[:3], 4)) for c in fig.axes[0].collections[0].get_facecolors()}
    assert drawn == {tuple(np.round(c, 4)) for c in figures.DIGIT_COLOURS}
    plt.close(fig)


def test_each_digits_label_sits_at_its_median_code():
    codes, labels = _spokes()
    fig = figures.plot_latent(codes, labels)
    texts = {t.get_text(): t.get_position() for t in fig.axes[0].texts}
    assert sorted(texts) == [str(d) for d in range(10)]
    for digit in range(10):
        assert texts[str(digit)] == pytest.approx(codes[labels == digit].median(0).values.tolist())
    plt.close(fig)


def test_the_axis_label_counts_the_points_a_clipped_view_leaves_out():
    codes, labels = _spokes()
    codes[0] = torch.tensor([1000.0, 1000.0])  # one far outlier, outside the default view
    fig = figures.plot_latent(codes, labels, title="codes")
    view = (*fig.axes[0].get_xlim(), *fig.axes[0].get_ylim())
    outside = figures.points_outside(codes, view)
    assert outside >= 1
    assert f"({outside:,} of 500 points lie outside this view)" in fig.axes[0].get_xlabel()
    plt.close(fig)


def test_points_outside_counts_codes_beyond_any_edge():
    codes = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, -2.0], [1.0, 1.0]])
    assert figures.points_outside(codes, (-1, 1, -1, 1)) == 2


def test_learning_curve_legends_sit_beside_the_plot_and_one_run_gets_a_colour_per_split():
    history = {"epoch": [1, 2, 3], "train_loss": [3, 2, 1], "val_loss": [3.1, 2.1, 1.1], "test_loss": [3, 2, 1]}
    fig = figures.plot_learning_curves({"run": history}, splits=("train", "val"))
    ax = fig.axes[0]
    assert ax.get_legend().get_bbox_to_anchor().x0 >= ax.get_window_extent().x1  # right of the axes
    colours = [line.get_color() for line in ax.get_lines()]
    assert colours[0] != colours[1]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["run (training)", "run (validation)"]
    plt.close(fig)


def test_the_manifold_covers_the_part_of_the_plane_it_is_given(mnist):
    torch.manual_seed(0)
    model = ah.Autoencoder((16, 2)).eval()
    codes = ah.encode(model, mnist.test_images[:200])
    fig = figures.plot_manifold(model, codes, mnist, n=3, extent=(-1.0, 1.0, -0.5, 0.5))
    assert fig.axes[0].images[0].get_extent() == [-1.0, 1.0, -0.5, 0.5]
    plt.close(fig)


def test_tables_are_headed_in_plain_words_and_take_a_mapping_of_headers():
    metrics = {"val_mse": 0.46191, "knn5_val_accuracy": 0.6014, "samples_per_second": 11864.2, "steps": 1565}
    table = analyses.runs_table({"baseline": metrics}, ("val_mse", "knn5_val_accuracy", "samples_per_second", "steps"))
    assert table.data.splitlines()[0] == (
        "| run | validation MSE | 5-NN accuracy, validation | images per second | steps |"
    )
    assert table.data.splitlines()[2] == "| baseline | 0.4619 | 0.6014 | 11,864 | 1,565 |"
    mapped = analyses.runs_table({"baseline": metrics}, {"val_mse": "validation MSE (normalized)"})
    assert mapped.data.splitlines()[0] == "| run | validation MSE (normalized) |"


def test_format_value_writes_numbers_as_a_reader_reads_them():
    assert analyses.format_value(17.583) == "17.6"
    assert analyses.format_value(1699.4) == "1,699"
    assert analyses.format_value(float("nan")) == "n/a"
    assert analyses.format_value(True) == "True"
    assert analyses.format_value("") == ""


def test_the_grid_table_names_optimizers_in_plain_words():
    run = ah.Run(ah.RunConfig(), None, {}, {"val_mse": 0.5, "diverged": False}, None, None)
    table = analyses.grid_table({("sgd_momentum", 0.1): run}).data
    assert table.splitlines()[0] == "| validation MSE at learning rate | 0.1 |"
    assert "| SGD + momentum 0.9 | **0.5000** |" in table


@pytest.fixture
def explorer(mnist):
    torch.manual_seed(0)
    model = ah.Autoencoder((32, 2)).eval()
    return ae_explorer.LatentExplorer(model, mnist.test_images[:500], mnist.test_labels[:500], mnist)


def test_landmark_points_come_from_the_codes(explorer):
    codes, labels = explorer.neighbours.codes, explorer.labels
    points = ae_explorer.landmark_points(explorer, n_grid=11)
    assert list(points) == [
        "the dense centre (median code)",
        "among the 3s (their median code)",
        "a gap between digits",
        "outside all codes",
    ]
    assert points["the dense centre (median code)"] == pytest.approx(codes.median(0).values.tolist())
    assert points["among the 3s (their median code)"] == pytest.approx(codes[labels == 3].median(0).values.tolist())
    outside = torch.tensor(points["outside all codes"])
    assert (outside > codes.max(0).values).all()
    _, _, remoteness, verdict = explorer.nearest_digits(*outside.tolist())
    assert remoteness > ae_explorer.FAR and "invents" in verdict
    gap = points["a gap between digits"]
    centre = points["the dense centre (median code)"]
    assert explorer.nearest_digits(*gap)[2] >= explorer.nearest_digits(*centre)[2]


def test_the_static_panel_shows_what_decode_at_returns_with_the_nearest_digits_and_the_verdict(explorer):
    points = {"a": (0.0, 0.0), "far": (1e3, 1e3)}
    fig = ae_explorer.plot_decoded_points(explorer, points)
    rows = fig.subfigs
    assert len(rows) == 2
    for row, (name, (x, y)) in zip(rows, points.items()):
        axes = row.axes
        assert len(axes) == explorer.k + 1
        assert np.array_equal(axes[0].images[0].get_array(), explorer.decode_at(x, y))
        indices, distances, _, verdict = explorer.nearest_digits(x, y)
        assert row._suptitle.get_text().startswith(name) and row._suptitle.get_text().endswith(verdict)
        shown = [ax.get_title() for ax in axes[1:]]
        assert shown == [f"test {int(explorer.labels[i])}, d {d:.2f}" for i, d in zip(indices, distances)]
    assert "invents" in rows[1]._suptitle.get_text()


def test_nearest_digits_gives_the_explorers_own_verdict(explorer):
    indices, distances, remoteness, verdict = explorer.nearest_digits(0.0, 0.0)
    assert verdict == ae_explorer.verdict(remoteness)
    assert ae_explorer.verdict(ae_explorer.FAR) == "among test digits"
    assert "invents" in ae_explorer.verdict(ae_explorer.FAR * 1.01)
