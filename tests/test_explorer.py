"""The latent explorer's click and drag paths, with synthesized matplotlib mouse events."""

import io
import subprocess
import sys

import ipywidgets
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.backend_bases import MouseButton, MouseEvent

import ae.explorer as ae_explorer
import ae_helpers as ah
from support import ROOT

N_IMAGES = 500


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ah.Autoencoder((32, 2)).eval()


@pytest.fixture
def explorer(model, mnist):
    return ae_explorer.LatentExplorer(
        model, mnist.test_images[:N_IMAGES], mnist.test_labels[:N_IMAGES], mnist, drag_interval_s=0
    )


@pytest.fixture(autouse=True)
def _recorded_decodes(monkeypatch):
    """Every decode of every explorer, kept by the tests (not by the explorer) as ``ex.decoded``: (point, image)."""
    decode_at = ae_explorer.LatentExplorer.decode_at

    def recording(self, x, y):
        pixels = decode_at(self, x, y)
        self.__dict__.setdefault("decoded", []).append(((float(x), float(y)), pixels))
        return pixels

    monkeypatch.setattr(ae_explorer.LatentExplorer, "decode_at", recording)


def _updates(ex) -> int:
    return len(ex.__dict__.get("decoded", []))


def _last_point(ex):
    return ex.decoded[-1][0] if _updates(ex) else None


def _last_image(ex):
    return ex.decoded[-1][1]


def _event(ex, name, x, y, in_data=True, **kwargs):
    ex.fig.canvas.draw()
    px, py = ex.ax.transData.transform((x, y)) if in_data else (x, y)
    event = MouseEvent(name, ex.fig.canvas, px, py, **kwargs)
    ex.fig.canvas.callbacks.process(name, event)
    return event


def _press(ex, x, y, in_data=True):
    return _event(ex, "button_press_event", x, y, in_data, button=MouseButton.LEFT)


def _move(ex, x, y, held=True):
    return _event(ex, "motion_notify_event", x, y, buttons={MouseButton.LEFT} if held else set())


def _release(ex, x, y):
    return _event(ex, "button_release_event", x, y, button=MouseButton.LEFT)


def _at(ex, fx, fy):
    """The data point at fractions (fx, fy) of the axes."""
    (x0, x1), (y0, y1) = ex.ax.get_xlim(), ex.ax.get_ylim()
    return x0 + fx * (x1 - x0), y0 + fy * (y1 - y0)


def _expected(ex, mnist, x, y):
    with torch.no_grad():
        out = ex.model.decode(torch.tensor([[x, y]], dtype=torch.float32))[0]
    return mnist.to_pixels(out).clamp(0, 1).reshape(28, 28).numpy()


def _png_pixels(png):
    pixels = plt.imread(io.BytesIO(png))
    return pixels if pixels.ndim == 2 else pixels[..., 0]


def test_click_decodes_exactly_that_point(explorer, mnist):
    shown = []
    for fx, fy in ((0.3, 0.6), (0.8, 0.2)):
        event = _press(explorer, *_at(explorer, fx, fy))
        _release(explorer, event.xdata, event.ydata)
        expected = _expected(explorer, mnist, event.xdata, event.ydata)
        assert _last_point(explorer) == (event.xdata, event.ydata)
        np.testing.assert_allclose(_last_image(explorer), expected, atol=1e-6)
        np.testing.assert_allclose(_png_pixels(explorer.image.value), expected, atol=0.5 / 255 + 1e-6)
        assert f"x = {event.xdata:.5f}, y = {event.ydata:.5f}" in explorer.coords.value
        assert list(explorer.marker.get_xdata()) == [event.xdata]
        assert list(explorer.marker.get_ydata()) == [event.ydata]
        shown.append(explorer.image.value)
    assert shown[0] != shown[1]
    assert _updates(explorer) == 2  # a release where the press was decodes nothing more


