"""The AgentGym chapter's experiment: BC_base, AgentEvol for several iterations, and BC_large, on four
text environments, evaluated on held-out instructions, over several seeds.

Every run starts from one base model, the tiny GPT pretrained on random play
(:mod:`paperlab.agentgym.pretrain`), as every run of the paper starts from Llama-2-Chat-7B. Per
environment, the training instructions ``0 .. n_large - 1`` all have expert trajectories; the paper's
split is mirrored as

- ``BC_base``: behavioural cloning on the expert trajectories of the first ``n_base`` (AgentTraj);
- ``AgentEvol``: starts from BC_base; each iteration explores all ``n_large`` training instructions
  (``samples_per_instruction`` samples each at ``temperature``), keeps the successful, new trajectories,
  merges them with BC_base's expert data and trains again from the base model;
- ``BC_large``: behavioural cloning on the expert trajectories of all ``n_large`` (AgentTraj-L);

every model is evaluated greedily on the ``n_test`` held-out instructions of each environment (AgentEval).
Every run follows one recipe: ``epochs`` passes over its own training set (so BC_large, with four times
BC_base's data, takes four times the steps; the authors, too, train every model for a fixed number of
epochs), the same learning rate and schedule shape, and it keeps the weights of its evaluation with the
highest greedy success rate on the validation instructions (:class:`paperlab.train.BestWeights`; the
authors keep the last weights of one epoch, which a 7B model does not over-fit, while a tiny model
over-fits a small set at its own step). The validation instructions are the training instructions
``n_large .. n_large + n_val - 1`` of each environment, which no run trains on or explores; the
validation loss (for the convergence check) is measured on their expert trajectories. A seed sets the
batches and the exploration's samples.

The base model is pretrained once and cached; then, for each seed, the AgentEvol chain
(BC_base and its iterations) and BC_large are two jobs, cached too, so the chapter reloads everything in
seconds. On the CPU the chains are computed piece by piece (train, evaluate, explore) over one process
per core (:func:`_run_scheduled`), which keeps both cores busy; the results are those of the whole jobs.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field

import torch

from paperlab import cache, stats
from paperlab.agentgym.agent import Trajectory, agent_tokenizer, expert_trajectory, rollout
from paperlab.agentgym.client import LocalClient
from paperlab.agentgym.envs import ENVS
from paperlab.agentgym.evol import AgentModelConfig, filter_trajectories, initial_model, state_of, train_agent
from paperlab.agentgym.pretrain import PretrainConfig, pretrain, random_play
from paperlab.config import (
    check_ints,
    check_numbers,
    check_seeds,
    check_str_tuple,
    check_that,
    check_type,
    pick,
)
from paperlab.experiments import Experiment
from paperlab.llm import TinyLM
from paperlab.nn import GPT
from paperlab.scheduling import run_as_ready
from paperlab.stats import CONVERGENCE_MIN_EVALUATIONS
from paperlab.train import TrainConfig, TrainResult, auto_device
from paperlab.utils import alone_threads, cpu_threads, parallel_map

__all__ = ["AgentGymConfig", "CONFIGS", "EXPERIMENT", "run", "run_job", "base_agent", "load_agent",
           "evaluate", "explore", "random_agent"]


@dataclass(frozen=True)
class AgentGymConfig:
    """Everything that determines the chapter's results (and so their cache keys)."""

    envs: tuple[str, ...] = ("craft", "wordle", "grid", "shop")
    n_base: int = 40  # expert trajectories per environment for BC_base (the paper's AgentTraj)
    n_large: int = 160  # training instructions per environment: explored; all with experts for BC_large
    n_val: int = 20  # expert trajectories per environment for the validation loss (trained on by no run)
    n_test: int = 60  # held-out instructions per environment (AgentEval)
    iterations: int = 3  # AgentEvol iterations after BC_base
    samples_per_instruction: int = 2  # exploration samples per training instruction and iteration
    temperature: float = 1.2  # exploration temperature (the authors' inference_and_filter)
    success_threshold: float = 1.0  # keep explored trajectories with at least this reward
    max_tokens: int = 16  # tokens per agent turn at most
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)  # the base model (and its size)
    epochs: int = 24  # passes over its own training set that every run makes (see train_config)
    warmup_fraction: float = 0.1  # of a run's steps, the learning rate's linear warmup
    # batch size, peak learning rate, schedule and evaluation period of every run; its steps and warmup
    # come from epochs and warmup_fraction, per run (train_config), so it must say steps=1, warmup_steps=0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=1, batch_size=32, lr=3e-3, warmup_steps=0, eval_every=40, seed=0))
    seeds: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self) -> None:
        check_str_tuple(self, "envs")
        for name in self.envs:
            check_that(self, name in ENVS, "envs", f"a tuple of known environments ({', '.join(ENVS)})")
        check_ints(self, "n_base", "n_large", "n_val", "n_test", "iterations", "samples_per_instruction",
                   "max_tokens", "epochs")
        check_numbers(self, "temperature", low=0, open_low=True)
        check_numbers(self, "success_threshold", low=0, high=1, open_low=True)
        check_numbers(self, "warmup_fraction", low=0, high=1, open_high=True)
        check_type(self, "pretrain", PretrainConfig)
        check_type(self, "train", TrainConfig)  # TrainConfig checks its own fields
        check_that(self, (self.train.steps, self.train.warmup_steps) == (1, 0), "train",
                   "a TrainConfig with steps=1 and warmup_steps=0 (each run's steps come from epochs)")
        check_seeds(self)
        check_that(self, self.n_base <= self.n_large, "n_base", f"at most n_large = {self.n_large}")
        for name in self.envs:
            cls = ENVS[name]
            check_that(self, self.n_large + self.n_val <= cls.n_train, "n_val",
                       f"at most {cls.n_train - self.n_large} ({name} has {cls.n_train} training "
                       f"instructions, n_large + n_val must fit)")
            check_that(self, self.n_test <= cls.n_test, "n_test",
                       f"at most {cls.n_test} ({name}'s held-out instructions)")
        check_that(self, self.pretrain.envs == self.envs, "pretrain",
                   f"pretrained on the experiment's environments {self.envs}, not {self.pretrain.envs}")
        smallest = self.train_config(self.n_base * len(self.envs), 0)  # BC_base's run, the shortest
        n = len(smallest.evaluation_steps())
        check_that(self, n >= CONVERGENCE_MIN_EVALUATIONS, "epochs",
                   f"enough for the convergence check: BC_base's run takes {smallest.steps} steps with {n} "
                   f"evaluations, {CONVERGENCE_MIN_EVALUATIONS} are needed (raise epochs or lower "
                   f"train.eval_every)")

    def train_config(self, n_trajectories: int, seed: int) -> TrainConfig:
        """The schedule of a run on ``n_trajectories``: ``ceil(epochs * n_trajectories / batch_size)``
        steps, the first ``warmup_fraction`` of them warming up, the batches of ``seed``."""
        steps = math.ceil(self.epochs * n_trajectories / self.train.batch_size)
        return dataclasses.replace(self.train, steps=steps, warmup_steps=int(self.warmup_fraction * steps),
                                   seed=seed)

