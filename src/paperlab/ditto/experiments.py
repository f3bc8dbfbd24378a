"""The DITTO chapter's experiment: adapt a tiny GPT to held-out authors from a handful of demonstrations
with few-shot prompting, SFT, SPIN and DITTO, and judge the outputs head to head.

1. **Base model** (:func:`load_base`): the toolkit's GPT, pretrained on documents that each hold several
   messages of one pretraining author (so it also learns to continue an author's style in context, which
   few-shot prompting needs). Its zero-shot output is the mixture of all pretraining styles.
2. **Judges** (:func:`paperlab.ditto.judge.make_judges`): two style classifiers trained on separate
   messages of every author.
3. **Tuning** (:func:`tune`): on the dev authors only (``tune_seeds``), the same small grid of learning
   rates for every trained method (and of steps for SFT), scored by the win rate against the dev authors'
   own messages and chosen by one declared rule (:func:`select`): the least change among the settings
   within one standard error of the best.
4. **Runs** (:func:`run_target`): for each seed and target author, ``n_demos`` demonstrations drawn with
   that seed; every method adapts to them and answers the author's held-out prompts; plus the sample-
   efficiency runs (fewer demonstrations), DITTO after each iteration and two ablations. Runs go through
   the artifact cache and run side by side on both cores.
5. **Scores** (:func:`score_runs`): both judges' ``log p(target | output)`` for every output, whether it
   kept the content, and how many style dimensions it matched; win rates are computed in the chapter.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from paperlab import cache, stats
from paperlab.config import (
    check_int_tuple,
    check_ints,
    check_number_tuple,
    check_that,
    check_type,
)
from paperlab.ditto.data import (
    Cast,
    CastConfig,
    Example,
    content_kept,
    demonstrations,
    eval_contents,
    make_cast,
    make_tokenizer,
    random_content,
    style_match,
    write,
)
from paperlab.ditto.judge import JudgeConfig, accuracy, judge_data, make_judges, wins
from paperlab.ditto.methods import (
    OnlineDPO,
    OnlineDPOConfig,
    answer,
    encode_examples,
    few_shot_prompts,
    sft,
)
from paperlab.experiments import Experiment
from paperlab.nn import GPT, GPTConfig, check_gpt_sizes, count_parameters
from paperlab.tokenizers import Tokenizer
from paperlab.train import (
    TrainConfig,
    TrainResult,
    auto_device,
    check_convergence_evaluations,
    seed_everything,
    seeded_batches,
    train,
)
from paperlab.utils import alone_threads, cpu_threads, parallel_map

__all__ = [
    "BaseConfig", "DittoExperimentConfig", "RunSpec", "CONFIGS", "MAIN_METHODS", "load_base",
    "pretraining_batch", "select", "tune", "run_spec", "run_target", "run_all", "score_runs",
    "judge_accuracy", "dpo_convergence", "run", "EXPERIMENT",
]

MAIN_METHODS = ("zero-shot", "few-shot", "SFT", "SPIN", "DITTO")


# --------------------------------------------------------------------------------------------------
# 1. The base model
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BaseConfig:
    """The base GPT and its pretraining on the pretraining authors' documents."""

    context_length: int = 192
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=2000, batch_size=16, lr=3e-3, warmup_steps=50, eval_every=100, seed=0))
    n_val_documents: int = 64

    def __post_init__(self):
        check_ints(self, "context_length", "d_model", "n_layers", "n_heads", "n_val_documents")
        check_type(self, "train", TrainConfig)
        check_gpt_sizes(self, context_length=self.context_length, d_model=self.d_model,
                        n_layers=self.n_layers, n_heads=self.n_heads)  # the architecture's rules


def pretraining_document(cast: Cast, tokenizer: Tokenizer, length: int,
                         rng: random.Random) -> tuple[list[int], list[bool]]:
    """``length`` tokens of one random pretraining author: ``<bos>`` then ``prompt message |`` repeated
    (the last one cut), and which tokens are message tokens (the only ones the loss counts)."""
    author = rng.choice(cast.pretrain)
    ids, is_message = [tokenizer.bos_id], [False]
    while len(ids) < length:
        content = random_content(rng)
        prompt = tokenizer.encode(content.prompt)
        message = tokenizer.encode(f"{write(author, content, rng)} |")
        ids += prompt + message
        is_message += [False] * len(prompt) + [True] * len(message)
    return ids[:length], is_message[:length]


