"""Small shared utilities: progress bars that stay quiet when nobody is watching, the one helper that
runs tiny models on few CPU threads (a context manager and a decorator), a process pool for independent
tiny runs, the allocator setting that keeps freed memory for reuse, a measure of peak CPU memory, and
:func:`show_source`, which shows a package function in a chapter."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


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


_pinned_depth = 0  # > 0 while inside cpu_threads(): the training loop then leaves threads alone


def threads_pinned() -> bool:
    """True inside :func:`cpu_threads` (the training loop's own thread set-up is skipped there)."""
    return _pinned_depth > 0


@contextlib.contextmanager
def cpu_threads(n: int = 1, *, device: str | object | None = None) -> Iterator[None]:
    """Run the body with ``n`` CPU threads (torch and, if installed, Numba), then restore the counts.

    Tiny models train faster on one thread than on two busy cores: their operations are too small for
    the thread start-up and synchronisation to pay off, and another process sharing the cores makes every
    multi-threaded operation wait for the slowest thread. Inside, :func:`paperlab.train.train` does not
    change the thread count.

    ``device``: the device the body computes on; when it is given and is not the CPU the body runs
    unchanged (its threads only feed the accelerator). Also a decorator: ``@cpu_threads(1)`` runs every
    call of the function on one thread.
    """
    global _pinned_depth
    import torch

    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive number of threads, got {n!r}")
    if device is not None and torch.device(device).type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    try:
        import numba

        previous_numba = numba.get_num_threads()
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except ImportError:  # pragma: no cover
        numba, previous_numba = None, None
    torch.set_num_threads(n)
    _pinned_depth += 1
    try:
        yield
    finally:
        _pinned_depth -= 1
        torch.set_num_threads(previous)
        if numba is not None:
            numba.set_num_threads(previous_numba)


def _call_on_one_thread(fn: Callable[..., T], args: tuple) -> T:
    with cpu_threads(1):
        try:
            return fn(*args)
        except Exception as error:
            portable = _portable_error(error)
            if portable is error:
                raise
            raise portable from error


def _portable_error(error: BaseException) -> BaseException:
    """``error`` itself if it survives the trip from a worker process (pickled there, unpickled here);
    otherwise a RuntimeError with its type and message. An exception that pickles but cannot be rebuilt
    (a constructor with keyword-only arguments, say) would otherwise break the whole pool: the parent
    reports a bare ``BrokenProcessPool`` instead of the job's error."""
    import pickle

    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__module__}.{type(error).__qualname__}: {error}")


def _is_main_guard(node) -> bool:
    """Is ``node`` the statement ``if __name__ == "__main__":`` (either side of the ``==``)?"""
    import ast

    if not (isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and len(node.test.ops) == 1
            and isinstance(node.test.ops[0], ast.Eq)):
        return False
    sides = {ast.dump(node.test.left), ast.dump(node.test.comparators[0])}
    return sides == {ast.dump(ast.Name("__name__", ast.Load())), ast.dump(ast.Constant("__main__"))}


def unguarded_line(source: str, line: int) -> bool:
    """Does line ``line`` of a script's ``source`` run when the script is imported, that is, is the
    top-level statement around it anything but ``if __name__ == "__main__":``?"""
    import ast

    for node in ast.parse(source).body:
        if node.lineno <= line <= (node.end_lineno or node.lineno):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return line < node.body[0].lineno  # a function's body runs when it is called, not here
            return not _is_main_guard(node)
    return False


