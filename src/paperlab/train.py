"""The one training loop every chapter uses: seeding, device choice, AdamW + warmup/cosine, clipping, DDP.

A chapter supplies three small functions and a :class:`TrainConfig`::

    def get_batch(step, rank, world_size):   # -> tuple of tensors, e.g. (idx, targets)
        ...
    def loss_fn(model, batch):               # -> scalar tensor
        return model.loss(*batch)
    def eval_fn(model):                      # -> {"val_loss": 2.31, ...}
        ...

    result = train(model, get_batch, loss_fn, TrainConfig(steps=500, batch_size=32), eval_fn=eval_fn)
    result.loss[-1], result.evals[-1]["val_loss"]

**Steps are counted from 1.** Step ``t`` is the ``t``-th optimizer update, ``t = 1 .. config.steps``;
``get_batch(t, ...)`` supplies its batch, :func:`lr_at` gives its learning rate, and the histories in
:class:`TrainResult` record it under ``t`` (so after step ``t`` exactly ``t`` updates are done).

**One process or many.** Run as a plain script (or in a notebook) it trains in one process. Launched by
``torchrun --nproc_per_node N script.py`` it trains data-parallel: :func:`train` starts the process group
(gloo on CPU, NCCL on CUDA, one GPU per process: ``cuda:LOCAL_RANK``), wraps the model in
``DistributedDataParallel`` (gradients are averaged across the replicas in ``backward``), hands every
rank its own ``get_batch(step, rank, world_size)`` and logs the loss averaged over the ranks. The same
chapter code runs unchanged either way.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from paperlab.config import check_that
from paperlab.stats import CONVERGENCE_MIN_EVALUATIONS, CONVERGENCE_TAIL, Convergence, convergence
from paperlab.utils import env_int, launched_world_size, progress, threads_pinned, usable_cores

__all__ = [
    "BestWeights",
    "TrainConfig",
    "TrainResult",
    "auto_device",
    "batch_generator",
    "batch_seed",
    "distributed_info",
    "is_main_process",
    "lr_at",
    "seed_everything",
    "seeded_batches",
    "train",
]

# Most CPU threads a single process uses when nobody set OMP_NUM_THREADS: the book's models are small,
# and past a handful of threads the synchronisation costs more than the extra cores bring.
MAX_CPU_THREADS = 16
_threads_configured = False


# --------------------------------------------------------------------------------------------------
# Seeds, devices, processes
# --------------------------------------------------------------------------------------------------


def check_convergence_evaluations(config: Any, name: str, train_config: TrainConfig) -> None:
    """A ValueError naming ``config``'s field ``name`` unless ``train_config`` (that field's TrainConfig)
    evaluates often enough for :func:`paperlab.stats.convergence` (5 evaluations); for run checks that
    must fail before any training."""
    n = len(train_config.evaluation_steps())
    check_that(config, n >= CONVERGENCE_MIN_EVALUATIONS, name,
               f"a TrainConfig with >= {CONVERGENCE_MIN_EVALUATIONS} evaluations for the convergence check "
               f"(eval_every > 0 and a first evaluation well before the last step); it has {n}")


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and PyTorch's CPU and CUDA generators with ``seed``.

    Same seed and same device give the same losses: on CPU bit for bit. We do **not** call
    ``torch.use_deterministic_algorithms(True)``: several ops the book uses have no deterministic CUDA
    kernel (``index_add_``/``scatter_add_``, hence the backward of ``nn.Embedding`` and of indexing) and
    would then raise, and cuBLAS would also need ``CUBLAS_WORKSPACE_CONFIG`` set before start-up. On CUDA,
    runs with the same seed can therefore differ in the last bits where atomic additions change order;
    turn the flag on yourself when you need bitwise GPU reproducibility and your ops allow it.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 -- the legacy global RNG is exactly what we must seed
    torch.manual_seed(seed)  # seeds the CPU generator and every CUDA device's generator
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def distributed_info() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` of this process.

    From the live process group when one is initialised, else from the variables ``torchrun`` sets
    (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``). A plain process gets ``(0, 1, 0)``.
    """
    local_rank = env_int("LOCAL_RANK", 0)
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), local_rank
    rank, world_size = env_int("RANK", 0), launched_world_size()
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"inconsistent RANK={rank} and WORLD_SIZE={world_size} in the environment")
    return rank, world_size, local_rank


