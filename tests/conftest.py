"""Shared pytest setup. Imported before any test module, hence before any kernel module.

Without a CUDA device, Triton kernels can only run in its interpreter, which must be switched on before
``@triton.jit`` decorates them (at import of ``paperlab_kernels.<topic>``); so set it here, first.
"""

import os

import pytest


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return torch.cuda.is_available()


if not _cuda_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def serve_app():
    """A context manager ``serve_app(app)``: the ASGI ``app`` served by uvicorn in a thread of this process
    on a free port of 127.0.0.1, yielding its base URL; stopped on exit (fakes of model servers)."""
    import contextlib
    import socket
    import threading
    import time

    uvicorn = pytest.importorskip("uvicorn")

    @contextlib.contextmanager
    def serve(app):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                                                 timeout_graceful_shutdown=1))
        thread = threading.Thread(target=instance.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not instance.started:
            if time.monotonic() > deadline or not thread.is_alive():
                pytest.fail("the fake server did not start within 10 s")
            time.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            instance.should_exit = True
            thread.join(timeout=10)

    return serve
