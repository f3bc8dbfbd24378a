"""The SSD chapter's experiments: equivalence of the three algorithms, the matrix's structure, their cost,
and MQAR recall.

Each function returns plain results (numbers, lists, strings) for the chapter to plot and judge; the
expensive ones (:func:`cost_sweep`, and every model :func:`mqar_sweep` trains) go through
:func:`paperlab.cache.cached`, keyed on their config. :data:`CONFIGS` holds one :class:`SSDConfig` per
profile.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from paperlab import cache, stats
from paperlab.config import (
    check_int_tuple,
    check_ints,
    check_number_tuple,
    check_seeds,
    check_that,
    check_type,
)
from paperlab.experiments import Experiment
from paperlab.nn import GPT, GPTConfig, count_parameters
from paperlab.scheduling import run_as_ready
from paperlab.ssd.core import random_inputs, segsum, segsum_naive, ssd_chunked, ssd_quadratic, ssd_recurrent
from paperlab.ssd.model import Mamba2Config, Mamba2LM
from paperlab.ssd.mqar import IGNORE, MQAR_LOSS_FLOOR, MQARTask, train_mqar
from paperlab.timing import time_interleaved
from paperlab.train import TrainConfig, auto_device, check_convergence_evaluations
from paperlab.utils import cpu_threads
from paperlab_kernels import ssd as kernels

# The largest difference between two algorithms that still counts as "the same layer": rounding error of
# the precision (one home for the chapter's assert and its scorecard row).
TOLERANCE = {"float64": 1e-10, "float32": 1e-5}


# ------------------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class CostConfig:
    """Forward-pass timings of one SSD layer against sequence length and against state size.

    Every call runs on one CPU thread (the chapter compares how the algorithms scale, not how they use
    cores; see :func:`cost_sweep`); the algorithms are timed in interleaved rounds, ``repeats`` rounds per
    size. The quadratic form stops at ``quadratic_max_length`` (its ``T x T`` matrices take gigabytes
    beyond), the PyTorch recurrence at ``recurrent_max_length`` (one Python step per position).
    """

    lengths: tuple[int, ...] = (256, 512, 1024, 2048, 4096, 8192)
    quadratic_max_length: int = 4096
    recurrent_max_length: int = 2048
    batch: int = 1
    nheads: int = 2
    headdim: int = 32
    d_state: int = 32
    chunk_size: int = 64
    state_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)
    state_length: int = 4096  # long enough that fixed per-call costs do not hide the growth in N
    repeats: int = 7
    seed: int = 0

    def __post_init__(self):
        check_int_tuple(self, "lengths")
        check_int_tuple(self, "state_sizes")
        check_ints(self, "batch", "nheads", "headdim", "d_state", "chunk_size", "state_length", "repeats")
        check_ints(self, "quadratic_max_length", "recurrent_max_length", "seed", low=0)
        check_that(self, self.repeats >= 3, "repeats", "at least 3 timing rounds (the slopes' intervals "
                   "are a bootstrap over rounds)")


@dataclass(frozen=True)
class MQARConfig(MQARTask):
    """Multi-query associative recall: 2-layer Mamba-2 models at several state sizes, and attention.

    The task keeps the paper's proportions scaled down: a quarter of the ``seq_len`` tokens are pairs
    (``n_pairs = seq_len / 4``, as the paper's T/4), and the state sizes stand to the number of pairs as
    the paper's N = 16, 64, 256 stand to its 64 pairs at T = 256 (4x fewer, equal, 4x more). Every model
    has width ``width`` (the paper's smallest); Mamba-2 heads have ``headdim`` channels and one group of
    ``B, C``; attention (:class:`paperlab.nn.GPT`, with its MLPs) has heads of 16 channels.

    Tuning, the same rule for both families: each gets ``len(lrs)`` learning rates (``mamba_lrs``,
    ``attention_lrs``, equally many, all on ``lr_ladder``) with the first seed; the rate with the best
    accuracy on a validation set (``n_val`` sequences from ``val_seed``) is then trained with the other
    seeds. A model whose best rate is the highest (lowest) it has tried first tries the next rate of
    ``lr_ladder`` above (below) it, with the first seed, until its best rate has a tried rate on each side
    or the ladder ends (:func:`next_rate`), so that no model is judged at a rate chosen at the edge of its
    grid. Mamba-2's rate is chosen at each state size separately. Every run trains ``train.steps`` steps
    (``train.lr`` and ``train.seed`` are replaced by the run's rate and seed); the test set (``n_test``
    sequences from ``test_seed``) scores each final model once.

    Batches of 128 sequences, not fewer: every model first learns a shortcut that needs no recall
    (:func:`accuracy_by_query`), and with batches of 32 attention left it on some seeds and not others
    (the chapter says which runs showed it).
    """

    width: int = 32
    state_sizes: tuple[int, ...] = (1, 4, 16)
    headdim: int = 16
    chunk_size: int = 8
    n_layers: int = 2
    seeds: tuple[int, ...] = (0, 1, 2)
    mamba_lrs: tuple[float, ...] = (1e-2, 3e-2)
    attention_lrs: tuple[float, ...] = (1e-2, 3e-2)
    lr_ladder: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=1500, batch_size=128, lr=1e-3, warmup_steps=150, weight_decay=0.0, eval_every=50))

    def __post_init__(self):
        super().__post_init__()  # the task's own checks
        check_type(self, "train", TrainConfig)
        check_convergence_evaluations(self, "train", self.train)
        check_ints(self, "width", "headdim", "chunk_size", "n_layers")
        check_int_tuple(self, "state_sizes")
        check_seeds(self)
        check_number_tuple(self, "mamba_lrs", low=0, open_low=True)
        check_number_tuple(self, "attention_lrs", low=0, open_low=True)
        check_number_tuple(self, "lr_ladder", low=0, open_low=True)
        for name in ("mamba_lrs", "attention_lrs"):
            off = [lr for lr in getattr(self, name) if lr not in self.lr_ladder]
            check_that(self, not off, name, f"rates on lr_ladder {self.lr_ladder} (not on it: {off})")
        check_that(self, len(self.mamba_lrs) == len(self.attention_lrs), "attention_lrs",
                   f"as many learning rates as mamba_lrs ({len(self.mamba_lrs)}): both families get the "
                   "same tuning")
        try:  # the models' own rules, in their homes
            attention_config(self)
            for d_state in self.state_sizes:
                mamba_config(self, d_state)
        except ValueError as err:
            raise ValueError(f"MQARConfig: {err}") from None


def mamba_config(config: MQARConfig, d_state: int) -> Mamba2Config:
    return Mamba2Config(d_model=config.width, d_state=d_state, headdim=config.headdim,
                        vocab_size=config.vocab_size, n_layers=config.n_layers, chunk_size=config.chunk_size)


def attention_config(config: MQARConfig) -> GPTConfig:
    return GPTConfig(vocab_size=config.vocab_size, context_length=config.seq_len, d_model=config.width,
                     n_layers=config.n_layers, n_heads=max(1, config.width // 16))


@dataclass(frozen=True)
class SSDConfig:
    cost: CostConfig = field(default_factory=CostConfig)
    mqar: MQARConfig = field(default_factory=MQARConfig)

    def __post_init__(self):
        check_type(self, "cost", CostConfig)
        check_type(self, "mqar", MQARConfig)


CONFIGS = {
    "fast": SSDConfig(
        cost=CostConfig(lengths=(128, 256, 512), quadratic_max_length=512, recurrent_max_length=256,
                        state_sizes=(16, 32, 64), state_length=256, repeats=3),
        mqar=MQARConfig(seq_len=8, n_pairs=2, vocab_size=32, width=16, state_sizes=(1, 4),
                        mamba_lrs=(1e-2,), attention_lrs=(1e-2,), lr_ladder=(1e-2,),
                        train=TrainConfig(steps=30, batch_size=16, lr=1e-2, warmup_steps=3, weight_decay=0.0,
                                          eval_every=10),
                        n_val=64, n_test=128),
    ),
    "full": SSDConfig(),
}


# --------------------------------------------------------------------------------------- equivalence
def _max_abs(a, b) -> float:
    return float((a - b).abs().max())


def equivalence(dtype: torch.dtype = torch.float64, *, seqlen: int = 50, chunk_size: int = 16,
                ngroups: int = 2, seed: int = 0) -> dict:
    """Largest absolute differences between the chunked / quadratic forms and the recurrence: outputs,
    final states, and the gradients of ``sum(y * w) + sum(final * v)`` for random ``w, v`` with respect to
    every input (x, dt, A, B, C, D, initial state; relative to the largest gradient entry when that is
    above 1). An initial state is passed."""
    inputs = random_inputs(batch=2, seqlen=seqlen, nheads=4, headdim=8, ngroups=ngroups, d_state=8,
                           dtype=dtype, seed=seed, with_initial_state=True)
    g = torch.Generator().manual_seed(seed + 1)
    w = torch.randn(inputs[0].shape, generator=g, dtype=torch.float64).to(dtype)
    v = torch.randn(inputs[-1].shape, generator=g, dtype=torch.float64).to(dtype)

    def run(fn):
        leaves = [t.clone().requires_grad_() for t in inputs]
        y, final = fn(*leaves)
        grads = torch.autograd.grad((y * w).sum() + (final * v).sum(), leaves)
        return y.detach(), final.detach(), grads

    y0, h0, g0 = run(ssd_recurrent)
    out = {}
    for name, fn in (("quadratic", ssd_quadratic),
                     ("chunked", lambda *a: ssd_chunked(*a, chunk_size=chunk_size))):
        y, h, grads = run(fn)
        scale = [float(a.abs().max()) for a in g0]
        out[name] = {
            "y": _max_abs(y, y0), "final_state": _max_abs(h, h0),
            "grad": max(_max_abs(a, b) / max(s, 1.0) for a, b, s in zip(grads, g0, scale)),
        }
    return out


# ---------------------------------------------------------------------------------------- matrices
def off_diagonal_singular_values(M: torch.Tensor, n_splits: int = 4) -> list[list[float]]:
    """Singular values of the off-diagonal blocks ``M[k:, :k]`` of a lower-triangular ``M (T, T)`` at
    ``n_splits`` split points ``k``: a 1-semiseparable mask times ``C B^T`` has rank <= N there."""
    T = M.shape[-1]
    splits = [T * (i + 1) // (n_splits + 1) for i in range(n_splits)]
    return [torch.linalg.svdvals(M[k:, :k].double()).tolist() for k in splits]


def rank_excess(M: torch.Tensor, d_state: int) -> float:
    """``log10`` of the largest ``sigma_{N+1} / sigma_1`` over the off-diagonal blocks of
    :func:`off_diagonal_singular_values`: far below zero (rounding level) when every block has rank <= N."""
    return max(math.log10(max(sv[d_state] / sv[0], 1e-300)) for sv in off_diagonal_singular_values(M))


def softmax_attention_matrix(B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """Causal softmax attention scores ``softmax(C B^T / sqrt(N))`` (queries C, keys B), ``(T, N)`` each:
    the attention the duality does not cover, as a lower-triangular ``(T, T)`` matrix."""
    T, N = C.shape
    scores = (C @ B.T) / math.sqrt(N)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    return torch.softmax(scores.masked_fill(~causal, -math.inf), dim=-1)


def rank_null(seqlen: int, d_state: int, draws: int = 40) -> list[float]:
    """:func:`rank_excess` of softmax attention from the queries and keys of ``draws`` random inputs (the
    null of the same kind for the SSD matrix's rank claim)."""
    out = []
    for seed in range(draws):
        _, _, _, B, C, _, _ = random_inputs(batch=1, seqlen=seqlen, nheads=1, d_state=d_state, seed=seed)
        out.append(rank_excess(softmax_attention_matrix(B[0, :, 0], C[0, :, 0]), d_state))
    return out


def cancellation(seqlen: int = 4096, chunk_size: int = 64, seed: int = 0) -> dict:
    """Largest relative error of the decay mask ``L = exp(segsum(log a))`` in float32 against float64, with
    ``log a_t = dt_t A`` drawn as in :func:`random_inputs` (head ``A = -1``): the segment sums as
    differences of cumulative sums over the whole sequence, the same within chunks of ``chunk_size``, and
    the masked sums of :func:`segsum` (no differences)."""
    _, dt, _, _, _, _, _ = random_inputs(batch=1, seqlen=seqlen, nheads=1, seed=seed)
    log_a = -dt[0, :, 0]  # A = -1
    chunks = log_a.reshape(-1, chunk_size)
    exact_all, exact_chunks = torch.exp(segsum(log_a)), torch.exp(segsum(chunks))
    assert exact_chunks.shape == (seqlen // chunk_size, chunk_size, chunk_size)

    def worst(approx, exact):  # relative error where L is not negligible
        keep = exact > 1e-30
        return float(((approx.double() - exact).abs()[keep] / exact[keep]).max())

    return {
        "whole sequence": worst(torch.exp(segsum_naive(log_a.float())), exact_all),
        "within chunks": worst(torch.exp(segsum_naive(chunks.float())), exact_chunks),
        "masked sums": worst(torch.exp(segsum(log_a.float())), exact_all),
        "largest cumulative sum": float(-log_a.sum()),
        "largest within a chunk": float(-chunks.sum(-1).min()),
    }


# ------------------------------------------------------------------------------------------- timings
def _methods(config: CostConfig, length: int) -> dict:
    Q = config.chunk_size
    methods = {
        "chunked (PyTorch)": lambda a: ssd_chunked(*a, chunk_size=Q),
        "chunked (Numba)": lambda a: kernels.ssd_chunked_numba(*a, chunk_size=Q),
        "scan (Numba)": lambda a: kernels.ssd_scan_numba(*a),
    }
    if length <= config.quadratic_max_length:
        methods["quadratic (PyTorch)"] = lambda a: ssd_quadratic(*a)
    if length <= config.recurrent_max_length:
        methods["recurrence (PyTorch)"] = lambda a: ssd_recurrent(*a)
    return methods


def _inputs(config: CostConfig, length: int, d_state: int):
    return random_inputs(batch=config.batch, seqlen=length, nheads=config.nheads, headdim=config.headdim,
                         d_state=d_state, dtype=torch.float32, seed=config.seed)


def _rounds(config: CostConfig, length: int, d_state: int, names: list[str] | None = None) -> dict:
    """Seconds per call of each method at one size, one list per method (one entry per timing round)."""
    inputs = _inputs(config, length, d_state)
    methods = _methods(config, length)
    fns = {name: (lambda fn=fn: fn(inputs)) for name, fn in methods.items() if names is None or name in names}
    times = time_interleaved(fns, torch.device("cpu"), repeats=config.repeats, warmup=1, min_sample_s=0.01)
    return {name: [ms / 1e3 for ms in samples] for name, samples in times.samples.items()}


def cost_sweep(config: CostConfig) -> dict:
    """Forward time (seconds per call, one entry per timing round) of each algorithm and kernel against
    length and against state size, all on one CPU thread.

    One thread, because the chapter compares how the algorithms scale: on two threads a call waits for
    its slower thread, and on a shared machine that wait (another process holding the second core)
    dominates some calls and not others. Each size is timed in ``repeats`` interleaved rounds, every
    algorithm once per round in rotating order (:func:`paperlab.timing.time_interleaved`, after a warm-up
    call), so a change of load falls on all algorithms alike. The load average at the start and end is
    kept with the times.
    """

    def compute() -> dict:
        load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        by_length: dict[str, dict[str, list[float]]] = {}
        by_state: dict[str, dict[str, list[float]]] = {}
        with torch.no_grad(), cpu_threads(1):
            small = _inputs(config, 64, config.d_state)
            for fn in _methods(config, 64).values():  # compile the kernels before timing
                fn(small)
            for length in config.lengths:
                for name, seconds in _rounds(config, length, config.d_state).items():
                    by_length.setdefault(name, {})[str(length)] = seconds
            for n in config.state_sizes:
                timed = ["chunked (PyTorch)", "chunked (Numba)", "scan (Numba)"]
                for name, seconds in _rounds(config, config.state_length, n, timed).items():
                    by_state.setdefault(name, {})[str(n)] = seconds
        load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        return {"by_length": by_length, "by_state": by_state, "threads": 1, "rounds": config.repeats,
                "load_average": [load_before, load_after]}

    return cache.cached("ssd-cost", config, compute, seed=config.seed)


def median_times(rounds_by_size: dict[str, list[float]]) -> tuple[list[int], list[float]]:
    """``(sizes, median seconds)`` of one method's ``{size: [seconds per round]}``."""
    sizes = [int(k) for k in rounds_by_size]
    return sizes, [float(np.median(v)) for v in rounds_by_size.values()]


def loglog_slope(rounds_by_size: dict[str, list[float]], n_largest: int = 3) -> stats.Estimate:
    """The exponent ``b`` of ``time ~ size^b``: least squares in log-log (:func:`paperlab.stats.loglog_fit`)
    through the median times of the ``n_largest`` sizes, with a percentile-bootstrap 95% interval over the
    timing rounds (round ``r`` of every size resampled together)."""
    sizes = sorted(int(k) for k in rounds_by_size)[-n_largest:]
    arrays = tuple(np.asarray(rounds_by_size[str(s)], dtype=float) for s in sizes)
    rounds = min(a.size for a in arrays)

    def slope(*samples):
        return stats.loglog_fit(sizes, [float(np.median(s)) for s in samples])[0]

    return stats.bootstrap(tuple(a[:rounds] for a in arrays), slope, unit="timing rounds")


# ---------------------------------------------------------------------------------------------- MQAR
@dataclass(frozen=True)
class MQARRun:
    """One MQAR model to train: the task, the model (``kind`` ``"mamba"`` with ``d_state``, or
    ``"attention"``), and its training (with the run's own ``lr`` and ``seed``). The cache key of a run."""

    task: MQARConfig
    kind: str
    d_state: int | None
    train: TrainConfig

    def __post_init__(self):
        if self.kind not in ("mamba", "attention"):
            raise ValueError(f"kind must be 'mamba' or 'attention', got {self.kind!r}")
        if (self.kind == "mamba") != (self.d_state is not None):
            raise ValueError("a 'mamba' run needs d_state, an 'attention' run none")


def make_model(run: MQARRun) -> torch.nn.Module:
    if run.kind == "mamba":
        return Mamba2LM(mamba_config(run.task, run.d_state))
    return GPT(attention_config(run.task))


def _task_key(config: MQARConfig) -> MQARConfig:
    """The task part of the config only, so that a run's cache key does not change with the sweep around
    it (other seeds, other learning rates, other state sizes)."""
    return dataclasses.replace(config, state_sizes=(1,), seeds=(0,), mamba_lrs=(1.0,), attention_lrs=(1.0,),
                               lr_ladder=(1.0,),
                               train=dataclasses.replace(config.train, lr=1.0, seed=0))


@torch.no_grad()
def accuracy_by_query(model: torch.nn.Module, config: MQARTask) -> list[float]:
    """Test accuracy at the first, second, ... query of each sequence (one entry per pair).

    A model that has not learnt which value belongs to which key can still guess among the values of the
    first part that have not been asked for yet: right 1 time in ``n_pairs`` at the first query, ..., every
    time at the last (:func:`elimination_guess`). This profile tells that shortcut from recall."""
    inputs, targets = config.test_set()
    model.eval()
    device = next(model.parameters()).device
    predictions = torch.cat([model(inputs[i:i + 256].to(device)).argmax(-1).cpu()
                             for i in range(0, len(inputs), 256)])
    asked = targets != IGNORE
    order = asked.long().cumsum(-1) * asked  # 1 at the first query of a sequence, 2 at the second, ...
    right = predictions == targets
    return [float(right[order == k].float().mean()) for k in range(1, config.n_pairs + 1)]


def elimination_guess(n_pairs: int) -> list[float]:
    """Accuracy at each query of the shortcut in :func:`accuracy_by_query`: ``1 / (n_pairs - i)`` at
    query ``i = 0, 1, ...`` (values repeated within a sequence, which the values' drawing with replacement
    allows, are ignored)."""
    return [1 / (n_pairs - i) for i in range(n_pairs)]


def mqar_run(run: MQARRun, device: str | torch.device | None = None) -> dict:
    """Train one MQAR model from its seed and score it (cached): ``{"seed", "lr", "val_accuracy",
    "test_accuracy", "test_accuracy_by_query", "curve": {"steps", "val_accuracy", "val_loss"},
    "converged", "convergence", "final_loss", "parameters", "seconds"}``. Validation accuracy and loss are
    measured every ``train.eval_every`` steps; the test set once, at the end (also by query,
    :func:`accuracy_by_query`). A module-level function, so that worker processes can run it."""
    config, tc = run.task, run.train

    def compute() -> dict:
        dev = auto_device(device)
        model, result, test_accuracy = train_mqar(lambda: make_model(run), config, tc, dev)
        with cpu_threads(1, device=dev):
            by_query = accuracy_by_query(model, config)
        steps, accuracy = result.eval_history("val_accuracy")
        # MQAR has one right answer per query, so its loss can reach 0: a fall of under 1e-3 nats over the
        # last fifth does not count (relative to a level of 1e-7 nats, any fall would)
        convergence = result.convergence("val_loss", floor=MQAR_LOSS_FLOOR)
        return {"kind": run.kind, "d_state": run.d_state, "seed": tc.seed, "lr": tc.lr,
                "val_accuracy": accuracy[-1], "test_accuracy": test_accuracy,
                "test_accuracy_by_query": by_query,
                "curve": {"steps": steps, "val_accuracy": accuracy,
                          "val_loss": result.eval_history("val_loss")[1]},
                **convergence.record(),
                "final_loss": result.final_loss, "parameters": count_parameters(model),
                "seconds": result.seconds}

    key = MQARRun(_task_key(config), run.kind, run.d_state, tc)
    return cache.cached("ssd-mqar-run", key, compute, seed=tc.seed)


def _runs(config: MQARConfig, kind: str, d_state: int | None, lrs, seeds) -> list[MQARRun]:
    return [MQARRun(config, kind, d_state, dataclasses.replace(config.train, lr=lr, seed=seed))
            for lr in lrs for seed in seeds]


def _cost(run: MQARRun) -> float:
    """Rough relative cost of a run, to start the longest first."""
    return (3.0 + run.d_state / 16 if run.kind == "mamba" else 1.5) * run.train.steps


def _best(results: list[dict]) -> dict:
    """The run with the best validation accuracy (ties: the lower final validation loss)."""
    return max(results, key=lambda r: (r["val_accuracy"], -r["curve"]["val_loss"][-1]))


def next_rate(tried: list[dict], ladder) -> float | None:
    """The rate a model tries next while tuning, or ``None`` when its tuning is done: the next rate of
    ``ladder`` above its best when its best (:func:`_best` of the ``tried`` runs) is the highest rate it
    has tried, else the next below when its best is the lowest; ``None`` when the best has a tried rate on
    each side, or the ladder has no rate beyond it."""
    best, rates = _best(tried)["lr"], [r["lr"] for r in tried]
    above = [lr for lr in ladder if lr > best]
    below = [lr for lr in ladder if lr < best]
    if best == max(rates) and above:
        return min(above)
    if best == min(rates) and below:
        return max(below)
    return None


def mqar_sweep(config: MQARConfig, device: str | torch.device | None = None,
               workers: int | None = None) -> dict:
    """Tune and train every model of the MQAR experiment (the rule is in :class:`MQARConfig`).

    First each family's learning rates with the first seed (Mamba-2 at every state size); as soon as a
    model's tuning runs are all back, a further rate (:func:`next_rate`) if its best rate is at the edge of
    the rates it has tried, else the other seeds at its best rate. On a CPU the runs train in ``workers``
    processes at once (default: one per core), one thread each, each process taking the longest waiting
    run as it frees (:func:`paperlab.scheduling.run_as_ready`); on a GPU, in turn. Each run is cached on
    its own, and neither its result nor the sweep's depends on which process trained it or when.

    Returns ``{"lr": {"attention": lr, "mamba": {N: lr}}, "sweep": {"attention": [run per lr],
    "mamba": {N: [run per lr]}}, "attention": [run per seed], "mamba": {N: [run per seed]}}`` (state sizes
    as strings; the rates of a sweep in increasing order), each run as :func:`mqar_run` returns it.
    """
    dev = auto_device(device)
    first, others = config.seeds[0], config.seeds[1:]
    models = [("attention", None)] + [("mamba", n) for n in config.state_sizes]
    grid = {"attention": config.attention_lrs, "mamba": config.mamba_lrs}
    tuned = {model: [] for model in models}  # the first seed's runs, one per rate tried
    seeded = {model: [] for model in models}  # the other seeds' runs at the chosen rate
    unfinished = {model: len(grid[model[0]]) for model in models}  # tuning runs not back yet

    def then(job: tuple, result: dict) -> list[tuple]:
        """The runs a finished run makes ready: once a model's tuning runs are all back, a further rate
        (:func:`next_rate`) or, when its tuning is done, the other seeds at its best rate."""
        run = job[0]
        model = (run.kind, run.d_state)
        if run.train.seed != first:
            seeded[model].append(result)
            return []
        tuned[model].append(result)
        tuned[model].sort(key=lambda r: r["lr"])  # the order runs come back in changes nothing
        unfinished[model] -= 1
        if unfinished[model]:
            return []
        lr = next_rate(tuned[model], config.lr_ladder)
        if lr is None:
            return [(r, dev) for r in _runs(config, *model, [_best(tuned[model])["lr"]], others)]
        unfinished[model] = 1
        return [(r, dev) for r in _runs(config, *model, [lr], [first])]

    start = [(run, dev) for model in models for run in _runs(config, *model, grid[model[0]], [first])]
    run_as_ready(mqar_run, start, then, order=lambda job: -_cost(job[0]),
                 workers=1 if dev.type != "cpu" else workers, name="ssd.experiments.mqar_sweep",
                 desc="MQAR models")
    for runs in seeded.values():
        runs.sort(key=lambda r: config.seeds.index(r["seed"]))
    best = {model: _best(tuned[model]) for model in models}
    by_seed = {model: [best[model]] + seeded[model] for model in models}
    sizes = config.state_sizes
    return {
        "lr": {"attention": best["attention", None]["lr"],
               "mamba": {str(n): best["mamba", n]["lr"] for n in sizes}},
        "sweep": {"attention": tuned["attention", None], "mamba": {str(n): tuned["mamba", n] for n in sizes}},
        "attention": by_seed["attention", None],
        "mamba": {str(n): by_seed["mamba", n] for n in sizes},
    }


def accuracies(runs: list[dict]) -> list[float]:
    """Test accuracy of each run (one per seed)."""
    return [r["test_accuracy"] for r in runs]


# ------------------------------------------------------------------------------------------ the run
def run(config: SSDConfig, device: str | torch.device | None = None) -> dict:
    """Everything the chapter reports, as JSON-able results. The MQAR models train on ``device`` (checked
    before any work); the equivalence checks and the cost sweep time the CPU algorithms and kernels, so
    they run on the CPU whatever the device."""
    device = auto_device(device)
    return {
        "equivalence": {"float64": equivalence(torch.float64), "float32": equivalence(torch.float32)},
        "cost": cost_sweep(config.cost),
        "mqar": mqar_sweep(config.mqar, device),
    }


EXPERIMENT = Experiment(name="ssd", chapter="book/02-ssd.md", configs=CONFIGS, run=run,
                        timings=("cost",))  # the cost sweep is forward-pass times
