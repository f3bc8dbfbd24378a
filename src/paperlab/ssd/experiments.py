"""The SSD chapter's experiments: equivalence of the three algorithms, their cost, and MQAR recall.

Each function returns plain results (numbers, lists, strings) for the chapter to plot; the expensive
ones (:func:`cost_sweep`, :func:`mqar_sweep`) go through :func:`paperlab.cache.cached`, keyed on their
config. :data:`CONFIGS` holds one :class:`SSDConfig` per profile.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import torch

from paperlab import cache
from paperlab.config import (
    check_flags,
    check_int_tuple,
    check_ints,
    check_numbers,
    check_type,
)
from paperlab.experiments import Experiment
from paperlab.nn import GPT, GPTConfig, count_parameters
from paperlab.ssd.core import random_inputs, ssd_chunked, ssd_quadratic, ssd_recurrent
from paperlab.ssd.model import Mamba2Config, Mamba2LM
from paperlab.ssd.mqar import check_mqar, mqar_accuracy, mqar_batch
from paperlab.train import TrainConfig, auto_device, seeded_batches, train
from paperlab.utils import cpu_threads, parallel_map
from paperlab_kernels import ssd as kernels


# ------------------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class CostConfig:
    """Forward-pass timings of one SSD layer against sequence length and against state size."""

    lengths: tuple[int, ...] = (256, 512, 1024, 2048, 4096, 8192)
    quadratic_max_length: int = 8192
    recurrent_max_length: int = 8192
    batch: int = 1
    nheads: int = 2
    headdim: int = 32
    d_state: int = 32
    chunk_size: int = 64
    state_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)
    state_length: int = 8192  # long enough that fixed per-call costs do not hide the growth in N
    repeats: int = 2
    seed: int = 0

    def __post_init__(self):
        check_int_tuple(self, "lengths")
        check_int_tuple(self, "state_sizes")
        check_ints(self, "batch", "nheads", "headdim", "d_state", "chunk_size", "state_length", "repeats")
        check_ints(self, "quadratic_max_length", "recurrent_max_length", "seed", low=0)


@dataclass(frozen=True)
class MQARConfig:
    """Multi-query associative recall: Mamba-2 at several state sizes and widths, and attention.

    The full profile uses the smallest setting of the issue's range that a 2-core CPU can train in about
    two and a half minutes: 8 pairs in 64 tokens, a vocabulary of 256 (127 keys, 128 values, so chance is
    1/128), state sizes 8, 32 and 128, widths 32 and 64, 600 steps of 32 sequences. A state with ``N``
    below the number of pairs cannot hold every key in an ``N``-dimensional key space; the paper's
    setting (T = 256-1024, T/4 pairs, vocabulary 8192) is far beyond a CPU budget. ``attention_lr`` replaces
    ``train.lr`` for the attention baseline (transformers want a lower peak rate than these SSMs;
    ``None`` = the same rate). ``headdim`` is small so that the widths give a few heads; ``chunk_size``
    16 was the fastest chunk in our CPU timings at this length (every chunk size computes the same
    function, up to rounding).
    """

    seq_len: int = 64
    n_pairs: int = 8
    vocab_size: int = 256
    widths: tuple[int, ...] = (32, 64)
    state_sizes: tuple[int, ...] = (8, 32, 128)
    headdim: int = 16
    chunk_size: int = 16
    n_layers: int = 2
    attention: bool = True
    attention_lr: float | None = 1e-3
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=600, batch_size=32, lr=1e-2, warmup_steps=60, weight_decay=0.0, eval_every=50, seed=0))
    n_test: int = 512
    test_seed: int = 12345

    def __post_init__(self):
        check_type(self, "train", TrainConfig)
        check_ints(self, "seq_len", "n_pairs", "vocab_size", "headdim", "chunk_size", "n_layers", "n_test")
        check_ints(self, "test_seed", low=0)
        check_int_tuple(self, "widths")
        check_int_tuple(self, "state_sizes")
        check_flags(self, "attention")
        check_numbers(self, "attention_lr", low=0, open_low=True, optional=True)
        try:  # the task's and the models' own rules, in their homes
            check_mqar(self.seq_len, self.n_pairs, self.vocab_size)
            for width in self.widths:
                attention_config(self, width)
                for d_state in self.state_sizes:
                    mamba_config(self, width, d_state)
        except ValueError as err:
            raise ValueError(f"MQARConfig: {err}") from None


def mamba_config(config: MQARConfig, width: int, d_state: int) -> Mamba2Config:
    return Mamba2Config(d_model=width, d_state=d_state, headdim=config.headdim, vocab_size=config.vocab_size,
                        n_layers=config.n_layers, chunk_size=config.chunk_size)


def attention_config(config: MQARConfig, width: int) -> GPTConfig:
    return GPTConfig(vocab_size=config.vocab_size, context_length=config.seq_len, d_model=width,
                     n_layers=config.n_layers, n_heads=max(1, width // 16))


@dataclass(frozen=True)
class SSDConfig:
    cost: CostConfig = field(default_factory=CostConfig)
    mqar: MQARConfig = field(default_factory=MQARConfig)

    def __post_init__(self):
        check_type(self, "cost", CostConfig)
        check_type(self, "mqar", MQARConfig)


CONFIGS = {
    "fast": SSDConfig(
        cost=CostConfig(lengths=(128, 256, 512, 1024), quadratic_max_length=1024, recurrent_max_length=256,
                        state_sizes=(16, 64), state_length=256, repeats=1),
        mqar=MQARConfig(seq_len=32, n_pairs=4, vocab_size=64, widths=(16,), state_sizes=(4, 32),
                        train=TrainConfig(steps=40, batch_size=32, lr=1e-2, warmup_steps=4, weight_decay=0.0,
                                          eval_every=10),
                        n_test=128),
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
    every input (x, dt, A, B, C, D, initial state). An initial state is passed."""
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