def test_a_drag_of_n_steps_gives_n_updates(explorer, mnist):
    steps = [_at(explorer, 0.2 + 0.05 * i, 0.3 + 0.04 * i) for i in range(1, 11)]
    _press(explorer, *_at(explorer, 0.2, 0.3))
    for x, y in steps:
        _move(explorer, x, y)
        assert _last_point(explorer) == pytest.approx((x, y))
    _release(explorer, *steps[-1])
    assert _updates(explorer) == 1 + len(steps)
    np.testing.assert_allclose(_last_image(explorer), _expected(explorer, mnist, *_last_point(explorer)), atol=1e-6)


def test_drag_updates_are_throttled_and_the_release_point_is_always_decoded(model, mnist):
    ex = ae_explorer.LatentExplorer(
        model, mnist.test_images[:N_IMAGES], mnist.test_labels[:N_IMAGES], mnist, drag_interval_s=60
    )
    _press(ex, *_at(ex, 0.2, 0.3))
    for i in range(1, 11):
        _move(ex, *_at(ex, 0.2 + 0.05 * i, 0.3))
    assert _updates(ex) == 1  # every move fell within the interval after the press
    end = _release(ex, *_at(ex, 0.75, 0.3))
    assert _updates(ex) == 2
    assert _last_point(ex) == (end.xdata, end.ydata)


def test_a_drag_that_stops_with_the_button_held_catches_up_on_the_last_point(model, mnist):
    ex = ae_explorer.LatentExplorer(
        model, mnist.test_images[:N_IMAGES], mnist.test_labels[:N_IMAGES], mnist, drag_interval_s=60
    )
    _press(ex, *_at(ex, 0.2, 0.3))
    last = _move(ex, *_at(ex, 0.6, 0.3))  # within the interval: skipped for now
    assert _updates(ex) == 1
    ex._catch_up_timer._on_timer()  # the timer armed by the skipped move, when the interval is over
    assert _updates(ex) == 2
    assert _last_point(ex) == (last.xdata, last.ydata)
    ex._catch_up_timer._on_timer()  # nothing left to catch up
    assert _updates(ex) == 2


def test_the_catch_up_timer_fires_once_just_after_the_throttle_interval(explorer, model, mnist):
    ex = ae_explorer.LatentExplorer(model, mnist.test_images[:N_IMAGES], mnist.test_labels[:N_IMAGES], mnist)
    timer = ex._catch_up_timer
    assert timer.single_shot is True
    # Not sooner (the skipped point would be throttled again), not much later (the pointer has stopped).
    assert 1000 * ex.drag_interval_s < timer.interval <= 2 * 1000 * ex.drag_interval_s


def test_a_drag_that_enters_the_plot_from_outside_decodes_nothing(explorer):
    _move(explorer, *_at(explorer, 0.5, 0.5))  # the button went down outside the plot
    _release(explorer, *_at(explorer, 0.6, 0.5))
    assert _updates(explorer) == 0
    _press(explorer, *_at(explorer, 0.5, 0.5))  # a click in the plot ...
    _release(explorer, *_at(explorer, 0.5, 0.5))
    _move(explorer, *_at(explorer, 0.7, 0.5))  # ... then a drag from outside: only the click decoded
    assert _updates(explorer) == 1


def test_moving_without_the_button_held_decodes_nothing(explorer):
    _move(explorer, *_at(explorer, 0.5, 0.5), held=False)
    assert _updates(explorer) == 0
    _press(explorer, *_at(explorer, 0.5, 0.5))
    _move(explorer, *_at(explorer, 0.6, 0.5), held=False)  # released outside the canvas
    _move(explorer, *_at(explorer, 0.7, 0.5))
    assert _updates(explorer) == 1


