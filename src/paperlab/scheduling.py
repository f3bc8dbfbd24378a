"""Jobs that make other jobs ready, run on worker processes as each process frees: a list schedule.

A sweep whose next runs depend on finished ones (a learning rate tried only if the best so far sits at the
edge of the grid; a chain of train, evaluate, explore pieces) cannot be split into fixed rounds without a
core idling at the end of each round. :func:`run_as_ready` gives each process the most urgent ready job as
soon as it frees, and asks the caller, as each job finishes, which jobs that makes ready.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterable
from typing import Any

from paperlab.utils import cpu_threads, launched_world_size, progress, usable_cores, worker_pool

__all__ = ["run_as_ready"]


def run_as_ready(fn: Callable[..., Any], jobs: Iterable[tuple], then: Callable[[tuple, Any], list[tuple]], *,
                 order: Callable[[tuple], Any], workers: int | None = None, name: str,
                 desc: str) -> None:
    """Call ``fn(*job)`` for every job of ``jobs``, and for every job that ``then(job, result)`` returns
    when a job finishes (the jobs it made ready), each as soon as a process is free, the ready job with the
    smallest ``order(job)`` first (give minus the work still behind a job, and the last job to end is a
    short one).

    ``workers`` spawned processes (default: one per usable core), one CPU thread each
    (:func:`paperlab.utils.worker_pool`, so ``fn`` must be importable by name); with one worker, every job
    in this process, on one thread (so too under ``torchrun``: :func:`paperlab.utils.launched_world_size`).
    ``then`` runs in this process, in the order the jobs finish; a job's error ends the run (jobs not
    started are cancelled, running ones finish). ``desc`` names the progress bar, whose total grows as
    jobs are made ready.
    """
    waiting = [tuple(job) for job in jobs]
    workers = usable_cores() if workers is None else workers
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive number of processes, got {workers!r}")
    if launched_world_size() > 1:  # under torchrun: every job here, in the same order on every rank
        workers = 1
    bar = progress(total=len(waiting), desc=desc)

    def next_job() -> tuple:
        waiting.sort(key=order)
        return waiting.pop(0)

    def finished(job: tuple, result: Any) -> None:
        ready = [tuple(new) for new in then(job, result)]
        waiting.extend(ready)
        bar.total += len(ready)
        bar.update()

    try:
        if workers == 1:
            while waiting:
                job = next_job()
                with cpu_threads(1):
                    result = fn(*job)
                finished(job, result)
            return
        with worker_pool(workers, name) as submit:
            running: dict = {}
            try:
                while waiting or running:
                    while waiting and len(running) < workers:
                        job = next_job()
                        running[submit(fn, *job)] = job
                    done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                    for future in done:
                        finished(running.pop(future), future.result())  # a job's error ends the run
            except BaseException:
                for future in running:
                    future.cancel()
                raise
    finally:
        bar.close()
