"""Frame-stack explorers: figures pre-rendered on a parameter grid, switched in the browser.

An *explorer* is a function of a few parameters that returns a matplotlib ``Figure``. Each
parameter has a grid of values (:class:`Param`). The explorer renders every grid point once to a
small PNG (64 colours, :func:`figure_png`) and shows one slider per parameter, ``jslink``-ed to
``ipywidgets.Stack`` containers of ``Image`` frames. A ``jslink`` runs in the browser, so the same
cell is interactive

- live, in JupyterLab or Colab with a kernel,
- under ``pytest --nbval-lax`` (every cell runs; nothing needs a browser), and
- on the static HTML book, with no kernel and no network (the widget state, frames included, is
  embedded in the page).

A link cannot compute ``i * n2 + j``, so a 2-parameter grid is an outer ``Stack`` (linked to
slider 1) of inner ``Stack`` s (each linked to slider 2), and so on for more parameters.
With a kernel, :meth:`Explorer.live` gives continuous sliders that re-render through a Python
callback instead. See the page :doc:`How to use the explorers </book/explorers>`.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import product
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image as PILImage

#: Defaults every frame is drawn with: small fonts for ~600 px wide frames, no mathtext-heavy
#: ticks. Applied with ``matplotlib.rc_context`` while drawing, so global settings are untouched.
FRAME_RC: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 9.5,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}

#: Budgets every explorer of the book meets (tests/test_explorers.py, benchmarks/explorers.py):
#: embedded widget state per explorer, frame rendering (CPU seconds), live-callback compute.
STATE_BUDGET_BYTES = 400_000
RENDER_BUDGET_S = 5.0
LIVE_COMPUTE_BUDGET_S = 0.050

#: CSS classes the browser test and readers' stylesheets can rely on.
EXPLORER_CLASS = "energylib-explorer"
LIVE_CLASS = "energylib-live"


@dataclass(frozen=True)
class Param:
    """One explorer parameter: a keyword, the grid of values frames are rendered at, a label.

    values: the grid (numbers or strings); labels: what the slider shows (default: formatted
    values); default: index of the value shown first. ``low``/``high``/``log`` give the
    continuous range of the live slider (numbers only; ``integer`` makes it an ``IntSlider``);
    a parameter whose values are strings is a choice (a dropdown when live).
    Build one with :meth:`log`, :meth:`linear`, :meth:`integers` or :meth:`choice`.
    """

    name: str
    values: tuple
    label: str
    labels: tuple[str, ...] = ()
    default: int = 0
    low: float | None = None
    high: float | None = None
    log_scale: bool = False
    integer: bool = False

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"name must be a Python identifier (a keyword), got {self.name!r}")
        if len(self.values) < 1:
            raise ValueError(f"parameter {self.name!r} needs at least one value")
        if not 0 <= self.default < len(self.values):
            raise ValueError(f"default index {self.default} is outside 0..{len(self.values) - 1} "
                             f"for parameter {self.name!r}")
        if self.labels and len(self.labels) != len(self.values):
            raise ValueError(f"parameter {self.name!r} has {len(self.values)} values but "
                             f"{len(self.labels)} labels")
        if not self.labels:
            object.__setattr__(self, "labels", tuple(_fmt(v) for v in self.values))
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels of parameter {self.name!r} must be distinct, got {self.labels}")

    @classmethod
    def log(cls, name: str, low: float, high: float, n: int, label: str | None = None,
            default: int | None = None) -> Param:
        """``n`` values from ``low`` to ``high`` on a log scale (e.g. inverse temperatures)."""
        if not 0 < low < high:
            raise ValueError(f"need 0 < low < high for a log grid, got low={low}, high={high}")
        values = tuple(float(v) for v in np.geomspace(low, high, n))
        return cls(name, values, label or name, default=_middle(n, default), low=low, high=high,
                   log_scale=True)

    @classmethod
    def linear(cls, name: str, low: float, high: float, n: int, label: str | None = None,
               default: int | None = None) -> Param:
        """``n`` evenly spaced values from ``low`` to ``high``."""
        if not low < high:
            raise ValueError(f"need low < high, got low={low}, high={high}")
        values = tuple(float(v) for v in np.linspace(low, high, n))
        return cls(name, values, label or name, default=_middle(n, default), low=low, high=high)

    @classmethod
    def grid(cls, name: str, values: Sequence[float], label: str | None = None,
             default: int | None = None, log: bool = False) -> Param:
        """Hand-picked numeric values (sorted); the live slider spans their range."""
        vals = tuple(sorted(float(v) for v in values))
        return cls(name, vals, label or name, default=_middle(len(vals), default),
                   low=vals[0], high=vals[-1], log_scale=log)

    @classmethod
    def integers(cls, name: str, low: int, high: int, label: str | None = None,
                 default: int | None = None) -> Param:
        """The integers ``low..high`` (e.g. a number of layers)."""
        values = tuple(range(low, high + 1))
        return cls(name, values, label or name, default=_middle(len(values), default),
                   low=low, high=high, integer=True)

    @classmethod
    def choice(cls, name: str, options: Sequence[str], label: str | None = None,
               default: int = 0) -> Param:
        """A choice among named options (e.g. a global energy)."""
        return cls(name, tuple(options), label or name, default=default)

    @property
    def is_choice(self) -> bool:
        return self.low is None

    def __len__(self) -> int:
        return len(self.values)


def _middle(n: int, default: int | None) -> int:
    """Start below the middle, never on the last value: a first keypress → always moves."""
    if default is not None:
        return default
    return max(0, (n - 1) // 2)


def _fmt(v: object) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    x = float(v)
    return f"{x:.3g}" if x == 0 or 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread inside the block (restored afterwards).

    Explorer tensors are tiny (a few thousand entries): a thread pool costs more than it saves,
    and on a shared 2-core machine it can make a 2 ms evaluation take 100 ms.
    """
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def figure_png(fig: Figure, colors: int | None = 64) -> bytes:
    """Render ``fig`` with Agg and return PNG bytes, quantised to ``colors`` colours.

    Quantising (no dithering) makes a plot frame about 3-5x smaller with no visible loss;
    ``colors=None`` keeps full colour.
    """
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    img = PILImage.fromarray(np.ascontiguousarray(rgba[..., :3]))
    if colors is not None:
        if not 2 <= colors <= 256:
            raise ValueError(f"colors must lie in [2, 256], got {colors}")
        img = img.quantize(colors, method=PILImage.Quantize.FASTOCTREE,
                           dither=PILImage.Dither.NONE)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