def is_main_process() -> bool:
    """True on rank 0 (and in any single-process run): the process that prints, plots and saves."""
    return distributed_info()[0] == 0


def _configure_cpu_threads() -> None:
    """Once per process: ``torch.set_num_threads(min(usable cores / local processes, 16))``.

    Skipped when the user set ``OMP_NUM_THREADS`` (their choice wins; ``torchrun`` sets it to 1 for
    several processes per machine).
    """
    global _threads_configured
    if _threads_configured or threads_pinned():  # inside utils.cpu_threads the caller chose; try later
        return
    _threads_configured = True
    if os.environ.get("OMP_NUM_THREADS"):
        return
    usable = usable_cores()
    local_processes = max(1, env_int("LOCAL_WORLD_SIZE", 1))
    torch.set_num_threads(max(1, min(usable // local_processes, MAX_CPU_THREADS)))


def auto_device(device: str | torch.device | None = None) -> torch.device:
    """The device to train on.

    - ``device`` given (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``): honoured after checking it
      exists; asking for CUDA on a machine without it raises a RuntimeError saying so.
    - ``None``: CUDA when available, else CPU.

    ``"cuda"`` without an index means ``cuda:LOCAL_RANK``, so each ``torchrun`` process gets its own GPU.
    On CPU the thread count is set once per process (see :data:`MAX_CPU_THREADS`) unless
    ``OMP_NUM_THREADS`` is set.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a str, a torch.device or None, got {type(device).__name__}")
    try:
        device = torch.device(device)
    except RuntimeError as error:
        raise ValueError(
            f"device {device!r} is not a valid torch device (try 'cpu' or 'cuda'): {error}"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {str(device)!r} was requested but CUDA is not available on this machine "
                "(no GPU, or a CPU-only build of PyTorch); use device='cpu' or leave device=None"
            )
        if device.index is None:
            device = torch.device("cuda", distributed_info()[2])
        if device.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device {str(device)!r} was requested but only {torch.cuda.device_count()} "
                "CUDA device(s) exist"
            )
    elif device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise RuntimeError("device 'mps' was requested but MPS is not available on this machine")
    elif device.type == "cpu":
        _configure_cpu_threads()
    return device


def _destroy_process_group_at_exit() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _setup_distributed(device: torch.device) -> bool:
    """Start the default process group for a ``torchrun`` launch unless one exists; True if we started it.

    A group we start is **kept** when :func:`train` returns and destroyed at interpreter exit: the caller
    can then gather results across ranks, and a second ``train`` call reuses it (starting a group is
    costly and ``torchrun``'s rendezvous is meant to be used once). A group the caller started is theirs
    and never destroyed here.
    """
    if dist.is_initialized():
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed support")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl", device_id=device)
    else:
        dist.init_process_group(backend="gloo")
    import atexit

    atexit.register(_destroy_process_group_at_exit)
    return True


# --------------------------------------------------------------------------------------------------
# Config, schedule, result
# --------------------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


@dataclass(frozen=True)
class TrainConfig:
    """How to train (what to train is the caller's). Frozen, so that the configs that nest it can be
    hashed and used as cache keys; change a field with ``dataclasses.replace``.

    - ``steps``: number of optimizer updates.
    - ``batch_size``: examples per update **per replica**; :func:`train` does not read it, ``get_batch``
      should (it is here so the cache key and the chapter's text see it).
    - ``lr``: peak learning rate; ``warmup_steps``, ``min_lr_ratio``: the schedule of :func:`lr_at`.
    - ``weight_decay``, ``betas``: AdamW's (decay applies to >= 2-D parameters only, see :func:`train`).
    - ``grad_clip``: clip the global gradient norm to this value; ``None`` = never clip (the norm is
      still recorded).
    - ``eval_every``: call ``eval_fn`` every this many steps (and always after the last); 0 = only at the end.
      When that leaves fewer than 5 evaluations in the last fifth of training, a few are added there, so
      that :func:`paperlab.stats.convergence` can fit its line (see :meth:`evaluation_steps`).
    - ``log_every``: record loss, learning rate and gradient norm every this many steps (and at the last);
      each record is the mean over the steps since the previous one.
    - ``seed``: passed to :func:`seed_everything` (plus the rank) when training starts.
    """

    steps: int
    batch_size: int
    lr: float = 3e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0
    eval_every: int = 0
    log_every: int = 1
    seed: int = 0

    def evaluation_steps(self) -> tuple[int, ...]:
        """The steps after which :func:`train` calls ``eval_fn``, in order.

        Every ``eval_every`` steps and the last; then, if the last fifth of training (the window of
        :func:`paperlab.stats.convergence`, from the first evaluation on) holds fewer than 5 of them, 5
        evenly spaced steps across that window are added. ``eval_every = 0``: the last step only.
        """
        if not self.eval_every:
            return (self.steps,)
        due = set(range(self.eval_every, self.steps + 1, self.eval_every)) | {self.steps}
        first, last, need = min(due), self.steps, CONVERGENCE_MIN_EVALUATIONS
        start = last - CONVERGENCE_TAIL * (last - first)  # the same window as stats.convergence
        if sum(step >= start for step in due) < need:
            due |= {min(last, math.ceil(start + k * (last - start) / (need - 1))) for k in range(need)}
        return tuple(sorted(due))

    def __post_init__(self) -> None:
        def fail(name: str, expected: str) -> None:
            raise ValueError(f"TrainConfig.{name} must be {expected}, got {getattr(self, name)!r}")

        for name in ("steps", "batch_size", "log_every"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                fail(name, "an int >= 1")
        for name in ("warmup_steps", "eval_every"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                fail(name, "an int >= 0")
        if self.warmup_steps > self.steps:
            fail("warmup_steps", f"at most steps={self.steps}")
        if not _is_int(self.seed) or not 0 <= self.seed < 2**32:
            fail("seed", "an int in [0, 2**32)")
        if not _is_real(self.lr) or not (math.isfinite(self.lr) and self.lr > 0):
            fail("lr", "a finite number > 0")
        decay = self.weight_decay
        if not _is_real(decay) or not (math.isfinite(decay) and decay >= 0):
            fail("weight_decay", "a finite number >= 0")
        if not _is_real(self.min_lr_ratio) or not 0 <= self.min_lr_ratio <= 1:
            fail("min_lr_ratio", "a number in [0, 1]")
        if self.grad_clip is not None and (
            not _is_real(self.grad_clip) or not (math.isfinite(self.grad_clip) and self.grad_clip > 0)
        ):
            fail("grad_clip", "a finite number > 0, or None for no clipping")
        if (
            not isinstance(self.betas, (tuple, list))
            or len(self.betas) != 2
            or not all(_is_real(b) and 0 <= b < 1 for b in self.betas)
        ):
            fail("betas", "a pair (beta1, beta2) of numbers in [0, 1)")
        object.__setattr__(self, "betas", (float(self.betas[0]), float(self.betas[1])))


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate of update ``step`` (``1 .. config.steps``): linear warmup, then cosine decay.

    With peak ``lr``, ``W = warmup_steps``, ``T = steps`` and ``r = min_lr_ratio``::

        lr(t) = lr * t / W                                          for 1 <= t <= W   (warmup)
        p(t)  = (t - W - 1) / (T - W - 1)                           (0 when T = W + 1)
        lr(t) = lr * (r + (1 - r) * (1 + cos(pi * p(t))) / 2)      for W < t <= T    (cosine)

    so ``lr(1) = lr / W``, ``lr(W) = lr`` (the peak; also ``lr(W + 1)``, the first cosine update, and
    ``lr(1)`` when there is no warmup) and ``lr(T) = r * lr``; past ``T`` it stays at ``r * lr``.
    ``lr(0)``, before any update, is 0 with warmup and ``lr`` without.
    """
    if not _is_int(step) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    warmup, total, ratio = config.warmup_steps, config.steps, config.min_lr_ratio
    if warmup > 0 and step <= warmup:
        return config.lr * step / warmup
    if step > total:
        return config.lr * ratio
    p = max(0.0, (step - warmup - 1) / max(1, total - warmup - 1))
    return config.lr * (ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * p)))


@dataclass
class TrainResult:
    """What a run recorded, in plain Python types (the cache stores it as JSON via :meth:`to_dict`).

    - ``steps[i]``: the step (number of updates done) of the ``i``-th record; every ``log_every`` steps
      and the last.
    - ``loss[i]``: training loss, mean over the steps since the previous record and over all ranks.
    - ``lr[i]``: learning rate of update ``steps[i]`` (:func:`lr_at`).
    - ``grad_norm[i]``: global L2 norm of the gradient **before** clipping, ``||g||_2`` over all
      parameters, mean over the same steps.
    - ``evals``: one dict per evaluation, ``{"step": t, **eval_fn(model)}``.
    - ``seconds``: wall-clock time of the loop (evaluations included).
    - ``examples_seen``: sum over updates and ranks of the first batch tensor's leading size;
      ``tokens_seen``: of its number of elements (the tokens, when it is ``(batch, seq)`` token ids).
    """

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    examples_seen: int = 0
    tokens_seen: int = 0
    world_size: int = 1
    device: str = "cpu"

    @property
    def final_loss(self) -> float:
        """The last recorded training loss."""
        if not self.loss:
            raise ValueError("this result has no recorded loss")
        return self.loss[-1]

    def eval_history(self, name: str) -> tuple[list[int], list[float]]:
        """``(steps, values)`` of the metric ``name`` across the evaluations that reported it."""
        rows = [e for e in self.evals if name in e]
        if not rows and self.evals:
            known = sorted({k for e in self.evals for k in e if k != "step"})
            raise KeyError(f"no evaluation reported {name!r}; reported metrics: {known}")
        return [e["step"] for e in rows], [e[name] for e in rows]

    def convergence(self, name: str = "val_loss", **kwargs: Any) -> Convergence:
        """Is the evaluated metric ``name`` still falling over the last fifth of training, shown flat, or
        too noisy to tell?

        See :func:`paperlab.stats.convergence` (slope with a 95% interval over >= 5 evaluations; "still
        falling" when the fall is both real and larger than 0.5% of the level, "converged" when even the
        interval's largest fall is smaller); ``kwargs`` go to it. A comparison of runs that are not
        converged says so.
        """
        steps, values = self.eval_history(name)
        if len(steps) < CONVERGENCE_MIN_EVALUATIONS:
            raise ValueError(f"convergence needs >= {CONVERGENCE_MIN_EVALUATIONS} evaluations of {name!r}, "
                             f"got {len(steps)}; set TrainConfig.eval_every")
        return convergence(steps, values, **kwargs)

    def to_dict(self) -> dict:
        """A JSON-able dict (lists, numbers, strings)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainResult:
        """Inverse of :meth:`to_dict`; unknown keys raise a ValueError naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown TrainResult field(s) {unknown}; expected a subset of {sorted(names)}")
        return cls(**{k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in data.items()})


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


class _LossModule(nn.Module):
    """``forward(batch) = loss_fn(model, batch)``, so that ``DistributedDataParallel`` can wrap the *loss*.

    DDP only synchronises gradients when the forward pass goes through ``DDP.forward``; wrapping the
    loss (rather than the model) lets ``loss_fn`` call any method of the plain model (``model.loss(...)``)
    while still running inside DDP's forward.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, tuple], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: tuple) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


def adamw_for(model: nn.Module, config: TrainConfig, device: torch.device | None = None) -> torch.optim.AdamW:
    """AdamW with two groups: weight decay on parameters with ``ndim >= 2`` (matrices: linear and
    embedding weights), none on 1-D ones (biases, LayerNorm gains) whose decay would only pull scales
    and offsets towards zero without regularising the function's complexity.

    Update (decoupled decay, Loshchilov & Hutter 2019): ``theta <- theta - lr * (m_hat / (sqrt(v_hat) + eps)
    + weight_decay * theta)``.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no parameters with requires_grad=True; nothing to train")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": float(config.weight_decay)},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    fused = device is not None and device.type == "cuda"
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, fused=fused or None)


def batch_seed(seed: int, step: int, rank: int = 0) -> int:
    """The seed of the batch of update ``step`` on replica ``rank`` of a run seeded ``seed``:
    ``seed * 1_000_003 + step * 101 + rank``. For runs of fewer than 9,900 steps on fewer than 101 replicas,
    no two ``(seed, step, rank)`` share it. So a run is reproducible, its batches do not depend on what was
    drawn before, and each data-parallel replica sees other data."""
    return seed * 1_000_003 + step * 101 + rank


def batch_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """A CPU generator seeded with :func:`batch_seed` ``(seed, step, rank)``, for the batch of one update."""
    return torch.Generator().manual_seed(batch_seed(seed, step, rank))


def seeded_batches(sample: Callable[[torch.Generator], tuple], seed: int) -> Callable[..., tuple]:
    """The ``get_batch`` of :func:`train` for a sampler of random batches: ``sample(generator)`` draws one
    batch (a tuple of tensors) from the generator it is given, :func:`batch_generator` of each
    ``(step, rank)``. Every experiment of the book draws its training batches from :func:`batch_generator`,
    through this wrapper unless its sampler needs the step itself (NLLB's curriculum)."""

    def get_batch(step: int, rank: int = 0, world_size: int = 1) -> tuple:
        return sample(batch_generator(seed, step, rank))

    return get_batch


def _to_device(batch: Any, device: torch.device) -> tuple:
    if isinstance(batch, torch.Tensor):
        raise TypeError("get_batch must return a tuple of tensors (e.g. (x, y)); got a single tensor: "
                        "return (x,) for one")
    if not isinstance(batch, (tuple, list)):
        raise TypeError(f"get_batch must return a tuple of tensors, got {type(batch).__name__}")
    return tuple(t.to(device, non_blocking=True) if isinstance(t, torch.Tensor) else t for t in batch)


def _check_arguments(model: Any, get_batch: Any, loss_fn: Any, config: Any, eval_fn: Any,
                     on_step: Any) -> None:
    """The types :func:`train` needs, checked before any work starts."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    for name, fn in (("get_batch", get_batch), ("loss_fn", loss_fn)):
        if not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    for name, fn in (("eval_fn", eval_fn), ("on_step", on_step)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be callable or None, got {type(fn).__name__}")


def _scalar(loss: Any) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError(f"loss_fn must return a scalar tensor, got {loss!r:.80}")
    return loss


@dataclass
class _Setup:
    """Where and how a run trains: device, this process's place among the replicas, the optimizer and
    its parameters, and the loss as a module (wrapped in DDP when there are several replicas)."""

    device: torch.device
    rank: int
    world_size: int
    optimizer: torch.optim.Optimizer
    params: list[torch.Tensor]
    loss_module: nn.Module


def _set_up(model: nn.Module, loss_fn: Callable, config: TrainConfig, device: Any,
            optimizer: torch.optim.Optimizer | None) -> _Setup:
    """Device and process group, seeds (per rank), model on the device, optimizer, DDP: in this order."""
    rank, world_size, _ = distributed_info()
    device = auto_device(device)
    if world_size > 1:
        _setup_distributed(device)
        rank, world_size, _ = distributed_info()
    seed_everything((config.seed + rank) % 2**32)  # different dropout masks per replica, same init below
    model.to(device)
    model.train()
    if optimizer is None:
        optimizer = adamw_for(model, config, device)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    params = [p for group in optimizer.param_groups for p in group["params"]]
    loss_module = _LossModule(model, loss_fn)
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        # DDP broadcasts rank 0's parameters and buffers here, so every replica starts equal.
        loss_module = DistributedDataParallel(
            loss_module, device_ids=[device.index] if device.type == "cuda" else None
        )
    return _Setup(device, rank, world_size, optimizer, params, loss_module)


def _set_lr(optimizer: torch.optim.Optimizer, lr: float, peak_lr: float) -> None:
    """Every group's learning rate = its initial one scaled by the schedule, ``initial_lr * lr / peak_lr``."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * lr / peak_lr


def _evaluate(model: nn.Module, eval_fn: Callable[[nn.Module], Mapping[str, float]]) -> Mapping[str, float]:
    """``eval_fn(model)`` in ``model.eval()`` mode under ``torch.no_grad()``, then ``model.train()``."""
    model.eval()
    try:
        with torch.no_grad():
            return eval_fn(model)
    finally:
        model.train()


def _check_finite(what: str, values: torch.Tensor, mean: float, step: int, first: int) -> None:
    """Stop the run when the mean of a logging window (steps ``first..step``) is not finite, naming the
    first bad step (or another rank, when this rank's values are all finite)."""
    if math.isfinite(mean):
        return
    bad = (~torch.isfinite(values)).nonzero()
    detail = f"step {first + int(bad[0])}" if len(bad) else "on another rank"
    window = f"step {step}" if first == step else f"steps {first}..{step} (first bad: {detail})"
    raise FloatingPointError(
        f"non-finite training {what} ({mean}) at {window}; the run is stopped rather than continued. "
        "Try a lower lr, a smaller grad_clip, or a warmup."
    )


class _Log:
    """What :func:`train` records: the progress bar, the logging window (losses and gradient norms since
    the last record) and the :class:`TrainResult` that the records go into."""

    def __init__(self, config: TrainConfig, setup: _Setup, desc: str) -> None:
        self.config, self.setup = config, setup
        self.result = TrainResult(world_size=setup.world_size, device=str(setup.device))
        self.losses: list[torch.Tensor] = []
        self.norms: list[torch.Tensor] = []
        self.window_start = 1
        quiet = {} if setup.rank == 0 else {"disable": True}
        self.bar = progress(range(1, config.steps + 1), desc=desc, **quiet)
        self.postfix: dict[str, str] = {}
        self.start = time.perf_counter()

    def count(self, batch: tuple) -> None:
        """Examples and tokens seen, over all replicas (from the batch's first tensor)."""
        if batch and isinstance(batch[0], torch.Tensor):
            first = batch[0]
            self.result.examples_seen += (first.shape[0] if first.ndim else 1) * self.setup.world_size
            self.result.tokens_seen += first.numel() * self.setup.world_size

    def step(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor, lr: float) -> None:
        """Add a step to the window; every ``log_every`` steps (and at the last) record its means."""
        self.losses.append(loss.detach().reshape(()).float())
        self.norms.append(grad_norm.detach().float())
        if step % self.config.log_every == 0 or step == self.config.steps:
            self._record(step, lr)

    def _record(self, step: int, lr: float) -> None:
        losses, norms = torch.stack(self.losses), torch.stack(self.norms)
        summed = losses.sum()
        if self.setup.world_size > 1:
            dist.all_reduce(summed)  # SUM (gloo has no AVG)
        mean_loss = summed.item() / (len(losses) * self.setup.world_size)
        mean_norm = norms.mean().item()  # equal on all ranks after DDP's all-reduce
        _check_finite("loss", losses, mean_loss, step, self.window_start)
        _check_finite("gradient norm", norms, mean_norm, step, self.window_start)
        self.result.steps.append(step)
        self.result.loss.append(mean_loss)
        self.result.lr.append(lr)
        self.result.grad_norm.append(mean_norm)
        self._show(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
        self.losses.clear()
        self.norms.clear()
        self.window_start = step + 1

    def evaluation(self, step: int, metrics: Any) -> None:
        """Record ``{"step": step, **metrics}`` (values as floats)."""
        if not isinstance(metrics, Mapping):
            raise TypeError(
                f"eval_fn must return a dict of metric name -> float, got {type(metrics).__name__}"
            )
        record = {"step": step}
        for key, value in metrics.items():
            if key == "step":
                raise ValueError("eval_fn must not return a metric named 'step' (train records it)")
            record[str(key)] = float(value.item() if isinstance(value, torch.Tensor) else value)
        self.result.evals.append(record)
        self._show(**{k: f"{v:.4g}" for k, v in list(record.items())[1:4]})

    def _show(self, **values: str) -> None:
        self.postfix.update(values)
        self.bar.set_postfix(self.postfix, refresh=False)

    def finish(self) -> TrainResult:
        self.bar.close()
        if self.setup.device.type == "cuda":
            torch.cuda.synchronize(self.setup.device)
        self.result.seconds = time.perf_counter() - self.start
        return self.result


def train(
    model: nn.Module,
    get_batch: Callable[[int, int, int], Sequence[torch.Tensor]],
    loss_fn: Callable[[nn.Module, tuple], torch.Tensor],
    config: TrainConfig,
    *,
    eval_fn: Callable[[nn.Module], Mapping[str, float]] | None = None,
    device: str | torch.device | None = None,
    desc: str = "train",
    optimizer: torch.optim.Optimizer | None = None,
    on_step: Callable[[int, nn.Module], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``config.steps`` updates and return what was recorded.

    Each step ``t = 1 .. config.steps``:

    1. ``batch = get_batch(t, rank, world_size)`` (tensors moved to the device); each rank must return
       different data (:func:`seeded_batches` seeds a generator with ``(seed, t, rank)``), else the
       replicas all see one batch.
    2. ``loss = loss_fn(model, batch)``, a scalar; ``loss.backward()`` (under DDP this also averages the
       gradients over the ranks: ``g = (1/N) sum_r g_r``).
    3. ``n = ||g||_2`` over all parameters is recorded; if ``n > grad_clip`` every gradient is scaled by
       ``grad_clip / n``.
    4. Every group's learning rate is set to ``lr_at(t) * group_lr / config.lr`` and the optimizer steps.
    5. ``on_step(t, model)`` if given; ``eval_fn(model)`` at :meth:`TrainConfig.evaluation_steps` (every
       ``eval_every`` steps, after the last, and enough in the last fifth for the convergence check), in
       ``model.eval()`` mode under ``torch.no_grad()``, then back to ``model.train()``.

    The optimizer defaults to :func:`adamw_for` (decay on >= 2-D parameters only). A given ``optimizer``
    is used as is (``config.weight_decay`` and ``betas`` are then ignored); the schedule scales each group's
    initial learning rate by ``lr_at(t) / config.lr``. ``loss_fn``, ``eval_fn`` and ``on_step`` always
    receive the plain model, never the DDP wrapper. Under ``torchrun`` ``eval_fn`` runs on every rank (the
    replicas hold equal parameters); it may use collectives to split the work.

    A non-finite loss or gradient norm raises FloatingPointError naming the step. The check happens at
    each record (every ``log_every`` steps), before that step's update, so with ``log_every=1`` the model
    keeps the last finite parameters.

    Raises: ValueError/TypeError for bad arguments; FloatingPointError as above.
    """
    _check_arguments(model, get_batch, loss_fn, config, eval_fn, on_step)
    run = _set_up(model, loss_fn, config, device, optimizer)
    log = _Log(config, run, desc)
    max_norm = math.inf if config.grad_clip is None else config.grad_clip  # None: record, never clip
    evaluation_due = set(config.evaluation_steps())
    for step in log.bar:
        batch = _to_device(get_batch(step, run.rank, run.world_size), run.device)  # 1. this rank's batch
        log.count(batch)
        loss = _scalar(run.loss_module(batch))  # 2. loss_fn(model, batch), through DDP when distributed
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # under DDP: g = (1/N) sum_r g_r
        grad_norm = torch.nn.utils.clip_grad_norm_(run.params, max_norm)  # 3. n = ||g||_2 before clipping
        lr = lr_at(step, config)
        log.step(step, loss, grad_norm, lr)  # window means; stops on a non-finite loss before the update
        _set_lr(run.optimizer, lr, config.lr)  # 4. lr_at(t) * group_lr / config.lr, then the update
        run.optimizer.step()
        if on_step is not None:  # 5. the caller's hook, then evaluation when due
            on_step(step, model)
        if eval_fn is not None and step in evaluation_due:
            log.evaluation(step, _evaluate(model, eval_fn))
    return log.finish()


class BestWeights:
    """Keep the weights of the evaluation with the lowest score (checkpoint selection on a validation set).

    Wraps an ``eval_fn`` for :func:`train`: each call returns ``eval_fn(model)``'s metrics unchanged and,
    when ``score(metrics)`` is finite and below every earlier one, copies the model's weights. After
    training, :meth:`restore` loads the copy. ``score`` is the number to minimise, e.g.
    ``lambda metrics: metrics["val_loss"]``. Ties keep the earlier evaluation.
    """

    def __init__(self, eval_fn: Callable[[nn.Module], Mapping[str, float]],
                 score: Callable[[Mapping[str, float]], float]) -> None:
        if not callable(eval_fn) or not callable(score):
            raise TypeError("BestWeights needs a callable eval_fn and a callable score")
        self.eval_fn, self.score = eval_fn, score
        self.n_evaluations, self.best_score, self.best_index, self.best_state = 0, math.inf, None, None

    def __call__(self, model: nn.Module) -> Mapping[str, float]:
        metrics = self.eval_fn(model)
        value = float(self.score(metrics))
        if math.isfinite(value) and value < self.best_score:
            self.best_score, self.best_index = value, self.n_evaluations
            self.best_state = copy.deepcopy(model.state_dict())
        self.n_evaluations += 1
        return metrics

    def restore(self, model: nn.Module, result: TrainResult) -> int:
        """Load the best evaluation's weights into ``model`` and return the step they were taken at
        (``result`` is the run's :class:`TrainResult`). When no evaluation scored a finite value, the
        model keeps its last weights and the last step is returned."""
        if len(result.evals) != self.n_evaluations:
            raise ValueError(f"result has {len(result.evals)} evaluations, BestWeights saw "
                             f"{self.n_evaluations}: restore with the TrainResult of the run it evaluated")
        if self.best_index is None:
            return result.steps[-1] if result.steps else 0
        model.load_state_dict(self.best_state)
        return result.evals[self.best_index]["step"]