def pretraining_batch(cast: Cast, tokenizer: Tokenizer, batch_size: int, context_length: int,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(idx, targets)``, both (batch, context_length): next-token targets on message tokens only."""
    rng = random.Random(int(torch.randint(2**62, (1,), generator=generator)))
    documents = [pretraining_document(cast, tokenizer, context_length + 1, rng) for _ in range(batch_size)]
    tokens = torch.tensor([ids for ids, _ in documents])
    counted = torch.tensor([mask for _, mask in documents])
    targets = tokens[:, 1:].clone()
    targets[~counted[:, 1:]] = -100  # prompts are context, not targets
    return tokens[:, :-1], targets


def make_base(config: BaseConfig, vocab_size: int) -> GPT:
    return GPT(GPTConfig(vocab_size=vocab_size, context_length=config.context_length, d_model=config.d_model,
                         n_layers=config.n_layers, n_heads=config.n_heads))


def pretrain(config: BaseConfig, cast_config: CastConfig, device=None) -> dict:
    """Pretrain the base GPT; its weights (CPU) and history. Every later run starts from it, so nothing
    runs beside it: :func:`paperlab.utils.alone_threads` (the same weights bit for bit on one thread or
    two, checked on the full profile's model for 300 steps: 29 s on one thread, 19 s on two)."""
    device = auto_device(device)
    with cpu_threads(alone_threads(), device=device):
        return _pretrain(config, cast_config, device)


def _pretrain(config: BaseConfig, cast_config: CastConfig, device: torch.device) -> dict:
    cast, tokenizer = make_cast(cast_config), make_tokenizer()
    seed_everything(config.train.seed)
    model = make_base(config, tokenizer.vocab_size).to(device)
    get_batch = seeded_batches(lambda g: pretraining_batch(cast, tokenizer, config.train.batch_size,
                                                           config.context_length, g), config.train.seed)
    val = pretraining_batch(cast, tokenizer, config.n_val_documents, config.context_length,
                            torch.Generator().manual_seed(10**9 + config.train.seed))
    val = tuple(t.to(device) for t in val)
    result = train(model, get_batch, lambda m, batch: m.loss(*batch), config.train,
                   eval_fn=lambda m: {"val_loss": m.loss(*val).item()}, device=device, desc="base GPT")
    return {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "history": result.to_dict()}


def load_base(config: BaseConfig, cast_config: CastConfig, device=None) -> tuple[GPT, TrainResult]:
    """The pretrained base GPT (from the cache, pretraining it first if needed) and its history."""
    artifact = cache.cached("ditto-base", (config, cast_config),
                            lambda: pretrain(config, cast_config, device), seed=config.train.seed,
                            check=cache.has_keys("state_dict", "history"))
    model = make_base(config, make_tokenizer().vocab_size)
    model.load_state_dict(artifact["state_dict"])
    return model.to(auto_device(device)).eval(), TrainResult.from_dict(artifact["history"])


# --------------------------------------------------------------------------------------------------
# 2. The chapter's configuration
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DittoExperimentConfig:
    """Everything the chapter runs. ``sft`` and ``ditto`` are the starting points of the tuning: their
    learning rates (and SFT's steps) are replaced by the values :func:`tune` picks on the dev authors from
    ``tune_lrs`` (every trained method) and ``tune_sft_steps``. SPIN is ``ditto`` with expert pairs only
    and the reference moved each iteration."""

    cast: CastConfig = CastConfig()
    judge: JudgeConfig = JudgeConfig()
    base: BaseConfig = BaseConfig()
    sft: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=60, batch_size=8, lr=1e-3, warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.0))
    ditto: OnlineDPOConfig = OnlineDPOConfig()
    n_demos: int = 7
    demo_counts: tuple[int, ...] = (1, 2, 4)  # sample efficiency: fewer demonstrations (and n_demos)
    n_eval: int = 24  # held-out prompts per author
    max_tokens: int = 30
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    tune_lrs: tuple[float, ...] = (1e-5, 3e-5, 1e-4, 3e-4)
    tune_sft_steps: tuple[int, ...] = (60, 180)
    tune_seeds: tuple[int, ...] = (1_000, 1_001)

    def __post_init__(self):
        for name, cls in (("cast", CastConfig), ("judge", JudgeConfig), ("base", BaseConfig),
                          ("sft", TrainConfig), ("ditto", OnlineDPOConfig)):
            check_type(self, name, cls)
        check_ints(self, "n_demos", "n_eval", "max_tokens")
        check_int_tuple(self, "tune_seeds", low=0, high=2**20)
        check_int_tuple(self, "demo_counts", high=self.n_demos - 1, min_len=0)
        check_int_tuple(self, "seeds", low=0, high=2**20)
        check_int_tuple(self, "tune_sft_steps")
        check_number_tuple(self, "tune_lrs", low=0, open_low=True)
        check_that(self, len(set(self.seeds)) == len(self.seeds), "seeds", "distinct seeds")
        check_that(self, not set(self.tune_seeds) & set(self.seeds), "tune_seeds",
                   "seeds not among the evaluation seeds")
        check_that(self, len(set(self.tune_seeds)) == len(self.tune_seeds), "tune_seeds", "distinct seeds")
        check_that(self, self.max_tokens < self.base.context_length, "max_tokens",
                   f"below the base model's context of {self.base.context_length} tokens")