@dataclass
class Frames:
    """The rendered grid: one PNG per distinct frame, and which frame each grid point shows.

    index[(i1, i2, ...)] is the position in ``pngs`` of grid point (i1, i2, ...); grid points whose
    frames are identical (e.g. a parameter that does not enter a recipe) share one PNG.
    """

    params: tuple[Param, ...]
    pngs: list[bytes]
    index: dict[tuple[int, ...], int]
    seconds: float
    cpu_seconds: float = 0.0

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(p) for p in self.params)

    @property
    def count(self) -> int:
        """Number of distinct frames (PNG images) embedded."""
        return len(self.pngs)

    @property
    def nbytes(self) -> int:
        """Total PNG bytes (before the base64 of the embedded widget state)."""
        return sum(len(b) for b in self.pngs)

    def png(self, *indices: int) -> bytes:
        return self.pngs[self.index[tuple(indices)]]


def render_frames(
    figure: Callable[..., Figure],
    params: Sequence[Param],
    *,
    key: Callable[..., Hashable] | None = None,
    colors: int | None = 64,
    rc: Mapping[str, Any] | None = None,
) -> Frames:
    """Call ``figure(**values)`` at every grid point of ``params`` and keep the PNGs.

    ``key(**values)``, if given, names the frame a grid point shows: points with equal keys are
    rendered once and share their PNG (use it when a parameter is ignored for some choices).
    """
    params = tuple(params)
    if not params:
        raise ValueError("an explorer needs at least one parameter")
    t0, c0 = time.perf_counter(), time.process_time()
    pngs: list[bytes] = []
    index: dict[tuple[int, ...], int] = {}
    seen: dict[Hashable, int] = {}
    with matplotlib.rc_context({**FRAME_RC, **(rc or {})}), single_thread():
        for idx in product(*(range(len(p)) for p in params)):
            values = {p.name: p.values[i] for p, i in zip(params, idx, strict=True)}
            k = key(**values) if key is not None else idx
            if k not in seen:
                seen[k] = len(pngs)
                pngs.append(figure_png(figure(**values), colors))
            index[idx] = seen[k]
    return Frames(params, pngs, index, time.perf_counter() - t0, time.process_time() - c0)


