"""The benchmark harness runs end to end and reports the promised fields (speed is not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from paperlab.bench import Context, registry, time_interleaved
from paperlab.bench.__main__ import format_table, main

KEYS = {"bench", "op", "shape", "impl", "ms", "speedup", "gbps", "gflops", "fraction", "device"}


def test_quick_json_rows(capsys):
    assert main(["rmsnorm", "--quick", "--json", "--device", "cpu", "--repeats", "1"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert rows and all(KEYS <= set(row) for row in rows)
    machine = {row["impl"]: row for row in rows if row["bench"] == "machine"}
    assert machine["memcpy"]["gbps"] > 0 and machine["matmul"]["gflops"] > 0
    kernel_rows = [row for row in rows if row["bench"] == "rmsnorm"]
    assert {row["op"] for row in kernel_rows} == {"fwd", "fwd+bwd", "quant"}
    assert {"reference", "numba"} <= {row["impl"] for row in kernel_rows}
    assert "triton" not in {row["impl"] for row in kernel_rows}  # the interpreter is never timed
    for row in kernel_rows:
        assert row["ms"] > 0 and row["speedup"] > 0 and 0 < row["fraction"]
        if row["impl"] == "reference":
            assert row["speedup"] == 1.0


def test_table_output(capsys):
    assert main(["rmsnorm", "--quick", "--device", "cpu", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "memcpy" in out and "matmul" in out and "GB/s" in out and "speedup" in out


def test_unknown_name_lists_valid_ones(capsys):
    with pytest.raises(SystemExit) as err:
        main(["nope", "--quick"])
    assert err.value.code == 2
    assert "unknown benchmark(s) 'nope'; valid names: " in capsys.readouterr().err
    assert "rmsnorm" in registry()


def test_time_interleaved_counts_every_function():
    import torch

    calls = {"a": 0, "b": 0}

    def bump(name):
        calls[name] += 1

    times = time_interleaved({"a": lambda: bump("a"), "b": lambda: bump("b")}, torch.device("cpu"),
                             repeats=3, warmup=1, min_sample_s=0.0)
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())
    assert calls == {"a": 1 + 1 + 3, "b": 1 + 1 + 3}  # warm-up, calibration, 3 timed rounds
    ctx = Context(device=torch.device("cpu"), limits={"gbps": 10.0})
    rows = ctx.rows("x", "op", "s", {"reference": 2.0, "fast": 1.0}, bytes_moved=1e7)
    assert [r.speedup for r in rows] == [1.0, 2.0] and rows[1].gbps == pytest.approx(10.0)
    assert rows[1].fraction == pytest.approx(1.0)
    assert "fast" in format_table(rows)


def test_command_line_entry_point():
    proc = subprocess.run([sys.executable, "-m", "paperlab.bench", "nope"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "valid names: " in proc.stderr and "rmsnorm" in proc.stderr
