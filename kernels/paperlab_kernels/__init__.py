"""paperlab_kernels: Numba CPU and Triton GPU kernels, each with a pure-PyTorch reference twin.

Convention (one module per topic, e.g. ``rmsnorm.py``): ``<op>_reference`` is the plain-PyTorch twin,
``<op>_numba`` the CPU kernel, ``<op>_triton`` the GPU kernel, and ``<op>`` the dispatcher that picks
Triton for CUDA tensors and Numba for CPU tensors.
"""