CONFIGS = {
    "fast": AgentGymConfig(
        n_base=8, n_large=24, n_val=8, n_test=12, iterations=2, samples_per_instruction=1, epochs=15,
        pretrain=PretrainConfig(episodes_per_instruction=1, model=AgentModelConfig(d_model=32, n_layers=1,
                                                                                   n_heads=2),
                                train=TrainConfig(steps=30, batch_size=16, lr=3e-3, warmup_steps=5, seed=0)),
        train=TrainConfig(steps=1, batch_size=16, lr=3e-3, warmup_steps=0, eval_every=10, seed=0)),
    "full": AgentGymConfig(),
}


# --------------------------------------------------------------------------------------------------
# The pieces: data, the agent as a language model, exploration, evaluation
# --------------------------------------------------------------------------------------------------
def base_agent(config: PretrainConfig, device=None) -> tuple[GPT, TrainResult]:
    """The pretrained base model (from the cache, pretraining it first if needed) and its history.

    Everything else starts from this model, so nothing runs beside its pretraining: it uses
    :func:`paperlab.utils.alone_threads`. The weights are the same bit for bit on one thread or two
    (checked on the full profile's 800 steps: 99 s on one thread, 68 s on two, on the 2-core machine the
    README's times come from; ``tests/test_agentgym_evol.py`` checks a few steps)."""
    threads = alone_threads()

    def compute() -> dict:
        with cpu_threads(threads, device=device):
            model, history = pretrain(config, device=device)
        return {"state_dict": state_of(model), "history": history.to_dict()}

    stored = cache.cached("agentgym-base", config, compute, seed=config.train.seed)
    model = initial_model(config.model, agent_tokenizer().vocab_size, config.train.seed)
    model.load_state_dict(stored["state_dict"])
    return model.to(auto_device(device)).eval(), TrainResult.from_dict(stored["history"])


