"""paperlab_kernels: Numba CPU and Triton GPU kernels, each with a pure-PyTorch reference twin.

Convention: one module per topic (``rmsnorm.py``, ...). For each operation ``<op>`` it defines

* ``<op>_reference(...)``: plain PyTorch, any device, differentiable by autograd. It states the math and
  is what tests and benchmarks compare against.
* ``<op>_numba(...)``: a CPU kernel, ``@njit(parallel=True, cache=True)`` with ``prange`` over
  independent rows, float32 accumulation. Inputs are handed over as NumPy views of CPU tensors.
* ``<op>_triton(...)``: a GPU kernel. Loads are masked, strides are passed explicitly, row offsets are
  computed in int64, and 16-bit inputs are converted to float32 right after ``tl.load`` (also required for
  the CPU interpreter, where bf16 arithmetic is wrong).
* ``<op>(..., *, impl="auto")``: the dispatcher. ``"auto"`` picks Triton for CUDA tensors, Numba for CPU
  tensors, and the reference otherwise; ``impl`` can force ``"reference"``, ``"numba"`` or ``"triton"``. An
  unknown ``impl`` raises ``ValueError`` listing the valid ones; a backend that cannot run raises a clear
  error (``_dispatch.select_impl`` does all of this).

Kernels that need gradients are wrapped in a ``torch.autograd.Function`` whose backward is also a kernel
(recomputing cheap intermediates from saved inputs rather than storing them). Every public function
validates its inputs (``_dispatch.check_*``) with errors that name the argument and the expected value,
and its module docstring states what bounds the kernel's speed (memory traffic or arithmetic), so that
``python -m paperlab.bench`` numbers can be read against the machine's copy bandwidth or matmul rate.

No call synchronises a GPU with the host on its hot path. Checks that read tensor *values* (index
ranges, signs of ``dt`` and ``A``, a slot used twice) run when ``_dispatch.value_checks(t)`` says so:
always for CPU tensors, on a GPU only in debug mode (``PAPERLAB_CHECK_VALUES=1`` or
``with paperlab_kernels._dispatch.check_values():``). Without them a kernel still never reads or writes
out of bounds: an out-of-range index makes the outputs that depend on it NaN.
``tests/test_kernels_cuda_sync.py`` runs every hot path under ``torch.cuda.set_sync_debug_mode("error")``.
Numba kernels come in a parallel build and a one-thread build, chosen by the size of the call
(``_dispatch.numba_parallel``): waking a thread pool costs more than a small call's work.

Optional backends: Triton is imported under a guard (``_dispatch.HAS_TRITON``; it is not installed on
macOS or ARM), Numba likewise (``_dispatch.HAS_NUMBA``). Without a GPU, Triton kernels run only in its
interpreter, which must be switched on (``TRITON_INTERPRET=1``) before a kernel module is imported,
because ``@triton.jit`` reads it at decoration time; ``tests/conftest.py`` does this on CPU-only machines.

Tests (``tests/test_kernels_<topic>.py``) compare every available implementation with the reference on
values and gradients, on hypothesis-drawn and edge-case shapes, keeping Triton shapes small on CPU.

Modules:

* :mod:`paperlab_kernels.rmsnorm`: fused RMSNorm, with optional per-token absmax int8 quantisation;
* :mod:`paperlab_kernels.ssd`: the chunked SSD scan of Mamba-2, and the sequential scan;
* :mod:`paperlab_kernels.sae`: TopK sparse autoencoder encode and sparse decode;
* :mod:`paperlab_kernels.ternary`: packed 2-bit ternary weights and add-only matrix products;
* :mod:`paperlab_kernels.mlgru`: the MLGRU recurrence of the MatMul-free LM;
* :mod:`paperlab_kernels.moe`: mixture-of-experts dispatch and combine (capacity, dropped tokens).
"""