def _check_main_is_guarded(desc: str) -> None:
    """One-line error, before any worker starts, when this call comes from the top level of the main
    script outside ``if __name__ == "__main__":``. Spawned workers import the main script: there, the
    same line would start workers of its own, each worker would die during its start-up, and the pool
    would report a bare ``BrokenProcessPool``."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or not os.path.isfile(path):
        return  # an interactive session or a notebook kernel: nothing is imported again
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals is vars(main) \
                and os.path.abspath(frame.f_code.co_filename) == os.path.abspath(path):
            try:
                with open(path, encoding="utf-8") as handle:
                    source = handle.read()
                unguarded = unguarded_line(source, frame.f_lineno)
            except (OSError, SyntaxError, ValueError):
                return
            if unguarded:
                raise RuntimeError(
                    f"{desc}: worker processes cannot start from the top level of {path} (line "
                    f"{frame.f_lineno}); they import the script and would run this line again. Put the "
                    "call under 'if __name__ == \"__main__\":'")
            return
        frame = frame.f_back


def env_int(name: str, default: int) -> int:
    """The integer in the environment variable ``name`` (``default`` when unset or blank); a one-line
    ValueError naming the variable when it is not an integer."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def launched_world_size() -> int:
    """How many processes ``torchrun`` started for this run (its ``WORLD_SIZE``; 1 in a plain run).

    Under a launch of several, each process must run the same jobs in the same order, so that their
    data-parallel training steps meet (:func:`paperlab.train.train`): :func:`parallel_map` and
    :func:`paperlab.scheduling.run_as_ready` then run every job in this process. A spawned worker would
    inherit the launch's ``RANK`` and ``WORLD_SIZE`` and wait forever for a rendezvous of processes that
    are not part of it."""
    return env_int("WORLD_SIZE", 1)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def alone_threads() -> int:
    """CPU threads for work that nothing runs beside, such as a base model that every later job starts
    from: two in the main process on a machine with two cores or more (the other core would idle), one in
    a worker process (its siblings use the other cores) and in each process of a ``torchrun`` launch (one
    per core already). Two threads, not one per core, so that the numbers stay those of the book's 2-core
    machine; use it only where they do not depend on the count (each caller says where that was checked)."""
    import multiprocessing

    if multiprocessing.parent_process() is not None or launched_world_size() > 1:
        return 1
    return min(2, usable_cores())


# glibc's malloc tunables that keep freed memory for reuse, with their mallopt parameter numbers
REUSE_FREED_MEMORY = {"glibc.malloc.mmap_max": (0, -4), "glibc.malloc.trim_threshold": (1 << 30, -1),
                      "glibc.malloc.top_pad": (64 << 20, -2)}


def reuse_freed_memory() -> bool:
    """Keep freed memory in this process, and in the processes it starts, for the next allocation.

    glibc's ``malloc`` serves a block above its mmap threshold (128 KiB at first, at most 32 MiB) with
    fresh pages from the kernel and returns them when the block is freed, so a loop that allocates and
    frees the same large tensors takes a page fault per 4 KiB on every pass. ``python -m paperlab.bench``
    measures what that costs (the machine's ``alloc`` rows, :mod:`paperlab.bench._alloc`: a new 32 MiB
    tensor with fresh pages and with this setting). (PyTorch's performance tuning guide recommends a
    caching allocator, jemalloc or TCMalloc, for the same reason.)

    Sets glibc's tunables so that no block is served by ``mmap`` (every block comes from the heap and
    goes back to it), the heap keeps up to 1 GiB of free memory at its top and grows 64 MiB at a time: in
    this process through ``mallopt``, and through ``GLIBC_TUNABLES`` in every process started from here
    (the workers of :func:`parallel_map`, a notebook's kernel), tunables already set there kept. The
    numbers computed do not change (PyTorch aligns every tensor to 64 bytes either way); the peak memory
    a process has used stays with it until it ends. Returns False, changing nothing, where the C library
    is not glibc."""
    import ctypes
    import ctypes.util
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    accepted = [libc.mallopt(code, value) for value, code in REUSE_FREED_MEMORY.values()]  # 1: accepted
    existing = [item for item in os.environ.get("GLIBC_TUNABLES", "").split(":") if item]
    named = {item.split("=")[0] for item in existing}
    ours = [f"{name}={value}" for name, (value, _) in REUSE_FREED_MEMORY.items() if name not in named]
    os.environ["GLIBC_TUNABLES"] = ":".join(existing + ours)
    return all(result == 1 for result in accepted)