def random_agent(config: AgentGymConfig) -> dict:
    """Success (0/1 per episode) of random play, the pretraining corpus's policy, on the held-out
    instructions: the floor every agent should clear."""
    rng = random.Random(0)
    return {env: [int(random_play(env, i, rng).success) for i in held_out(config, env)]
            for env in config.envs}


def validation_ids(config: AgentGymConfig) -> range:
    """The validation instructions of every environment: training instructions no run trains on or
    explores (their expert trajectories give the validation loss)."""
    return range(config.n_large, config.n_large + config.n_val)


def validation_success(model: GPT, config: AgentGymConfig, clients=None) -> dict:
    """``{"val_success": s}``: the greedy success rate on the validation instructions, mean over the
    environments (the primary metric, measured where no run trains; chooses each run's weights)."""
    episodes = [(env, i, 0) for env in config.envs for i in validation_ids(config)]
    trajectories = rollout(as_llm(model), clients or local_clients(config), episodes, temperature=0.0,
                           max_tokens=config.max_tokens)
    success = _summary(trajectories, config)
    return {"val_success": sum(sum(v) / len(v) for v in success.values()) / len(success)}


def held_out(config: AgentGymConfig, env: str) -> list[int]:
    """The evaluation instructions of ``env``: its first ``n_test`` held-out ones."""
    return list(ENVS[env].split("test"))[: config.n_test]


def expert_data(config: AgentGymConfig, ids: range) -> list[Trajectory]:
    """The expert's trajectories on instructions ``ids`` of every environment (seed 0)."""
    return [expert_trajectory(env, i) for env in config.envs for i in ids]


def as_llm(model: GPT, seed: int = 0) -> TinyLM:
    """The agent's model behind :class:`paperlab.llm.LLM`, decoding with a key-value cache."""
    return TinyLM(model, agent_tokenizer(), seed=seed, batch_size=512, logprobs=False, use_cache=True)


def local_clients(config: AgentGymConfig) -> dict[str, LocalClient]:
    return {env: LocalClient(env) for env in config.envs}


def explore(model: GPT, config: AgentGymConfig, seed: int, clients=None) -> list[Trajectory]:
    """AgentEvol's exploration: ``samples_per_instruction`` episodes on each training instruction of each
    environment, sampled at ``temperature`` from a stream seeded by ``seed``."""
    episodes = [(env, i, 0) for env in config.envs for i in range(config.n_large)
                for _ in range(config.samples_per_instruction)]
    return rollout(as_llm(model, seed), clients or local_clients(config), episodes,
                   temperature=config.temperature, max_tokens=config.max_tokens)


def evaluate(model: GPT, config: AgentGymConfig, clients=None) -> list[Trajectory]:
    """Greedy episodes on the first ``n_test`` held-out instructions of each environment."""
    episodes = [(env, i, 0) for env in config.envs for i in held_out(config, env)]
    return rollout(as_llm(model), clients or local_clients(config), episodes, temperature=0.0,
                   max_tokens=config.max_tokens)


def _summary(trajectories: list[Trajectory], config: AgentGymConfig) -> dict:
    """Per environment: the success (0/1) of each episode, in instruction order."""
    return {env: [int(t.success) for t in trajectories if t.env == env] for env in config.envs}


def success_trend(history: TrainResult) -> stats.Convergence:
    """The convergence check (:func:`paperlab.stats.convergence`) on the validation success rate, a score
    to raise: "still rising" means it still rises over the last fifth."""
    steps, success = history.eval_history("val_success")
    return stats.convergence(steps, success, higher_is_better=True)


