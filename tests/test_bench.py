"""The benchmark harness runs end to end and reports the promised fields (speed is not asserted)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest
import torch

from paperlab.bench import Context, machine_info, registry, roofline, time_interleaved
from paperlab.bench.__main__ import format_table, main

KEYS = {"bench", "op", "shape", "impl", "ms", "speedup", "gbps", "gflops", "fraction", "device", "flops",
        "bytes", "bound"}
MACHINE_KEYS = {"device", "device_name", "cpu", "threads", "date", "versions", "python", "commit"}


def test_quick_json_rows(capsys):
    assert main(["rmsnorm", "--quick", "--json", "--device", "cpu", "--repeats", "1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    machine, rows = lines[0]["machine"], lines[1:]
    assert MACHINE_KEYS <= set(machine) and machine["device"] == "cpu"
    assert machine["versions"]["torch"] == torch.__version__ and machine["date"].endswith("Z")
    assert machine["freed_memory_reused"] is (platform.libc_ver()[0] == "glibc")  # the run says how it ran
    assert rows and all(KEYS <= set(row) for row in rows)
    limits = {row["impl"]: row for row in rows if row["bench"] == "machine"}
    assert limits["memcpy"]["gbps"] > 0 and limits["matmul"]["gflops"] > 0
    if platform.libc_ver()[0] == "glibc":  # a new 32 MiB tensor: fresh pages against reused memory
        fresh, reused = limits["fresh pages"], limits["reused memory"]
        assert fresh["op"] == reused["op"] == "alloc"
        assert len(fresh["samples"]) == len(reused["samples"]) == 10
        assert reused["speedup"] == pytest.approx(fresh["ms"] / reused["ms"]) and reused["ms"] > 0
    kernel_rows = [row for row in rows if row["bench"] == "rmsnorm"]
    assert {row["op"] for row in kernel_rows} == {"fwd", "fwd+bwd", "quant"}
    assert {"reference", "numba"} <= {row["impl"] for row in kernel_rows}
    assert "triton" not in {row["impl"] for row in kernel_rows}  # the interpreter is never timed
    for row in kernel_rows:
        assert row["ms"] > 0 and row["speedup"] > 0 and 0 < row["fraction"]
        assert row["flops"] > 0 and row["bytes"] > 0 and row["bound"] == "memory"  # < 1 flop per byte
        if row["impl"] == "reference":
            assert row["speedup"] == 1.0


def test_out_writes_the_whole_run_with_its_machine(tmp_path, capsys):
    out = tmp_path / "run.json"
    assert main(["ssd", "--quick", "--device", "cpu", "--repeats", "1", "--out", str(out)]) == 0
    document = json.loads(out.read_text())
    assert MACHINE_KEYS <= set(document["machine"])
    ssd_rows = [row for row in document["rows"] if row["bench"] == "ssd"]
    assert ssd_rows and all(row["flops"] > 0 and row["bytes"] > 0 for row in ssd_rows)
    assert "GFLOP/s" in capsys.readouterr().out  # compute-bound rows show their flop rate


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


@pytest.mark.parametrize(("args", "message"), [
    (["--device", "tpu"], "is not a device"),
    (["--device", "meta"], "only cpu and cuda are supported"),
    (["--out", "/no/such/folder/run.json"], "does not exist"),
    (["--out", "/proc/run.json"], "is not a writable folder"),
])
def test_bad_arguments_are_one_line_errors(args, message, capsys):
    with pytest.raises(SystemExit) as err:
        main(["rmsnorm", "--quick", *args])
    assert err.value.code == 2 and message in capsys.readouterr().err


def test_an_out_that_is_a_folder_is_refused_before_measuring(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["rmsnorm", "--quick", "--out", str(tmp_path)])
    assert err.value.code == 2 and "is a folder" in capsys.readouterr().err


def test_time_interleaved_counts_every_function():
    calls = {"a": 0, "b": 0}

    def bump(name):
        calls[name] += 1

    times = time_interleaved({"a": lambda: bump("a"), "b": lambda: bump("b")}, torch.device("cpu"),
                             repeats=3, warmup=1, min_sample_s=0.0)
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())
    assert calls == {"a": 1 + 1 + 3, "b": 1 + 1 + 3}  # warm-up, calibration, 3 timed rounds
    ctx = Context(device=torch.device("cpu"), limits={"gbps": 10.0, "gflops": 100.0})
    rows = ctx.rows("x", "op", "s", {"reference": 2.0, "fast": 1.0}, bytes_moved=1e7)
    assert [r.speedup for r in rows] == [1.0, 2.0] and rows[1].gbps == pytest.approx(10.0)
    assert rows[1].fraction == pytest.approx(1.0) and rows[1].bound == "memory"
    assert "fast" in format_table(rows)


def test_time_interleaved_rotates_the_order_from_round_to_round():
    order = []
    time_interleaved({name: (lambda name=name: order.append(name)) for name in "abc"}, torch.device("cpu"),
                     repeats=3, warmup=0, min_sample_s=0.0)
    assert "".join(order) == "abc" + "abc" + "bca" + "cab"  # calibration, then rounds 0, 1, 2


def test_a_chapter_that_times_does_not_depend_on_the_benchmarks():
    """The SSD experiment's cost sweep uses the benchmarks' timer from its own module, so that its cached
    runs are not recomputed when a benchmark changes (the closure is what the cache keys on)."""
    from paperlab import cache

    closure = [p.as_posix() for p in cache.code_closure(("paperlab.ssd.experiments",))]
    assert any(p.endswith("src/paperlab/timing.py") for p in closure), closure
    assert not [p for p in closure if "/paperlab/bench/" in p]


def test_fraction_is_of_the_roofline():
    """At intensity I the attainable rate is min(peak, I * bandwidth); the fraction is against that."""
    ctx = Context(device=torch.device("cpu"), limits={"gbps": 10.0, "gflops": 100.0})
    low, high = ctx.rows("x", "op", "s", {"a": 1.0}, bytes_moved=1e7, flops=1e7)[0], \
        ctx.rows("x", "op", "s", {"a": 1.0}, bytes_moved=1e6, flops=1e8)[0]
    assert low.intensity == 1.0 and low.bound == "memory"
    assert low.fraction == pytest.approx(low.gflops / roofline(low.intensity, 10.0, 100.0))
    assert high.intensity == 100.0 and high.bound == "compute"
    assert high.fraction == pytest.approx(high.gflops / roofline(high.intensity, 10.0, 100.0))


def test_machine_info_describes_the_cpu():
    info = machine_info(torch.device("cpu"))
    assert info["threads"] == torch.get_num_threads() and info["cpu_count"] >= 1
    assert set(info["versions"]) >= {"torch", "numba", "triton"}


def test_command_line_entry_point():
    proc = subprocess.run([sys.executable, "-m", "paperlab.bench", "nope"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "valid names: " in proc.stderr and "rmsnorm" in proc.stderr


# ---------------------------------------------------------------- the appendix's results (bench.results)
def _fake_run(kernel_ms: float, baseline_ms: float, device_name: str = "test CPU", quick: bool = False):
    """A results document with one ternary batch-1 pair, timing rounds scattered around the medians."""
    shape = "4096x4096 batch 1"
    rng = [1.0, 0.97, 1.03, 0.99, 1.02, 1.01, 0.98, 1.0, 1.01, 0.99]
    rows = [{"bench": "matmulfree", "op": "ternary linear", "shape": shape, "impl": impl, "ms": ms,
             "samples": [ms * r for r in rng], "bytes": 1e6, "flops": 1e6}
            for impl, ms in (("torch", baseline_ms), ("numba", kernel_ms))]
    rows.append({"bench": "machine", "op": "copy", "shape": "", "impl": "memcpy", "gbps": 10.0})
    return {"machine": {"device_name": device_name, "quick": quick}, "rows": rows}


def test_speed_targets_are_judged_on_paired_timing_rounds():
    from paperlab.bench import results as R

    target = R.SPEED_TARGETS[0]  # ternary batch 1 >= 6x on the CPU
    assert target.claim.smallest_effect == 6.0 and target.device == "cpu"
    held = R.speed_rows(_fake_run(kernel_ms=1.0, baseline_ms=9.0), None)[0]
    not_held = R.speed_rows(_fake_run(kernel_ms=1.0, baseline_ms=3.0), None)[0]
    unclear = R.speed_rows(_fake_run(kernel_ms=1.0, baseline_ms=6.0), None)[0]
    assert (held.verdict, not_held.verdict, unclear.verdict) == ("held", "not held", "inconclusive")
    assert held.estimate.value == pytest.approx(9.0) and "timing rounds" in held.estimate.method
    quick = R.speed_rows(_fake_run(kernel_ms=1.0, baseline_ms=9.0, quick=True), None)
    assert "4096x4096" in quick[0].setting  # the ternary product keeps its shape in the fast profile
    assert "T1024" in quick[2].setting  # the SSD scan's stand-in shape is named in its row


def test_a_speedup_is_the_ratio_of_medians_and_a_target_needs_its_own_shape():
    from paperlab.bench import results as R

    run = _fake_run(kernel_ms=1.0, baseline_ms=9.0)
    kernel = next(row for row in run["rows"] if row["impl"] == "numba")
    kernel["samples"] = [1.0] * 9 + [50.0]  # one slow round moves the mean (5.9 ms), not the median
    row = R.speed_rows(run, None)[0]
    assert row.estimate.value == pytest.approx(9.0) and row.verdict == "held"
    batch16 = R.speed_rows(run, None)[1]  # the run has no batch-16 rows
    assert batch16.verdict == "not testable here" and "batch 16" in batch16.notes[0]


def test_gpu_bandwidth_target_is_the_fraction_of_the_gpus_copy_rate():
    from paperlab.bench import results as R

    gpu = _fake_run(kernel_ms=1.0, baseline_ms=9.0, device_name="test GPU")
    rounds = [1.0, 0.97, 1.03, 0.99, 1.02, 1.01, 0.98, 1.0, 1.01, 0.99]
    gpu["rows"].append({"bench": "rmsnorm", "op": "fwd", "shape": "16384x4096 bf16", "impl": "triton",
                        "ms": 100.0, "samples": [100.0 * r for r in rounds], "bytes": 0.8e9})
    rows = R.speed_rows(_fake_run(1.0, 9.0), gpu)
    (fraction,) = [row for row, target in zip(rows, R.SPEED_TARGETS) if target.baseline is None]
    # 0.8 GB in 100 ms is 8 GB/s, against the document's copy rate of 10 GB/s
    assert fraction.estimate.value == pytest.approx(0.8) and fraction.verdict == "held"
    assert "test GPU" in fraction.setting


def test_gpu_targets_are_not_testable_without_a_results_file(tmp_path):
    from paperlab.bench import results as R

    rows = R.speed_rows(_fake_run(1.0, 9.0), R.load_gpu(tmp_path / "none.json"))
    gpu = [row for row, target in zip(rows, R.SPEED_TARGETS) if target.device == "cuda"]
    assert gpu and all(row.verdict == "not testable here" for row in gpu)
    assert "gpu-check.sh" in gpu[0].notes[0]
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="not a benchmark results file"):
        R.load_gpu(bad)


def test_the_catalogue_names_real_kernels_and_benchmarks():
    import importlib

    from paperlab.bench import results as R

    names = registry()
    for kernel in R.KERNELS:
        module = importlib.import_module("paperlab_kernels." + kernel.name.split(".")[0])
        for function in kernel.name.split(".", 1)[1].split(" / "):
            assert callable(getattr(module, function.split(".")[-1]))
        assert kernel.bench in names


@pytest.mark.slow
def test_the_gpu_check_script_runs_its_stages_and_brings_back_few_files(tmp_path):
    """tools/gpu-check.sh gets one try on a lent GPU: its plumbing is checked here, on the CPU (DEVICE=cpu).
    The device tool brings back at most 8 files from $OUT, named in letters, digits, '.', '_' and '-', and
    the budget must stop an experiment from starting when too little time is left."""
    import os
    import re
    import tarfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = root / "tools" / "gpu-check.sh"
    out = tmp_path / "out"
    env = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")},
           "OUT": str(out), "DEVICE": "cpu", "PROFILE": "fast", "STAGES": "bench experiments",
           "EXPERIMENTS": "toolkit", "BENCH_ARGS": "rmsnorm --quick --repeats 1", "PY": sys.executable,
           "PY_VENV": sys.executable, "WHEELS": str(tmp_path / "no-wheels")}
    done = subprocess.run(["bash", str(script)], env=env, cwd=root, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert len(files) <= 8 and all(re.fullmatch(r"[A-Za-z0-9._-]+", name) for name in files), files
    document = json.loads((out / "bench-gpu.json").read_text())
    assert {row["bench"] for row in document["rows"]} == {"machine", "rmsnorm"}  # the roofs, one bench
    lines = [json.loads(line) for line in (out / "bench-gpu.jsonl").read_text().splitlines()]
    assert lines[0] == {"machine": document["machine"]} and lines[1:] == document["rows"]
    assert "rmsnorm" in done.stdout  # the table
    rows = [line.split("\t") for line in (out / "experiments-gpu.tsv").read_text().splitlines()]
    assert rows[0] == ["experiment", "device", "seconds", "status"]
    assert rows[1][0:2] == ["toolkit", "cpu"] and rows[1][3] == "0" and float(rows[1][2]) > 0
    with tarfile.open(out / "experiments-results.tar.gz") as archive:
        record = json.load(archive.extractfile("./toolkit-fast.json"))
    assert record["device"] == "cpu" and record["profile"] == "fast"

    over = {**env, "STAGES": "experiments", "BUDGET_S": "30", "OUT": str(tmp_path / "over")}
    done = subprocess.run(["bash", str(script)], env=over, cwd=root, capture_output=True, text=True,
                          timeout=120)
    rows = [line.split("\t") for line in (tmp_path / "over" / "experiments-gpu.tsv").read_text().splitlines()]
    assert done.returncode == 0 and rows[1] == ["toolkit", "cpu", "-", "skipped (budget)"], rows
