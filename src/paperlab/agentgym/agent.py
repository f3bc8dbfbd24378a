"""A ReAct agent: a language model writes a thought and an action each turn; the environment answers.

One turn of the agent is a text in AgentGym's format (ReAct, Yao et al., 2023)::

    Thought: working on glass. Action: get sand

and the environment's reply is the next observation. The agent reads the whole episode so far as one
text, the first observation (with the instruction) followed by its turns and the replies, each of its
turns closed by the end-of-sequence marker ``<eos>``, as the authors' training code closes every
assistant turn with the model's end-of-sequence token::

    craft: make lamp. recipes: ... Thought: working on glass. Action: get sand <eos> got sand. Thought: ...

and continues it: the language model (any :class:`paperlab.llm.LLM`; the chapter's tiny GPT) generates
until ``<eos>``, and the action is the text after ``Action:`` (the whole reply when that is missing, so
that the environment says it cannot use it). :func:`rollout` plays many episodes side by side, one
language-model call per turn for all of them, through any :class:`~paperlab.agentgym.client.EnvClient`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import ClassVar

from paperlab.agentgym.envs import ENVS, make_env
from paperlab.tokenizers import SPECIAL_TOKENS, WordTokenizer

__all__ = ["END", "AgentTokenizer", "Turn", "Trajectory", "agent_tokenizer", "react_text", "parse_action",
           "expert_trajectory", "encode_conversation", "rollout"]

END = "<eos>"  # closes each of the agent's turns in the text it reads


class AgentTokenizer(WordTokenizer):
    """:class:`~paperlab.tokenizers.WordTokenizer` that also reads the marker ``<eos>`` in a text as the
    end-of-sequence token, so that an episode written out as text (with its turns closed) encodes to
    exactly the tokens the model was trained on."""

    kind = "agent-word"
    PATTERN: ClassVar[re.Pattern] = re.compile(r"<eos>|\w+(?:'\w+)*|[^\w\s]")


def agent_tokenizer() -> AgentTokenizer:
    """One vocabulary for every environment (the agent is a generalist): the words they write and their
    experts act with, and the ReAct format's own words; the same on every machine."""
    words = set().union(*(env.vocabulary() for env in ENVS.values())) | {"Thought", "Action", ":", "."}
    return AgentTokenizer(list(SPECIAL_TOKENS) + sorted(words - set(SPECIAL_TOKENS)))


def react_text(thought: str, action: str) -> str:
    """One agent turn in AgentGym's ReAct format."""
    return f"Thought: {thought} Action: {action}"


def parse_action(text: str) -> str:
    """The action of a ReAct reply: what follows the last ``Action:`` (the whole reply without one)."""
    head, marker, tail = text.rpartition("Action:")
    return (tail if marker else text).strip()


@dataclass
class Turn:
    """One turn: the agent's reply, the action sent, and the environment's answer."""

    text: str
    action: str
    observation: str
    reward: float


@dataclass
class Trajectory:
    """One episode. ``ended``: ``"done"`` (the environment ended it: success or a final purchase),
    ``"step limit"``, or ``"context"`` (the episode no longer fit the model's context)."""

    env: str
    instruction_id: int
    seed: int
    first_observation: str
    turns: list[Turn] = field(default_factory=list)
    reward: float = 0.0
    ended: str = ""

    @property
    def success(self) -> bool:
        """AgentGym's success: the final reward is 1."""
        return self.reward >= 1.0

    def prompt(self) -> str:
        """The text the agent continues for its next turn."""
        parts = [self.first_observation]
        for turn in self.turns:
            parts += [turn.text, END, turn.observation]
        return " ".join(parts)

    def conversation(self) -> list[tuple[str, bool]]:
        """``(text, is_agent)`` segments for training: the first observation, then each agent turn and the
        environment's answer (the last answer, after which the agent says nothing, is left out)."""
        segments = [(self.first_observation, False)]
        for i, turn in enumerate(self.turns):
            segments.append((turn.text, True))
            if i + 1 < len(self.turns):
                segments.append((turn.observation, False))
        return segments

    def key(self) -> tuple:
        """What makes two trajectories the same: the episode and every reply (the environments are
        deterministic, so the observations follow)."""
        return (self.env, self.instruction_id, self.seed, tuple(turn.text for turn in self.turns))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Trajectory:
        return cls(**{**data, "turns": [Turn(**turn) for turn in data["turns"]]})