def test_neighbours_equal_a_brute_force_search(explorer, model, mnist):
    codes = ah.encode(model, mnist.test_images[:N_IMAGES]).numpy()
    pixels = mnist.to_pixels(mnist.test_images[:N_IMAGES]).clamp(0, 1).reshape(-1, 28, 28).numpy()
    for fx, fy in ((0.1, 0.1), (0.5, 0.5), (0.9, 0.3), (3.0, 3.0)):  # the last is far outside the data
        x, y = _at(explorer, fx, fy)
        explorer.decode_at(x, y)
        distances = np.linalg.norm(codes - np.array([x, y]), axis=1)
        nearest = np.argsort(distances, kind="stable")[:5]
        indices, shown_distances = explorer.neighbours(x, y, explorer.k)
        assert indices.tolist() == nearest.tolist()
        np.testing.assert_allclose(shown_distances, distances[nearest], rtol=1e-4, atol=1e-5)
        for i, image, label in zip(nearest, explorer.neighbour_images, explorer.neighbour_labels):
            np.testing.assert_allclose(_png_pixels(image.value), pixels[i], atol=0.5 / 255 + 1e-6)
            assert label.value.startswith(f"<span class='neighbour'>{int(mnist.test_labels[i])} ")


def test_spacing_is_each_codes_distance_to_its_nearest_other_code(explorer, model, mnist):
    codes = ah.encode(model, mnist.test_images[:N_IMAGES]).numpy()
    distances = np.linalg.norm(codes[:, None] - codes[None], axis=2) + np.eye(len(codes)) * 1e9
    np.testing.assert_allclose(explorer.neighbours.spacing.numpy(), distances.min(1), rtol=1e-4, atol=1e-5)


def test_two_codes_are_each_others_nearest():
    assert ae_explorer.LatentNeighbours([[0.0, 0.0], [3.0, 4.0]]).spacing.tolist() == [5.0, 5.0]


def test_remoteness_is_the_nearest_distance_over_the_neighbours_own_spacing():
    # Spacings 1, 1 and 2; the point (0, 0.25) is 0.25 from its nearest code, about 1.03 from the next.
    neighbours = ae_explorer.LatentNeighbours(np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]]))
    indices, distances = neighbours(0.0, 0.25, 3)
    assert indices.tolist() == [0, 1, 2]
    assert neighbours.remoteness(indices, distances) == pytest.approx(0.25 / (4 / 3))
    assert neighbours.remoteness(indices[:2], distances[:2]) == pytest.approx(0.25 / 1)


def test_a_point_exactly_at_the_far_limit_is_still_among_the_digits(explorer):
    # Five codes one apart on a line: the point 3 before the first is 3.0x the spacing, the limit itself.
    explorer.neighbours = ae_explorer.LatentNeighbours(np.array([[float(i), 0.0] for i in range(5)]))
    for x, verdict in ((-3.0, "among test digits"), (-3.01, "no test digit near here: the decoder invents")):
        explorer.decode_at(x, 0.0)
        nearest = -x
        assert explorer.nearest.value == (
            f"<small>nearest at {nearest:.2f}, {nearest:.1f}x the spacing between those digits' codes: "
            f"{verdict}</small>"
        )


def test_neighbours_take_codes_of_any_numeric_type():
    codes = np.array([[0, 0], [2, 1], [5, 5], [-1, 3]])
    for given in (codes, codes.astype(np.float64), torch.tensor(codes, dtype=torch.float16)):
        neighbours = ae_explorer.LatentNeighbours(given)
        assert neighbours.codes.dtype == torch.float32
        indices, distances = neighbours(1.5, 1.0, 2)
        assert indices.tolist() == [1, 0]
        np.testing.assert_allclose(distances, [0.5, np.hypot(1.5, 1.0)], rtol=1e-6)


def test_images_outside_0_1_are_clipped_to_black_and_white():
    pixels = _png_pixels(ae_explorer._png_bytes(np.array([[-0.5, 0.0, 0.5, 1.0, 1.5]])))
    np.testing.assert_allclose(pixels, [[0, 0, 128 / 255, 1, 1]], atol=1e-6)


