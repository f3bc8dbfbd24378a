"""The platform's uniform interface over one environment: many episodes, each known by an id.

AgentGym serves every environment behind the same five calls (its ``/create``, ``/step``, ``/reset``,
``/observation``, ``/close``), so that one agent loop drives them all. :class:`EnvService` is that
interface in-process; :mod:`paperlab.agentgym.server` puts it behind HTTP unchanged, and the clients of
:mod:`paperlab.agentgym.client` reach it either way with the same results.

- ``create(instruction_id=0, seed=0)``: a new episode (its id) started on that instruction and seed.
- ``reset(id, instruction_id, seed=0)``: restart an episode on another (or the same) instruction.
- ``step(id, action)``: one action; the reply has the observation, the reward, ``done`` and the step.
- ``observation(id)``: the last observation again.
- ``close(id)``: forget the episode.

Every reply is a plain dict (JSON over HTTP). Bad calls raise a :class:`ServiceError` whose ``status`` is
the HTTP status the server answers with: an unknown (or reclaimed) episode id is 404, a step on a finished
episode 409, an out-of-range instruction or an over-long action 422, a full server 503. An action the
environment cannot use is *not* an error: its observation says so and the episode goes on. Episodes end
at the environment's step limit (``done`` with ``truncated``). Episodes left idle for ``idle_timeout``
seconds are reclaimed (closed) at the next call, so that clients that vanish do not fill the server.
Calls may come from many threads at once.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from paperlab.agentgym.base import MAX_TEXT, TextEnv
from paperlab.agentgym.envs import env_class

__all__ = ["EnvService", "ServiceError", "UnknownEpisode", "EpisodeOver", "BadRequest", "ServerFull"]


class ServiceError(Exception):
    """A call the service refuses; ``status`` is the HTTP status of the refusal."""

    status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class UnknownEpisode(ServiceError):
    status = 404


class EpisodeOver(ServiceError):
    status = 409


class BadRequest(ServiceError):
    status = 422


class ServerFull(ServiceError):
    status = 503


@dataclass
class _Episode:
    env: TextEnv
    last_used: float
    done: bool = False
    reward: float = 0.0


class EnvService:
    """Episodes of one environment by id (see the module docstring for the calls and their errors).

    idle_timeout: seconds after which an unused episode is reclaimed; max_episodes: episodes held at once;
    clock: the time source (seconds; tests pass a fake one).
    """

    def __init__(self, env: str, *, idle_timeout: float = 600.0, max_episodes: int = 4096,
                 clock: Callable[[], float] = time.monotonic):
        if not (isinstance(idle_timeout, (int, float)) and idle_timeout > 0):
            raise ValueError(f"idle_timeout must be a positive number of seconds, got {idle_timeout!r}")
        if not isinstance(max_episodes, int) or max_episodes < 1:
            raise ValueError(f"max_episodes must be a positive integer, got {max_episodes!r}")
        self.env_class = env_class(env)
        self.env_class.tasks()  # build the instruction set now, not during the first request
        self.name = env
        self.idle_timeout, self.max_episodes, self.clock = float(idle_timeout), max_episodes, clock
        self._episodes: OrderedDict[int, _Episode] = OrderedDict()  # least recently used first
        self._reclaimed: deque[int] = deque(maxlen=65536)
        self._ids = itertools.count()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the five calls
    def create(self, instruction_id: int = 0, seed: int = 0) -> dict:
        with self._lock:
            self._reclaim()
            if len(self._episodes) >= self.max_episodes:
                raise ServerFull(f"the {self.name} server holds {len(self._episodes)} episodes, its limit; "
                                 "close some (or wait for idle ones to be reclaimed)")
            env = self.env_class()
            observation = self._reset_env(env, instruction_id, seed)
            episode_id = next(self._ids)
            self._episodes[episode_id] = _Episode(env, self.clock())
            return {"id": episode_id, **self._state(env, observation)}

    def reset(self, episode_id: int, instruction_id: int, seed: int = 0) -> dict:
        with self._lock:
            episode = self._get(episode_id)
            observation = self._reset_env(episode.env, instruction_id, seed)
            episode.done, episode.reward = False, 0.0
            return {"id": episode_id, **self._state(episode.env, observation)}

    def step(self, episode_id: int, action: str) -> dict:
        with self._lock:
            episode = self._get(episode_id)
            if not isinstance(action, str):
                raise BadRequest(f"action must be a string, got {type(action).__name__}")
            if len(action) > MAX_TEXT:
                raise BadRequest(f"action has {len(action)} characters; at most {MAX_TEXT}")
            if episode.done:
                raise EpisodeOver(f"episode {episode_id} is over; reset it or close it")
            observation, reward, terminated, truncated, info = episode.env.step(action)
            episode.done, episode.reward = terminated or truncated, reward
            return {"observation": observation, "reward": reward, "done": episode.done,
                    "truncated": truncated, "step": info["steps"], "max_steps": info["max_steps"]}

    def observation(self, episode_id: int) -> dict:
        with self._lock:
            episode = self._get(episode_id)
            return {"id": episode_id, "observation": episode.env.last_observation, "done": episode.done,
                    "reward": episode.reward, "step": episode.env.steps}

    def close(self, episode_id: int) -> dict:
        with self._lock:
            self._get(episode_id)
            del self._episodes[episode_id]
            return {"id": episode_id, "closed": True}

    def info(self) -> dict:
        """What the server serves: the environment, its splits and step limit, episodes held now."""
        with self._lock:
            self._reclaim()
            cls = self.env_class
            return {"env": self.name, "n_train": cls.n_train, "n_test": cls.n_test,
                    "max_steps": cls.max_steps, "episodes": len(self._episodes),
                    "idle_timeout": self.idle_timeout, "max_episodes": self.max_episodes}

    # ------------------------------------------------------------------ helpers (called under the lock)
    def _get(self, episode_id: int) -> _Episode:
        self._reclaim()
        if isinstance(episode_id, bool) or not isinstance(episode_id, int):
            raise BadRequest(f"id must be an integer, got {episode_id!r}")
        episode = self._episodes.get(episode_id)
        if episode is None:
            why = (f"reclaimed after {self.idle_timeout:g} s idle" if episode_id in self._reclaimed
                   else "never created, or closed")
            raise UnknownEpisode(f"unknown episode id {episode_id} ({why})")
        episode.last_used = self.clock()
        self._episodes.move_to_end(episode_id)
        return episode

    def _reset_env(self, env: TextEnv, instruction_id: int, seed: int) -> str:
        try:
            observation, _ = env.reset(seed=seed, options={"instruction_id": instruction_id})
        except ValueError as error:
            raise BadRequest(str(error)) from None
        return observation

    @staticmethod
    def _state(env: TextEnv, observation: str) -> dict:
        return {"observation": observation, "reward": 0.0, "done": False,
                "instruction_id": env.instruction_id, "seed": env.episode_seed}

    def _reclaim(self) -> None:
        """Close every episode unused for ``idle_timeout`` seconds (the oldest are first in the dict)."""
        deadline = self.clock() - self.idle_timeout
        while self._episodes:
            episode_id, episode = next(iter(self._episodes.items()))
            if episode.last_used > deadline:
                break
            del self._episodes[episode_id]
            self._reclaimed.append(episode_id)