def _record(name: str, model: GPT, history: TrainResult, config: AgentGymConfig, n_train: int,
            kept_step: int) -> dict:
    """What the chapter reads of one trained model: its held-out successes, the run's length, the step of
    the weights kept and their validation loss, and the convergence check of the whole curve."""
    test = evaluate(model, config)
    loss_check, success_check = history.convergence("val_loss"), success_trend(history)
    kept = next(e for e in history.evals if e["step"] == kept_step)
    return {"name": name, "state_dict": state_of(model), "success": _summary(test, config),
            "n_trajectories": n_train, "steps": history.steps[-1], "kept_step": kept_step,
            "val_loss": kept["val_loss"], "val_success": kept["val_success"],
            **loss_check.record(), **success_check.record("success_"),
            "converged": loss_check.converged and success_check.converged,  # both curves shown flat
            "history": {"steps": history.steps, "loss": history.loss, "evals": history.evals},
            "train_seconds": history.seconds, "examples": [t.to_dict() for t in test[:: config.n_test]]}


# --------------------------------------------------------------------------------------------------
# The two jobs of a seed
# --------------------------------------------------------------------------------------------------
def _train(trajectories, config: AgentGymConfig, seed: int, device, desc: str):
    """Behavioural cloning from the base model for ``config.epochs`` passes over ``trajectories``, with
    the batches of ``seed``, keeping the weights of the highest validation success rate (the earlier of
    equals). Returns the model, its history and the step of the weights kept."""
    base, _ = base_agent(config.pretrain, device)
    validation = expert_data(config, validation_ids(config))
    return train_agent(trajectories, agent_tokenizer(), base, config.train_config(len(trajectories), seed),
                       validation=validation, evaluate=lambda model: validation_success(model, config),
                       select=lambda metrics: -metrics["val_success"], device=device, desc=desc)


def model_name(m: int) -> str:
    """The name of model ``m`` of an AgentEvol chain: ``"BC_base"`` (0), then ``"AgentEvol m"``."""
    return "BC_base" if m == 0 else f"AgentEvol {m}"


def model_names(config: AgentGymConfig) -> list[str]:
    """Every trained model of a seed: the AgentEvol chain's (:func:`model_name`) and BC_large."""
    return [model_name(m) for m in range(config.iterations + 1)] + ["BC_large"]


def agentevol_chain(seed: int, config: AgentGymConfig, device=None) -> dict:
    """BC_base, then ``iterations`` rounds of explore, filter, merge with the expert data, retrain from
    the base model. Returns one record per model (iteration 0 is BC_base) and per exploration round."""
    expert = expert_data(config, range(config.n_base))
    model, history, kept = _train(expert, config, seed, device, f"{model_name(0)} seed {seed}")
    models = [_record(model_name(0), model, history, config, len(expert), kept)]
    rounds = []
    for m in range(1, config.iterations + 1):
        sampled = explore(model, config, seed=1000 * seed + m)
        kept = filter_trajectories(sampled, threshold=config.success_threshold, existing=expert)
        model, history, step = _train(expert + kept, config, seed, device, f"{model_name(m)} seed {seed}")
        models.append(_record(model_name(m), model, history, config, len(expert) + len(kept), step))
        rounds.append({"iteration": m, "explored": _summary(sampled, config),
                       "kept": {env: sum(t.env == env for t in kept) for env in config.envs}})
    return {"seed": seed, "models": models, "exploration": rounds}


def bc_large(seed: int, config: AgentGymConfig, device=None) -> dict:
    """Behavioural cloning on the expert trajectories of all ``n_large`` training instructions."""
    expert = expert_data(config, range(config.n_large))
    model, history, kept = _train(expert, config, seed, device, f"BC_large seed {seed}")
    return {"seed": seed, "models": [_record("BC_large", model, history, config, len(expert), kept)]}


JOBS = {"agentevol": agentevol_chain, "bc_large": bc_large}


def run_job(job: str, seed: int, config: AgentGymConfig, device=None) -> dict:
    """One job of one seed, through the artifact cache."""
    return cache.cached(f"agentgym-{job}", config, lambda: JOBS[job](seed, config, device), seed=seed)