def test_the_plot_widget_has_no_header_or_footer(explorer):
    # ipympl's header says "Figure 0" and its footer shows the pointer's coordinates: both hidden, the
    # explorer prints the decoded point's coordinates itself.
    assert explorer.fig.canvas.header_visible is False
    assert explorer.fig.canvas.footer_visible is False


def test_before_any_click_only_the_instruction_is_shown(explorer):
    assert explorer.image.value == b""
    assert "Click or drag" in explorer.coords.value
    assert [explorer.error.value, explorer.nearest.value] == ["", ""]
    assert [label.value for label in explorer.neighbour_labels] == [""] * explorer.k
    assert [image.value for image in explorer.neighbour_images] == [b""] * explorer.k


def _images(widget):
    children = getattr(widget, "children", ())
    return [widget] if isinstance(widget, ipywidgets.Image) else [i for c in children for i in _images(c)]


def test_the_widget_has_the_classes_the_browser_test_finds(explorer):
    explorer.decode_at(0.0, 0.0)  # tests/test_browser.py: .latent-explorer img.decoded, .coords, .neighbour
    assert "latent-explorer" in explorer.widget._dom_classes
    assert "decoded" in explorer.image._dom_classes
    assert explorer.coords.value.startswith("<span class='coords'>")
    assert all(label.value.startswith("<span class='neighbour'>") for label in explorer.neighbour_labels)


def test_every_image_widget_holds_png_and_says_so(explorer, model, mnist, monkeypatch):
    monkeypatch.setitem(sys.modules, "ipympl.backend_nbagg", None)  # the static view too
    static = ae_explorer.LatentExplorer(model, mnist.test_images[:N_IMAGES], mnist.test_labels[:N_IMAGES], mnist)
    for ex in (explorer, static):
        ex.decode_at(0.0, 0.0)
        images = _images(ex.widget)
        assert len(images) == 1 + ex.k + (ex is static)  # decoded, neighbours, the static plot
        for image in images:
            assert image.format == "png"  # the browser reads the bytes by this
            assert bytes(image.value).startswith(b"\x89PNG")


def test_the_layout_does_not_follow_the_notebooks_rcparams(model, mnist):
    sizes = []
    for figsize, dpi in (((4, 3), 72), ((12, 9), 150)):
        with plt.rc_context({"figure.figsize": figsize, "figure.dpi": dpi}):
            ex = ae_explorer.LatentExplorer(model, mnist.test_images[:100], mnist.test_labels[:100], mnist)
        sizes.append((tuple(ex.fig.get_size_inches()), ex.fig.dpi))
    assert sizes[0] == sizes[1]


def test_the_static_view_is_a_png_of_the_figure_whatever_savefigs_rcparams(model, mnist, monkeypatch):
    monkeypatch.setitem(sys.modules, "ipympl.backend_nbagg", None)
    with plt.rc_context({"savefig.format": "svg", "savefig.dpi": 30}):
        ex = ae_explorer.LatentExplorer(model, mnist.test_images[:100], mnist.test_labels[:100], mnist)
        ex.decode_at(0.0, 0.0)
    pixels = _png_pixels(bytes(ex.static_view.value))
    assert pixels.shape[:2] == tuple(round(v * ex.fig.dpi) for v in ex.fig.get_size_inches()[::-1])


def test_a_point_on_the_data_is_among_test_digits_and_one_far_away_is_invented(explorer):
    x, y = explorer.neighbours.codes[7].tolist()
    explorer.decode_at(x, y)
    assert "among test digits" in explorer.nearest.value
    explorer.decode_at(*_at(explorer, 3.0, 3.0))  # two axes widths beyond the plot
    assert "the decoder invents" in explorer.nearest.value


def test_clicks_outside_the_axes_change_nothing(explorer):
    explorer.decode_at(0.0, 0.0)
    before = (explorer.image.value, explorer.coords.value, _last_point(explorer))
    _press(explorer, 2, 2, in_data=False)  # the figure's bottom-left corner, outside the axes
    assert (explorer.image.value, explorer.coords.value, _last_point(explorer)) == before