def expert_trajectory(env: str, instruction_id: int, seed: int = 0) -> Trajectory:
    """The expert solver's episode on one instruction (an AgentTraj trajectory)."""
    environment = make_env(env)
    observation, _ = environment.reset(seed=seed, options={"instruction_id": instruction_id})
    trajectory = Trajectory(env, instruction_id, seed, observation)
    done = False
    while not done:
        move = environment.expert_action()
        observation, reward, terminated, truncated, _ = environment.step(move.action)
        trajectory.turns.append(Turn(react_text(move.thought, move.action), move.action, observation, reward))
        trajectory.reward, done = reward, terminated or truncated
        trajectory.ended = "done" if terminated else "step limit"
    return trajectory


def encode_conversation(tokenizer: AgentTokenizer, trajectory: Trajectory) -> list[tuple[list[int], bool]]:
    """Token segments for :func:`paperlab.align.sft_turns_batch`: ``<bos>`` and the observations are
    context, each agent turn and its closing ``<eos>`` are targets. Concatenated, they are exactly the
    tokens of ``<bos>`` + :meth:`Trajectory.prompt` read by the agent."""
    segments = []
    for i, (text, is_agent) in enumerate(trajectory.conversation()):
        ids = tokenizer.encode(text, add_bos=i == 0, add_eos=is_agent)
        if tokenizer.unk_id in ids:
            raise ValueError(f"{trajectory.env} text has words the agent's vocabulary lacks: {text!r}")
        segments.append((ids, is_agent))
    return segments


def _tiny_model_limits(llm, max_tokens: int) -> tuple[Callable[[str], bool], Callable[[str], str]]:
    """For the tiny model: a test that a prompt leaves room for ``max_tokens`` more in its context, and a
    cleaner that drops from a reply the pieces its tokenizer cannot read back (an untrained model may
    write ``<unk>``). Other language models: no limit, replies kept as they are."""
    from paperlab.llm import TinyLM

    if not isinstance(llm, TinyLM):
        return (lambda prompt: True), (lambda text: text)
    room = llm.model.config.context_length + 1 - max_tokens
    tokenizer = llm.tokenizer

    def readable(text: str) -> str:
        return tokenizer.decode([i for i in tokenizer.encode(text) if i != tokenizer.unk_id])

    return (lambda prompt: len(llm.encode_prompt(prompt)) <= room), readable


def rollout(llm, clients: Mapping[str, object], episodes: Sequence[tuple[str, int, int]], *,
            temperature: float = 0.0, max_tokens: int = 16) -> list[Trajectory]:
    """Play ``episodes`` (``(env, instruction_id, seed)`` each) side by side with the agent ``llm``.

    clients: an :class:`~paperlab.agentgym.client.EnvClient` per environment name (in-process or over
    HTTP: the trajectories are the same). Each round, every unfinished episode's text goes to the model in
    one :meth:`~paperlab.llm.LLM.complete` call (sorted by length, so that batches pad little), each reply's
    action goes to its environment. ``temperature=0`` is greedy (evaluation); AgentEvol explores at 1.2.
    An episode ends when its environment says so, or (tiny model) when its text no longer fits the context.
    """
    missing = sorted({env for env, _, _ in episodes} - set(clients))
    if missing:
        raise ValueError(f"rollout has episodes of {missing} but no client for them")
    fits, readable = _tiny_model_limits(llm, max_tokens)
    trajectories, ids = [], []
    for env, instruction_id, seed in episodes:
        created = clients[env].create(instruction_id=instruction_id, seed=seed)
        ids.append(created["id"])
        trajectories.append(Trajectory(env, instruction_id, seed, created["observation"]))
    try:
        live = list(range(len(trajectories)))
        while live:
            for i in [i for i in live if not fits(trajectories[i].prompt())]:
                trajectories[i].ended = "context"
            live = [i for i in live if not trajectories[i].ended]
            if not live:
                break
            order = sorted(live, key=lambda i: len(trajectories[i].prompt()))
            replies = llm.complete([trajectories[i].prompt() for i in order], n=1, temperature=temperature,
                                   max_tokens=max_tokens)
            for i, (reply,) in zip(order, replies):
                trajectory = trajectories[i]
                text = readable(reply.text)
                action = parse_action(text)
                result = clients[trajectory.env].step(ids[i], action)
                trajectory.turns.append(Turn(text, action, result["observation"], result["reward"]))
                trajectory.reward = result["reward"]
                if result["done"]:
                    trajectory.ended = "step limit" if result["truncated"] else "done"
            live = [i for i in live if not trajectories[i].ended]
    finally:
        for trajectory, episode_id in zip(trajectories, ids):
            clients[trajectory.env].close(episode_id)
    return trajectories
