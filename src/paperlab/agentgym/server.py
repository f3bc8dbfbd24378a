"""An environment behind HTTP: the :class:`~paperlab.agentgym.service.EnvService` calls as a FastAPI app.

    python -m paperlab.agentgym serve --env craft --host 127.0.0.1 --port 8101

The routes are AgentGym's (``agentenv-*/server.py``), with JSON bodies checked by pydantic:

| route | body / query | reply |
|---|---|---|
| ``GET /`` | | the environment, its splits and step limit, episodes held |
| ``POST /create`` | ``{"instruction_id", "seed"}`` (optional) | ``{"id", "observation", "reward", "done"}`` |
| ``POST /reset`` | ``{"id", "instruction_id", "seed"}`` | as ``/create`` |
| ``POST /step`` | ``{"id", "action"}`` | ``{"observation", "reward", "done", "truncated", "step"}`` |
| ``GET /observation`` | ``?id=`` | ``{"id", "observation", "done", "reward", "step"}`` |
| ``POST /close`` | ``{"id"}`` | ``{"id", "closed": true}`` |

A refused call answers with the status of its :class:`~paperlab.agentgym.service.ServiceError` and
``{"detail": message}``; a malformed body (a missing field, a wrong type, an unknown field) is 422 from
FastAPI's validation; anything unexpected is a 500 with a message, and the server keeps serving.
Servers listen on the loopback interface only (127.0.0.1 or ::1).

:class:`BackgroundServer` starts one in a subprocess on a free port (the chapter does, and stops it at
the end); :func:`load_test` measures how many steps per second it serves to concurrent clients.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from paperlab.agentgym.base import MAX_TEXT
from paperlab.agentgym.service import EnvService, ServiceError

__all__ = ["LOOPBACK", "create_app", "serve", "BackgroundServer", "start_servers", "free_port", "load_test"]

LOOPBACK = ("127.0.0.1", "::1", "localhost")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CreateBody(_Body):
    instruction_id: int = Field(0, ge=0)
    seed: int = Field(0, ge=0, lt=2**32)


class ResetBody(_Body):
    id: int = Field(ge=0)
    instruction_id: int = Field(ge=0)
    seed: int = Field(0, ge=0, lt=2**32)


class StepBody(_Body):
    id: int = Field(ge=0)
    action: str = Field(max_length=MAX_TEXT)


class CloseBody(_Body):
    id: int = Field(ge=0)


def create_app(env: str, *, idle_timeout: float = 600.0, max_episodes: int = 4096) -> FastAPI:
    """The FastAPI app serving environment ``env`` (see the module docstring for its routes)."""
    service = EnvService(env, idle_timeout=idle_timeout, max_episodes=max_episodes)
    app = FastAPI(title=f"paperlab AgentGym environment: {env}")
    app.state.service = service

    @app.exception_handler(ServiceError)
    async def refused(request: Request, error: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": error.message}, status_code=error.status)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:  # pragma: no cover
        return JSONResponse({"detail": f"internal error: {type(error).__name__}: {error}"}, status_code=500)

    @app.get("/")
    def info() -> dict:
        return service.info()

    @app.post("/create")
    def create(body: CreateBody | None = None) -> dict:
        body = body or CreateBody()
        return service.create(body.instruction_id, body.seed)

    @app.post("/reset")
    def reset(body: ResetBody) -> dict:
        return service.reset(body.id, body.instruction_id, body.seed)

    @app.post("/step")
    def step(body: StepBody) -> dict:
        return service.step(body.id, body.action)

    @app.get("/observation")
    def observation(id: int) -> dict:  # noqa: A002 - AgentGym's query parameter name
        return service.observation(id)

    @app.post("/close")
    def close(body: CloseBody) -> dict:
        return service.close(body.id)

    return app


def check_host(host: str) -> str:
    if host not in LOOPBACK:
        raise ValueError(f"host {host!r}: the environment servers listen on the loopback interface only "
                         f"({', '.join(LOOPBACK)})")
    return host


def serve(env: str, *, host: str = "127.0.0.1", port: int = 8101, idle_timeout: float = 600.0,
          max_episodes: int = 4096) -> None:
    """Serve environment ``env`` until interrupted (uvicorn, one process)."""
    import uvicorn

    check_host(host)
    app = create_app(env, idle_timeout=idle_timeout, max_episodes=max_episodes)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class BackgroundServer:
    """``python -m paperlab.agentgym serve`` in a subprocess on a free port of 127.0.0.1.

    ``start()`` returns once the server answers (or raises with its error output if it exits first);
    ``stop()`` ends it (also at interpreter exit, so that no server outlives the chapter). A context
    manager too: ``with BackgroundServer("craft") as server: HttpClient(server.url)``.
    """

    def __init__(self, env: str, *, port: int | None = None, idle_timeout: float = 600.0,
                 max_episodes: int = 4096, startup_timeout: float = 60.0):
        from paperlab.agentgym.envs import env_class

        env_class(env)  # an unknown name fails here, in one line, not in the subprocess
        self.env, self.port = env, port or free_port()
        self.idle_timeout, self.max_episodes = idle_timeout, max_episodes
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> BackgroundServer:
        """Start the server and wait until it answers."""
        return self.launch().wait()

    def launch(self) -> BackgroundServer:
        """Start the subprocess without waiting for it (:meth:`wait` does)."""
        if self.process is not None:
            return self
        self._log = tempfile.TemporaryFile()
        command = [sys.executable, "-m", "paperlab.agentgym", "serve", "--env", self.env, "--host",
                   "127.0.0.1", "--port", str(self.port), "--idle-timeout", str(self.idle_timeout),
                   "--max-episodes", str(self.max_episodes)]
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        atexit.register(self.stop)
        self._started = time.monotonic()
        return self

    def wait(self) -> BackgroundServer:
        """Return once the server answers; raise (with its output) if it exits or does not answer within
        ``startup_timeout`` seconds of its launch."""
        import httpx

        if self.process is None:
            raise RuntimeError("launch() the server before waiting for it")
        deadline = self._started + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the {self.env} server exited with code {self.process.returncode}: "
                                   f"{self._output()[-500:]}")
            try:
                if httpx.get(self.url + "/", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the {self.env} server did not answer within {self.startup_timeout:g} s")

    def _output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                self.process.kill()
                self.process.wait()
        self.process = None
        self._log.close()
        atexit.unregister(self.stop)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def start_servers(envs, **options) -> dict[str, BackgroundServer]:
    """A :class:`BackgroundServer` for each environment, launched side by side, returned once all answer."""
    servers = {env: BackgroundServer(env, **options) for env in envs}
    try:
        for server in servers.values():
            server.launch()
        for server in servers.values():
            server.wait()
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
    return servers


def load_test(url: str, n_clients: int, *, steps_per_client: int = 200, time_limit: float = 30.0,
              actions: tuple[str, ...] = ("get sand", "craft glass", "look around")) -> dict:
    """``n_clients`` threads, each with its own episode and HTTP connection, step as fast as the server
    answers: ``steps_per_client`` steps each (cycling through ``actions``, resetting finished episodes),
    or until ``time_limit`` seconds pass. Returns the steps served, the seconds, and steps per second.
    Bounded in count and time, and every episode is closed at the end."""
    from paperlab.agentgym.client import HttpClient

    if not isinstance(n_clients, int) or n_clients < 1:
        raise ValueError(f"n_clients must be a positive integer, got {n_clients!r}")
    counts = [0] * n_clients
    errors: list[str] = []
    start_gate = threading.Barrier(n_clients + 1)
    deadline_box = [0.0]

    def work(index: int) -> None:
        with HttpClient(url) as client:
            episode = client.create(instruction_id=index % 100)["id"]
            start_gate.wait()
            try:
                for step in range(steps_per_client):
                    if time.monotonic() > deadline_box[0]:
                        break
                    if client.step(episode, actions[step % len(actions)])["done"]:
                        client.reset(episode, instruction_id=(index + step) % 100)
                    counts[index] += 1
            except Exception as error:  # noqa: BLE001 - reported, not raised in a thread
                errors.append(f"{type(error).__name__}: {error}")
            finally:
                client.close(episode)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(n_clients)]
    for thread in threads:
        thread.start()
    deadline_box[0] = time.monotonic() + time_limit
    start = time.perf_counter()
    start_gate.wait()
    for thread in threads:
        thread.join(time_limit + 30)
    seconds = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed during the load test; first: {errors[0]}")
    steps = sum(counts)
    return {"clients": n_clients, "steps": steps, "seconds": seconds, "steps_per_second": steps / seconds}
