"""The latent explorer's click path, with synthesized matplotlib button-press events."""
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.backend_bases import MouseEvent

import ae_helpers as ah


@pytest.fixture
def explorer(mnist):
    torch.manual_seed(0)
    model = ah.Autoencoder((32, 2)).eval()
    codes = ah.encode(model, mnist.test_images[:500])
    ex = ah.LatentExplorer(model, codes, mnist.test_labels[:500], mnist)
    yield ex
    plt.close(ex.fig)


def _click(ex, x, y, in_data=True):
    ex.fig.canvas.draw()
    px, py = ex.ax.transData.transform((x, y)) if in_data else (x, y)
    event = MouseEvent("button_press_event", ex.fig.canvas, px, py, button=1)
    ex.fig.canvas.callbacks.process("button_press_event", event)
    return event


def _expected(ex, mnist, x, y):
    with torch.no_grad():
        out = ex.model.decode(torch.tensor([[x, y]], dtype=torch.float32))[0]
    return mnist.to_pixels(out).clamp(0, 1).reshape(28, 28).numpy()


def _png_pixels(png):
    import io
    return plt.imread(io.BytesIO(png))[..., 0]


def test_click_decodes_exactly_that_point(explorer, mnist):
    (x0, x1), (y0, y1) = explorer.ax.get_xlim(), explorer.ax.get_ylim()
    shown = []
    for fx, fy in ((0.3, 0.6), (0.8, 0.2)):
        x, y = x0 + fx * (x1 - x0), y0 + fy * (y1 - y0)
        event = _click(explorer, x, y)
        expected = _expected(explorer, mnist, event.xdata, event.ydata)
        assert explorer.last_point == pytest.approx((x, y), abs=1e-6 * (x1 - x0 + y1 - y0) + 1e-4)
        np.testing.assert_allclose(explorer.last_image, expected, atol=1e-6)
        np.testing.assert_allclose(_png_pixels(explorer.image.value), expected, atol=0.5 / 255 + 1e-6)
        assert f"x = {event.xdata:.5f}" in explorer.coords.value
        assert list(explorer.marker.get_xdata()) == [event.xdata]
        shown.append(explorer.image.value)
    assert shown[0] != shown[1]


def test_clicks_outside_the_axes_change_nothing(explorer):
    explorer.decode_at(0.0, 0.0)
    before = (explorer.image.value, explorer.coords.value, explorer.last_point)
    _click(explorer, 2, 2, in_data=False)  # the figure's bottom-left corner, outside the axes
    assert (explorer.image.value, explorer.coords.value, explorer.last_point) == before


def test_errors_in_the_handler_are_shown_not_swallowed(explorer, monkeypatch):
    def broken(z):
        raise RuntimeError("decoder exploded")
    monkeypatch.setattr(explorer.model, "decode", broken)
    _click(explorer, *np.mean([explorer.ax.get_xlim(), explorer.ax.get_ylim()], axis=1))
    assert "RuntimeError: decoder exploded" in explorer.error.value
    assert explorer.last_point is None


def test_explore_demands_the_widget_backend():
    with pytest.raises(RuntimeError, match="%matplotlib widget"):
        ah.explore()
