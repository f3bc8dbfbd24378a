"""The NLLB chapter's experiments on the synthetic multilingual world (:mod:`paperlab.nllb.data`).

Every function takes the chapter's :class:`NLLBExperimentConfig` and returns plain results; each training
run goes through the artifact cache (:func:`paperlab.nllb.train.run_cached`), so the runs shared between
experiments are trained once. The runs (see :func:`runs`):

- ``dense``: one multilingual model with dense FFNs, every language;
- ``moe``: the same with a sparsely gated MoE FFN in every second layer, experts half as wide as the dense
  FFN, so that with top-2 routing a token uses as many FFN weights as in ``dense`` (same active parameters);
- ``moe_eom``: ``moe`` with expert output masking; ``moe_curriculum``: ``moe`` with the low-resource
  directions introduced only after ``curriculum_start`` of the steps;
- ``bilingual/<x>``: for each low-resource language ``x``, a dense model trained on ``x <-> hub`` only,
  scored at its best validation checkpoint (which favours it).

:func:`prefetch` trains the missing runs in parallel worker processes (one thread each), then every
experiment reads them from the cache.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass

from paperlab.config import check_ints, check_numbers, check_that, check_type
from paperlab.experiments import Experiment
from paperlab.nllb.data import FAMILIES, HIGH, HUB, LANGUAGES, LOW, ZERO_SHOT, WorldConfig, make_world
from paperlab.nllb.train import NLLB_TRAIN, RunConfig, prefetch, run_cached, score
from paperlab.train import TrainConfig, auto_device

__all__ = [
    "NLLBExperimentConfig",
    "CONFIGS",
    "runs",
    "prefetch_all",
    "transfer",
    "dense_vs_moe",
    "regularisation",
    "routing",
    "zero_shot",
    "overfitting",
    "run",
    "EXPERIMENT",
]


@dataclass(frozen=True)
class NLLBExperimentConfig:
    world: WorldConfig = WorldConfig()
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    d_hidden: int = 128
    n_experts: int = 8
    capacity_factor: float = 1.0
    train: TrainConfig = dataclasses.replace(NLLB_TRAIN, steps=1200, warmup_steps=100)
    bilingual_steps: int = 400
    eom_p: float = 0.2
    curriculum_start: float = 0.3
    workers: int = 2

    def __post_init__(self):
        check_type(self, "world", WorldConfig)
        check_type(self, "train", TrainConfig)  # TrainConfig checks its own fields
        check_ints(self, "d_model", "n_heads", "n_layers", "d_hidden", "n_experts", "bilingual_steps",
                   "workers")
        shortest = min(self.train.steps, self.bilingual_steps)
        check_that(self, self.train.warmup_steps <= shortest, "train",
                   f"a TrainConfig whose warmup_steps is at most min(steps, bilingual_steps) = {shortest}")
        check_numbers(self, "capacity_factor", low=0, open_low=True)
        check_numbers(self, "eom_p", "curriculum_start", low=0, high=1, open_high=True)
        try:  # the MoE runs' own rules (top-2 needs n_experts >= 2; heads divide d_model)
            RunConfig(world=self.world, d_model=self.d_model, n_heads=self.n_heads, n_layers=self.n_layers,
                      d_hidden=self.d_hidden, ffn="moe", n_experts=self.n_experts,
                      capacity_factor=self.capacity_factor, eom_p=self.eom_p,
                      train=dataclasses.replace(self.train, steps=shortest))
        except ValueError as err:
            raise ValueError(f"NLLBExperimentConfig: {err}") from None


CONFIGS = {
    "fast": NLLBExperimentConfig(
        world=WorldConfig(n_high=2_000, n_low=100, n_valid=16, n_test=16),
        d_model=32,
        n_heads=2,
        d_hidden=64,
        n_experts=4,
        train=dataclasses.replace(NLLB_TRAIN, steps=40, batch_size=32, warmup_steps=10, eval_every=20),
        bilingual_steps=20,
    ),
    "full": NLLBExperimentConfig(),
}


def runs(config: NLLBExperimentConfig) -> dict[str, RunConfig]:
    """Name -> run config of every training run of the chapter."""
    base = RunConfig(
        world=config.world,
        d_model=config.d_model,
        n_heads=config.n_heads,
        n_layers=config.n_layers,
        d_hidden=config.d_hidden,
        n_experts=config.n_experts,
        capacity_factor=config.capacity_factor,
        train=config.train,
    )
    out = {"dense": base, "moe": dataclasses.replace(base, ffn="moe")}
    out["moe_eom"] = dataclasses.replace(out["moe"], eom_p=config.eom_p)
    out["moe_curriculum"] = dataclasses.replace(out["moe"], curriculum_start=config.curriculum_start)
    for code in LOW:
        bilingual_train = dataclasses.replace(config.train, steps=config.bilingual_steps,
                                              eval_every=max(1, config.train.eval_every // 2))
        out[f"bilingual/{code}"] = dataclasses.replace(base, languages=(code,), train=bilingual_train,
                                                       select="best")
    return out


def prefetch_all(config: NLLBExperimentConfig, device: str | None = "cpu") -> None:
    """Train every run not yet cached, ``config.workers`` at a time on the CPU (one thread each), or one
    after the other on ``device``."""
    prefetch(list(runs(config).values()), workers=config.workers, device=device)


def _record(config: NLLBExperimentConfig, name: str) -> dict:
    return run_cached(runs(config)[name])["record"]


def low_directions() -> list[str]:
    return [d for x in LOW for d in (f"{x}-{HUB}", f"{HUB}-{x}")]


def high_directions() -> list[str]:
    return [d for x in HIGH for d in (f"{x}-{HUB}", f"{HUB}-{x}")]


def _curves(record: dict, directions: list[str]) -> dict:
    evals = record["history"]["evals"]
    return {
        "steps": [e["step"] for e in evals],
        **{d: [e[f"val/{d}"] for e in evals] for d in directions if f"val/{d}" in evals[0]},
    }


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def overfitting(record: dict, directions: list[str]) -> dict:
    """Per direction: the lowest validation loss, its step, the final loss and the rise ``final - min``
    (nats/token; > 0 means the model got worse on held-out data after its best point: overfitting)."""
    curves = _curves(record, directions)
    out = {}
    for d in directions:
        losses = curves[d]
        best = min(range(len(losses)), key=losses.__getitem__)
        out[d] = {
            "min": losses[best],
            "min_step": curves["steps"][best],
            "final": losses[-1],
            "rise": losses[-1] - losses[best],
        }
    return out


# ------------------------------------------------------------------------------------- 1. transfer
def transfer(config: NLLBExperimentConfig) -> dict:
    """chrF++ / BLEU on the low-resource directions: bilingual models against the multilingual dense one."""
    dense = _record(config, "dense")
    rows = []
    for code in LOW:
        bilingual = _record(config, f"bilingual/{code}")
        for d in (f"{code}-{HUB}", f"{HUB}-{code}"):
            rows.append(
                {
                    "direction": d,
                    "bilingual_chrf": bilingual["test"][d]["chrf"],
                    "multilingual_chrf": dense["test"][d]["chrf"],
                    "bilingual_bleu": bilingual["test"][d]["bleu"],
                    "multilingual_bleu": dense["test"][d]["bleu"],
                    "bilingual_best_step": bilingual["best_step"],
                }
            )
    return {"rows": rows, "n_low": config.world.n_low, "n_high": config.world.n_high}


# ------------------------------------------------------------------------------- 2. dense vs MoE
def dense_vs_moe(config: NLLBExperimentConfig) -> dict:
    """High-resource test scores and low-resource validation curves, dense against MoE."""
    out = {}
    for name in ("dense", "moe"):
        record = _record(config, name)
        out[name] = {
            "parameters": record["parameters"],
            "high": {d: record["test"][d] for d in high_directions()},
            "low": {d: record["test"][d] for d in low_directions()},
            "curves": _curves(record, low_directions() + high_directions()),
            "overfitting": overfitting(record, low_directions() + high_directions()),
        }
    out["active_ffn_weights"] = {
        "dense": 3 * config.d_model * config.d_hidden,
        "moe": 2 * 3 * config.d_model * (config.d_hidden // 2),
    }
    return out


# --------------------------------------------------------------------------- 3. EOM and curriculum
REGULARISED = ("moe", "moe_eom", "moe_curriculum")


def regularisation(config: NLLBExperimentConfig) -> dict:
    """Plain MoE against MoE + EOM and MoE + curriculum on the low-resource directions."""
    out = {"eom_p": config.eom_p, "curriculum_start_step": int(config.curriculum_start * config.train.steps)}
    for name in REGULARISED:
        record = _record(config, name)
        out[name] = {
            "low": {d: record["test"][d] for d in low_directions()},
            "high": {d: record["test"][d] for d in high_directions()},
            "curves": _curves(record, low_directions()),
            "overfitting": overfitting(record, low_directions()),
        }
    return out


# ------------------------------------------------------------------------------------- 4. routing
def routing(config: NLLBExperimentConfig) -> dict:
    """Expert usage per language and layer, load-balance statistics and dropped tokens of the MoE run."""
    record = _record(config, "moe")
    log = record["moe_log"]
    tail = max(1, len(log["l_aux"]) // 10)
    usage = record["routing"]["usage"]
    similarity = {}
    for layer, per_language in usage.items():
        within, across = [], []
        codes = [c for c in per_language if c != HUB]
        for i, a in enumerate(codes):
            for b in codes[i + 1 :]:
                sim = _cosine(per_language[a], per_language[b])
                (within if LANGUAGES[a]["family"] == LANGUAGES[b]["family"] else across).append(sim)
        similarity[layer] = {"within_family": _mean(within), "across_families": _mean(across)}
    loads = {
        layer: {
            "max_share": max(max(v) for v in per.values()),
            "min_share": min(min(v) for v in per.values()),
        }
        for layer, per in usage.items()
    }
    return {
        "languages": list(LANGUAGES),
        "families": {c: LANGUAGES[c]["family"] for c in LANGUAGES},
        "n_experts": config.n_experts,
        "usage": usage,
        "similarity": similarity,
        "loads": loads,
        "steps": log["step"],
        "l_aux": log["l_aux"],
        "dropped": log["dropped"],
        "dropped_tokens": log["dropped_tokens"],
        "final_l_aux": _mean(log["l_aux"][-tail:]),
        "final_dropped": _mean(log["dropped"][-tail:]),
        "final_dropped_tokens": _mean(log["dropped_tokens"][-tail:]),
        "eval_dropped": record["routing"]["eval_dropped"],
        "capacity_factor": config.capacity_factor,
    }


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


# ----------------------------------------------------------------------------------- 5. zero-shot
def zero_shot(config: NLLBExperimentConfig) -> dict:
    """chrF++ of the directions never trained on, with two references points: supervised directions
    into the same target, and a "fluent but unrelated" baseline (the target-language test sentences,
    shuffled: right language, wrong meaning)."""
    world = make_world(config.world)
    out = {"directions": [f"{a}-{b}" for a, b in ZERO_SHOT], "models": {}}
    for name in ("dense", "moe"):
        record = _record(config, name)
        out["models"][name] = {
            f"{a}-{b}": {
                "zero_shot": record["test"][f"{a}-{b}"],
                "supervised_into_target": record["test"][f"{HUB}-{b}"],
                "examples": record["test"][f"{a}-{b}"]["examples"],
            }
            for a, b in ZERO_SHOT
        }
    baseline = {}
    for a, b in ZERO_SHOT:
        refs = world.test[b]
        shuffled = refs[:]
        random.Random(config.train.seed).shuffle(shuffled)
        baseline[f"{a}-{b}"] = score(shuffled, refs)
    out["unrelated_baseline"] = baseline
    return out


def run(config: NLLBExperimentConfig, device: str | None = None) -> dict:
    """Every experiment of the chapter (trained on ``device``, default the CPU, checked before any work);
    JSON-able results."""
    prefetch_all(config, auto_device(device or "cpu"))
    return {
        "transfer": transfer(config),
        "dense_vs_moe": dense_vs_moe(config),
        "regularisation": regularisation(config),
        "routing": routing(config),
        "zero_shot": zero_shot(config),
        "families": {k: v["order"] for k, v in FAMILIES.items()},
    }


EXPERIMENT = Experiment(name="nllb", chapter="book/05-nllb.md", configs=CONFIGS, run=run)
