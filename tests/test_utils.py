import pytest
import torch

from paperlab.utils import peak_cpu_allocation


def test_peak_cpu_allocation_sees_overlapping_tensors_only():
    def work():
        a = torch.ones(1000, 1000)  # 4 MB
        b = a * 2  # 4 MB, both alive: 8 MB
        del a
        c = b + 1  # 4 MB, a already freed: still 8 MB
        return c.sum().item()

    before = torch.zeros(2000, 1000)  # 8 MB allocated earlier: not counted
    result, peak = peak_cpu_allocation(work)
    assert result == 3e6 and before.numel()
    assert 8_000_000 <= peak < 8_100_000


def test_peak_cpu_allocation_keeps_the_profiler_banner_off_stderr(capfd):
    import os

    from paperlab.utils import _without_kineto_banner

    peak_cpu_allocation(lambda: torch.ones(100).sum())
    with _without_kineto_banner():  # other output on file descriptor 2 still comes through
        os.write(2, b"USDT:2026-11-30 10:00:00 1:1 SyncActivityProfilerHandler.cpp:52] profiler_start\n")
        os.write(2, b"a real warning\n")
    err = capfd.readouterr().err
    assert "profiler_start" not in err and "profiler_stop" not in err
    assert "a real warning" in err


def test_parallel_map_keeps_job_order_in_processes_and_in_process():
    import operator

    from paperlab.utils import parallel_map

    jobs = [(2, 3), (4, 5), (6, 7)]
    assert parallel_map(operator.mul, jobs, workers=2) == [6, 20, 42]
    assert parallel_map(operator.mul, jobs, workers=1) == [6, 20, 42]
    assert parallel_map(operator.mul, [], workers=2) == []


def test_parallel_map_rejects_a_bad_worker_count():
    import operator

    from paperlab.utils import parallel_map

    with pytest.raises(ValueError, match="workers"):
        parallel_map(operator.mul, [(1, 2)], workers=0)