def _dead_workers(processes: list) -> str:
    """The exit codes of the pool's worker processes (``-9``: killed by SIGKILL, as by the out-of-memory
    killer; ``-15``: stopped by the pool after another worker died). ``processes`` is the list taken when
    the pool started: a broken pool forgets its processes. The pool's own thread reaps them at the same
    time as this one asks, and only one of the two sees a process's status, so ask until it is known."""
    import signal

    codes = []
    deadline = time.monotonic() + 5.0
    for process in processes:
        while process.exitcode is None and time.monotonic() < deadline:
            time.sleep(0.02)
        code = process.exitcode
        if code is not None:
            codes.append(f"{code} ({signal.Signals(-code).name})" if code < 0 and -code in
                         signal.valid_signals() else str(code))
    return ", ".join(codes) or "unknown"


def parallel_map(fn: Callable[..., T], jobs: list[tuple], *, workers: int | None = None,
                 desc: str = "jobs") -> list[T]:
    """``[fn(*job) for job in jobs]``, computed by ``workers`` processes, each on one CPU thread.

    For independent tiny runs (a sweep of small models): one model per core on one thread each beats
    every model in turn on all cores. ``workers`` defaults to the number of usable cores, capped at the
    number of jobs; ``workers=1`` runs in this process, as does every call under ``torchrun``
    (:func:`launched_world_size`). ``fn`` must be importable by name (a module-level
    function) because the workers are started with ``spawn`` (a fresh interpreter, safe with the thread
    pools that PyTorch has already started here, unlike ``fork``); as with any ``spawn`` pool, a script
    that calls this must do so under ``if __name__ == "__main__":`` (notebooks need nothing): a call
    from the top level of a script outside it is refused with a one-line error before any worker starts.
    Results come back in job order; give jobs longest first so that the last one to finish is short.

    A job's exception comes back as itself, with the worker's traceback as its cause (as a RuntimeError
    naming its type when it cannot be rebuilt here); a worker that dies (killed, out of memory, a crash
    in native code) ends the map with a one-line RuntimeError giving the workers' exit codes.
    """
    import concurrent.futures

    jobs = [tuple(job) for job in jobs]
    if workers is None:
        workers = usable_cores()
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive number of processes, got {workers!r}")
    workers = min(workers, max(len(jobs), 1))
    if launched_world_size() > 1:  # under torchrun: every job here, in the same order on every rank
        workers = 1
    bar = progress(total=len(jobs), desc=desc)
    if workers == 1:
        results = []
        for job in jobs:
            results.append(_call_on_one_thread(fn, job))
            bar.update()
        bar.close()
        return results
    with worker_pool(workers, f"parallel_map ({desc})") as submit:
        futures = [submit(fn, *job) for job in jobs]
        try:
            for future in concurrent.futures.as_completed(futures):
                if future.exception() is not None:  # the first failure ends the map: jobs not started
                    for other in futures:  # are cancelled, running ones finish
                        other.cancel()
                    future.result()
                bar.update()
            return [future.result() for future in futures]
        finally:
            bar.close()


@contextlib.contextmanager
def worker_pool(workers: int, name: str) -> Iterator[Callable[..., Any]]:
    """A pool of ``workers`` spawned processes for a scheduler of one's own (``parallel_map`` is one):
    yields ``submit(fn, *args)``, which returns the future of ``fn(*args)`` run in a worker on one CPU
    thread. As in :func:`parallel_map`: ``fn`` must be importable by name; a call from the unguarded top
    level of a script is refused in one line before any worker starts; a job's exception comes back as
    itself; a worker that dies ends the block with a one-line RuntimeError, named by ``name``, giving the
    workers' exit codes. Ctrl-C stops the workers at once (they leave it to this process) and is raised
    here."""
    import concurrent.futures
    import multiprocessing

    _check_main_is_guarded(name)
    world_size = launched_world_size()
    if world_size > 1:
        raise RuntimeError(f"{name}: worker processes cannot start under torchrun (WORLD_SIZE={world_size}): "
                           "they would wait for the launch's rendezvous; run the jobs in this process")
    context = multiprocessing.get_context("spawn")
    processes: list = []  # a broken pool forgets its processes: keep them as they start

    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context,
                                                initializer=_ignore_interrupt) as pool:
        def submit(fn: Callable[..., T], *args) -> concurrent.futures.Future:
            future = pool.submit(_call_on_one_thread, fn, args)
            started = list((getattr(pool, "_processes", None) or {}).values())
            if len(started) > len(processes):
                processes[:] = started
            return future

        try:
            yield submit
        except KeyboardInterrupt:  # Ctrl-C: stop the workers now, rather than wait for their jobs to end
            for process in list((getattr(pool, "_processes", None) or {}).values()) or processes:
                process.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        except concurrent.futures.process.BrokenProcessPool:
            raise RuntimeError(
                f"{name}: a worker process died before returning its job (exit codes of the workers: "
                f"{_dead_workers(processes)}); -9 (SIGKILL) is usually the out-of-memory killer, and a "
                "worker's own error, if it had one, is printed above") from None


