"""run_as_ready: every job made ready runs, the most urgent first, on one process or several."""

from __future__ import annotations

import pytest

from paperlab.scheduling import run_as_ready


def _powers(seen: list):
    def then(job, result):  # each power makes the next one ready, up to the cube
        seen.append((job, result))
        base, exponent = job
        return [(base, exponent + 1)] if exponent < 3 else []
    return then


def test_one_worker_runs_the_most_urgent_ready_job_first(monkeypatch):
    monkeypatch.setenv("PAPERLAB_PROGRESS", "0")
    seen: list = []
    run_as_ready(pow, [(2, 1), (3, 1)], _powers(seen), order=lambda job: -job[0], workers=1, name="t",
                 desc="t")
    assert [job for job, _ in seen] == [(3, 1), (3, 2), (3, 3), (2, 1), (2, 2), (2, 3)]
    assert [result for _, result in seen] == [3, 9, 27, 2, 4, 8]


def test_processes_run_every_job_made_ready_and_a_jobs_error_ends_the_run(monkeypatch):
    monkeypatch.setenv("PAPERLAB_PROGRESS", "0")
    seen: list = []
    run_as_ready(pow, [(2, 1), (3, 1), (5, 1)], _powers(seen), order=lambda job: -job[0], workers=2, name="t",
                 desc="t")
    assert sorted(seen) == sorted(((b, e), b ** e) for b in (2, 3, 5) for e in (1, 2, 3))
    with pytest.raises(ZeroDivisionError):
        run_as_ready(pow, [(0, -1), (2, 1)], _powers([]), order=lambda job: job, workers=2, name="t",
                     desc="t")
    with pytest.raises(ValueError, match="workers must be a positive number"):
        run_as_ready(pow, [(2, 1)], _powers([]), order=lambda job: job, workers=0, name="t", desc="t")


def test_a_job_can_make_several_jobs_ready(monkeypatch):
    monkeypatch.setenv("PAPERLAB_PROGRESS", "0")
    seen: list = []

    def then(job, result):
        seen.append(job)
        return [(2, 2), (2, 3)] if job == (2, 1) else []

    run_as_ready(pow, [(2, 1)], then, order=lambda job: job, workers=1, name="t", desc="t")
    assert seen == [(2, 1), (2, 2), (2, 3)]


def test_under_torchrun_every_job_runs_in_this_process_in_the_one_worker_order(monkeypatch):
    from paperlab import scheduling

    def no_pool(*args, **kwargs):
        raise AssertionError("a worker pool started under torchrun")

    monkeypatch.setenv("PAPERLAB_PROGRESS", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(scheduling, "worker_pool", no_pool)
    seen: list = []
    run_as_ready(pow, [(2, 1), (3, 1)], _powers(seen), order=lambda job: -job[0], workers=2, name="t",
                 desc="t")
    assert [job for job, _ in seen] == [(3, 1), (3, 2), (3, 3), (2, 1), (2, 2), (2, 3)]