def _ditto_fast() -> OnlineDPOConfig:
    return OnlineDPOConfig(train=TrainConfig(steps=8, batch_size=8, lr=1e-4, warmup_steps=2, min_lr_ratio=1.0,
                                             weight_decay=0.0), n_samples=4, resample_every=4)


CONFIGS = {
    "fast": DittoExperimentConfig(
        cast=CastConfig(n_pretrain_authors=24, n_dev_authors=1, n_target_authors=1),
        judge=JudgeConfig(n_train_per_author=40, n_test_per_author=20),
        base=BaseConfig(context_length=128, d_model=32, n_heads=2, n_val_documents=16, train=TrainConfig(
            steps=150, batch_size=16, lr=3e-3, warmup_steps=20, eval_every=50, seed=0)),
        sft=TrainConfig(steps=20, batch_size=8, lr=1e-3, min_lr_ratio=1.0, weight_decay=0.0),
        ditto=_ditto_fast(), n_demos=3, demo_counts=(1,), n_eval=8, max_tokens=30, seeds=(0, 1, 2),
        tune_lrs=(1e-3,), tune_sft_steps=(20,), tune_seeds=(1_000,)),
    "full": DittoExperimentConfig(),
}


# --------------------------------------------------------------------------------------------------
# 3. One run: one author, one seed, every method
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSpec:
    """What one run needs (and its cache key): the author (``group`` "target" or "dev", index), the seed
    of its demonstrations and sampling, the settings of each method, and which extra runs to make."""

    cast: CastConfig
    base: BaseConfig
    group: str
    author: int
    seed: int
    n_demos: int
    sft: TrainConfig
    ditto: OnlineDPOConfig
    spin: OnlineDPOConfig
    n_eval: int
    max_tokens: int
    methods: tuple[str, ...] = MAIN_METHODS
    demo_counts: tuple[int, ...] = ()
    ablations: bool = False

    def __post_init__(self):
        make_cast(self.cast).label(self.group, self.author)  # an unknown author is an error here, at once
        unknown = set(self.methods) - set(MAIN_METHODS)
        check_that(self, not unknown, "methods", f"a subset of {MAIN_METHODS} (unknown: {sorted(unknown)})")
        check_ints(self, "n_demos", "n_eval", "max_tokens")
        check_int_tuple(self, "demo_counts", high=self.n_demos - 1, min_len=0)


def spin_config(ditto: OnlineDPOConfig, lr: float | None = None) -> OnlineDPOConfig:
    """SPIN as the same loop: expert pairs only, the reference moved to the policy at each iteration."""
    train = ditto.train if lr is None else dataclasses.replace(ditto.train, lr=lr)
    return dataclasses.replace(ditto, mix=(1.0, 0.0, 0.0), reference="previous", train=train)


