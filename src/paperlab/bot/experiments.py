"""The Buffer of Thoughts chapter's experiment: tiny models trained on generated problems play the
language model (:mod:`paperlab.bot.model`); IO, chain of thought, Tree of Thoughts and Buffer of Thoughts
are compared on accuracy and cost, on a phrasing never seen in training, across retrieval thresholds, over
a stream of problems with the buffer manager, and against a larger model.

:func:`measure_seed` runs every evaluation for one training seed: each method on the test set with the
small model (IO and chain of thought also with the large one), Tree of Thoughts on the Game of 24, Buffer
of Thoughts with the chapter's templates; chain of thought and BoT on the held-out phrasing; the threshold
sweep (:func:`sweep_thresholds`); the stream (:func:`paperlab.bot.methods.run_stream`); the small and
the large model's parts are measured and cached apart (:func:`measure_small`, :func:`measure_large`).
:func:`run` trains and measures every model in chains of work, one per core (:func:`plan`), and returns
JSON-able results.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from paperlab import cache, llm
from paperlab.bot import tasks
from paperlab.bot.buffer import DEFAULT_DELTA, MetaBuffer, book_templates
from paperlab.bot.methods import (
    Ledger,
    ProgramRunner,
    buffer_of_thoughts,
    chain_of_thought,
    io,
    run_stream,
    tree_of_thoughts,
)
from paperlab.bot.model import (
    DataConfig,
    ModelConfig,
    build_data,
    load_model,
    make_gpt,
    make_tokenizer,
    problems_of,
    test_phrasing,
)
from paperlab.bot.prompts import TinyPrompts
from paperlab.bot.sandbox import Limits
from paperlab.config import (
    check_ints,
    check_number_tuple,
    check_numbers,
    check_seeds,
    check_that,
    check_type,
)
from paperlab.experiments import Experiment
from paperlab.nn import count_parameters
from paperlab.train import TrainConfig, TrainResult, auto_device, check_convergence_evaluations
from paperlab.utils import parallel_map, usable_cores

__all__ = ["BoTConfig", "CONFIGS", "EXPERIMENT", "load", "measure_seed", "run", "sweep_thresholds",
           "statements", "METHODS", "measure_small", "measure_large", "plan", "family_accuracy",
           "mean_accuracy", "best_single_query", "cost_per_problem", "distiller_accuracy", "stream_order"]

METHODS = ("io", "cot", "tot", "bot", "io_large", "cot_large")


@dataclass(frozen=True)
class BoTConfig:
    """Everything that determines the chapter's results (and so their cache keys)."""

    data: DataConfig = field(default_factory=DataConfig)  # problems per family: every method's data budget
    small: ModelConfig = field(default_factory=ModelConfig)
    large: ModelConfig = field(default_factory=lambda: ModelConfig(d_model=96, n_layers=2, n_heads=4))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=3000, batch_size=32, lr=3e-3, warmup_steps=100, eval_every=150, weight_decay=0.01))
    seeds: tuple[int, ...] = (0, 1, 2)
    delta: float = DEFAULT_DELTA  # retrieval threshold
    novelty: float = DEFAULT_DELTA  # the manager admits a template whose description is below this
    # similarity to every held one (the paper: one threshold delta for retrieval and the manager)
    max_retries: int = 2  # inspector retries after a failed instantiation
    tot_breadth: int = 5
    tot_depth: int = 3
    n_propose: int = 8  # proposals sampled per state (the tiny proposer writes one step per sample)
    n_value: int = 3  # value samples per state
    deltas: tuple[float, ...] = (0.0, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    stream_length: int = 120
    sandbox_wall_seconds: float = 10.0
    sandbox_cpu_seconds: int = 5
    sandbox_memory_mb: int = 512
    # the smallest effects that count, declared with the claims (book/08-bot.md, sec-bot-claims)
    claim_gain: float = 0.10  # BoT over the best single-query method, mean accuracy over families
    claim_tot_gain: float = 0.05  # BoT over ToT on the Game of 24
    claim_cost_fraction: float = 0.12  # BoT's seconds per problem as a fraction of ToT's (paper, Figure 3)
    claim_phrasing_drop: float = 0.05  # accuracy lost on a phrasing never seen in training
    claim_scale_gain: float = 0.0  # small model with BoT over the large model's best single-query method
    claim_buffer_slack: float = 1.0  # templates held minus families seen, within +-

    def __post_init__(self) -> None:
        for name, cls in (("data", DataConfig), ("small", ModelConfig), ("large", ModelConfig),
                          ("train", TrainConfig)):
            check_type(self, name, cls)
        check_seeds(self)
        check_numbers(self, "delta", low=0, high=1)  # cosine similarities
        check_numbers(self, "novelty", low=0, high=1, open_low=True)  # 0 would admit no template at all
        check_number_tuple(self, "deltas", low=0, high=1)
        check_ints(self, "max_retries", low=0)
        check_ints(self, "tot_breadth", "tot_depth", "n_propose", "n_value", "stream_length",
                   "sandbox_cpu_seconds", "sandbox_memory_mb")
        check_numbers(self, "sandbox_wall_seconds", low=0, open_low=True)
        check_numbers(self, "claim_gain", "claim_tot_gain", "claim_phrasing_drop", "claim_scale_gain",
                      "claim_buffer_slack", low=0)
        check_numbers(self, "claim_cost_fraction", low=0, open_low=True)

    @property
    def limits(self) -> Limits:
        return Limits(self.sandbox_wall_seconds, self.sandbox_cpu_seconds, self.sandbox_memory_mb)


CONFIGS = {
    "fast": BoTConfig(
        data=DataConfig(n_train=200, n_val=6, n_test=6),
        small=ModelConfig(d_model=64, n_layers=2, n_heads=4),
        large=ModelConfig(d_model=96, n_layers=2, n_heads=4),
        train=TrainConfig(steps=120, batch_size=16, lr=3e-3, warmup_steps=10, eval_every=40,
                          weight_decay=0.01),
        deltas=(0.0, 0.2, 0.5, 1.0), stream_length=16),
    "full": BoTConfig(),
}


# --------------------------------------------------------------------------------------------------
# 3. Evaluation
# --------------------------------------------------------------------------------------------------
def statements(problems: list[tasks.Problem], held_out: bool = False) -> list[str]:
    """Each test problem's statement: phrasing ``j % 3`` of the ``j``-th problem of its family, or the
    held-out phrasing."""
    return [p.statement(tasks.HELD_OUT_PHRASING if held_out else phrasing)
            for p, phrasing in zip(problems, _phrasings(problems))]


def _graded(problems, answers) -> list[bool]:
    return [tasks.check(p, a) for p, a in zip(problems, answers)]


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def measure_seed(seed: int, config: BoTConfig, device: str | None = None) -> dict:
    """Every evaluation of the chapter for the models of training seed ``seed`` (JSON-able): the small
    model's (:func:`measure_small`) and the large model's (:func:`measure_large`), each cached."""
    return _merge(measure_small(seed, config, device), measure_large(seed, config, device))


def measure_small(seed: int, config: BoTConfig, device: str | None = None) -> dict:
    """Every evaluation of the small model of seed ``seed`` (JSON-able; cached)."""
    return cache.cached("bot-measure", config, lambda: _measure_small(seed, config, device), seed=seed)


def measure_large(seed: int, config: BoTConfig, device: str | None = None) -> dict:
    """IO and chain of thought with the large model of seed ``seed`` (JSON-able; cached). Its own sampling
    stream, so measured apart from the small model's evaluations with the same results."""
    return cache.cached("bot-measure-large", config, lambda: _measure_large(seed, config, device), seed=seed)


def _merge(small: dict, large: dict) -> dict:
    """One seed's results: the small model's with the large model's methods and training history, the
    methods in :data:`METHODS`' measuring order (io, cot, io_large, cot_large, tot, bot)."""
    out = dict(small)
    for key in ("answers", "correct", "costs", "seconds"):
        both = {**small[key], **large[key]}
        out[key] = {m: both[m] for m in ("io", "cot", "io_large", "cot_large", "tot", "bot") if m in both}
    out["training"] = {"small": small["training"]["small"], "large": large["training"]["large"]}
    return out


def _training(history: TrainResult) -> dict:
    convergence = history.convergence("val_loss")
    return {**convergence.record(), "evals": history.evals, "seconds": history.seconds}


def _recorder(out: dict, problems: list[tasks.Problem]):
    def record(method: str, ledger: Ledger, answers, seconds: float, subset=None) -> None:
        chosen = subset if subset is not None else range(len(problems))
        out["answers"][method] = list(answers)
        out["correct"][method] = _graded([problems[i] for i in chosen], answers)
        out["costs"][method] = [ledger.costs[i].as_dict() for i in chosen]
        out["seconds"][method] = seconds
    return record


def _measure_large(seed: int, config: BoTConfig, device: str | None) -> dict:
    problems = problems_of(build_data(config.data), "test")
    large, large_history = load(config, "large", seed, device)
    prompts = TinyPrompts(n_propose=config.n_propose, n_value=config.n_value)
    seen = statements(problems)
    out: dict = {"seed": seed, "answers": {}, "correct": {}, "costs": {}, "seconds": {}}
    record = _recorder(out, problems)
    for method, fn in (("io_large", io), ("cot_large", chain_of_thought)):
        ledger = Ledger(large, len(problems))
        answers, seconds = _timed(lambda fn=fn, ledger=ledger: fn(ledger, prompts, seen))
        record(method, ledger, answers, seconds)
    out["training"] = {"large": _training(large_history)}
    return out


def _measure_small(seed: int, config: BoTConfig, device: str | None) -> dict:
    problems = problems_of(build_data(config.data), "test")
    small, small_history = load(config, "small", seed, device)
    prompts = TinyPrompts(n_propose=config.n_propose, n_value=config.n_value)
    runner = ProgramRunner(config.limits)
    seen = statements(problems)
    n = len(problems)
    out: dict = {"seed": seed, "answers": {}, "correct": {}, "costs": {}, "seconds": {}}
    record = _recorder(out, problems)

    for method, fn in (("io", io), ("cot", chain_of_thought)):
        ledger = Ledger(small, n)
        answers, seconds = _timed(lambda fn=fn, ledger=ledger: fn(ledger, prompts, seen))
        record(method, ledger, answers, seconds)

    game24 = [i for i, p in enumerate(problems) if p.family == "game24"]
    ledger = Ledger(small, n)
    answers, seconds = _timed(lambda: tree_of_thoughts(
        ledger, prompts, [problems[i].params["numbers"] for i in game24], breadth=config.tot_breadth,
        depth=config.tot_depth, owners=game24))
    record("tot", ledger, answers, seconds, subset=game24)

    book = MetaBuffer(book_templates())
    ledger = Ledger(small, n)

    def bot_run(texts, ledger=ledger):
        return buffer_of_thoughts(
            ledger, prompts, texts, book, delta=config.delta, runner=runner, max_retries=config.max_retries,
            fallback=lambda idx: chain_of_thought(ledger, prompts, [texts[i] for i in idx], owners=idx))

    records, seconds = _timed(lambda: bot_run(seen))
    for i, r in enumerate(records):  # BoT's time includes running its programs
        ledger.costs[i].seconds += r.program_seconds
    record("bot", ledger, [r.answer for r in records], seconds)
    out["bot_records"] = [r.as_dict() for r in records]
    out["program_seconds"] = runner.seconds

    held_out = statements(problems, held_out=True)
    robust: dict = {}
    for method in ("cot", "bot"):
        ledger = Ledger(small, n)
        if method == "cot":
            answers = chain_of_thought(ledger, prompts, held_out)
        else:
            held_records = buffer_of_thoughts(
                ledger, prompts, held_out, book, delta=config.delta, runner=runner,
                max_retries=config.max_retries,
                fallback=lambda idx, ledger=ledger: chain_of_thought(
                    ledger, prompts, [held_out[i] for i in idx], owners=idx))
            answers = [r.answer for r in held_records]
            out["held_out_distilled"] = [r.distilled for r in held_records]
        robust[method] = _graded(problems, answers)
    out["held_out_phrasing"] = robust

    distilled = [r["distilled"] for r in out["bot_records"]]
    cot_answers = out["answers"]["cot"]
    out["sweep"] = sweep_thresholds(problems, distilled, cot_answers, config.deltas, runner)
    order = stream_order(n, config.stream_length, seed)
    out["stream"] = run_stream([problems[i] for i in order], [distilled[i] for i in order],
                               [cot_answers[i] for i in order], runner, delta=config.delta,
                               novelty=config.novelty)
    out["stream"]["order"] = order
    out["training"] = {"small": _training(small_history)}
    return out


def stream_order(n: int, length: int, seed: int) -> list[int]:
    """The test problems (indices below ``n``) of training seed ``seed``'s stream, in order: ``length`` of
    them drawn without replacement from a generator of the seed's own, so each seed's stream is an
    independent draw (which problems and in what order), not one shared order."""
    return random.Random(f"bot stream {seed}").sample(range(n), min(length, n))


def sweep_thresholds(problems, distilled, fallback_answers, deltas, runner) -> dict:
    """Buffer of Thoughts at each retrieval threshold in ``deltas``, on texts distilled once, with two
    buffers: all four book templates, and all but the arithmetic one (a family with no template).

    No model calls: retries are off (``max_retries = 0``, the inspector's samples would differ per
    threshold) and a problem without a usable template takes its fallback (chain-of-thought) answer.
    Per threshold: accuracy, the share of problems that used a template of another family (wrong
    template), and the share that fell back.
    """
    out = {}
    for label, families in (("all templates", tasks.FAMILIES),
                            ("no arithmetic template", tuple(f for f in tasks.FAMILIES if f != "arithmetic")),
                            ):
        buffer = MetaBuffer(book_templates(families))
        family_of = {t.name: t.family for t in buffer.templates}
        rows = []
        for delta in deltas:
            ledger = Ledger(_NoModel(), len(problems))
            records = buffer_of_thoughts(ledger, TinyPrompts(), [""] * len(problems), buffer, delta=delta,
                                         runner=runner, max_retries=0, distilled=distilled)
            answers = [r.answer if r.answer is not None else fallback_answers[i]
                       for i, r in enumerate(records)]
            wrong = [r.template is not None and family_of[r.template] != p.family
                     for r, p in zip(records, problems)]
            rows.append({"delta": delta, "accuracy": sum(_graded(problems, answers)) / len(problems),
                         "wrong_template": sum(wrong) / len(problems),
                         "fallback": sum(r.path != "template" for r in records) / len(problems),
                         "correct": _graded(problems, answers), "wrong": wrong,
                         "path": [r.path for r in records]})
        out[label] = rows
    return out


class _NoModel(llm.LLM):
    """A model that must not be called (the sweep reuses distilled texts)."""

    name = "no model"

    def _complete(self, *args):
        raise RuntimeError("the threshold sweep makes no model calls")

    def _logprob(self, *args):
        raise RuntimeError("the threshold sweep makes no model calls")


def load(config: BoTConfig, size: str, seed: int,
         device: str | None = None) -> tuple[llm.TinyLM, TrainResult]:
    """The ``size`` (``"small"`` or ``"large"``) model of ``seed``, trained on first use
    (:func:`paperlab.bot.model.load_model`)."""
    if size not in ("small", "large"):
        raise ValueError(f"size must be 'small' or 'large', got {size!r}")
    return load_model(config.data, getattr(config, size), config.train, seed, device)


def _chain(steps: tuple, config: BoTConfig, device: str | None) -> None:
    """Run ``steps`` in order in one worker (module level: run in worker processes): ``(kind, size,
    seed)``, kind ``"train"`` (train or load the model) or ``"measure"`` (:func:`measure_small` or
    :func:`measure_large`), every result going to the cache."""
    for kind, size, seed in steps:
        if kind == "train":
            load(config, size, seed, device)
        else:
            (measure_small if size == "small" else measure_large)(seed, config, device)


def plan(seeds: tuple[int, ...], workers: int) -> list[tuple]:
    """The work of :func:`run` as ``workers`` chains of steps (for :func:`_chain`), each step after what
    it needs in its own chain: a seed's whole work (train the large model, the small one, measure both)
    in one chain, seeds dealt round-robin; the seeds left over when they do not divide evenly are split
    into their large-model and small-model halves (train, then measure), each half to the chain with the
    least work (weights: a large model's training and measurement about 1.3 times a small model's,
    judged from the full profile's times). So 3 seeds on 2 cores keep both cores busy to the end
    instead of leaving one idle while the third seed is measured."""
    workers = max(1, min(workers, 2 * len(seeds)))
    chains: list[list[tuple]] = [[] for _ in range(workers)]
    load_of = [0.0] * workers
    weight = {"large": 1.3, "small": 1.0}
    whole = len(seeds) - len(seeds) % workers if workers > 1 else len(seeds)
    for k, seed in enumerate(seeds[:whole]):
        c = k % workers
        chains[c] += [("train", "large", seed), ("train", "small", seed), ("measure", "small", seed),
                      ("measure", "large", seed)]
        load_of[c] += weight["large"] + weight["small"]
    for seed in seeds[whole:]:
        for size in ("large", "small"):
            c = min(range(workers), key=lambda i: (load_of[i], i))
            chains[c] += [("train", size, seed), ("measure", size, seed)]
            load_of[c] += weight[size]
    return [tuple(chain) for chain in chains if chain]


def run(config: BoTConfig, device: str | None = None) -> dict:
    """Train every (size, seed) model and measure it (:func:`measure_seed`), in chains of work that keep
    every core busy (:func:`plan`, one process per core; CUDA: all in this process); plus what does not
    depend on the seed (data, vocabulary, model sizes)."""
    check_runnable(config)
    device = None if device is None else str(auto_device(device))  # a bad device fails before any work
    data = build_data(config.data)
    tokenizer = make_tokenizer(config.data)
    cuda = device is not None and device.startswith("cuda")
    workers = 1 if cuda else usable_cores()
    chains = plan(tuple(config.seeds), workers)
    parallel_map(_chain, [(chain, config, device) for chain in chains], workers=len(chains),
                 desc="BoT models and measurements")
    per_seed = [measure_seed(seed, config, device) for seed in config.seeds]  # from the cache
    return {
        "families": list(tasks.FAMILIES),
        "test_families": [p.family for p in problems_of(data, "test")],
        "test_difficulty": [p.difficulty for p in problems_of(data, "test")],
        "vocab_size": tokenizer.vocab_size,
        "n_parameters": {size: count_parameters(make_gpt(getattr(config, size), tokenizer.vocab_size))
                         for size in ("small", "large")},
        "seeds": per_seed,
    }


# --------------------------------------------------------------------------------------------------
# 4. Summaries of run()'s results, for the chapter
# --------------------------------------------------------------------------------------------------
def family_accuracy(results: dict, method: str, key: str = "correct") -> dict[str, list[float]]:
    """Accuracy of ``method`` per family, one value per seed (``key="held_out_phrasing"`` for the
    held-out phrasing). Tree of Thoughts has the Game of 24 only."""
    families = results["test_families"]
    out: dict[str, list[float]] = {}
    for run_ in results["seeds"]:
        correct = run_[key][method]
        subset = [f for f in families if f == "game24"] if method == "tot" else families
        for name in results["families"]:
            marks = [c for c, f in zip(correct, subset) if f == name]
            if marks:
                out.setdefault(name, []).append(sum(marks) / len(marks))
    return out


def mean_accuracy(results: dict, method: str, key: str = "correct") -> list[float]:
    """Accuracy averaged over the families (each family weighs the same), one value per seed."""
    per_family = family_accuracy(results, method, key)
    return [sum(values[i] for values in per_family.values()) / len(per_family)
            for i in range(len(results["seeds"]))]


def best_single_query(results: dict, size: str = "small") -> tuple[list[float], dict[str, str]]:
    """The stronger single-query baseline: for each family, IO or chain of thought, whichever is more
    accurate on average over the seeds; per seed, the mean over families of the chosen method's
    accuracy. Returns that and the choice per family."""
    suffix = "" if size == "small" else "_large"
    io_acc, cot_acc = family_accuracy(results, "io" + suffix), family_accuracy(results, "cot" + suffix)
    choice = {name: ("io" if sum(io_acc[name]) > sum(cot_acc[name]) else "cot") + suffix
              for name in results["families"]}
    chosen = {name: (io_acc if choice[name].startswith("io") else cot_acc)[name] for name in choice}
    per_seed = [sum(chosen[name][i] for name in choice) / len(choice) for i in range(len(results["seeds"]))]
    return per_seed, choice


def cost_per_problem(results: dict, method: str, family: str | None = None) -> dict[str, list[float]]:
    """Mean model calls, generated tokens and seconds per problem (of ``family``, or all), per seed."""
    families = results["test_families"]
    out: dict[str, list[float]] = {"calls": [], "generated_tokens": [], "seconds": []}
    for run_ in results["seeds"]:
        subset = [f for f in families if f == "game24"] if method == "tot" else families
        costs = [c for c, f in zip(run_["costs"][method], subset) if family is None or f == family]
        for key in out:
            out[key].append(sum(c[key] for c in costs) / len(costs))
    return out


def distiller_accuracy(results: dict, config: BoTConfig, held_out: bool = False) -> list[float]:
    """Per seed, the share of test problems whose distilled text carries exactly the right parameters
    (everything after the task line, as :meth:`paperlab.bot.tasks.Family.distilled` writes it; spacing
    ignored, as the word tokenizer decodes punctuation without it), for the seen phrasings or
    (``held_out``) the phrasing never seen in training. The task line is left out: for the unseen
    phrasing the distiller cannot know the line it was never taught."""
    problems = problems_of(build_data(config.data), "test")
    targets = [_squash(tasks.family(p.family).format_params(p.params)) for p in problems]
    out = []
    for run_ in results["seeds"]:
        texts = run_["held_out_distilled"] if held_out else [r["distilled"] for r in run_["bot_records"]]
        params = [_squash(text.partition(";")[2]) for text in texts]
        out.append(sum(p == t for p, t in zip(params, targets)) / len(targets))
    return out


def _squash(text: str) -> str:
    return "".join(text.split())


def _phrasings(problems: list[tasks.Problem]) -> list[int]:
    """The phrasing each test problem is stated in (as :func:`statements` states it)."""
    out, index = [], {}
    for p in problems:
        j = index.get(p.family, 0)
        index[p.family] = j + 1
        out.append(test_phrasing(j))
    return out


def check_runnable(config: BoTConfig) -> None:
    """What :func:`run` needs beyond a valid config: >= 3 seeds (the scorecard's intervals over seeds) and
    >= 5 evaluations per training run (the convergence check); a ValueError before any model is trained
    (``python -m paperlab run`` calls it up front)."""
    check_that(config, len(config.seeds) >= 3, "seeds", "a tuple of >= 3 seeds (95% intervals over seeds)")
    check_convergence_evaluations(config, "train", config.train)


EXPERIMENT = Experiment(name="bot", chapter="book/08-bot.md", configs=CONFIGS, run=run, check=check_runnable)
