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