def ablation_configs(ditto: OnlineDPOConfig) -> dict[str, OnlineDPOConfig]:
    """DITTO without replay and without the later-over-earlier pairs; the other fractions are rescaled so
    that a batch keeps its number of pairs."""
    expert, replay, inter = ditto.mix
    return {"DITTO without replay": dataclasses.replace(ditto, mix=(expert / (expert + inter), 0.0,
                                                                    inter / (expert + inter))),
            "DITTO without inter": dataclasses.replace(ditto, mix=(expert / (expert + replay),
                                                                   replay / (expert + replay), 0.0))}


def eval_seed(cast: Cast, group: str, author: int) -> int:
    """The held-out prompts of an author are the same for every seed."""
    return 7_919 * (cast.label(group, author) + 1)


def run_target(spec: RunSpec, device=None) -> dict:
    """Every method of ``spec`` adapts the base model to the author's demonstrations and answers the
    author's held-out prompts; JSON-able (texts, contents, logs), cached by ``spec``."""
    return cache.cached(f"ditto-run-{spec.group}", spec, lambda: _run_target(spec, device), seed=spec.seed)


@cpu_threads(1)
def _run_target(spec: RunSpec, device=None) -> dict:
    cast, tokenizer = make_cast(spec.cast), make_tokenizer()
    author = cast.author(spec.group, spec.author)
    base, _ = load_base(spec.base, spec.cast, device)
    contents = eval_contents(spec.n_eval, eval_seed(cast, spec.group, spec.author))
    prompts = [c.prompt for c in contents]
    held_out = frozenset(prompts)
    demo_seed = 1_000_003 * spec.seed + cast.label(spec.group, spec.author)
    demos = demonstrations(author, spec.n_demos, seed=demo_seed, exclude=held_out)
    reference_rng = random.Random(spec.seed)
    texts = {"author": [write(author, c, reference_rng) for c in contents]}

    def respond(model: GPT, inputs: list[str]) -> list[str]:  # one sampling stream for every method
        return answer(model, tokenizer, inputs, seed=spec.seed, max_tokens=spec.max_tokens)

    if "zero-shot" in spec.methods:
        texts["zero-shot"] = respond(base, prompts)
    n_shown = 0
    if "few-shot" in spec.methods:
        shots, n_shown = few_shot_prompts(demos, prompts, tokenizer, spec.base.context_length,
                                          spec.max_tokens)
        texts["few-shot"] = respond(base, shots)
    logs: dict = {"few_shot_demos": n_shown}
    adapted = _adapt(spec, base, demos, tokenizer, respond, prompts, logs, ablations=spec.ablations)
    texts.update(adapted)
    for n in spec.demo_counts:  # sample efficiency: the first n demonstrations only
        fewer = dataclasses.replace(spec, methods=("SFT", "DITTO"))
        fewer_logs: dict = {}
        more = _adapt(fewer, base, demos[:n], tokenizer, respond, prompts, fewer_logs, ablations=False)
        texts[f"SFT n={n}"], texts[f"DITTO n={n}"] = more["SFT"], more["DITTO"]
        logs[f"DITTO n={n}"] = fewer_logs["DITTO"]
    if spec.demo_counts:
        texts[f"SFT n={spec.n_demos}"], texts[f"DITTO n={spec.n_demos}"] = texts["SFT"], texts["DITTO"]
    return {"texts": texts, "prompts": prompts, "contents": [dataclasses.asdict(c) for c in contents],
            "demonstrations": [dataclasses.asdict(d) for d in demos], "logs": logs}


