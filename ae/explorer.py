"""The latent explorer: click, drag, or move the x and y sliders on the latent scatter, and the point
under the pointer is decoded and shown beside the plot with its nearest test digits.

How an event flows:

    mouse press / drag / release  --(ipympl canvas)-->  _on_press / _on_motion / _on_release
    x or y slider moved           --(ipywidgets)----->  _on_slider (the point the two sliders name)
        both end in decode_at(x, y): decode the point, show the image, the neighbours and the verdict,
        move the marker (blitted over a saved copy of the plot, so a drag update costs milliseconds).

Everything ipympl-specific is in ``_widget_canvas`` (the one adapter); without ipympl the plot is a
static picture and the message says the fix.
"""

from __future__ import annotations

import io
import math
import time
from pathlib import Path

import numpy as np
import torch

from ae.figures import plot_latent
from ae.runs import load_run
from ae_helpers import IMAGE_SIDE, MNIST, as_uint8, decode_to_pixels, encode, load_mnist, pixel_values

NO_IPYMPL = (
    "The explorer is static here: this kernel has no `ipympl` package, which makes plots clickable. "
    "Install it in the kernel's environment (`pip install ipympl==0.10.0`, or `make venv`), "
    "restart the kernel, and run the cell again."
)


def _png_bytes(pixels) -> bytes:
    """(H, W) array in [0, 1] -> PNG bytes, grey scale, each value rounded to 8 bits."""
    from PIL import Image  # installed with matplotlib

    grey = (np.clip(np.asarray(pixels), 0, 1) * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="png", compress_level=1)  # fast: the drag calls this 6 times
    return buffer.getvalue()


def _png_widget(**size):
    """An image widget for ``_png_bytes``: its format tells the browser how to read the bytes."""
    import ipywidgets as widgets

    return widgets.Image(format="png", **size)


def _widget_canvas(fig):
    """An ipympl canvas widget for ``fig``, or None when ipympl is not installed.

    The canvas is made here, not by pyplot, so pyplot's figure manager never
    knows the figure: a later cell with the inline backend, which shows and
    then closes every figure pyplot holds, can neither print a static copy of
    it nor close its canvas (which would leave an empty widget). The figure
    lives as long as the explorer, and pyplot keeps the backend it had.
    """
    import matplotlib

    backend = matplotlib.get_backend()
    try:
        from ipympl.backend_nbagg import Canvas, FigureManager
    except ImportError:
        return None
    finally:
        matplotlib.use(backend)  # importing ipympl switches pyplot to it; later cells keep their backend
    canvas = Canvas(fig)
    FigureManager(canvas, 0)  # routes the front end's messages (draw, resize, mouse) to the canvas
    canvas.header_visible = False
    canvas.footer_visible = False
    canvas.toolbar_position = "bottom"
    return canvas


class LatentNeighbours:
    """The k nearest of a set of 2-D codes to any point, by brute force (fast for 10,000 codes).

    ``spacing[i]`` is the distance from code i to its nearest other code: the
    local scale against which "far from any data" is judged (precomputed once).
    """

    def __init__(self, codes, chunk=1000):
        self.codes = torch.as_tensor(codes, dtype=torch.float32).cpu()
        self.spacing = torch.cat(
            [self._nearest_other(self.codes[i : i + chunk]) for i in range(0, len(self.codes), chunk)]
        )

    def _nearest_other(self, codes):
        # Exact differences: the matrix-multiply shortcut cdist takes by default loses the small distances
        # (2% off at 1e-3). [:, 0] is the code itself.
        distances = torch.cdist(codes, self.codes, compute_mode="donot_use_mm_for_euclid_dist")
        return distances.topk(2, largest=False).values[:, 1]

    def __call__(self, x, y, k):
        """Indices and distances of the k codes nearest to (x, y), nearest first."""
        squared = (self.codes - torch.tensor([x, y], dtype=torch.float32)).square().sum(1)
        values, indices = squared.topk(min(k, len(squared)), largest=False)
        return indices.numpy(), values.sqrt().numpy()

    def remoteness(self, indices, distances) -> float:
        """How far the point is from the data: its nearest distance over the neighbours' own spacing.

        About 0.5 to 1 inside a cloud of codes, however dense; far above 1 in a gap or outside.
        """
        return float(distances[0] / self.spacing[torch.as_tensor(indices)].mean().clamp_min(1e-12))


