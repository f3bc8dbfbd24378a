"""Live explorers: one figure of a chapter with controls, live in JupyterLab, a static figure in the book.

A chapter's explorer is a pure drawing function and a few controls::

    def draw(fig, *, decay, chunk_size):          # draws into a fresh matplotlib Figure
        ...                                       # no training here: well under a second per call

    explorer = Explorer(draw, {"decay": Slider(0.5, 0.99, 0.9, step=0.01, label="decay a"),
                               "chunk_size": Choice([4, 8, 16], 8, label="chunk size Q")},
                        what="the decay and the chunk size")
    explorer.show()

``show()`` decides by :func:`is_live`: in a live kernel (JupyterLab) it displays ipywidgets controls above
the figure, redrawn whenever a control changes; in the book build and in CI it displays the figure at the
controls' default values, as one PNG, with a one-line note under it saying that the figure is live in
JupyterLab (ipywidgets do not render in a static site). The same ``draw`` makes both, so the book shows
exactly what a reader starts from. Each chapter's explorer functions live in its package
(``paperlab/<paper>/explore.py``); they take already trained models or cached results as arguments and
never train. See CONTRIBUTING.md ("Live explorers").
"""

from __future__ import annotations

import io
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Slider", "IntSlider", "Choice", "Explorer", "is_live", "STATIC_NOTE"]

STATIC_NOTE = "Static view of a live explorer: run this chapter in JupyterLab (make lab) to vary {what}."


def is_live() -> bool:
    """True when the explorer should be interactive: a live Jupyter kernel that a person is driving.

    ``PAPERLAB_STATIC=1`` (or ``0``) forces a static (live) view; the book build and ``make chapters`` set
    it. Without it, ``PAPERLAB_PROGRESS=0`` (which both also set) or ``CI`` means static, and otherwise
    the view is live inside an IPython kernel and static anywhere else (a script, a test).
    """
    forced = os.environ.get("PAPERLAB_STATIC", "").strip().lower()
    if forced:
        return forced in ("0", "false", "no")
    if os.environ.get("PAPERLAB_PROGRESS", "").strip().lower() in ("0", "false", "no"):
        return False
    if os.environ.get("CI"):
        return False
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


# ------------------------------------------------------------------------------------------ controls
@dataclass(frozen=True)
class Slider:
    """A float between ``low`` and ``high`` (``log=True``: a logarithmic slider, ``low > 0``)."""

    low: float
    high: float
    value: float
    step: float | None = None
    label: str | None = None
    log: bool = False

    def __post_init__(self):
        if not self.low < self.high:
            raise ValueError(f"Slider needs low < high, got {self.low} and {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a logarithmic Slider needs low > 0, got {self.low}")

    def check(self, name: str, value) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if not self.low <= value <= self.high:
            raise ValueError(f"{name} must be in [{self.low:g}, {self.high:g}], got {value:g}")
        return float(value)

    def widget(self, name: str):
        import ipywidgets as w

        common = dict(description=self.label or name, continuous_update=False, readout_format=".3g",
                      style={"description_width": "initial"})
        if self.log:
            low, high = math.log10(self.low), math.log10(self.high)
            step = self.step or (high - low) / 100
            return w.FloatLogSlider(value=self.value, base=10, min=low, max=high, step=step, **common)
        step = self.step or (self.high - self.low) / 100
        return w.FloatSlider(value=self.value, min=self.low, max=self.high, step=step, **common)


@dataclass(frozen=True)
class IntSlider:
    """An integer between ``low`` and ``high``, both included."""

    low: int
    high: int
    value: int
    step: int = 1
    label: str | None = None

    def __post_init__(self):
        if not self.low < self.high:
            raise ValueError(f"IntSlider needs low < high, got {self.low} and {self.high}")

    def check(self, name: str, value) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if not self.low <= value <= self.high:
            raise ValueError(f"{name} must be in [{self.low}, {self.high}], got {value}")
        return value

    def widget(self, name: str):
        import ipywidgets as w

        return w.IntSlider(value=self.value, min=self.low, max=self.high, step=self.step,
                           description=self.label or name, continuous_update=False,
                           style={"description_width": "initial"})


