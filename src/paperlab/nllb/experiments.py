"""The NLLB chapter's experiments on the synthetic multilingual world (:mod:`paperlab.nllb.data`).

Every training run goes through the artifact cache (:func:`paperlab.nllb.train.run_cached`) and is trained
once per seed of ``config.seeds``. The runs (see :func:`run_config`), all with the same dropout:

- ``dense``: one multilingual model with dense FFNs, every language;
- ``moe``: the same with a sparsely gated MoE FFN in every second layer, experts half as wide as the dense
  FFN, so that with top-2 routing a token uses as many FFN weights as in ``dense`` (same active parameters);
- ``moe_eom``: ``moe`` with expert output masking; ``cmoe``: conditional MoE in the same layers;
- ``moe_curriculum``: ``moe`` with the low-resource directions introduced at step ``T - k``, where ``k``
  is the step at which plain MoE starts to overfit them (:func:`onset`, measured on the ``moe`` runs, as
  NLLB did), so they are trained for the ``k`` steps they took to start overfitting;
- ``bilingual/<x>``: for each low-resource language ``x``, a dense model trained on ``x <-> hub`` only, on
  its own schedule (``bilingual_train``), at its best validation checkpoint.

Every run also records its low-resource test scores at the checkpoint of its lowest mean low-resource
validation loss (``low_best``, see :func:`paperlab.nllb.train.train_run`): the transfer comparison scores
the multilingual dense model and the bilingual baselines by that one rule.

The primary metric of every comparison is the held-out loss (nats per target token, teacher forcing):
the test loss at the checkpoint a run keeps, and the validation curves for overfitting. :func:`summary`
gives one number per seed for each quantity; the chapter turns them into estimates and verdicts.
:func:`prefetch_all` trains what is missing, two runs at a time, in two phases (the curriculum needs the
plain MoE runs first).
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass

from paperlab.config import check_ints, check_numbers, check_seeds, check_that, check_type
from paperlab.experiments import Experiment
from paperlab.nllb.data import (
    FAMILIES,
    HIGH,
    HUB,
    LANGUAGES,
    LOW,
    WorldConfig,
    check_languages,
    make_world,
    zero_shot_directions,
)
from paperlab.nllb.train import NLLB_TRAIN, RunConfig, prefetch, run_cached, score
from paperlab.stats import convergence
from paperlab.train import TrainConfig, auto_device, check_convergence_evaluations

__all__ = [
    "NLLBExperimentConfig",
    "CONFIGS",
    "MULTILINGUAL",
    "SMALLEST_LOSS_EFFECT",
    "CONVERGENCE_FLOOR",
    "names",
    "LABELS",
    "run_config",
    "prefetch_all",
    "record",
    "curves",
    "onset",
    "summary",
    "language_similarity",
    "routing",
    "zero_shot",
    "low_directions",
    "high_directions",
    "run",
    "EXPERIMENT",
]

MULTILINGUAL = ("dense", "moe", "moe_eom", "cmoe", "moe_curriculum")
SMALLEST_LOSS_EFFECT = 0.02  # nats/token (about 2% in perplexity): the smallest loss effect a claim counts
CONVERGENCE_FLOOR = SMALLEST_LOSS_EFFECT / 2  # a fall over the last fifth too small to turn such a claim
LABELS = {"dense": "dense", "moe": "MoE", "moe_eom": "MoE + EOM", "cmoe": "conditional MoE",
          "moe_curriculum": "MoE + curriculum", "bilingual": "bilingual (dense)"}


@dataclass(frozen=True)
class NLLBExperimentConfig:
    """The chapter's runs. ``languages``: the non-hub languages trained on (at least one high- and one
    low-resource language); ``train``: the multilingual runs' schedule (its ``seed`` is replaced by each of
    ``seeds``); ``bilingual_train``: the bilingual baselines' (they see one language's pairs, so they
    overfit sooner and need fewer steps); ``dropout`` for every model; ``eom_p`` the expert output masking
    probability; ``workers`` runs train side by side on the CPU."""

    world: WorldConfig = WorldConfig(n_high=5_000, n_low=50, low_noise=0.5)
    languages: tuple[str, ...] = ("ara", "amu")
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    d_hidden: int = 128
    n_experts: int = 8
    capacity_factor: float = 1.0
    dropout: float = 0.1
    train: TrainConfig = dataclasses.replace(NLLB_TRAIN, steps=1500, batch_size=32, lr=3e-3, warmup_steps=100,
                                             eval_every=50)
    # bilingual: best validation step 100 on every seed at 600 steps and at 300 with an evaluation every 50
    # (measured), the second evaluation: too coarse to find the minimum, so every 10 steps (30 evaluations).
    # The multilingual runs evaluate every 50 for the same reason (the dense low-resource minimum fell at step
    # 200-400 with every 100). They keep 1500 steps: at 1200 a plain MoE seed's high-resource validation loss
    # is still falling by the convergence check (measured)
    bilingual_train: TrainConfig = dataclasses.replace(NLLB_TRAIN, steps=300, batch_size=32, lr=3e-3,
                                                       warmup_steps=50, eval_every=10)
    eom_p: float = 0.2
    seeds: tuple[int, ...] = (0, 1, 2)
    workers: int = 2

    def __post_init__(self):
        check_type(self, "world", WorldConfig)
        check_type(self, "train", TrainConfig)  # TrainConfig checks its own fields
        check_type(self, "bilingual_train", TrainConfig)
        try:
            check_languages(self.languages)
        except ValueError as err:
            raise ValueError(f"NLLBExperimentConfig.languages: {err}") from None
        check_that(self, any(x in HIGH for x in self.languages) and any(x in LOW for x in self.languages),
                   "languages", f"at least one high-resource ({', '.join(HIGH)}) and one low-resource "
                   f"({', '.join(LOW)}) language")
        check_ints(self, "d_model", "n_heads", "n_layers", "d_hidden", "n_experts", "workers")
        check_numbers(self, "capacity_factor", low=0, open_low=True)
        check_numbers(self, "eom_p", "dropout", low=0, high=1, open_high=True)
        check_seeds(self)
        for name in ("train", "bilingual_train"):
            schedule = getattr(self, name)
            check_that(self, schedule.eval_every > 0 and schedule.steps // schedule.eval_every >= 3, name,
                       "a TrainConfig with at least 3 evaluations (eval_every > 0), to find the onset of "
                       "overfitting and check convergence")
            check_convergence_evaluations(self, name, schedule)
        try:  # the runs' own rules (top-2 needs n_experts >= 2; heads divide d_model)
            RunConfig(world=self.world, d_model=self.d_model, n_heads=self.n_heads, n_layers=self.n_layers,
                      d_hidden=self.d_hidden, ffn="cmoe", n_experts=self.n_experts, dropout=self.dropout,
                      capacity_factor=self.capacity_factor, eom_p=self.eom_p, train=self.train)
        except ValueError as err:
            raise ValueError(f"NLLBExperimentConfig: {err}") from None


CONFIGS = {
    "fast": NLLBExperimentConfig(
        world=WorldConfig(n_high=500, n_low=40, low_noise=0.5, n_valid=16, n_test=16),
        d_model=32,
        n_heads=2,
        d_hidden=64,
        n_experts=4,
        train=dataclasses.replace(NLLB_TRAIN, steps=30, batch_size=16, warmup_steps=5, eval_every=10),
        bilingual_train=dataclasses.replace(NLLB_TRAIN, steps=15, batch_size=16, warmup_steps=5,
                                            eval_every=5),
    ),
    "full": NLLBExperimentConfig(),
}


def names(config: NLLBExperimentConfig) -> tuple[str, ...]:
    """Every run of the chapter: the multilingual ones and a bilingual baseline per low-resource language."""
    return MULTILINGUAL + tuple(f"bilingual/{x}" for x in config.languages if x in LOW)


def low_directions(config: NLLBExperimentConfig) -> list[str]:
    return [d for x in config.languages if x in LOW for d in (f"{x}-{HUB}", f"{HUB}-{x}")]


def high_directions(config: NLLBExperimentConfig) -> list[str]:
    return [d for x in config.languages if x in HIGH for d in (f"{x}-{HUB}", f"{HUB}-{x}")]


# ------------------------------------------------------------------------------------------ runs
def _base(config: NLLBExperimentConfig, seed: int) -> RunConfig:
    return RunConfig(world=config.world, languages=config.languages, d_model=config.d_model,
                     n_heads=config.n_heads, n_layers=config.n_layers, d_hidden=config.d_hidden,
                     n_experts=config.n_experts, capacity_factor=config.capacity_factor,
                     dropout=config.dropout, train=dataclasses.replace(config.train, seed=seed))


def run_config(config: NLLBExperimentConfig, name: str, seed: int | None = None) -> RunConfig:
    """The :class:`RunConfig` of run ``name`` (one of :func:`names`) for ``seed`` (default the first of
    ``config.seeds``). ``moe_curriculum`` needs the onset of overfitting, so it reads (or trains) the plain
    MoE runs first."""
    if name not in names(config):
        raise ValueError(f"unknown NLLB run {name!r}; the runs are {', '.join(names(config))}")
    seed = config.seeds[0] if seed is None else seed
    base = _base(config, seed)
    if name.startswith("bilingual/"):
        return dataclasses.replace(base, languages=(name.split("/")[1],), select="best",
                                   train=dataclasses.replace(config.bilingual_train, seed=seed))
    if name == "dense":
        return base
    if name == "cmoe":
        return dataclasses.replace(base, ffn="cmoe")
    moe = dataclasses.replace(base, ffn="moe")
    if name == "moe_eom":
        return dataclasses.replace(moe, eom_p=config.eom_p)
    if name == "moe_curriculum":
        return dataclasses.replace(moe, curriculum_step=onset(config)["curriculum_step"])
    return moe


def prefetch_all(config: NLLBExperimentConfig, device: str | None = "cpu") -> None:
    """Train every run of every seed not yet cached, ``config.workers`` at a time on the CPU (one thread
    each), or one after the other on ``device``: first ``moe`` and ``dense`` (the curriculum's start is
    measured on ``moe``), then the rest."""
    first = [run_config(config, name, seed) for name in ("moe", "dense") for seed in config.seeds]
    prefetch(first, workers=config.workers, device=device)
    rest = [run_config(config, name, seed) for name in names(config) if name not in ("moe", "dense")
            for seed in config.seeds]
    prefetch(rest, workers=config.workers, device=device)


def record(config: NLLBExperimentConfig, name: str, seed: int | None = None) -> dict:
    """The stored record of run ``name`` for ``seed`` (see :func:`paperlab.nllb.train.train_run`)."""
    return run_cached(run_config(config, name, seed))["record"]


# --------------------------------------------------------------------------------------- curves
def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def curves(config: NLLBExperimentConfig, name: str, directions: list[str]) -> dict:
    """Validation loss averaged over ``directions`` at every evaluation: ``{"steps": [...], "seeds":
    [one curve per seed]}`` (nats/token)."""
    per_seed, steps = [], None
    for seed in config.seeds:
        evals = record(config, name, seed)["history"]["evals"]
        steps = [e["step"] for e in evals]
        per_seed.append([_mean(e[f"val/{d}"] for d in directions) for e in evals])
    return {"steps": steps, "seeds": per_seed}


def onset(config: NLLBExperimentConfig, name: str = "moe") -> dict:
    """The onset of overfitting of the low-resource directions under run ``name`` (default plain MoE, the
    run the curriculum is measured on): the step ``k`` at which their validation loss, averaged over
    directions and seeds, is lowest. NLLB's curriculum introduces a direction that overfits after ``k``
    updates at update ``T - k``; ``curriculum_step = T - k`` (0 when the curve never turns up, i.e. no
    curriculum). ``per_seed``: the same step for each seed's own curve, in ``config.seeds`` order."""
    low = curves(config, name, low_directions(config))
    mean = [_mean(values) for values in zip(*low["seeds"])]
    best = min(range(len(mean)), key=mean.__getitem__)
    per_seed = [low["steps"][min(range(len(c)), key=c.__getitem__)] for c in low["seeds"]]
    total = config.train.steps
    return {"steps": low["steps"], "mean": mean, "onset_step": low["steps"][best],
            "curriculum_step": total - low["steps"][best], "per_seed": per_seed}