def test_while_pan_or_zoom_is_on_the_mouse_moves_the_view_and_decodes_nothing(explorer):
    toolbar = explorer.fig.canvas.toolbar
    for tool in (toolbar.pan, toolbar.zoom):
        tool()  # on
        _press(explorer, *_at(explorer, 0.5, 0.5))
        _release(explorer, *_at(explorer, 0.6, 0.5))
        assert _updates(explorer) == 0
        tool()  # off
    _press(explorer, *_at(explorer, 0.5, 0.5))
    assert _updates(explorer) == 1


def test_errors_in_the_handler_are_shown_not_swallowed(explorer, monkeypatch):
    def broken(z):
        raise RuntimeError("decoder exploded")

    decode, explorer.model.decode = explorer.model.decode, broken
    _press(explorer, *_at(explorer, 0.5, 0.5))
    assert "RuntimeError: decoder exploded" in explorer.error.value
    assert _last_point(explorer) is None
    explorer.model.decode = decode  # the decoder works again: the next click clears the message
    _press(explorer, *_at(explorer, 0.5, 0.5))
    assert explorer.error.value == ""
    assert _last_point(explorer) is not None


def test_pyplot_does_not_own_the_figure_so_closing_all_figures_keeps_the_canvas(explorer):
    # What a later `%matplotlib inline` cell does at its end: show, then close, every pyplot figure.
    assert explorer.fig not in [plt.figure(n) for n in plt.get_fignums()]
    plt.close("all")
    assert explorer.fig.canvas.comm is not None  # a closed ipympl canvas has no comm: an empty widget
    _press(explorer, *_at(explorer, 0.5, 0.5))
    assert _updates(explorer) == 1