@dataclass(frozen=True)
class Choice:
    """One of ``options``: a sequence of values, or a mapping from the label shown to the value."""

    options: Sequence | Mapping
    value: Any
    label: str | None = None

    def __post_init__(self):
        if not len(self.options):
            raise ValueError("Choice needs at least one option")

    def _values(self) -> list:
        return list(self.options.values()) if isinstance(self.options, Mapping) else list(self.options)

    def check(self, name: str, value):
        if value not in self._values():
            raise ValueError(f"{name} must be one of {self._values()}, got {value!r}")
        return value

    def widget(self, name: str):
        import ipywidgets as w

        options = list(self.options.items()) if isinstance(self.options, Mapping) else list(self.options)
        return w.Dropdown(options=options, value=self.value, description=self.label or name,
                          style={"description_width": "initial"})


Control = Slider | IntSlider | Choice


# ------------------------------------------------------------------------------------------ explorer
@dataclass
class Explorer:
    """A figure drawn by ``draw(fig, **values)`` with one control per keyword (see the module docstring).

    ``what`` names what the controls vary, for the static view's note ("the decay and the chunk size").
    After each drawing, ``last_values``, ``last_png`` and ``last_seconds`` hold its inputs, its image and
    how long ``draw`` took.
    """

    draw: Callable[..., Any]
    controls: dict[str, Control]
    what: str
    figsize: tuple[float, float] = (10.0, 3.6)
    last_values: dict = field(default_factory=dict, init=False, repr=False)
    last_png: bytes = field(default=b"", init=False, repr=False)
    last_seconds: float = field(default=float("nan"), init=False, repr=False)

    def __post_init__(self):
        if not callable(self.draw):
            raise TypeError(f"draw must be a function draw(fig, **values), got {type(self.draw).__name__}")
        if not self.controls:
            raise ValueError("an explorer needs at least one control")
        for name, control in self.controls.items():
            if not isinstance(control, (Slider, IntSlider, Choice)):
                raise TypeError(f"control {name!r} must be a Slider, IntSlider or Choice, got "
                                f"{type(control).__name__}")
            control.check(name, control.value)  # the default must be a valid value
        if not self.what.strip():
            raise ValueError("what must say what the controls vary (it goes into the static view's note)")

    @property
    def defaults(self) -> dict:
        return {name: control.value for name, control in self.controls.items()}

    def values(self, **values) -> dict:
        """The defaults updated with ``values``, each checked (unknown names and bad values raise)."""
        unknown = set(values) - set(self.controls)
        if unknown:
            raise ValueError(f"unknown control(s) {sorted(unknown)}; this explorer has {list(self.controls)}")
        merged = {**self.defaults, **values}
        return {name: self.controls[name].check(name, value) for name, value in merged.items()}

    def figure(self, **values):
        """A new matplotlib Figure drawn at ``values`` (defaults for the controls not given)."""
        from matplotlib.figure import Figure

        values = self.values(**values)
        fig = Figure(figsize=self.figsize, layout="constrained")
        start = time.perf_counter()
        self.draw(fig, **values)
        self.last_seconds = time.perf_counter() - start
        self.last_values = values
        return fig

    def render(self, *, note: str | None = None, **values) -> bytes:
        """The figure at ``values`` as PNG bytes (with a one-line ``note`` under it, if given)."""
        fig = self.figure(**values)
        if note:
            fig.text(0.0, 0.0, note, ha="left", va="top", fontsize=8, style="italic", color="0.35")
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=fig.dpi, bbox_inches="tight")
        self.last_png = buffer.getvalue()
        return self.last_png

    @property
    def static_note(self) -> str:
        return STATIC_NOTE.format(what=self.what)

    def widget(self):
        """The live view: a row of ipywidgets controls above the figure, redrawn on every change."""
        import ipywidgets as w
        from IPython.display import Image, clear_output, display

        controls = {name: control.widget(name) for name, control in self.controls.items()}
        out = w.Output()

        def redraw(_change=None):
            png = self.render(**{name: widget.value for name, widget in controls.items()})
            with out:
                clear_output(wait=True)
                display(Image(data=png))

        for widget in controls.values():
            widget.observe(redraw, names="value")
        redraw()
        box = w.VBox([w.HBox(list(controls.values()), layout=w.Layout(flex_flow="row wrap")), out])
        box.controls = controls  # for tests and for readers who want to drive it from code
        return box

    def show(self) -> None:
        """Display the live view (:func:`is_live`) or the default figure with the static note."""
        from IPython.display import Image, display

        if is_live():
            display(self.widget())
        else:
            display(Image(data=self.render(note=self.static_note)))