def _ignore_interrupt() -> None:
    """A worker's first step: Ctrl-C (SIGINT, which a terminal sends to every process of the group) is the
    parent's to handle: it stops the workers (:func:`worker_pool`), without a traceback from each."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


# Kineto (the profiler's backend) writes "USDT:... profiler_start" / "profiler_stop" lines straight to file
# descriptor 2 when a profile starts and stops; they are not ours to show (they landed in the book's pages).
KINETO_BANNER = re.compile(r"^USDT:.*\] profiler_(start|stop)\s*$")


@contextlib.contextmanager
def _without_kineto_banner() -> Iterator[None]:
    """Capture file descriptor 2 for the duration; write back every line but Kineto's banner."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                    if not KINETO_BANNER.match(line)]
            if kept:
                sys.stderr.write("".join(kept))


def peak_cpu_allocation(fn: Callable[[], T]) -> tuple[T, int]:
    """Run ``fn()``; return its result and the peak number of bytes that PyTorch CPU operations held
    allocated during it, above what was allocated before (tensors made earlier, such as a model's
    weights, do not count; add them yourself).

    Measured with ``torch.profiler`` (``profile_memory=True``): every operator's own (self) allocation
    and every recorded free, summed in time order; the peak is the running sum's maximum. Allocations
    outside PyTorch's CPU allocator (Numba, NumPy) are not seen.
    """
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _without_kineto_banner():
        prof.start()
    try:
        result = fn()
    finally:
        with _without_kineto_banner():
            prof.stop()
    changes = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events()
                     if e.self_cpu_memory_usage)
    running = peak = 0
    for _, change in changes:
        running += change
        peak = max(peak, running)
    return result, peak


def show_source(*objects: Callable | type) -> object:
    """Package functions, methods or classes shown in a notebook: each one's source, highlighted, under its
    name and the file and lines it comes from. Use it where the code is the paper's core, so that a chapter
    shows the code it runs (with its equation comments) instead of paraphrasing it.

    Returns an IPython ``Markdown`` object (make it a cell's last expression, or ``display`` it) holding a
    fenced ``python`` block per object: a ``text/markdown`` output, which JupyterLab renders, which the
    book's staging turns into a Markdown cell for the Jupyter Book site, and which the offline rendering
    shows.
    """
    from IPython.display import Markdown

    if not objects:
        raise TypeError("show_source needs at least one function, method or class")
    return Markdown("\n\n".join(_source_block(obj) for obj in objects))


def _source_block(obj: Callable | type) -> str:
    import inspect
    import textwrap
    from pathlib import Path

    target = inspect.unwrap(obj.fget if isinstance(obj, property) else obj)
    try:
        lines, first = inspect.getsourcelines(target)
        path = Path(inspect.getsourcefile(target)).resolve()
    except (TypeError, OSError):
        raise TypeError(f"show_source needs a function, method or class defined in a file, got {obj!r}"
                        ) from None
    top = Path(sys.modules[target.__module__.split(".")[0]].__file__).resolve().parent.parent
    where = path.relative_to(top) if path.is_relative_to(top) else path  # e.g. paperlab/sae/model.py
    source = textwrap.dedent("".join(lines)).rstrip()
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", source)), default=0))
    header = f"`{target.__module__}.{target.__qualname__}` ({where}, lines {first}-{first + len(lines) - 1})"
    return f"{header}:\n\n{fence}python\n{source}\n{fence}"