def verdict(remoteness) -> str:
    """The explorer's words for a point's remoteness (``LatentNeighbours.remoteness``)."""
    return "no test digit near here: the decoder invents" if remoteness > FAR else "among test digits"


DRAG_INTERVAL_S = 0.04  # while dragging, at most 25 updates a second: each costs a decode and a redraw
FAR = 3.0  # a point whose nearest code is 3x farther than codes there are from each other is off the data


class LatentExplorer:
    """Click or drag on the latent scatter, or move the x and y sliders: that point is decoded and shown.

    Beside the plot: the decoded image, its coordinates, and the ``k`` test digits whose codes lie
    nearest to the point (label and distance), so one sees where the decoder has real data nearby and
    where it invents. ``images`` (N, 784) are in the units of ``data`` (normalized when it is).
    ``decode_at(x, y)`` is what a click, a drag step and a slider all call. While the button is held,
    moving updates at most once per ``drag_interval_s`` seconds; the release point is always decoded.
    Errors in the handlers are shown in the widget. Without ipympl the plot is static (the sliders
    still decode), with a message that says the fix.
    """

    def __init__(
        self,
        model,
        images,
        labels,
        data: MNIST | None = None,
        title="Click or drag to decode",
        k=5,
        drag_interval_s=DRAG_INTERVAL_S,
    ):
        import ipywidgets as widgets
        from matplotlib.figure import Figure

        self.model = model.eval()
        self.data = data
        self.k = k
        self.drag_interval_s = drag_interval_s
        self.labels = torch.as_tensor(labels).cpu()
        codes = encode(model, images)
        self.neighbours = LatentNeighbours(codes)
        self.pixels = as_uint8(pixel_values(images, data)).reshape(-1, IMAGE_SIDE, IMAGE_SIDE).numpy()
        self.fig = Figure(figsize=(5.6, 4.6), dpi=100)  # fixed: the same layout whatever the notebook's rcParams
        self.ax = self.fig.add_subplot()
        plot_latent(codes, self.labels, title=title, ax=self.ax)
        canvas = _widget_canvas(self.fig)
        (self.marker,) = self.ax.plot([], [], "k+", markersize=16, markeredgewidth=2.5, zorder=5)
        self.marker.set_animated(canvas is not None)  # blitting: drawn alone over a saved copy of the plot
        self._background = None  # that saved copy, taken at each full draw
        self._dragging = False
        self._skipped = None  # the last drag position not decoded yet (too soon after the previous one)
        self._last_update = -math.inf
        self._make_side_widgets(widgets)
        view = self._static_view(widgets) if canvas is None else self._connect(canvas)
        self.widget = self._layout(widgets, view)

    def _make_side_widgets(self, widgets):
        self.image = _png_widget(width=196, height=196)
        self.image.layout = widgets.Layout(border="1px solid #999", object_fit="contain")
        self.image.add_class("decoded")
        self.coords = widgets.HTML("Click or drag in the plot, or move the sliders, to decode a point.")
        self.error = widgets.HTML("")
        self.neighbour_images = [_png_widget(width=56, height=56) for _ in range(self.k)]
        self.neighbour_labels = [widgets.HTML("") for _ in range(self.k)]
        self.nearest = widgets.HTML("")
        self.sliders = [self._slider(widgets, axis, limits) for axis, limits in zip("xy", self._limits())]

    def _limits(self):
        return self.ax.get_xlim(), self.ax.get_ylim()

    def _slider(self, widgets, axis, limits):
        """A slider over the plot's range on one axis: arrow keys move it, and each move decodes."""
        low, high = limits
        slider = widgets.FloatSlider(
            value=(low + high) / 2,
            min=low,
            max=high,
            step=(high - low) / 200,
            description=f"latent {axis}",
            readout_format=".2f",
            continuous_update=True,
            layout=widgets.Layout(width="300px"),
        )
        slider.add_class(f"slider-{axis}")
        slider.observe(self._on_slider, names="value")
        return slider

    def _static_view(self, widgets):
        """Without ipympl: a PNG of the plot (the marker drawn in), and the message that says the fix."""
        self.static_view = _png_widget()
        self._draw_static()
        print(NO_IPYMPL)  # also in the cell's text output, which any viewer shows
        return widgets.VBox([widgets.HTML(f"<b>{NO_IPYMPL}</b>"), self.static_view])

    def _connect(self, canvas):
        """The interactive canvas: mouse events drive the decoder; a timer catches up a throttled drag."""
        self.static_view = None
        canvas.mpl_connect("draw_event", self._on_draw)
        canvas.mpl_connect("button_press_event", self._on_press)
        canvas.mpl_connect("motion_notify_event", self._on_motion)
        canvas.mpl_connect("button_release_event", self._on_release)
        self._catch_up_timer = canvas.new_timer(interval=int(1000 * self.drag_interval_s) + 1)
        self._catch_up_timer.single_shot = True
        self._catch_up_timer.add_callback(self._catch_up)
        return canvas

    def _layout(self, widgets, view):
        card = widgets.Layout(align_items="center", width="62px")
        cards = [
            widgets.VBox([image, label], layout=card)
            for image, label in zip(self.neighbour_images, self.neighbour_labels)
        ]
        side = widgets.VBox(
            [
                widgets.HTML("<b>Decoded image</b>"),
                self.image,
                self.coords,
                self.error,
                widgets.HTML(f"<b>The {self.k} nearest test digits</b>"),
                widgets.HBox(cards),
                self.nearest,
            ]
        )
        box = widgets.VBox([widgets.HBox([view, side]), widgets.HBox(self.sliders)])
        box.add_class("latent-explorer")
        return box

    def decode_at(self, x, y) -> np.ndarray:
        """Decode the latent point (x, y), show it, and return the (28, 28) image in [0, 1]."""
        x, y = float(x), float(y)
        pixels = decode_to_pixels(self.model, [[x, y]], self.data)[0].reshape(IMAGE_SIDE, IMAGE_SIDE).numpy()
        self.image.value = _png_bytes(pixels)
        self.coords.value = f"<span class='coords'>x = {x:.5f}, y = {y:.5f}</span>"
        self.error.value = ""
        self._show_neighbours(x, y)
        self.marker.set_data([x], [y])
        self._draw_marker()
        return pixels

    def nearest_digits(self, x, y):
        """The ``k`` test digits nearest to (x, y): (indices, distances, remoteness, verdict)."""
        indices, distances = self.neighbours(x, y, self.k)
        remoteness = self.neighbours.remoteness(indices, distances)
        return indices, distances, remoteness, verdict(remoteness)

    def _show_neighbours(self, x, y):
        indices, distances, remoteness, text = self.nearest_digits(x, y)
        for image, label, i, distance in zip(self.neighbour_images, self.neighbour_labels, indices, distances):
            image.value = _png_bytes(self.pixels[i] / 255)
            label.value = f"<span class='neighbour'>{int(self.labels[i])} <small>d {distance:.2f}</small></span>"
        self.nearest.value = (
            f"<small>nearest at {distances[0]:.2f}, {remoteness:.1f}x the spacing "
            f"between those digits' codes: {text}</small>"
        )

    def _on_slider(self, change):
        """A slider moved (arrow keys or a drag of its handle): decode the point the two sliders name.
        The sliders are an input of their own: a click does not move them (the browser would send back
        their step-rounded values later, which would undo a drag's last point)."""
        self._decode_point(self.sliders[0].value, self.sliders[1].value)

    # Drawing: the scatter is drawn once (and again on resize or zoom); a new point redraws only the
    # marker over a saved copy of the rest, so a drag update costs milliseconds instead of a full redraw.
    def _on_draw(self, event):
        self._background = self.fig.canvas.copy_from_bbox(self.fig.bbox)
        self.ax.draw_artist(self.marker)

    def _draw_marker(self):
        canvas = self.fig.canvas
        if self.static_view is not None:
            self._draw_static()
        elif self._background is None:
            canvas.draw_idle()  # not drawn yet: the first full draw includes the marker
        else:
            canvas.restore_region(self._background)
            self.ax.draw_artist(self.marker)
            canvas.blit(self.fig.bbox)

    def _draw_static(self):
        buffer = io.BytesIO()
        self.fig.savefig(buffer, format="png", dpi=self.fig.dpi)
        self.static_view.value = buffer.getvalue()

    # Mouse: press decodes, motion with the button held decodes (throttled), release decodes the last point.
    def _in_plot(self, event):
        toolbar = getattr(self.fig.canvas, "toolbar", None)
        panning = bool(getattr(toolbar, "mode", ""))  # the pan/zoom tool owns the mouse then
        return event.inaxes is self.ax and event.xdata is not None and event.ydata is not None and not panning

    def _on_press(self, event):
        if self._in_plot(event):
            self._dragging = True
            self._decode_point(event.xdata, event.ydata)

    def _on_motion(self, event):
        from matplotlib.backend_bases import MouseButton

        if event.buttons is not None and MouseButton.LEFT not in event.buttons:
            self._dragging = False  # released outside the canvas
        if not (self._dragging and self._in_plot(event)):
            return
        if time.perf_counter() - self._last_update >= self.drag_interval_s:
            self._decode_point(event.xdata, event.ydata)
        else:  # too soon: decode it when the interval is over, unless a newer move or the release comes first
            self._skipped = (event.xdata, event.ydata)
            self._catch_up_timer.start()

    def _on_release(self, event):
        if self._dragging and self._skipped and self._in_plot(event):
            self._decode_point(event.xdata, event.ydata)
        self._dragging = False

    def _catch_up(self):
        """The last skipped move, decoded once the interval is over (the pointer stopped, button held)."""
        if self._dragging and self._skipped:
            self._decode_point(*self._skipped)

    def _decode_point(self, x, y):
        self._last_update, self._skipped = time.perf_counter(), None
        try:
            self.decode_at(x, y)
        except Exception as exc:  # shown in the widget, never swallowed
            self.error.value = (
                f"<span style='color:#b00020'>Could not decode ({x:.3f}, {y:.3f}): {type(exc).__name__}: {exc}</span>"
            )

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def explore(run_dir="default_layers/adam_lr5e-4", data: MNIST | None = None, **options) -> LatentExplorer:
    """One call: load a run's committed weights and return the explorer of its test-set codes.

    Works in any backend (the explorer makes its own widget canvas); without
    ipympl it shows a static plot and the fix. ``options`` go to ``LatentExplorer``.
    """
    run = load_run(run_dir, require_model=True)
    data = data if data is not None else load_mnist(normalize=run.config.normalize)
    return LatentExplorer(
        run.model,
        data.test_images,
        data.test_labels,
        data,
        title=f"{Path(run_dir).parent.name}/{Path(run_dir).name}: click or drag",
        **options,
    )


