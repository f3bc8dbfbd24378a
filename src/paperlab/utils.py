"""Small shared utilities: progress bars that stay quiet when nobody is watching."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from tqdm.auto import tqdm


def interactive() -> bool:
    """True when a person is likely watching: a terminal or a live Jupyter kernel, and not CI.

    ``PAPERLAB_PROGRESS=1`` or ``0`` forces the answer (the book build sets ``0`` so that progress
    bars do not end up in the rendered pages).
    """
    forced = os.environ.get("PAPERLAB_PROGRESS")
    if forced is not None:
        return forced.strip().lower() not in ("0", "false", "no", "")
    if os.environ.get("CI"):
        return False
    if "ipykernel" in sys.modules:
        return True
    return sys.stderr.isatty()


def progress(iterable: Iterable | None = None, **kwargs) -> tqdm:
    """``tqdm`` with ``disable`` set by :func:`interactive` unless given explicitly."""
    kwargs.setdefault("disable", not interactive())
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
