import os
import platform
import subprocess
import sys

import pytest
import torch

from paperlab import utils
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


class _KeywordOnlyError(Exception):
    """Pickles, but cannot be rebuilt from its pickle (its constructor takes keyword arguments only)."""

    def __init__(self, *, detail):
        super().__init__(f"bad {detail}")


def test_parallel_map_job_errors_come_back_even_when_they_cannot_be_rebuilt():
    from paperlab.utils import _portable_error

    plain = ValueError("plain")
    assert _portable_error(plain) is plain
    odd = _portable_error(_KeywordOnlyError(detail="input"))
    assert isinstance(odd, RuntimeError) and "_KeywordOnlyError: bad input" in str(odd)


def test_parallel_map_reports_a_dead_worker_in_one_line():
    import os

    from paperlab.utils import parallel_map

    died = r"^parallel_map \(dying\): a worker process died .*exit codes.*3"
    with pytest.raises(RuntimeError, match=died) as info:
        parallel_map(os._exit, [(3,), (3,)], workers=2, desc="dying")  # each worker exits at once, code 3
    assert "\n" not in str(info.value)


def test_worker_pool_gives_a_scheduler_of_its_own_the_same_one_line_report():
    import os

    from paperlab.utils import worker_pool

    with worker_pool(2, "my schedule") as submit:  # jobs come back in a scheduler's own order
        futures = {submit(divmod, n, 3): n for n in (7, 8)}
        assert {futures[f]: f.result() for f in futures} == {7: (2, 1), 8: (2, 2)}
    with pytest.raises(RuntimeError, match=r"^my schedule: a worker process died .*exit codes.*3") as info:
        with worker_pool(2, "my schedule") as submit:
            for future in [submit(os._exit, 3) for _ in range(2)]:
                future.result()
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_ctrl_c_stops_the_workers_at_once_with_one_traceback(tmp_path):
    """A terminal's Ctrl-C reaches every process of the group: the workers leave it to the parent, which
    stops them at once. Before, each worker took its next queued job (an hour each, here) and the parent
    waited for them all."""
    import signal
    import time

    script = tmp_path / "sweep.py"
    script.write_text("import sys, time\nfrom paperlab.utils import parallel_map\n\n"
                      "def job(path):\n    open(path, 'w').close()\n    time.sleep(3600)\n\n"
                      "if __name__ == '__main__':\n"
                      "    jobs = [(f'{sys.argv[1]}/started-{i}',) for i in range(4)]\n"
                      "    parallel_map(job, jobs, workers=2)\n")
    process = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stderr=subprocess.PIPE,
                               text=True, start_new_session=True,  # a group of its own, as a terminal's job
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("started-*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(list(tmp_path.glob("started-*"))) == 2  # both workers are in a job, two jobs queued
        workers = subprocess.run(["pgrep", "-P", str(process.pid), "-f", "spawn_main"], capture_output=True,
                                 text=True).stdout.split()
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode != 0 and err.count("Traceback") == 1, err  # the parent's KeyboardInterrupt
    assert err.rstrip().endswith("KeyboardInterrupt") and "SpawnProcess" not in err, err
    assert len(list(tmp_path.glob("started-*"))) == 2  # no queued job started
    time.sleep(0.5)
    for pid in workers:  # gone, or a zombie waiting for init to reap it
        try:
            with open(f"/proc/{pid}/stat") as stat:
                assert stat.read().split(") ")[1][0] == "Z", pid
        except FileNotFoundError:
            pass


def test_parallel_map_refuses_a_call_from_an_unguarded_script_before_starting_workers(tmp_path):
    import subprocess
    import sys

    from paperlab.utils import unguarded_line

    guarded = 'import os\n\ndef main():\n    run()\n\nif __name__ == "__main__":\n    main()\n'
    assert not unguarded_line(guarded, 7) and not unguarded_line(guarded, 4)
    assert unguarded_line("import os\nmain()\n", 2)
    assert unguarded_line('if __name__ != "__main__":\n    main()\n', 2)
    assert not unguarded_line("'__main__' == __name__ and 0\nif '__main__' == __name__:\n    main()\n", 3)

    script = tmp_path / "sweep.py"
    script.write_text("import operator\nfrom paperlab.utils import parallel_map\n"
                      "print(parallel_map(operator.mul, [(2, 3), (4, 5)], workers=2))\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1 and "BrokenProcessPool" not in done.stderr, done.stderr
    assert last.startswith("RuntimeError: parallel_map (jobs): worker processes cannot start from the top "
                           f"level of {script} (line 3)") and "if __name__ == " in last


def test_cpu_threads_is_also_a_decorator_and_leaves_other_devices_alone():
    from paperlab.utils import cpu_threads, threads_pinned

    before = torch.get_num_threads()

    @cpu_threads(1)
    def inside():
        return torch.get_num_threads(), threads_pinned()

    assert inside() == (1, True)
    assert inside() == (1, True)  # a fresh context on every call
    assert torch.get_num_threads() == before and not threads_pinned()
    with cpu_threads(1, device="cuda"):  # not the CPU: nothing is pinned (no GPU needed to check)
        assert torch.get_num_threads() == before and not threads_pinned()
    with cpu_threads(1, device="cpu"):
        assert torch.get_num_threads() == 1


def test_show_source_shows_a_package_function_as_a_markdown_code_block():
    from paperlab.sae.model import TopKSAE
    from paperlab.utils import show_source

    shown = show_source(TopKSAE.loss)
    header, _, block = shown.data.partition("\n\n")
    assert header.startswith("`paperlab.sae.model.TopKSAE.loss` (paperlab/sae/model.py, lines ")
    assert block.startswith("```python\ndef loss(self, x") and block.endswith("\n```")  # dedented method
    assert "self.aux_coefficient * aux" in block
    assert shown._repr_markdown_() == shown.data
    with pytest.raises(TypeError, match="show_source needs a function"):
        show_source(3)


# A child process mallocs four 64 MiB blocks and prints how many memory regions that added: glibc serves
# such blocks by mmap (a new region) unless the tunables keep every block on the heap.
_NEW_REGIONS = """
import ctypes
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
def regions():
    return len(open("/proc/self/maps").read().splitlines())
before = regions()
blocks = [libc.malloc(64 << 20) for _ in range(4)]
print(regions() - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not os.path.exists("/proc/self/maps"),
                    reason="glibc's allocator, Linux's /proc")
def test_reuse_freed_memory_keeps_big_blocks_on_the_heap_in_child_processes(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.top_pad=1048576")  # a reader's own setting stays
    assert utils.reuse_freed_memory()
    tunables = os.environ["GLIBC_TUNABLES"].split(":")
    assert "glibc.malloc.mmap_max=0" in tunables and "glibc.malloc.trim_threshold=1073741824" in tunables
    assert "glibc.malloc.top_pad=1048576" in tunables and len(tunables) == 3

    def new_regions(env):
        child = subprocess.run([sys.executable, "-c", _NEW_REGIONS], env=env, capture_output=True, text=True,
                               check=True)
        return int(child.stdout)

    assert new_regions(dict(os.environ)) == 0  # the setting reached the child: no mmap
    plain = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    assert new_regions(plain) > 0  # the control: without it, the blocks are mapped


def test_reuse_freed_memory_changes_nothing_without_glibc(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert not utils.reuse_freed_memory()
    assert "GLIBC_TUNABLES" not in os.environ


def test_under_torchrun_parallel_map_runs_every_job_in_this_process(monkeypatch):
    """A spawned worker would inherit torchrun's RANK and WORLD_SIZE and wait for a rendezvous forever."""
    from paperlab.utils import launched_world_size, parallel_map, worker_pool

    monkeypatch.setenv("PAPERLAB_PROGRESS", "0")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launched_world_size() == 1
    assert parallel_map(os.getpid, [(), ()], workers=2) != [os.getpid()] * 2  # two spawned workers
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert launched_world_size() == 2
    assert parallel_map(os.getpid, [(), ()], workers=2) == [os.getpid()] * 2
    with pytest.raises(RuntimeError, match="cannot start under torchrun"):
        with worker_pool(2, "pool"):
            pass
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer"):
        launched_world_size()


def test_alone_threads_are_two_in_the_main_process_and_one_in_a_worker_or_under_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert utils.alone_threads() == min(2, utils.usable_cores())
    assert utils.parallel_map(utils.alone_threads, [(), ()], workers=2) == [1, 1]
    monkeypatch.setenv("WORLD_SIZE", "2")  # each process of the launch already has a core
    assert utils.alone_threads() == 1


@pytest.mark.skipif(utils.usable_cores() < 2, reason="needs two cores to use two threads")
@pytest.mark.parametrize("chapter", ["ditto", "sayself"])
def test_base_pretraining_gives_the_same_weights_on_one_thread_or_two_and_uses_two(chapter, monkeypatch):
    # DITTO's and SaySelf's base models pretrain on utils.alone_threads() (two threads in the main process)
    # on the promise that the weights do not depend on it: the full profile's model and batches, a few steps
    import dataclasses

    def steps(config):
        return dataclasses.replace(config, train=dataclasses.replace(config.train, steps=6, warmup_steps=2,
                                                                     eval_every=3))

    if chapter == "ditto":
        from paperlab.ditto import experiments

        full = experiments.CONFIGS["full"]
        pretrain = lambda: experiments._pretrain(steps(full.base), full.cast, torch.device("cpu"))  # noqa: E731
    else:
        from paperlab.sayself import base
        from paperlab.sayself.experiments import CONFIGS

        pretrain = lambda: base._pretrain_body(steps(CONFIGS["full"].base), torch.device("cpu"))  # noqa: E731
    weights = []
    for threads in (1, 2):
        with utils.cpu_threads(threads):
            weights.append(pretrain()["state_dict"])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    # and the chapter's own entry point, in this (main) process, pretrains on two threads
    seen = []
    if chapter == "ditto":
        monkeypatch.setattr(experiments, "_pretrain", lambda *args: seen.append(torch.get_num_threads()))
        with utils.cpu_threads(1):
            experiments.pretrain(full.base, full.cast, "cpu")
    else:
        monkeypatch.setattr(base, "_pretrain_body", lambda *args: seen.append(torch.get_num_threads()))
        with utils.cpu_threads(1):
            base._pretrain(CONFIGS["full"].base, torch.device("cpu"))
    assert seen == [2]
