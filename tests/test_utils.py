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