def landmark_points(explorer: LatentExplorer, n_grid=41) -> dict:
    """Four points of the latent plane that show what a click does, chosen from the test codes:
    {name: (x, y)} for the dense centre (the median code), the 3s (their median code), the most remote
    point of a grid over the central half of the codes (a gap between digits), and a point outside all
    codes (beyond the largest code on both axes by half the codes' range)."""
    codes, labels = explorer.neighbours.codes, explorer.labels
    low, high = torch.quantile(codes, 0.25, dim=0), torch.quantile(codes, 0.75, dim=0)
    xs, ys = torch.linspace(low[0], high[0], n_grid), torch.linspace(low[1], high[1], n_grid)
    grid = torch.cartesian_prod(xs, ys).tolist()
    gap = max(grid, key=lambda p: explorer.neighbours.remoteness(*explorer.neighbours(p[0], p[1], explorer.k)))
    high = codes.max(0).values
    return {
        "the dense centre (median code)": tuple(codes.median(0).values.tolist()),
        "among the 3s (their median code)": tuple(codes[labels == 3].median(0).values.tolist()),
        "a gap between digits": tuple(gap),
        "outside all codes": tuple((high + 0.5 * (high - codes.min(0).values)).tolist()),
    }


def plot_decoded_points(explorer: LatentExplorer, points: dict, title="What a click decodes"):
    """A static copy of what clicks show: for each {name: (x, y)}, a row with the image ``decode_at``
    returns, the explorer's ``k`` nearest test digits (label, distance) and its verdict."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.25 * (explorer.k + 1), 1.9 * len(points) + 0.3), dpi=80, layout="constrained")
    fig.suptitle(title)
    for subfig, (name, (x, y)) in zip(fig.subfigures(len(points), 1), points.items()):
        pixels = explorer.decode_at(x, y)
        indices, distances, remoteness, text = explorer.nearest_digits(x, y)
        subfig.suptitle(
            f"{name}, ({x:.2f}, {y:.2f}): nearest test digit at {remoteness:.1f}x their spacing, {text}",
            fontsize=9,
            x=0.01,
            ha="left",
        )
        row = subfig.subplots(1, explorer.k + 1)
        row[0].imshow(pixels, cmap="gray", vmin=0, vmax=1)
        row[0].set_title("decoded", fontsize=9, weight="bold")
        for ax, i, distance in zip(row[1:], indices, distances):
            ax.imshow(explorer.pixels[i], cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"test {int(explorer.labels[i])}, d {distance:.2f}", fontsize=8)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    return fig