def stack_widget(frames: Frames, *, play: bool = False, interval_ms: int = 600,
                 description_width: str = "5em") -> Any:
    """The kernel-free widget: sliders ``jslink``-ed to nested ``Stack`` s of ``Image`` frames.

    Slider k selects among the children of every level-k ``Stack``; identical frames share one
    ``Image`` model. ``play`` adds a ``Play`` button that steps the first slider.
    """
    import ipywidgets as widgets

    params = frames.params
    shared = widgets.Layout()  # one layout model for every frame and stack: ~1 KB saved per widget
    images = [widgets.Image(value=b, format="png", layout=shared) for b in frames.pngs]
    sliders = [
        widgets.SelectionSlider(
            options=list(p.labels), index=p.default, description=p.label,
            continuous_update=True, readout=True,
            style={"description_width": description_width},
            layout=widgets.Layout(width="420px"),
        )
        for p in params
    ]

    def build(level: int, prefix: tuple[int, ...]) -> Any:
        p = params[level]
        if level == len(params) - 1:
            children = [images[frames.index[prefix + (i,)]] for i in range(len(p))]
        else:
            children = [build(level + 1, prefix + (i,)) for i in range(len(p))]
        stack = widgets.Stack(children, selected_index=p.default, layout=shared)
        widgets.jslink((sliders[level], "index"), (stack, "selected_index"))
        return stack

    view = build(0, ())
    # a parameter held at one value is stated, not offered as a slider that cannot move
    controls: list[Any] = [
        s if len(p) > 1 else widgets.HTML(f"{p.label} = {p.labels[0]} (fixed)")
        for s, p in zip(sliders, params, strict=True)
    ]
    if play:
        first = params[0]
        player = widgets.Play(value=first.default, min=0, max=len(first) - 1, step=1,
                              interval=interval_ms, repeat=False, description="play",
                              tooltip=f"step through {first.label}")
        widgets.jslink((player, "value"), (sliders[0], "index"))
        controls[0] = widgets.HBox([player, sliders[0]])
    box = widgets.VBox([*controls, view])
    box.add_class(EXPLORER_CLASS)
    return box


def embedded_bytes(widget: Any) -> int:
    """Size of the widget state a page embeds for ``widget`` (frames base64-encoded, JSON).

    Counts the widget, everything it refers to and the links between them, without dropping
    defaults (nbclient does not drop them either).
    """
    import json

    from ipywidgets.embed import dependency_state

    return len(json.dumps(dependency_state(widget, drop_defaults=False), separators=(",", ":")))