def run(config: AgentGymConfig, device: str | torch.device | None = None) -> dict:
    """Every job of every seed (one process per core, the pieces of the jobs scheduled over them; one
    after another on a GPU). Returns, per seed, the records of BC_base, the AgentEvol iterations and
    BC_large (weights left out)."""
    device = None if device is None else str(auto_device(device))
    _, pretraining = base_agent(config.pretrain, device)  # once, here; the jobs load it from the cache
    jobs = [("agentevol", s, config, device) for s in config.seeds] + [("bc_large", s, config, device)
                                                                      for s in config.seeds]
    if device is not None and device.startswith("cuda"):
        results = parallel_map(run_job, jobs, workers=1, desc="AgentGym jobs")
    else:
        results = _run_scheduled(config, device)
    summary = {"final_loss": pretraining.loss[-1]}
    summary["seconds"] = pretraining.seconds  # wall clock
    per_seed = []
    for seed in config.seeds:
        chain = next(r for (job, s, *_), r in zip(jobs, results) if job == "agentevol" and s == seed)
        large = next(r for (job, s, *_), r in zip(jobs, results) if job == "bc_large" and s == seed)
        models = [{k: v for k, v in m.items() if k != "state_dict"}
                  for m in chain["models"] + large["models"]]
        per_seed.append({"seed": seed, "models": models, "exploration": chain["exploration"]})
    return {"seeds": per_seed, "envs": list(config.envs), "random_agent": random_agent(config),
            "pretraining": summary}


# --------------------------------------------------------------------------------------------------
# Scheduling the jobs' pieces over the cores
# --------------------------------------------------------------------------------------------------
# Three AgentEvol chains, each several times as long as a BC_large job, cannot be shared evenly by two
# processes as whole jobs: one core would idle while the last chain finishes. So a chain is cut into its
# pieces (train model m; evaluate model m; explore with model m), each a task that a free process takes,
# and the parent passes the weights and the explored trajectories between them. The pieces compute
# exactly what :func:`agentevol_chain` computes (each one a pure function of its inputs, on one thread),
# so the chain's result, stored under the same cache entry, is the same; only the order differs.
_CODE = (__name__,)  # the cache entries' code root, as cache.cached from this module sets it


def _model_from(state_dict: dict, config: AgentGymConfig, seed: int, device) -> GPT:
    model = initial_model(config.pretrain.model, agent_tokenizer().vocab_size, seed)
    model.load_state_dict(state_dict)
    return model.to(auto_device(device)).eval()


def _piece(kind: str, seed: int, m: int, config: AgentGymConfig, device, payload) -> dict:
    """One piece of a job, in a worker process. ``train``: model ``m`` of the chain of ``seed`` on the
    expert data and ``payload`` (the kept trajectories); ``evaluate``: the record of model ``m``
    (``payload``: its weights, history and data size); ``explore``: round ``m`` from model ``m - 1``
    (``payload``: its weights); ``bc_large``: the whole BC_large job."""
    if kind == "bc_large":
        return bc_large(seed, config, device)
    if kind == "train":
        expert = expert_data(config, range(config.n_base))
        model, history, kept = _train(expert + payload, config, seed, device, f"{model_name(m)} seed {seed}")
        return {"state_dict": state_of(model), "history": history.to_dict(),
                "n_train": len(expert) + len(payload), "kept_step": kept}
    if kind == "evaluate":
        return _record(model_name(m), _model_from(payload["state_dict"], config, seed, device),
                       TrainResult.from_dict(payload["history"]), config, payload["n_train"],
                       payload["kept_step"])
    if kind == "explore":
        return {"sampled": explore(_model_from(payload, config, seed, device), config, seed=1000 * seed + m)}
    raise ValueError(f"unknown piece {kind!r}")