def _adapt(spec: RunSpec, base: GPT, demos: list[Example], tokenizer: Tokenizer, respond, prompts: list[str],
           logs: dict, *, ablations: bool) -> dict[str, list[str]]:
    """SFT, then from the SFT model SPIN, DITTO (answers after every iteration) and its ablations."""
    trained = [m for m in ("SFT", "SPIN", "DITTO") if m in spec.methods]
    if not trained:
        return {}
    demo_prompts, demo_responses = encode_examples(demos, tokenizer)
    sft_model = _copy(base)
    history = sft(sft_model, demo_prompts, demo_responses, spec.sft, pad_id=tokenizer.pad_id,
                  device=_device(base), desc="SFT")
    logs["sft_loss"] = history.loss
    out = {"SFT": respond(sft_model, prompts)} if "SFT" in spec.methods else {}
    stop_id = tokenizer.encode("|")[0]

    def online(config: OnlineDPOConfig, name: str, per_iteration: bool = False) -> None:
        policy = _copy(sft_model)
        dpo = OnlineDPO(sft_model, demo_prompts, demo_responses, config, stop_id=stop_id,
                        pad_id=tokenizer.pad_id, seed=spec.seed)

        def on_step(step: int, model: GPT) -> None:
            if per_iteration and (step % config.resample_every == 0 or step == config.train.steps):
                out[f"DITTO iteration {len(dpo.samples)}"] = respond(model, prompts)

        result = train(policy, dpo.get_batch(policy), dpo.loss_fn, config.train, on_step=on_step,
                       device=_device(base), desc=name)
        out[name] = respond(policy, prompts)
        logs[name] = {"steps": result.steps, "loss": result.loss, "iterations": dpo.log}

    if "SPIN" in spec.methods:
        online(spec.spin, "SPIN")
    if "DITTO" in spec.methods:
        online(spec.ditto, "DITTO", per_iteration=ablations)
    if ablations:
        for name, config in ablation_configs(spec.ditto).items():
            online(config, name)
    return out


def dpo_convergence(runs: list[dict], method: str) -> list[stats.Convergence | None]:
    """The convergence check (:func:`paperlab.stats.convergence`) on ``method``'s DPO loss in each run
    (``"DITTO"``, ``"SPIN"``, an ablation, ``"DITTO n=2"``): the loss of every logged step, fitted over the
    last fifth of the steps. There is no held-out loss: the pairs are drawn online from the policy's own
    samples, so this is the training loss on the last iteration's comparisons, which stay fixed between
    resamplings. A run too short to hold 5 logged steps in its last fifth is fitted over its last 5.

    None for a run whose last iteration drew no comparisons: every sample equalled its demonstration, so
    every pair was identical and left out, each step logged a loss of 0 with no gradient, and the loop had
    reached its fixed point (nothing left to learn from); there is no curve to check. A ``method`` that a
    run did not log is a ValueError naming the ones it did, before any fit."""
    for run in runs:
        logged = [name for name, log in run["logs"].items() if isinstance(log, dict) and "loss" in log]
        if method not in logged:
            raise ValueError(f"no DPO log named {method!r} in a run; it logged {logged}")
    checks: list[stats.Convergence | None] = []
    for run in runs:
        log = run["logs"][method]
        no_comparisons = log["iterations"][-1]["steps_without_pairs"] > 0  # all of the iteration's or none
        checks.append(None if no_comparisons else stats.convergence(log["steps"], log["loss"]))
    return checks


def _copy(model: GPT) -> GPT:
    copy = GPT(model.config).to(_device(model))
    copy.load_state_dict(model.state_dict())
    return copy


def _device(model: GPT) -> torch.device:
    return next(model.parameters()).device


def run_spec(config: DittoExperimentConfig, group: str, author: int, seed: int, **changes) -> RunSpec:
    """The run of ``config``'s settings for one author and seed (``changes`` replace RunSpec fields)."""
    spec = RunSpec(cast=config.cast, base=config.base, group=group, author=author, seed=seed,
                   n_demos=config.n_demos, sft=config.sft, ditto=config.ditto, spin=spin_config(config.ditto),
                   n_eval=config.n_eval, max_tokens=config.max_tokens)
    return dataclasses.replace(spec, **changes)


def _run_job(spec: RunSpec, device=None) -> dict:
    return run_target(spec, device)


def run_all(specs: list[RunSpec], device=None, desc: str = "runs") -> list[dict]:
    """The runs side by side, one process per core (one after another in this process on a GPU)."""
    workers = 1 if device is not None and str(device).startswith("cuda") else None
    return parallel_map(_run_job, [(spec, device) for spec in specs], workers=workers, desc=desc)