@dataclass
class Explorer:
    """A figure function on a parameter grid, shown as a frame stack (default) or live.

    ``compute(**values) -> data`` is the pure maths (energylib calls); ``draw(data) -> Figure`` is
    the drawing. ``figure(**values)`` is ``draw(compute(**values))``. Display an ``Explorer`` (last
    expression of a cell) to get the frame-stack widget; :meth:`live` gives continuous sliders
    with a kernel. ``key`` dedupes frames (see :func:`render_frames`).
    """

    compute: Callable[..., Any]
    draw: Callable[[Any], Figure]
    params: tuple[Param, ...]
    title: str = ""
    key: Callable[..., Hashable] | None = None
    play: bool = False
    colors: int | None = 64
    _frames: Frames | None = field(default=None, init=False, repr=False)
    _widget: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.params = tuple(self.params)
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ValueError(f"parameter names must be distinct, got {names}")

    @property
    def defaults(self) -> dict[str, Any]:
        return {p.name: p.values[p.default] for p in self.params}

    def _values(self, values: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(values) - {p.name for p in self.params}
        if unknown:
            raise ValueError(f"unknown parameter(s) {sorted(unknown)}; this explorer takes "
                             f"{[p.name for p in self.params]}")
        return {**self.defaults, **values}

    def data(self, **values: Any) -> Any:
        """The computed quantities at ``values`` (defaults for the ones not given)."""
        with single_thread():
            return self.compute(**self._values(values))

    def figure(self, **values: Any) -> Figure:
        """The figure at ``values`` (defaults for the ones not given)."""
        with matplotlib.rc_context(FRAME_RC), single_thread():
            return self.draw(self.compute(**self._values(values)))

    @property
    def frames(self) -> Frames:
        """All frames of the grid (rendered on first use, then cached)."""
        if self._frames is None:
            self._frames = render_frames(lambda **v: self.draw(self.compute(**v)), self.params,
                                         key=self.key, colors=self.colors)
        return self._frames

    def widget(self) -> Any:
        """The frame-stack widget (built once): works with or without a kernel."""
        if self._widget is None:
            self._widget = stack_widget(self.frames, play=self.play)
        return self._widget

    def live(self) -> Any:
        """Continuous sliders re-rendering through a Python callback: needs a running kernel.

        On a static page this widget is frozen at its first frame; use the default frame stack
        there. Returns a ``VBox`` (sliders, then the ``Image``).
        """
        import ipywidgets as widgets

        controls = {p.name: _live_control(p) for p in self.params}
        image = widgets.Image(value=self.png(**self.defaults), format="png")

        def update(_change: object = None) -> None:
            image.value = self.png(**{name: c.value for name, c in controls.items()})

        for c in controls.values():
            c.observe(update, names="value")
        box = widgets.VBox([*controls.values(), image])
        box.add_class(LIVE_CLASS)
        return box

    def png(self, **values: Any) -> bytes:
        """One frame at arbitrary (also off-grid) values, as PNG bytes."""
        with matplotlib.rc_context(FRAME_RC), single_thread():
            return figure_png(self.draw(self.compute(**self._values(values))), self.colors)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget()._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        grid = " x ".join(f"{p.name}[{len(p)}]" for p in self.params)
        return f"Explorer({self.title or self.draw.__name__!s}: {grid})"


def _live_control(p: Param) -> Any:
    import ipywidgets as widgets

    common = dict(description=p.label, style={"description_width": "5em"},
                  layout=widgets.Layout(width="420px"))
    value = p.values[p.default]
    if p.is_choice:
        return widgets.Dropdown(options=list(zip(p.labels, p.values, strict=True)), value=value,
                                **common)
    common["continuous_update"] = False  # re-render on release, not on every pixel of a drag
    if p.integer:
        return widgets.IntSlider(value=int(value), min=int(p.low), max=int(p.high), **common)
    if p.log_scale:
        return widgets.FloatLogSlider(value=value, base=10, min=math.log10(p.low),
                                      max=math.log10(p.high), step=0.01, readout_format=".3g",
                                      **common)
    return widgets.FloatSlider(value=value, min=p.low, max=p.high, step=(p.high - p.low) / 200,
                               readout_format=".3g", **common)