def _rise(curve: list[float]) -> float:
    """``final - min``: how far the loss has come back up from its lowest point (0 = never turned up)."""
    return curve[-1] - min(curve)


def _converged(steps: list[int], curve: list[float]) -> bool:
    """Shown flat (:func:`paperlab.stats.convergence`): even the largest fall over the last fifth that the
    slope's 95% interval allows is under ``CONVERGENCE_FLOOR`` nats/token (or 0.5% of the level, if larger).
    Without the floor a well-learned high-resource loss near 0.07 would count a fall of 0.0004 nats, 0.5% of
    its level, which no claim could notice."""
    return convergence(steps, curve, floor=CONVERGENCE_FLOOR).converged


def summary(config: NLLBExperimentConfig, name: str) -> dict[str, list]:
    """One value per seed (in ``config.seeds`` order) of each quantity of run ``name`` (a multilingual run,
    or ``"bilingual"``: both bilingual models, each on its own directions):

    - ``low_loss`` / ``high_loss``: test loss (nats/token) averaged over the low / high-resource directions,
      at the checkpoint the run keeps (the last one; the best validation one for bilingual models);
    - ``low_loss_best`` / ``low_chrf_best`` / ``low_best_step``: the low-resource test loss, chrF++ and step
      at the checkpoint of the lowest mean low-resource validation loss, one rule for every run (for
      bilingual models the checkpoint they keep; ``low_best_step`` one step per bilingual model);
    - ``low_rise`` / ``high_rise``: final minus lowest mean validation loss of those directions;
    - ``low_chrf`` / ``high_chrf``: chrF++ of greedy translations, averaged the same way;
    - ``converged``: the validation loss averaged over each group of directions (low and high-resource
      separately, so that one group turning up cannot hide the other still falling) is shown flat over its
      last fifth: no fall larger than ``CONVERGENCE_FLOOR`` fits its slope's 95% interval
      (:func:`paperlab.stats.convergence`); for bilingual models, each model's own curve; ``best_step``:
      the step of the weights kept.
    """
    if name == "bilingual":
        out = {key: [] for key in ("low_loss", "low_chrf", "low_loss_best", "low_chrf_best", "low_best_step",
                                   "low_rise", "converged", "best_step")}
        for seed in config.seeds:
            records = [record(config, name, seed) for name in names(config) if name.startswith("bilingual/")]
            out["low_loss"].append(_mean(r["test"][d]["loss"] for r in records for d in r["directions"]))
            out["low_chrf"].append(_mean(r["test"][d]["chrf"] for r in records for d in r["directions"]))
            best = [r["low_best"] for r in records]
            out["low_loss_best"].append(_mean(b["test"][d]["loss"] for b in best for d in b["test"]))
            out["low_chrf_best"].append(_mean(b["test"][d]["chrf"] for b in best for d in b["test"]))
            out["low_best_step"].append([b["step"] for b in best])
            per_model = [curves_of(r, r["directions"]) for r in records]
            out["low_rise"].append(_mean(_rise(c) for _, c in per_model))
            out["converged"].append(all(_converged(s, c) for s, c in per_model))
            out["best_step"].append([r["best_step"] for r in records])
        return out
    if name not in MULTILINGUAL:
        raise ValueError(f"summary takes one of {MULTILINGUAL + ('bilingual',)}, got {name!r}")
    out = {key: [] for key in ("low_loss", "high_loss", "low_rise", "high_rise", "low_chrf", "high_chrf",
                               "low_loss_best", "low_chrf_best", "low_best_step", "converged", "best_step")}
    for seed in config.seeds:
        r = record(config, name, seed)
        best = r["low_best"]
        out["low_loss_best"].append(_mean(best["test"][d]["loss"] for d in low_directions(config)))
        out["low_chrf_best"].append(_mean(best["test"][d]["chrf"] for d in low_directions(config)))
        out["low_best_step"].append(best["step"])
        for group, directions in (("low", low_directions(config)), ("high", high_directions(config))):
            out[f"{group}_loss"].append(_mean(r["test"][d]["loss"] for d in directions))
            out[f"{group}_chrf"].append(_mean(r["test"][d]["chrf"] for d in directions))
            out[f"{group}_rise"].append(_rise(curves_of(r, directions)[1]))
        out["converged"].append(all(_converged(*curves_of(r, directions))
                                    for directions in (low_directions(config), high_directions(config))))
        out["best_step"].append(r["best_step"])
    return out