def _run_scheduled(config: AgentGymConfig, device, workers: int | None = None) -> list[dict]:
    """The results of every job (AgentEvol chains, then BC_large, seed by seed): from the cache where
    stored; the rest computed piece by piece on ``workers`` processes (default: one per core), the piece
    with the longest work still behind it first (a critical-path list schedule,
    :func:`paperlab.scheduling.run_as_ready`), then stored."""
    names = [("agentevol", s) for s in config.seeds] + [("bc_large", s) for s in config.seeds]
    results: dict = {}
    if not cache.disabled():  # PAPERLAB_CACHE_DISABLE: compute every job
        for job, seed in names:
            found, value = cache.lookup(f"agentgym-{job}", config, seed, _CODE)
            if found:
                results[job, seed] = value
    todo = [(job, seed) for job, seed in names if (job, seed) not in results]
    if not todo:
        return [results[n] for n in names]
    # estimated remaining work (in units of one training run) from the start of a piece to the end of its job
    train, explore_, evaluate_ = 1.0, 0.7, 0.1

    def remaining(kind: str, m: int) -> float:
        after = (config.iterations - m) * (explore_ + train) + evaluate_
        return {"train": train + after, "explore": explore_ + train + after, "evaluate": evaluate_,
                "bc_large": train + evaluate_}[kind]

    expert = expert_data(config, range(config.n_base))
    chains: dict[int, dict] = {}
    first = []  # pieces, as the arguments of _piece: (kind, seed, m, config, device, payload)
    for job, seed in todo:
        if job == "agentevol":
            chains[seed] = {"models": {}, "rounds": {}}
            first.append(("train", seed, 0, config, device, []))
        else:
            first.append(("bc_large", seed, 0, config, device, None))

    def finished(piece: tuple, out: dict) -> list[tuple]:
        """Record a finished piece; store a job once it is complete; return the pieces it made ready."""
        kind, seed, m = piece[:3]
        if kind == "bc_large":
            results["bc_large", seed] = out
            cache.store("agentgym-bc_large", config, out, seed, _CODE)
            return []
        chain = chains[seed]
        if kind == "train":
            ready = [("evaluate", seed, m, config, device, out)]
            if m < config.iterations:
                ready.append(("explore", seed, m + 1, config, device, out["state_dict"]))
            return ready
        if kind == "explore":
            sampled = out["sampled"]
            kept = filter_trajectories(sampled, threshold=config.success_threshold, existing=expert)
            chain["rounds"][m] = {"iteration": m, "explored": _summary(sampled, config),
                                  "kept": {env: sum(t.env == env for t in kept) for env in config.envs}}
            return [("train", seed, m, config, device, kept)]
        chain["models"][m] = out  # an evaluation
        if len(chain["models"]) == config.iterations + 1:
            iterations = range(1, config.iterations + 1)
            value = {"seed": seed, "models": [chain["models"][i] for i in range(config.iterations + 1)],
                     "exploration": [chain["rounds"][i] for i in iterations]}
            results["agentevol", seed] = value
            cache.store("agentgym-agentevol", config, value, seed, _CODE)
        return []

    run_as_ready(_piece, first, finished, order=lambda piece: (-remaining(piece[0], piece[2]), piece[1]),
                 workers=workers, name="agentgym.experiments.run", desc="AgentGym jobs (pieces)")
    return [results[n] for n in names]


@dataclass(frozen=True)
class ChecksConfig:
    """The chapter's live checks (not cached, so apart from the experiment's config): steps per client of
    the load test, held-out episodes per environment replayed over HTTP, and held-out episodes per
    environment among which the chapter picks one to show turn by turn."""

    load_steps: int = 200
    http_episodes: int = 10
    episode_candidates: int = 8

    def __post_init__(self) -> None:
        check_ints(self, "load_steps", "http_episodes", "episode_candidates")


CHECKS = {"fast": ChecksConfig(load_steps=20, http_episodes=2, episode_candidates=1), "full": ChecksConfig()}


def checks_config(profile: str | None = None) -> ChecksConfig:
    return pick(CHECKS, profile)


def load_agent(config: AgentGymConfig, seed: int, name: str, device=None) -> GPT:
    """The trained model ``name`` (``"BC_base"``, ``"AgentEvol 3"``, ``"BC_large"``) of ``seed``, from the
    cache (training it first if needed). An unknown name is refused before any training."""
    if name not in model_names(config):
        raise ValueError(f"no model {name!r}; the models are {', '.join(model_names(config))}")
    job = "bc_large" if name == "BC_large" else "agentevol"
    record = next(m for m in run_job(job, seed, config, device)["models"] if m["name"] == name)
    model = initial_model(config.pretrain.model, agent_tokenizer().vocab_size, seed)
    model.load_state_dict(record["state_dict"])
    return model.to(auto_device(device)).eval()


EXPERIMENT = Experiment(name="agentgym", chapter="book/11-agentgym.md", configs=CONFIGS, run=run)
