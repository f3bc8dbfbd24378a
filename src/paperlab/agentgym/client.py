"""Clients of the uniform interface: the same calls in-process or over HTTP, with the same replies.

The agent code takes an :class:`EnvClient` and never knows which one it holds::

    client = LocalClient("craft")                      # in this process
    client = HttpClient("http://127.0.0.1:8101")       # `python -m paperlab.agentgym serve --port 8101`
    episode = client.create(instruction_id=3, seed=0)  # {"id": 0, "observation": "craft: make ...", ...}
    client.step(episode["id"], "get sand")             # {"observation": "got sand.", "reward": 0.0, ...}

A refused call raises :class:`EnvError` with the HTTP status and the server's message, in both clients
(404 for an unknown episode, 409 for a finished one, 422 for a bad argument, 503 for a full server).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from paperlab.agentgym.service import EnvService, ServiceError

__all__ = ["EnvError", "EnvClient", "LocalClient", "HttpClient"]


class EnvError(RuntimeError):
    """A call the environment service refused: ``status`` (HTTP) and the service's message."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


class EnvClient(ABC):
    """The five calls of the platform (and ``info``); see :mod:`paperlab.agentgym.service`."""

    env: str

    @abstractmethod
    def _call(self, name: str, **arguments) -> dict: ...

    def info(self) -> dict:
        return self._call("info")

    def create(self, instruction_id: int = 0, seed: int = 0) -> dict:
        return self._call("create", instruction_id=instruction_id, seed=seed)

    def reset(self, episode_id: int, instruction_id: int, seed: int = 0) -> dict:
        return self._call("reset", id=episode_id, instruction_id=instruction_id, seed=seed)

    def step(self, episode_id: int, action: str) -> dict:
        return self._call("step", id=episode_id, action=action)

    def observation(self, episode_id: int) -> dict:
        return self._call("observation", id=episode_id)

    def close(self, episode_id: int) -> dict:
        return self._call("close", id=episode_id)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def shutdown(self) -> None:  # noqa: B027 - nothing to release in-process; HttpClient closes its pool
        """Release the client's resources (the HTTP connection pool)."""


class LocalClient(EnvClient):
    """The service in this process (or a given one, shared between clients)."""

    def __init__(self, env: str | None = None, *, service: EnvService | None = None, **service_options):
        if (env is None) == (service is None):
            raise ValueError("give LocalClient an environment name or a service, not both")
        self.service = service or EnvService(env, **service_options)
        self.env = self.service.name

    def _call(self, name: str, **arguments) -> dict:
        episode_id = arguments.pop("id", None)
        method = getattr(self.service, name)
        try:
            return method(**arguments) if episode_id is None else method(episode_id, **arguments)
        except ServiceError as error:
            raise EnvError(error.status, error.message) from None


class HttpClient(EnvClient):
    """A server at ``base_url`` (``http://127.0.0.1:PORT``), through one :class:`httpx.Client` connection
    pool. ``timeout``: seconds per request."""

    ROUTES = {"info": ("GET", "/"), "create": ("POST", "/create"), "reset": ("POST", "/reset"),
              "step": ("POST", "/step"), "observation": ("GET", "/observation"), "close": ("POST", "/close")}

    def __init__(self, base_url: str, *, timeout: float = 30.0):
        import httpx

        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout)
        self.env = self.info()["env"]

    def _call(self, name: str, **arguments) -> dict:
        method, path = self.ROUTES[name]
        if method == "GET":
            response = self.http.get(path, params=arguments or None)
        else:
            response = self.http.post(path, json=arguments)
        if response.status_code != 200:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise EnvError(response.status_code, detail if isinstance(detail, str) else str(detail))
        return response.json()

    def shutdown(self) -> None:
        self.http.close()
