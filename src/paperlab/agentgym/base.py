"""What every environment of the chapter is: a gymnasium ``Env`` whose observations and actions are text.

An environment (AgentGym's term; gymnasium's ``Env``) is a task the agent acts in turn by turn:

- ``reset(seed=s, options={"instruction_id": i})`` starts episode ``(i, s)``: instruction ``i`` of the
  environment's fixed instruction set (the task: an item to craft, a word to guess, ...) and the episode
  seed ``s`` (what else may vary: the order of search results, of listed recipes). The same ``(i, s)``
  always gives the same episode. It returns the first observation, which states the instruction.
- ``step(action)`` applies one text action and returns ``(observation, reward, terminated, truncated,
  info)``: reward 1 when the task is done (``terminated``), 0 otherwise (WebShop-like shopping pays a
  partial reward for a partly right purchase); ``truncated`` at the step limit. An action the environment
  cannot parse or apply is not an error: its observation says so, and the episode goes on (the step
  counts).
- Instruction ids ``0 .. n_train - 1`` are the training instructions (each with an expert trajectory:
  :meth:`TextEnv.expert_action` is a solver that plays from any state), ``n_train .. n_train + n_test - 1``
  the held-out ones the agents are evaluated on (AgentGym's AgentTraj and AgentEval).
  :meth:`TextEnv.random_action` plays at random (the text the chapter's base model is pretrained on).

Texts are written as :class:`paperlab.tokenizers.WordTokenizer` joins its pieces (words and punctuation
marks, a space between words, none before ``.,;:``), so that text round-trips through the agent's
tokenizer exactly.
"""

from __future__ import annotations

import random
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium
from gymnasium import spaces

__all__ = ["CHARSET", "Move", "TextEnv"]

# Every character an observation or an action may hold (gymnasium's Text spaces need the set).
CHARSET = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;_+=-'")
MAX_TEXT = 400  # characters of one observation or action at most


@dataclass(frozen=True)
class Move:
    """One expert move: the ReAct thought and the action (texts)."""

    thought: str
    action: str


class TextEnv(gymnasium.Env):
    """Base class: a text environment with a fixed instruction set, a step limit and an expert solver.

    Subclasses set ``name``, ``max_steps``, ``n_train``, ``n_test`` and implement :meth:`make_tasks`
    (the instruction set, deterministic), :meth:`_start` (the first observation of a task),
    :meth:`_act` (apply an action), :meth:`expert_action` and :meth:`vocabulary`.
    """

    name: ClassVar[str] = ""
    max_steps: ClassVar[int] = 10
    n_train: ClassVar[int] = 0
    n_test: ClassVar[int] = 0
    metadata: ClassVar[dict] = {"render_modes": ["ansi"]}
    _task_cache: ClassVar[dict[str, list]] = {}

    def __init__(self) -> None:
        super().__init__()
        self.observation_space = spaces.Text(MAX_TEXT, min_length=0, charset=CHARSET)
        self.action_space = spaces.Text(MAX_TEXT, min_length=0, charset=CHARSET)
        self.task: Any = None
        self.instruction_id: int | None = None
        self.episode_seed = 0
        self.steps = 0
        self.done = False
        self.rng = random.Random(0)
        self.last_observation = ""

    # ------------------------------------------------------------------ the instruction set
    @classmethod
    def tasks(cls) -> list:
        """All instructions, training first (built once per class, deterministically)."""
        if cls.name not in TextEnv._task_cache:
            tasks = cls.make_tasks()
            if len(tasks) != cls.n_train + cls.n_test:
                expected = cls.n_train + cls.n_test
                raise RuntimeError(f"{cls.name}: made {len(tasks)} tasks, expected {expected}")
            TextEnv._task_cache[cls.name] = tasks
        return TextEnv._task_cache[cls.name]

    @classmethod
    def split(cls, which: str) -> range:
        """Instruction ids of ``"train"`` (with expert trajectories) or ``"test"`` (held out)."""
        if which == "train":
            return range(cls.n_train)
        if which == "test":
            return range(cls.n_train, cls.n_train + cls.n_test)
        raise ValueError(f"split must be 'train' or 'test', got {which!r}")

    @classmethod
    @abstractmethod
    def make_tasks(cls) -> list:
        """The ``n_train + n_test`` tasks (distinct; the held-out ones unseen in training)."""

    @classmethod
    @abstractmethod
    def vocabulary(cls) -> set[str]:
        """Every word and punctuation mark the environment writes or its expert acts with."""

    # ------------------------------------------------------------------ gymnasium's interface
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, dict]:
        """Start episode ``(options["instruction_id"], seed)``; returns ``(observation, info)``."""
        options = options or {}
        instruction_id = options.get("instruction_id", 0)
        total = self.n_train + self.n_test
        if isinstance(instruction_id, bool) or not isinstance(instruction_id, int) \
                or not 0 <= instruction_id < total:
            raise ValueError(f"{self.name}: instruction_id must be an int in [0, {total}), "
                             f"got {instruction_id!r}")
        seed = 0 if seed is None else seed
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise ValueError(f"{self.name}: seed must be an int in [0, 2**32), got {seed!r}")
        super().reset(seed=seed)
        self.instruction_id, self.episode_seed = instruction_id, seed
        self.task = self.tasks()[instruction_id]
        self.rng = random.Random(f"{self.name}/{instruction_id}/{seed}")  # the episode's own randomness
        self.steps, self.done = 0, False
        self.last_observation = self._start()
        return self.last_observation, self._info()

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        """Apply one text action: ``(observation, reward, terminated, truncated, info)``."""
        if self.task is None:
            raise RuntimeError(f"{self.name}: call reset() before step()")
        if self.done:
            raise RuntimeError(f"{self.name}: the episode is over; call reset() to start another")
        if not isinstance(action, str):
            action = str(action)
        self.steps += 1
        observation, reward, terminated = self._act(" ".join(action.lower().split()))
        truncated = not terminated and self.steps >= self.max_steps
        self.done = terminated or truncated
        self.last_observation = observation
        return observation, float(reward), terminated, truncated, self._info()

    def render(self) -> str:
        return self.last_observation

    def _info(self) -> dict:
        return {"instruction_id": self.instruction_id, "seed": self.episode_seed, "steps": self.steps,
                "max_steps": self.max_steps}

    # ------------------------------------------------------------------ what subclasses define
    @abstractmethod
    def _start(self) -> str:
        """Set up the state of ``self.task``; return the first observation (with the instruction)."""

    @abstractmethod
    def _act(self, action: str) -> tuple[str, float, bool]:
        """Apply a (lower-cased, whitespace-normalised) action: ``(observation, reward, terminated)``."""

    @abstractmethod
    def expert_action(self) -> Move:
        """The solver's next move from the current state (it succeeds on every instruction)."""

    @abstractmethod
    def random_action(self, rng: random.Random) -> str:
        """A random but well-formed action (the words the environment knows), for random play."""
