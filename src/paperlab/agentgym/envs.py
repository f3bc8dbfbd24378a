"""The chapter's environments by name, and the expert's trajectories through them."""

from __future__ import annotations

from paperlab.agentgym.base import TextEnv
from paperlab.agentgym.craft import CraftEnv
from paperlab.agentgym.grid import GridEnv
from paperlab.agentgym.shop import ShopEnv
from paperlab.agentgym.wordle import WordleEnv

ENVS: dict[str, type[TextEnv]] = {env.name: env for env in (CraftEnv, WordleEnv, GridEnv, ShopEnv)}


def env_class(name: str) -> type[TextEnv]:
    """The environment class called ``name``; an unknown name is a one-line error listing the known ones."""
    if name not in ENVS:
        raise ValueError(f"unknown environment {name!r}; known: {', '.join(ENVS)}")
    return ENVS[name]


def make_env(name: str) -> TextEnv:
    return env_class(name)()