# --------------------------------------------------------------------------------------------------
# 4. Scores: both judges, content kept, style dimensions matched
# --------------------------------------------------------------------------------------------------
def _content(record: dict):
    from paperlab.ditto.data import Content

    return Content(record["name"], record["intent"], tuple(tuple(slot) for slot in record["slots"]))


def score_runs(runs: list[dict], specs: list[RunSpec], judges: dict) -> list[dict]:
    """For each run and method, per held-out prompt: each judge's ``log p(target | output)`` (``score``),
    whether the output kept the content, and the share of style dimensions it matched."""
    out = []
    for run_result, spec in zip(runs, specs):
        cast = make_cast(spec.cast)
        label, author = cast.label(spec.group, spec.author), cast.author(spec.group, spec.author)
        contents = [_content(c) for c in run_result["contents"]]
        methods = {}
        for method, texts in run_result["texts"].items():
            methods[method] = {
                "score": {kind: judge.score(texts, label).tolist() for kind, judge in judges.items()},
                "kept": [content_kept(c, t) for c, t in zip(contents, texts)],
                "style": [style_match(author, c, t) for c, t in zip(contents, texts)],
            }
        out.append({"group": spec.group, "author": spec.author, "seed": spec.seed, "methods": methods})
    return out


def judge_accuracy(cast: Cast, judges: dict, config: JudgeConfig) -> dict:
    """Each judge's per-message accuracy on fresh messages of every author (and of the targets alone)."""
    texts, labels = judge_data(cast, config.n_test_per_author, config.test_seed)
    first_target = cast.label("target", 0)
    result = {}
    for kind, judge in judges.items():
        correct = accuracy(judge, texts, labels)
        result[kind] = {"all": correct.tolist(),
                        "target": correct[np.asarray(labels) >= first_target].tolist()}
    result["n_authors"] = len(cast.all)
    return result


# --------------------------------------------------------------------------------------------------
# 5. Tuning on the dev authors, then the runs on the targets
# --------------------------------------------------------------------------------------------------
def select(scores: list[float], errors: list[float]) -> int:
    """The tuning's selection rule, declared before any score is computed and the same for every method.

    ``scores[i]``: setting i's mean win rate on the dev authors; ``errors[i]``: its standard error. The
    settings are listed from the least change to the most (smallest learning rate first; for SFT, then
    fewest steps). A setting whose score is within one standard error of the best (the best's own error:
    the dev score's noise) is tied with it, and of the tied settings the first, the least change from the
    starting model, wins (the one-standard-error rule). Returns its index."""
    if not scores or len(scores) != len(errors):
        raise ValueError(f"select needs one error per score, got {len(scores)} scores and "
                         f"{len(errors)} errors")
    best = int(np.argmax(scores))
    return next(i for i, score in enumerate(scores) if score >= scores[best] - errors[best])