def test_building_an_explorer_leaves_pyplots_backend_as_it_was():
    # Importing ipympl switches pyplot to ipympl; later cells must keep drawing with their own backend.
    code = (
        "import matplotlib; matplotlib.use('svg'); import matplotlib.pyplot as plt; import torch; "
        "import ae_helpers as ah; import ae.explorer as ae_explorer; data = ah.load_mnist(download=False); "
        "ae_explorer.LatentExplorer(ah.Autoencoder((8, 2)), data.test_images[:100], data.test_labels[:100], data); "
        "print(matplotlib.get_backend())"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "svg"


def test_a_drag_redraws_only_the_marker(explorer, monkeypatch):
    assert explorer.marker.get_animated()  # else a full draw would put it into the saved background
    explorer.fig.canvas.draw()
    full_draws = []
    monkeypatch.setattr(explorer.fig.canvas, "draw", lambda *a, **k: full_draws.append(1))
    monkeypatch.setattr(explorer.fig.canvas, "draw_idle", lambda *a, **k: full_draws.append(1))
    for i in range(5):
        explorer.decode_at(*_at(explorer, 0.1 * i, 0.5))
    assert full_draws == []


def test_without_ipympl_the_explorer_is_static_and_says_the_fix(model, mnist, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ipympl.backend_nbagg", None)  # import fails as if not installed
    ex = ae_explorer.LatentExplorer(model, mnist.test_images[:N_IMAGES], mnist.test_labels[:N_IMAGES], mnist)
    assert ae_explorer.NO_IPYMPL in capsys.readouterr().out  # also in the cell's text output, which any viewer shows
    assert not ex.marker.get_animated()  # drawn into the static plot with the rest
    message = ex.widget.children[0].children[0].children[0].value  # above the static plot
    assert "no `ipympl`" in message
    assert "pip install ipympl==0.10.0" in message
    assert "restart the kernel" in message
    before = ex.static_view.value
    x, y = _at(ex, 0.5, 0.5)
    np.testing.assert_allclose(ex.decode_at(x, y), _expected(ex, mnist, x, y), atol=1e-6)
    assert ex.static_view.value != before  # the marker is drawn into the static plot


def test_explore_takes_given_data_and_options_and_needs_the_runs_weights(mnist):
    ex = ae_explorer.explore(ROOT / "default_layers/adam_lr5e-4", data=mnist, k=3)
    assert ex.data is mnist
    assert len(ex.neighbour_images) == ex.k == 3
    with pytest.raises(FileNotFoundError, match="adam_lr1e-3/model.pt is missing"):
        ae_explorer.explore(ROOT / "default_layers/adam_lr1e-3", data=mnist)  # its weights are not committed


def test_explore_loads_the_run_and_the_data_it_was_trained_on(monkeypatch):
    monkeypatch.chdir(ROOT)  # where the notebook runs; the default run is the one its cell names
    ex = ae_explorer.explore()
    raw = ah.load_mnist(ROOT / "data", normalize=False)
    assert ex.data.std == pytest.approx(0.3081, abs=1e-4)  # the run was trained on normalized images
    assert np.array_equal(
        ex.pixels[:20], (raw.test_images[:20] * 255).round().to(torch.uint8).reshape(-1, 28, 28).numpy()
    )
    assert len(ex.labels) == 10000
    assert ex.ax.get_title() == "default_layers/adam_lr5e-4: click or drag"
    x, y = _at(ex, 0.4, 0.6)
    with torch.no_grad():
        out = ex.model.decode(torch.tensor([[x, y]], dtype=torch.float32))[0] * raw.pixel_std + raw.pixel_mean
    np.testing.assert_allclose(ex.decode_at(x, y), out.clamp(0, 1).reshape(28, 28).numpy(), atol=1e-6)


def test_a_drag_leaves_one_marker_where_it_last_went(explorer):
    canvas = explorer.fig.canvas
    canvas.draw()  # a full draw: the background is saved without the (animated) marker
    explorer.decode_at(*_at(explorer, 0.2, 0.5))
    explorer.decode_at(*_at(explorer, 0.8, 0.5))  # blitted: the background restored, the marker drawn anew
    blitted = np.array(canvas.buffer_rgba())
    canvas.draw()  # from scratch, with the marker where it is now
    assert np.array_equal(blitted, np.array(canvas.buffer_rgba()))  # no trace of the marker at the first point


def test_image_widgets_take_the_size_they_are_given():
    image = ae_explorer._png_widget(width=56, height=56)
    assert (image.format, image.width, image.height) == ("png", "56", "56")


def test_moving_a_slider_decodes_as_a_click_does(explorer, mnist):
    x_slider, y_slider = explorer.sliders
    assert (x_slider.min, x_slider.max) == explorer.ax.get_xlim()  # the sliders span the plot
    assert (y_slider.min, y_slider.max) == explorer.ax.get_ylim()
    x, y = _at(explorer, 0.3, 0.6)
    x_slider.value = x  # as the arrow keys or a drag of the slider would
    y_slider.value = y
    assert _last_point(explorer) == pytest.approx((x, y))
    expected = _expected(explorer, mnist, *_last_point(explorer))
    np.testing.assert_allclose(_png_pixels(explorer.image.value), expected, atol=0.5 / 255 + 1e-6)
    assert list(explorer.marker.get_xdata()) == pytest.approx([x])
    assert _updates(explorer) == 2  # one decode per slider move


def test_the_sliders_are_an_input_of_their_own_a_click_leaves_them(explorer):
    before = [slider.value for slider in explorer.sliders]
    _press(explorer, *_at(explorer, 0.7, 0.2))
    assert [slider.value for slider in explorer.sliders] == before  # nothing for the browser to send back
    assert _updates(explorer) == 1
    explorer.sliders[1].value += explorer.sliders[1].step  # one arrow key on y: the sliders' own point
    assert _last_point(explorer) == pytest.approx((before[0], before[1] + explorer.sliders[1].step))
