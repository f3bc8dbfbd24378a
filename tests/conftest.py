"""Shared pytest setup. Imported before any test module, hence before any kernel module.

Without a CUDA device, Triton kernels can only run in its interpreter, which must be switched on before
``@triton.jit`` decorates them (at import of ``paperlab_kernels.<topic>``); so set it here, first.
"""

import os


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return torch.cuda.is_available()


if not _cuda_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