def tune(config: DittoExperimentConfig, judges: dict, device=None) -> dict:
    """The same small grid for every trained method, on the dev authors with each of ``tune_seeds``: SFT
    over ``tune_lrs`` x ``tune_sft_steps``; then, from the chosen SFT, DITTO and SPIN over ``tune_lrs``. Each
    setting is scored by its win rate against the dev authors' own messages on their held-out prompts
    (char judge, content first: :func:`paperlab.ditto.judge.wins`), pooled over dev authors, seeds and
    prompts, with the standard error of that mean; :func:`select` chooses. Returns the grids' scores and
    errors and the chosen configs."""
    dev = range(len(make_cast(config.cast).dev))

    def spec(author, seed, **changes):
        return run_spec(config, "dev", author, seed, **changes)

    def setting_runs(**changes) -> list[RunSpec]:
        return [spec(a, seed, **changes) for seed in config.tune_seeds for a in dev]

    def mean_scores(grids: list[list[list[RunSpec]]]) -> list[tuple[list[float], list[float]]]:
        """For each grid (a list of settings, each a run per dev author and seed), each setting's win rate
        against the dev authors' own messages and its standard error; all the runs side by side in one
        pool."""
        flat = [s for grid in grids for setting in grid for s in setting]
        scored = iter(score_runs(run_all(flat, device, desc="tuning"), flat, {"char": judges["char"]}))
        out = []
        for grid in grids:
            scores, errors = [], []
            for setting in grid:
                won = []
                for dev_run in setting:
                    s = next(scored)
                    method, author = s["methods"][dev_run.methods[-1]], s["methods"]["author"]
                    won.extend(wins(method["score"]["char"], author["score"]["char"], method["kept"],
                                    author["kept"]))
                scores.append(float(np.mean(won)))
                errors.append(float(np.std(won, ddof=1) / np.sqrt(len(won))) if len(won) > 1 else 0.0)
            out.append((scores, errors))
        return out

    sft_grid = [dataclasses.replace(config.sft, lr=lr, steps=steps)  # least change first: lr, then steps
                for lr in sorted(config.tune_lrs) for steps in sorted(config.tune_sft_steps)]
    [(sft_scores, sft_errors)] = mean_scores([[setting_runs(methods=("SFT",), sft=s) for s in sft_grid]])
    best_sft = sft_grid[select(sft_scores, sft_errors)]
    lrs = sorted(config.tune_lrs)
    ditto_grid = [dataclasses.replace(config.ditto, train=dataclasses.replace(config.ditto.train, lr=lr))
                  for lr in lrs]
    grids = {"DITTO": ditto_grid, "SPIN": [spin_config(g) for g in ditto_grid]}
    runs = [[setting_runs(methods=(method,), sft=best_sft, **{method.lower(): g}) for g in grid]
            for method, grid in grids.items()]
    scored = dict(zip(grids, mean_scores(runs)))
    chosen = {method: grid[select(*scored[method])] for method, grid in grids.items()}
    return {"sft_grid": [[s.lr, s.steps] for s in sft_grid], "sft_scores": sft_scores,
            "sft_errors": sft_errors, "lrs": lrs,
            "dpo_scores": {m: scores for m, (scores, _) in scored.items()},
            "dpo_errors": {m: errors for m, (_, errors) in scored.items()},
            "n_dev_runs": len(config.tune_seeds) * len(dev),
            "sft": best_sft, "ditto": chosen["DITTO"], "spin": chosen["SPIN"]}


def target_specs(config: DittoExperimentConfig, tuned: dict) -> list[RunSpec]:
    """One run per seed and target author, with the tuned settings, the sample-efficiency runs and the
    ablations."""
    n_targets = len(make_cast(config.cast).target)
    return [run_spec(config, "target", author, seed, sft=tuned["sft"], ditto=tuned["ditto"],
                     spin=tuned["spin"], demo_counts=config.demo_counts, ablations=True)
            for seed in config.seeds for author in range(n_targets)]


def run(config: DittoExperimentConfig, device=None) -> dict:
    """The whole experiment; JSON-able except ``tuned`` (configs): base model, judges' accuracy, tuning,
    and the scored runs on the target authors."""
    device = None if device is None else str(auto_device(device))
    cast = make_cast(config.cast)
    base, history = load_base(config.base, config.cast, device)
    judges = make_judges(cast, config.judge)
    tuned = tune(config, judges, device)
    specs = target_specs(config, tuned)
    runs = run_all(specs, device, desc="target runs")
    return {"n_parameters": count_parameters(base), "base_history": history.to_dict(),
            "judge_accuracy": judge_accuracy(cast, judges, config.judge),
            "tuning": {k: v for k, v in tuned.items() if k not in ("sft", "ditto", "spin")},
            "tuned": {"sft_lr": tuned["sft"].lr, "sft_steps": tuned["sft"].steps,
                      "ditto_lr": tuned["ditto"].train.lr, "spin_lr": tuned["spin"].train.lr},
            "runs": runs, "scores": score_runs(runs, specs, judges)}


def check_runnable(config: DittoExperimentConfig) -> None:
    """What :func:`run` needs beyond a valid config (a ValueError before any work)."""
    cast = make_cast(config.cast)
    check_that(config, len(cast.dev) >= 1, "cast", "a cast with at least one dev author (for the tuning)")
    check_convergence_evaluations(config, "base", config.base.train)


EXPERIMENT = Experiment(name="ditto", chapter="book/10-ditto.md", configs=CONFIGS, run=run,
                        check=check_runnable)