# ------------------------------------------------------------------------------------------- timings
def _time(fn, repeats: int) -> float:
    """Best of ``repeats`` timed calls after a warm-up call, in seconds. A warm-up call slower than a
    second counts as one of the samples (long calls vary little, and the budget is small); calls faster
    than 50 ms get at least 10 samples (the minimum filters out other processes' interference)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    best = first if first > 1.0 else math.inf
    if first < 0.05:
        repeats = max(repeats, 10)
    for _ in range(repeats - 1 if first > 1.0 else repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


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


def cost_sweep(config: CostConfig) -> dict:
    """Forward time (seconds) of each algorithm and kernel, against length (all threads) and against state
    size (one thread)."""

    def compute() -> dict:
        by_length: dict[str, dict[str, float]] = {}
        with torch.no_grad():
            small = _inputs(config, 64, config.d_state)
            for fn in _methods(config, 64).values():  # compile, start the thread pools
                fn(small)
            for length in config.lengths:
                inputs = _inputs(config, length, config.d_state)
                for name, fn in _methods(config, length).items():
                    seconds = _time(lambda fn=fn, inputs=inputs: fn(inputs), config.repeats)
                    by_length.setdefault(name, {})[str(length)] = seconds
            by_state: dict[str, dict[str, float]] = {}
            # one thread: with two (batch x head) pairs on two threads, one late thread doubles a call's
            # time, and that noise hid the growth in N; one thread measures the work itself
            with cpu_threads(1):
                for n in config.state_sizes:
                    inputs = _inputs(config, config.state_length, n)
                    methods = _methods(config, config.state_length)
                    for name in ("chunked (PyTorch)", "chunked (Numba)", "scan (Numba)"):
                        seconds = _time(lambda fn=methods[name], inputs=inputs: fn(inputs), config.repeats)
                        by_state.setdefault(name, {})[str(n)] = seconds
        return {"by_length": by_length, "by_state": by_state, "threads": torch.get_num_threads(),
                "threads_by_state": 1}

    return cache.cached("ssd-cost", config, compute, seed=config.seed)


# ---------------------------------------------------------------------------------------------- MQAR
def make_mamba(config: MQARConfig, width: int, d_state: int) -> Mamba2LM:
    return Mamba2LM(mamba_config(config, width, d_state))


def make_attention(config: MQARConfig, width: int) -> GPT:
    return GPT(attention_config(config, width))


def mqar_job(config: MQARConfig, kind: str, width: int, d_state: int | None,
             device: str | torch.device | None = None) -> dict:
    """Train one MQAR model (``kind`` ``"mamba"`` with state size ``d_state``, or ``"attention"``) from
    the config's seed and score it on the config's fixed test set, every ``train.eval_every`` steps and at
    the end: ``{"accuracy", "curve": {"steps", "accuracy"}, "final_loss", "parameters", "seconds"}``. A
    module-level function, so that worker processes can run it."""
    dev = auto_device(device)
    test = mqar_batch(config.n_test, config.seq_len, config.n_pairs, config.vocab_size,
                      torch.Generator().manual_seed(config.test_seed))
    torch.manual_seed(config.train.seed)
    if kind == "mamba":
        model, tc = make_mamba(config, width, d_state), config.train
    elif kind == "attention":
        model = make_attention(config, width)
        tc = config.train if config.attention_lr is None else dataclasses.replace(config.train,
                                                                                  lr=config.attention_lr)
    else:
        raise ValueError(f"kind must be 'mamba' or 'attention', got {kind!r}")
    model = model.to(dev)

    get_batch = seeded_batches(lambda generator: mqar_batch(tc.batch_size, config.seq_len, config.n_pairs,
                                                            config.vocab_size, generator), tc.seed)

    def eval_fn(m) -> dict:
        return {"accuracy": mqar_accuracy(m, *test)}

    with cpu_threads(1):  # tiny models: one thread is faster than two busy cores
        result = train(model, get_batch, lambda m, batch: m.loss(*batch), tc, eval_fn=eval_fn, device=dev,
                       desc="MQAR")
    curve = {"steps": [e["step"] for e in result.evals], "accuracy": [e["accuracy"] for e in result.evals]}
    return {"accuracy": curve["accuracy"][-1], "curve": curve, "final_loss": result.loss[-1],
            "parameters": count_parameters(model), "seconds": result.seconds}


def mqar_sweep(config: MQARConfig, device: str | torch.device | None = None,
               workers: int | None = None) -> dict:
    """Train every (width, state size) Mamba-2 and every width of attention; test accuracy of each.

    On a CPU the models train in ``workers`` processes at once (default: one per core), one thread each;
    on a GPU, in turn. Every model starts from the same seed and sees the same batches whichever process
    trains it, so the results do not depend on ``workers``.

    Returns ``{"mamba": {d_state: {width: result}}, "attention": {width: result}}`` (keys as strings),
    each result as :func:`mqar_job` returns it.
    """

    def compute() -> dict:
        dev = auto_device(device)
        jobs = [(config, "mamba", width, n, dev) for n in config.state_sizes for width in config.widths]
        if config.attention:
            jobs += [(config, "attention", width, None, dev) for width in config.widths]
        # largest first, so that the last job to finish is a short one
        order = sorted(range(len(jobs)), key=lambda i: -(jobs[i][2] * (jobs[i][3] or 16)))
        n_workers = 1 if dev.type != "cpu" else workers
        results = parallel_map(mqar_job, [jobs[i] for i in order], workers=n_workers, desc="MQAR models")
        by_job = {jobs[i][1:4]: result for i, result in zip(order, results)}
        return {
            "mamba": {str(n): {str(w): by_job["mamba", w, n] for w in config.widths}
                      for n in config.state_sizes},
            "attention": {str(w): by_job["attention", w, None] for w in config.widths if config.attention},
        }

    return cache.cached("ssd-mqar", config, compute, seed=config.train.seed)


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
