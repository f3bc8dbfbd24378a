"""The base model: the tiny GPT pretrained on transcripts of random play, in the role of Llama-2-Chat-7B.

The paper's agents start from a pretrained chat model, which already reads instructions, copies words
from its context and writes well-formed text; behavioural cloning then only has to teach it the task. A
tiny GPT from random weights has none of that, and learns to copy from its context (the first skill every
environment here needs: an item from a recipe, a colour from the instruction) only after many updates.
So the chapter's base model is pretrained first, once, on what a language model could have read about these
games without ever seeing them played well: **transcripts of random play**. In each, a random policy
(:meth:`~paperlab.agentgym.base.TextEnv.random_action`) acts in an episode of a training instruction,
written as the agent reads it but without thoughts::

    shop: buy a red wool hat under 40. Action: buy 2 <eos> search first. Action: search wool hat <eos> ...

and the model learns to predict every token, the environment's answers included (so it learns how the
environments respond: ``get sand`` is followed by ``got sand.``). It sees no expert trajectory and no
reasoning; a random episode succeeds only by chance (the chapter reports how often).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from paperlab import align
from paperlab.agentgym.agent import END, AgentTokenizer, Trajectory, Turn, agent_tokenizer
from paperlab.agentgym.envs import ENVS, make_env
from paperlab.agentgym.evol import AgentModelConfig, initial_model
from paperlab.config import check_ints, check_str_tuple, check_that, check_type
from paperlab.nn import GPT
from paperlab.train import TrainConfig, TrainResult, seeded_batches, train

__all__ = ["PretrainConfig", "random_play", "corpus", "encode_transcript", "pretrain"]


@dataclass(frozen=True)
class PretrainConfig:
    """The base model's pretraining: ``episodes_per_instruction`` random-play transcripts of every training
    instruction of each environment; the model and its training (``train.seed`` seeds the weights, the
    batches and the random play)."""

    envs: tuple[str, ...] = ("craft", "wordle", "grid", "shop")
    episodes_per_instruction: int = 3
    model: AgentModelConfig = field(default_factory=AgentModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=800, batch_size=32, lr=3e-3, warmup_steps=40, seed=0))

    def __post_init__(self) -> None:
        check_str_tuple(self, "envs")
        for name in self.envs:
            check_that(self, name in ENVS, "envs", f"a tuple of known environments ({', '.join(ENVS)})")
        check_ints(self, "episodes_per_instruction")
        check_type(self, "model", AgentModelConfig)
        check_type(self, "train", TrainConfig)


def random_play(env: str, instruction_id: int, rng: random.Random) -> Trajectory:
    """One episode of the random policy on an instruction (its turns are ``Action: ...``)."""
    environment = make_env(env)
    observation, _ = environment.reset(options={"instruction_id": instruction_id})
    trajectory = Trajectory(env, instruction_id, 0, observation)
    done = False
    while not done:
        action = environment.random_action(rng)
        observation, reward, terminated, truncated, _ = environment.step(action)
        trajectory.turns.append(Turn(f"Action: {action}", action, observation, reward))
        trajectory.reward, done = reward, terminated or truncated
        trajectory.ended = "done" if terminated else "step limit"
    return trajectory


def corpus(config: PretrainConfig) -> list[Trajectory]:
    """The pretraining transcripts: random play on every training instruction of every environment."""
    rng = random.Random(config.train.seed)
    return [random_play(env, i, rng) for env in config.envs for i in ENVS[env].split("train")
            for _ in range(config.episodes_per_instruction)]


def encode_transcript(tokenizer: AgentTokenizer, trajectory: Trajectory) -> list[tuple[list[int], bool]]:
    """The whole transcript as the agent would read it (``<bos>``, every turn closed by ``<eos>``, every
    answer, the last one included), every token a target: plain language-model pretraining."""
    turns = [f"{turn.text} {END} {turn.observation}" for turn in trajectory.turns]
    text = " ".join([trajectory.first_observation, *turns])
    return [(tokenizer.encode(text, add_bos=True), True)]


def pretrain(config: PretrainConfig, *, device=None) -> tuple[GPT, TrainResult]:
    """Pretrain the base model from random weights on :func:`corpus` (next-token loss on every token)."""
    tokenizer = agent_tokenizer()
    transcripts = [encode_transcript(tokenizer, t) for t in corpus(config)]
    model = initial_model(config.model, tokenizer.vocab_size, config.train.seed)
    size = config.train.batch_size

    def sample(generator: torch.Generator) -> tuple:
        picks = torch.randint(len(transcripts), (size,), generator=generator).tolist()
        return align.sft_turns_batch([transcripts[i] for i in picks], pad_id=tokenizer.pad_id)

    result = train(model, seeded_batches(sample, config.train.seed), lambda m, batch: m.loss(*batch),
                   config.train, device=device, desc="pretraining the base model")
    return model.eval(), result
