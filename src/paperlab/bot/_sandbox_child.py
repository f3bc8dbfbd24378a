"""The sandboxed child process: ``python -I -B _sandbox_child.py <workdir> <memory MB> <cpu s> <program>``.

Run by :func:`paperlab.bot.sandbox.run_program`, never imported. Before the program runs it

1. limits the process (``resource``): address space (memory), CPU seconds, size of any file written,
   number of open files;
2. installs an audit hook (PEP 578; it cannot be removed once installed) that refuses sockets, new
   processes, ctypes, and any write, deletion or rename outside ``workdir``;
3. moves into ``workdir`` and runs the program as ``__main__``.

A refusal, a memory error or an uncaught exception ends the child with a one-line reason on stderr,
after the marker ``SANDBOX:``, and a distinct exit status (see ``EXIT``).
"""

import os
import resource
import sys
import traceback

EXIT = {"error": 1, "refused": 4, "memory": 5}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
PATH_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate",
               "os.symlink", "os.link", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile"}
REFUSED_PREFIXES = ("socket.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn", "os.fork",
                    "os.system", "os.kill", "ctypes.", "os.putenv", "os.unsetenv")


class Refused(PermissionError):
    pass


def main() -> None:
    workdir, memory_mb, cpu_seconds, program_path = sys.argv[1:5]
    workdir = os.path.realpath(workdir)
    with open(program_path, encoding="utf-8") as handle:
        source = handle.read()
    code = compile(source, "<program>", "exec")

    memory = int(memory_mb) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (int(cpu_seconds), int(cpu_seconds) + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    def inside(path) -> bool:
        if isinstance(path, int):  # an already-open descriptor
            return True
        real = os.path.realpath(os.fsdecode(path))
        return real == workdir or real.startswith(workdir + os.sep)

    def hook(event: str, args: tuple) -> None:
        if event.startswith(REFUSED_PREFIXES):
            what = "network access" if event.startswith("socket.") else f"'{event}'"
            raise Refused(f"{what} is not allowed in the sandbox")
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                (isinstance(flags, int) and flags & WRITE_FLAGS)
            if writing and path is not None and not inside(path):
                raise Refused(f"writing {os.fsdecode(path)!r} is not allowed: only the sandbox's temporary "
                              "directory is writable")
        elif event in PATH_EVENTS:
            for path in args[:2]:
                if isinstance(path, (str, bytes, os.PathLike)) and not inside(path):
                    raise Refused(f"'{event}' on {os.fsdecode(path)!r} is not allowed outside the sandbox's "
                                  "temporary directory")

    os.chdir(workdir)
    sys.addaudithook(hook)
    try:
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    except Refused as err:
        sys.stdout.flush()
        sys.stderr.write(f"SANDBOX: refused: {err}\n")
        os._exit(EXIT["refused"])
    except MemoryError:
        sys.stdout.flush()
        sys.stderr.write(f"SANDBOX: memory limit of {memory_mb} MB reached\n")
        os._exit(EXIT["memory"])
    except BaseException as err:  # noqa: BLE001 - report the program's own error in one line
        sys.stdout.flush()
        frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename == "<program>"]
        where = f" (line {frames[-1].lineno})" if frames else ""
        sys.stderr.write(f"SANDBOX: error{where}: {type(err).__name__}: {err}\n")
        os._exit(EXIT["error"])
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
