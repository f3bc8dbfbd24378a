"""The machine's ``alloc`` rows: what filling a new large CPU tensor costs, with fresh pages and reused.

glibc's ``malloc`` serves a block of 32 MiB with pages mapped fresh from the kernel and returns them on
free, so a loop that allocates and frees such tensors faults in every 4 KiB page on every pass;
:func:`paperlab.utils.reuse_freed_memory` keeps freed memory for the next allocation instead. Both runs
of :mod:`paperlab.bench` (``python -m paperlab.bench`` and the appendix's cached run) add these two rows
after :func:`paperlab.bench.measure_machine`'s. (Its name starts with ``_``: it is not a benchmark of the
registry, which imports every other module of the package.)
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys

from paperlab.bench import Context, Row

__all__ = ["ALLOC_MIB", "measure_allocation"]

ALLOC_MIB = 32  # glibc's largest mmap threshold: a block this size always gets fresh pages by default
ALLOC_WARMUP = 10
_ALLOC_CHILD = """
import sys, time, torch
if sys.argv[1] == "reused":
    from paperlab.utils import reuse_freed_memory
    reuse_freed_memory()
torch.set_num_threads(1)
times = []
for _ in range(int(sys.argv[2])):
    start = time.perf_counter()
    torch.ones({numel})  # allocated, filled, freed
    times.append(time.perf_counter() - start)
print(" ".join(repr(1e3 * t) for t in times))
"""


def measure_allocation(ctx: Context) -> list[Row]:
    """What filling a new ``ALLOC_MIB`` tensor costs on the CPU, with fresh pages and with reused memory.

    Two child processes run the same loop (allocate, fill with ones, free; one thread; the first
    ``ALLOC_WARMUP`` rounds not timed: the reusing heap takes a few passes to settle): one with glibc's
    defaults (a block this large is mapped fresh from the kernel and returned on free, so every pass
    faults in every 4 KiB page), one after :func:`paperlab.utils.reuse_freed_memory`. They run one after
    the other, not interleaved; the rows give the median round and ``reused memory`` its speedup over
    ``fresh pages``. Empty where the C library is not glibc."""
    if ctx.device.type != "cpu" or platform.libc_ver()[0] != "glibc":
        return []
    rounds = 10 if ctx.quick else 40
    code = _ALLOC_CHILD.format(numel=ALLOC_MIB * 2**20 // 4)
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}  # glibc's defaults
    samples = {}
    for mode in ("fresh", "reused"):
        out = subprocess.run([sys.executable, "-c", code, mode, str(ALLOC_WARMUP + rounds)], env=env,
                             check=True, capture_output=True, text=True, timeout=300).stdout
        samples[mode] = [float(t) for t in out.split()][ALLOC_WARMUP:]
    fresh, reused = (statistics.median(samples[m]) for m in ("fresh", "reused"))
    nbytes = ALLOC_MIB * 2**20
    shape = f"{ALLOC_MIB} MiB fp32 fill"
    return [Row("machine", "alloc", shape, "fresh pages", fresh, gbps=nbytes / (fresh * 1e-3) / 1e9,
                device="cpu", bytes=nbytes, samples=samples["fresh"]),
            Row("machine", "alloc", shape, "reused memory", reused, speedup=fresh / reused,
                gbps=nbytes / (reused * 1e-3) / 1e9, device="cpu", bytes=nbytes, samples=samples["reused"])]