def curves_of(record: dict, directions: list[str]) -> tuple[list[int], list[float]]:
    """(steps, validation loss averaged over ``directions``) of one run's record."""
    evals = record["history"]["evals"]
    return [e["step"] for e in evals], [_mean(e[f"val/{d}"] for d in directions) for e in evals]


# -------------------------------------------------------------------------------------- routing
def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def language_similarity(usage: dict[str, list[float]]) -> float:
    """Mean cosine similarity of the expert-usage vectors of every two languages (hub included): 1 when all
    languages spread their tokens over the experts alike, lower when experts specialise by language."""
    codes = list(usage)
    pairs = [(a, b) for i, a in enumerate(codes) for b in codes[i + 1 :]]
    return _mean(_cosine(usage[a], usage[b]) for a, b in pairs)


def routing(config: NLLBExperimentConfig, name: str = "moe") -> dict:
    """Routing of the MoE run ``name``: expert usage per language and layer (first seed), and per seed the
    load-balancing loss and dropped fraction over the last tenth of training, the largest dropped fraction
    in evaluation, and each layer's :func:`language_similarity` for the trained model and for the null, the
    trained model with its gates put back to their initial weights (what the trained network's
    representations of the languages do to the routing without a trained gate)."""
    first = record(config, name)
    layers = list(first["routing"]["usage"])
    per_seed = {"final_l_aux": [], "final_dropped": [], "final_dropped_tokens": [], "eval_dropped": [],
                "similarity": {layer: [] for layer in layers},
                "similarity_null": {layer: [] for layer in layers}}
    for seed in config.seeds:
        r = record(config, name, seed)
        log = r["moe_log"]
        tail = max(1, len(log["l_aux"]) // 10)
        for key in ("l_aux", "dropped", "dropped_tokens"):
            per_seed[f"final_{key}"].append(_mean(log[key][-tail:]))
        per_seed["eval_dropped"].append(max(r["routing"]["eval_dropped"].values()))
        for layer in layers:
            per_seed["similarity"][layer].append(language_similarity(r["routing"]["usage"][layer]))
            null = r["routing_initial_gate"]["usage"][layer]
            per_seed["similarity_null"][layer].append(language_similarity(null))
    log = first["moe_log"]
    return {
        "languages": list(first["routing"]["usage"][layers[0]]),
        "families": {c: LANGUAGES[c]["family"] for c in LANGUAGES},
        "n_experts": config.n_experts,
        "usage": first["routing"]["usage"],
        "steps": log["step"],
        "l_aux": log["l_aux"],
        "dropped": log["dropped"],
        "dropped_tokens": log["dropped_tokens"],
        "capacity_factor": config.capacity_factor,
        **per_seed,
    }


# ------------------------------------------------------------------------------------ zero-shot
def zero_shot(config: NLLBExperimentConfig, name: str = "dense") -> dict:
    """The directions never trained on, per seed of run ``name``: test loss against the true references and
    against the references shifted by one sentence (the null: right language, wrong meaning), chrF++ of
    greedy translations, and the chrF++ of a "fluent but unrelated" output (the target-language references,
    shuffled), with examples from the first seed."""
    pairs = zero_shot_directions(config.languages)
    directions = [f"{a}-{b}" for a, b in pairs]
    out = {"directions": directions, "loss": [], "shifted_loss": [], "chrf": [],
           "supervised_chrf": [], "examples": {}}
    for seed in config.seeds:
        test = record(config, name, seed)["test"]
        out["loss"].append(_mean(test[d]["loss"] for d in directions))
        out["shifted_loss"].append(_mean(test[d]["shifted_loss"] for d in directions))
        out["chrf"].append({d: test[d]["chrf"] for d in directions})
        out["supervised_chrf"].append({d: test[f"{HUB}-{d.split('-')[1]}"]["chrf"] for d in directions})
        if not out["examples"]:
            out["examples"] = {d: test[d]["examples"] for d in directions}
    world = make_world(config.world)
    baseline = {}
    for a, b in pairs:
        refs = world.test[b]
        shuffled = refs[:]
        random.Random(0).shuffle(shuffled)
        baseline[f"{a}-{b}"] = score(shuffled, refs)["chrf"]
    out["unrelated_chrf"] = baseline
    return out


def run(config: NLLBExperimentConfig, device: str | None = None) -> dict:
    """Every run of the chapter (trained on ``device``, default the CPU, checked before any work) and the
    per-seed summaries the chapter judges; JSON-able."""
    prefetch_all(config, auto_device(device or "cpu"))
    return {
        "seeds": list(config.seeds),
        "onset": onset(config),
        "onset_dense": onset(config, "dense"),
        "summary": {name: summary(config, name) for name in (*MULTILINGUAL, "bilingual")},
        "routing": {name: routing(config, name) for name in ("moe", "moe_eom", "cmoe")},
        "zero_shot": zero_shot(config),
        "families": {k: v["order"] for k, v in FAMILIES.items()},
    }


EXPERIMENT = Experiment(name="nllb", chapter="book/05-nllb.md", configs=CONFIGS, run=run)
