"""Behavioural cloning and AgentEvol (Xi et al., 2024, sec. 4), on the book's tiny GPT.

**Behavioural cloning** (eq. 1): maximise the likelihood of the expert's turns given the episode so far,

    J_BC(theta) = E_{(e, u, tau) ~ D_s} [ sum_t log pi_theta(a_t | e, u, tau_<t) ],

where ``a_t`` is the agent's t-th turn (thought and action), ``u`` the instruction and ``tau_<t`` the
turns and observations before it; the environment's turns are context, never targets
(:func:`paperlab.align.sft_turns_batch`).

**AgentEvol** (Algorithm 1) reads reinforcement learning as inference: the policy that maximises the
expected reward is the posterior over trajectories given "optimality", ``q(tau) ∝ r(tau) pi(tau)``
(eq. 6-8), and each iteration ``m`` alternates

1. *exploration*: sample trajectories of the current agent on the instructions of every environment
   (temperature 1.2), including instructions that have no expert trajectory;
2. *learning*: maximise ``J_Evol(theta) = E_{tau ~ D_m} [ r(tau) log pi_theta(tau) ]`` (eq. 11) on
   ``D_m = D_s ∪ D_m^gen``, the expert trajectories merged with the new ones, training again **from the
   base model** (not from the last iterate, to avoid over-fitting).

With a binary reward, ``r(tau) log pi_theta(tau)`` keeps the successful trajectories at weight 1 and drops
the others: the learning step is behavioural cloning on the filtered data, which is what the authors'
code does (``utils/agentevol_filter.py`` keeps reward > 0.99). :func:`filter_trajectories` keeps what
succeeded and removes duplicates; :func:`train_agent` is the learning step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from paperlab import align
from paperlab.agentgym.agent import AgentTokenizer, Trajectory, encode_conversation
from paperlab.config import check_ints, check_that
from paperlab.nn import GPT, GPTConfig
from paperlab.train import BestWeights, TrainConfig, TrainResult, seed_everything, seeded_batches, train

__all__ = ["AgentModelConfig", "initial_model", "filter_trajectories", "train_agent", "conversation_loss"]


@dataclass(frozen=True)
class AgentModelConfig:
    """The agent's tiny GPT (the role Llama-2-Chat-7B plays in the paper)."""

    context_length: int = 192
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4

    def __post_init__(self) -> None:
        check_ints(self, "context_length", "d_model", "n_layers", "n_heads")
        check_that(self, self.d_model % self.n_heads == 0 and (self.d_model // self.n_heads) % 2 == 0,
                   "n_heads", f"a divisor of d_model = {self.d_model} leaving an even head size")


def initial_model(config: AgentModelConfig, vocab_size: int, seed: int) -> GPT:
    """A GPT of ``config`` with the random initial weights of ``seed`` (the same each time)."""
    seed_everything(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, context_length=config.context_length, d_model=config.d_model,
                         n_layers=config.n_layers, n_heads=config.n_heads))


def filter_trajectories(sampled: Iterable[Trajectory], *, threshold: float = 1.0,
                        existing: Iterable[Trajectory] = ()) -> list[Trajectory]:
    """AgentEvol's filter: the sampled trajectories with reward >= ``threshold`` (for a binary reward,
    ``r(tau) log pi(tau)`` keeps exactly these, eq. 11), each kept once, and none already in ``existing``
    (the expert data they are merged with). Order is kept."""
    seen = {t.key() for t in existing}
    kept = []
    for trajectory in sampled:
        if trajectory.reward >= threshold and trajectory.key() not in seen:
            seen.add(trajectory.key())
            kept.append(trajectory)
    return kept


def train_agent(trajectories: Sequence[Trajectory], tokenizer: AgentTokenizer, base: GPT,
                train_config: TrainConfig, *, validation: Sequence[Trajectory] = (),
                evaluate: Callable[[GPT], Mapping[str, float]] | None = None,
                select: Callable[[Mapping[str, float]], float] | None = None, device=None,
                desc: str = "agent") -> tuple[GPT, TrainResult, int]:
    """Behavioural cloning on ``trajectories`` (loss on the agent's turns only, eq. 1), starting from a
    copy of the ``base`` model (``base`` itself is not changed); batches are drawn with replacement from a
    stream seeded by ``train_config.seed``.

    At the trainer's evaluation steps it records ``val_loss`` on ``validation`` (expert trajectories no run
    trains on) and the metrics of ``evaluate(model)`` (e.g. the success rate of greedy episodes). Without
    ``select`` the last weights are kept; with it, those of the evaluation whose metrics give the lowest
    ``select(metrics)`` (:class:`paperlab.train.BestWeights`; ties keep the earlier). Returns the model,
    its history and the step of the weights kept."""
    if not trajectories:
        raise ValueError("train_agent needs at least one trajectory")
    if select is not None and not (validation or evaluate):
        raise ValueError("select needs validation trajectories or an evaluate function to choose by")
    conversations = [encode_conversation(tokenizer, t) for t in trajectories]
    longest = max(sum(len(ids) for ids, _ in c) for c in conversations)
    if longest > base.config.context_length + 1:
        raise ValueError(f"a trajectory has {longest} tokens; the context holds {base.config.context_length}")
    model = copy.deepcopy(base).train()
    pad = tokenizer.pad_id

    def sample(generator: torch.Generator) -> tuple:  # a batch of conversations, drawn with replacement
        picks = torch.randint(len(conversations), (train_config.batch_size,), generator=generator).tolist()
        return align.sft_turns_batch([conversations[i] for i in picks], pad_id=pad)

    held_out = [encode_conversation(tokenizer, t) for t in validation]

    def eval_fn(model: GPT) -> dict:
        metrics = {"val_loss": conversation_loss(model, held_out, pad_id=pad)} if held_out else {}
        return {**metrics, **(evaluate(model) if evaluate else {})}

    measure = eval_fn if (held_out or evaluate) else None
    if select is not None:
        measure = BestWeights(eval_fn, score=select)
    result = train(model, seeded_batches(sample, train_config.seed), lambda m, batch: m.loss(*batch),
                   train_config, eval_fn=measure, device=device, desc=desc)
    kept = measure.restore(model, result) if select is not None else train_config.steps
    return model.eval(), result, kept


@torch.no_grad()
def conversation_loss(model: GPT, conversations: Sequence, *, pad_id: int = 0,
                      batch_size: int = 256) -> float:
    """Mean loss per agent token (nats) over whole conversations (the BC objective, eq. 1, per token)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(conversations), batch_size):
        idx, targets = align.sft_turns_batch(conversations[start:start + batch_size], pad_id=pad_id)
        n = int((targets != -100).sum())
        total += model.loss(idx.to(device), targets.to(device)).item() * n
        count += n
    return total / count


def state_of(model: GPT) -> dict:
    """The model's weights on the CPU (for the cache)."""
    return {k: v.detach().cpu().clone() for k, v in copy.deepcopy(model.state_dict()).items()}
