"""Run an instantiated thought template's program in a sandbox: a separate process with limits.

Buffer of Thoughts turns a retrieved template into a program and runs it. The authors' code runs it with
``exec`` in its own process, with no limits; a program written by a model can loop forever, allocate
without bound, open sockets or write anywhere. Here every program runs in a fresh Python process
(:mod:`paperlab.bot._sandbox_child`) that

- is killed after ``wall_seconds`` of wall-clock time, and limited to ``cpu_seconds`` of CPU time and
  ``memory_mb`` of address space (``resource.setrlimit``);
- refuses network access, new processes and ctypes, and writes, deletions or renames outside its own
  temporary directory (a PEP 578 audit hook, installed before the program runs and impossible to remove
  from Python); files it writes are capped at 1 MB;
- starts in isolated mode (``python -I -B``: no user site, no ``PYTHON*`` variables, no bytecode written),
  with an environment of ``PATH`` and ``HOME`` (the temporary directory) only.

A stopped or refused program gives a :class:`RunResult` with ``ok=False`` and a one-line ``reason``
(``"timed out after 2 s (wall clock)"``, ``"memory limit of 256 MB reached"``, ``"refused: network
access is not allowed in the sandbox"``). This is a guard against accidents, not a security boundary: a
Python-level hook does not stop a determined attacker the way a container or a virtual machine does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Limits", "RunResult", "run_program"]

CHILD = Path(__file__).with_name("_sandbox_child.py")


@dataclass(frozen=True)
class Limits:
    """What a sandboxed program may use."""

    wall_seconds: float = 10.0
    cpu_seconds: int = 5
    memory_mb: int = 512
    max_output_chars: int = 20_000

    def __post_init__(self) -> None:
        if not (isinstance(self.wall_seconds, (int, float)) and self.wall_seconds > 0):
            raise ValueError(f"Limits.wall_seconds must be > 0, got {self.wall_seconds!r}")
        for name in ("cpu_seconds", "memory_mb", "max_output_chars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{name} must be a whole number >= 1, got {value!r}")


@dataclass(frozen=True)
class RunResult:
    """``ok``: the program ran to its end; ``stdout`` what it printed; ``reason`` why it did not end well
    (None when ok); ``seconds`` the wall-clock time of the whole run, process start included."""

    ok: bool
    stdout: str
    reason: str | None
    seconds: float

    @property
    def answer(self) -> str | None:
        """The last non-empty line the program printed (its answer), or None."""
        lines = [line.strip() for line in self.stdout.splitlines() if line.strip()]
        return lines[-1] if self.ok and lines else None


def run_program(source: str, limits: Limits | None = None) -> RunResult:
    """Run the Python program ``source`` in a sandboxed process (see the module docstring)."""
    if not isinstance(source, str) or not source.strip():
        raise ValueError("run_program needs the program's source as a non-empty string")
    limits = limits or Limits()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="paperlab-sandbox-") as workdir:
        program = Path(workdir) / "program.py"
        program.write_text(source, encoding="utf-8")
        command = [sys.executable, "-I", "-B", str(CHILD), workdir, str(limits.memory_mb),
                   str(limits.cpu_seconds), str(program)]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": workdir, "LC_ALL": "C.UTF-8"}
        process = subprocess.Popen(command, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
        try:
            stdout, stderr = process.communicate(timeout=limits.wall_seconds)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, _ = process.communicate()
            return RunResult(False, stdout[: limits.max_output_chars],
                             f"timed out after {limits.wall_seconds:g} s (wall clock)",
                             time.perf_counter() - start)
    seconds = time.perf_counter() - start
    stdout = stdout[: limits.max_output_chars]
    if process.returncode == 0:
        return RunResult(True, stdout, None, seconds)
    return RunResult(False, stdout, _reason(process.returncode, stderr, limits), seconds)


def _reason(returncode: int, stderr: str, limits: Limits) -> str:
    marked = [line for line in stderr.splitlines() if line.startswith("SANDBOX: ")]
    if marked:
        return marked[-1].removeprefix("SANDBOX: ")
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return f"CPU time limit of {limits.cpu_seconds} s exceeded"
    if returncode == -signal.SIGXFSZ:
        return "file size limit of 1 MB exceeded"
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    return f"exited with status {returncode}" + (f": {last}" if last else "")
