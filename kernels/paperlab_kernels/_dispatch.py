"""Shared plumbing for the kernel modules: which backends exist, which one to run, input checks.

Every topic module (``rmsnorm.py``, ...) imports from here, so that the rules are the same everywhere:

* :data:`IMPLS` names the implementations: ``"reference"`` (plain PyTorch, any device), ``"numba"``
  (CPU tensors) and ``"triton"`` (CUDA tensors, or CPU tensors under the Triton interpreter).
* :func:`select_impl` turns ``impl="auto"`` into one of them for a given tensor, and checks a forced choice.
* :func:`require_numba` / :func:`require_triton` raise a clear error when a forced backend cannot run.
* ``check_*`` helpers validate arguments with errors that name the argument and the expected value.
* :func:`value_checks` says whether checks that read tensor *values* (index ranges, signs, finiteness)
  run for a tensor: always on CPU tensors, on other devices only in debug mode, because reading a CUDA
  tensor's values on the host waits for the GPU (a device synchronisation on every call). Debug mode:
  ``PAPERLAB_CHECK_VALUES=1`` in the environment, or ``with check_values():``. Without it, the CUDA
  kernels guard what they must in the kernel itself (an out-of-range index poisons its output row with
  NaN instead of reading outside the tensor), so that bad input is visible but costs no synchronisation.

Triton is imported under a guard (it is not installed on macOS or ARM), and so is Numba. Triton's
interpreter (``TRITON_INTERPRET=1``) must be switched on before the kernels are decorated, that is before
a kernel module is first imported: ``tests/conftest.py`` does this on machines without CUDA.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

try:  # Triton: Linux x86-64 only.
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the platform
    triton = None
    tl = None
    HAS_TRITON = False

try:
    import numba  # noqa: F401

    HAS_NUMBA = True
except ImportError:  # pragma: no cover - numba is a declared dependency
    numba = None
    HAS_NUMBA = False

IMPLS = ("reference", "numba", "triton")
"""The implementations every operation offers; ``impl="auto"`` picks one of them."""


CHECK_VALUES_ENV = "PAPERLAB_CHECK_VALUES"
"""Environment variable: ``1`` runs the value checks on every device (debug mode, synchronises CUDA),
``0`` on none, unset: on CPU tensors only."""

_check_values_override: list[bool] = []


def value_checks(t: torch.Tensor) -> bool:
    """True when checks that read the values of tensors on ``t``'s device should run (see the module
    docstring): on CPU tensors unless ``PAPERLAB_CHECK_VALUES=0``; elsewhere only in debug mode."""
    if _check_values_override:
        return _check_values_override[-1]
    env = os.environ.get(CHECK_VALUES_ENV, "").strip().lower()
    if env in ("1", "true", "yes", "on"):
        return True
    if env in ("0", "false", "no", "off"):
        return False
    return t.device.type == "cpu"


@contextlib.contextmanager
def check_values(enabled: bool = True) -> Iterator[None]:
    """``with check_values():`` runs the value checks on every device (each one synchronises a GPU);
    ``check_values(False)`` skips them everywhere. Nested uses restore the previous setting."""
    _check_values_override.append(bool(enabled))
    try:
        yield
    finally:
        _check_values_override.pop()


def triton_interpreted() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def available_impls(device: torch.device | str, *, interpreter: bool = False) -> list[str]:
    """The implementations that can run on tensors on ``device``, reference first.

    Triton counts on CPU only when ``interpreter=True`` and the interpreter is on (useful for tests, not
    for timings: the interpreter runs each program in Python).
    """
    device = torch.device(device)
    impls = ["reference"]
    if device.type == "cpu" and HAS_NUMBA:
        impls.append("numba")
    interpreted_cpu = device.type == "cpu" and interpreter and triton_interpreted()
    if HAS_TRITON and (device.type == "cuda" or interpreted_cpu):
        impls.append("triton")
    return impls


def select_impl(impl: str, x: torch.Tensor) -> str:
    """Resolve ``impl`` for input ``x``: ``"auto"`` -> Triton for CUDA tensors, Numba for CPU tensors,
    the PyTorch reference otherwise (or when that backend is not installed). A forced choice is checked.
    """
    if impl == "auto":
        if x.device.type == "cuda" and HAS_TRITON:
            return "triton"
        if x.device.type == "cpu" and HAS_NUMBA:
            return "numba"
        return "reference"
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {('auto',) + IMPLS}, got {impl!r}")
    if impl == "numba":
        require_numba(x)
    elif impl == "triton":
        require_triton(x)
    return impl


def require_numba(x: torch.Tensor) -> None:
    """Raise unless the Numba backend can run on ``x`` (installed, CPU tensor)."""
    if not HAS_NUMBA:
        raise RuntimeError("impl='numba' needs the numba package (pip install numba); use impl='reference'")
    if x.device.type != "cpu":
        raise ValueError(f"impl='numba' runs on CPU tensors; x is on {x.device} (use 'triton' or 'auto')")


def require_triton(x: torch.Tensor) -> None:
    """Raise unless the Triton backend can run on ``x``: installed, and a CUDA tensor (or a CPU tensor
    with ``TRITON_INTERPRET=1`` set before the kernels were imported)."""
    if not HAS_TRITON:
        raise RuntimeError(
            "impl='triton' needs the triton package, which is available on Linux x86-64 only "
            "(pip install triton); use impl='numba' on CPU or impl='reference'"
        )
    if x.device.type == "cuda":
        return
    if x.device.type == "cpu" and triton_interpreted():
        return
    raise ValueError(
        f"impl='triton' runs on CUDA tensors; x is on {x.device} "
        "(set TRITON_INTERPRET=1 before importing paperlab_kernels to run Triton on CPU, slowly)"
    )


# ----------------------------------------------------------------------------------------- validation
def check_floating(name: str, t: torch.Tensor) -> None:
    """``t`` must be a floating-point tensor."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (float16, bfloat16, float32, float64), got {t.dtype}"
        )


def check_positive(name: str, value: float) -> None:
    """``value`` must be a finite number > 0."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or not (0 < float(value) < float("inf")):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_same_device(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """``t`` must live on the same device as ``ref``."""
    if t.device != ref.device:
        raise ValueError(f"{name} must be on the same device as {ref_name} ({ref.device}), got {t.device}")


def check_vector(name: str, t: torch.Tensor, length: int, length_desc: str) -> None:
    """``t`` must be 1-D with ``length`` entries (``length_desc`` says where that number comes from)."""
    if t.dim() != 1 or t.shape[0] != length:
        raise ValueError(f"{name} must be 1-D of length {length_desc} = {length}, got shape {tuple(t.shape)}")


PARALLEL_MIN_WORK = 1 << 22
"""Below about this many elementary operations a Numba kernel runs on one thread: waking the other
threads costs tens of microseconds (far more when the cores are shared with other processes, since every
thread must get a core before the parallel region ends), more than a small call's whole work."""


def numba_parallel(work: float) -> bool:
    """Whether a Numba kernel with ``work`` elementary operations should use its parallel build."""
    return HAS_NUMBA and work >= PARALLEL_MIN_WORK and numba.get_num_threads() > 1


def cpu_numpy(t: torch.Tensor, dtype: torch.dtype):
    """A contiguous NumPy view of ``t`` (detached, on CPU) in ``dtype``; copies only when needed."""
    return t.detach().to(device="cpu", dtype=dtype).contiguous().numpy()
