"""The MatMul-free chapter's experiments, on the toolkit's grammar corpus (known entropy floor).

Every training run is one :class:`RunConfig` and one cache entry (:func:`paperlab.cache.cached`), so the
scaling study, the learning-rate sweep and the attention ablation share runs whose settings coincide.
Model families (``kind``):

- ``"transformer"``: the toolkit GPT (Transformer++: RoPE, SwiGLU, RMSNorm), full precision;
- ``"matmulfree"``: the MatMul-free LM (ternary BitLinear, MLGRU, GLU);
- ``"fp"``: the same architecture without quantisation;
- ``"ternary_attention"``: the MatMul-free LM with MLGRU replaced by attention with ternary projections.

Tiny models train faster on one thread than on two busy cores (thread start-up dominates), so runs use
one thread and restore the previous setting afterwards.

Training FLOPs are estimated as ``6 N D`` (Kaplan et al., 2020): ``N`` non-embedding parameters (the LM
head included), ``D`` training tokens; for ternary layers these "FLOPs" are mostly additions.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import torch

from paperlab import cache, toolkit
from paperlab.config import (
    check_choice,
    check_int_tuple,
    check_ints,
    check_number_tuple,
    check_that,
    check_type,
)
from paperlab.data import lm_batches
from paperlab.experiments import Experiment
from paperlab.matmulfree.model import MatMulFreeConfig, MatMulFreeLM
from paperlab.matmulfree.packed import pack_model, weight_bytes
from paperlab.nn import GPT, GPTConfig, count_parameters, generate
from paperlab.train import TrainConfig, TrainResult, auto_device, seeded_batches, train
from paperlab.utils import cpu_threads, peak_cpu_allocation

__all__ = ["RunConfig", "MatMulFreeExperimentConfig", "CONFIGS", "make_model", "train_run",
           "load_run", "run", "EXPERIMENT", "KINDS"]

KINDS = ("transformer", "matmulfree", "fp", "ternary_attention")


@dataclass(frozen=True)
class RunConfig:
    """One training run: everything that determines its result (and so its cache key)."""

    kind: str
    d_model: int
    corpus: toolkit.ToolkitConfig
    train: TrainConfig
    n_layers: int = 2
    n_heads: int = 4
    eval_windows: int = 64

    def __post_init__(self):
        check_choice(self, "kind", KINDS)
        check_type(self, "corpus", toolkit.ToolkitConfig)
        check_type(self, "train", TrainConfig)  # TrainConfig checks its own fields
        check_ints(self, "d_model", "n_layers", "n_heads", "eval_windows")
        head_dim = self.d_model / self.n_heads  # attention (GPT and ternary) splits d_model into even heads
        check_that(self, head_dim == int(head_dim) and int(head_dim) % 2 == 0, "d_model",
                   f"a multiple of 2 * n_heads = {2 * self.n_heads} (even heads for RoPE)")


@dataclass(frozen=True)
class MatMulFreeExperimentConfig:
    """The chapter's settings for one profile. ``train`` is every run's schedule; its ``lr`` is replaced by
    the learning rate of the sweep (``sweep_lrs``) or by the family's best one from it."""

    corpus: toolkit.ToolkitConfig = field(default_factory=toolkit.ToolkitConfig)
    sizes: tuple[int, ...] = (32, 48, 64)  # d_model of the scaling study
    n_layers: int = 2
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=300, batch_size=16, warmup_steps=30, eval_every=50, log_every=10))
    sweep_d_model: int = 48
    sweep_lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    eval_windows: int = 64
    n_prompts: int = 8  # greedy generations compared packed vs float

    def __post_init__(self):
        check_type(self, "corpus", toolkit.ToolkitConfig)
        check_int_tuple(self, "sizes")
        check_number_tuple(self, "sweep_lrs", low=0, open_low=True)
        check_type(self, "train", TrainConfig)
        check_ints(self, "n_layers", "sweep_d_model", "eval_windows", "n_prompts")
        check_that(self, self.corpus.context_length >= 5, "corpus",
                   "a ToolkitConfig with context_length >= 5 (3 prompt tokens, then generation)")
        for d_model in (*self.sizes, self.sweep_d_model):  # every run's own checks, before any training
            try:
                self.run_config("transformer", d_model, self.sweep_lrs[0])
            except ValueError as err:
                raise ValueError(f"MatMulFreeExperimentConfig (sizes, sweep_d_model): {err}") from None

    def run_config(self, kind: str, d_model: int, lr: float) -> RunConfig:
        return RunConfig(kind=kind, d_model=d_model, corpus=self.corpus, n_layers=self.n_layers,
                         train=dataclasses.replace(self.train, lr=lr), eval_windows=self.eval_windows)


_FAST_CORPUS = dataclasses.replace(toolkit.CONFIGS["fast"], context_length=32)
_FULL_CORPUS = dataclasses.replace(toolkit.CONFIGS["full"], context_length=32)

CONFIGS = {
    "fast": MatMulFreeExperimentConfig(
        corpus=_FAST_CORPUS, sizes=(16, 32, 48),
        train=TrainConfig(steps=60, batch_size=8, warmup_steps=6, eval_every=30, log_every=2),
        sweep_d_model=32, sweep_lrs=(3e-3, 3e-2), eval_windows=16, n_prompts=4,
    ),
    "full": MatMulFreeExperimentConfig(corpus=_FULL_CORPUS),  # the defaults, on the full corpus
}


def make_model(run: RunConfig, vocab_size: int) -> torch.nn.Module:
    """The model of ``run.kind`` at width ``run.d_model``."""
    common = dict(vocab_size=vocab_size, context_length=run.corpus.context_length, d_model=run.d_model,
                  n_layers=run.n_layers, n_heads=run.n_heads)
    if run.kind == "transformer":
        return GPT(GPTConfig(**common))
    mixer = "attention" if run.kind == "ternary_attention" else "mlgru"
    return MatMulFreeLM(MatMulFreeConfig(**common, quantise=run.kind != "fp", token_mixer=mixer))


def _train(run: RunConfig, device) -> dict:
    device = auto_device(device)
    corpus = toolkit.build_corpus(run.corpus)
    train_ids = corpus.train_ids.to(device)
    torch.manual_seed(run.train.seed)
    model = make_model(run, corpus.tokenizer.vocab_size).to(device)
    get_batch = seeded_batches(
        lambda generator: lm_batches(train_ids, run.train.batch_size, run.corpus.context_length, generator),
        run.train.seed)

    def eval_fn(m):
        return {"val_loss": toolkit.window_loss(m, corpus.val_ids, run.corpus, run.eval_windows)}

    with cpu_threads(1):
        result = train(model, get_batch, lambda m, b: m.loss(*b), run.train, eval_fn=eval_fn, device=device,
                       desc=f"{run.kind} d={run.d_model} lr={run.train.lr:g}")
    n_params = count_parameters(model)
    n_non_embedding = n_params - model.token_embedding.weight.numel()
    if run.kind == "transformer":  # tied head: the head's matmul still costs compute
        n_non_embedding += model.token_embedding.weight.numel()
    return {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "history": result.to_dict(),
        "n_parameters": n_params,
        "n_non_embedding": n_non_embedding,
        "tokens": result.tokens_seen,
        "flops": 6.0 * n_non_embedding * result.tokens_seen,
        "final_val_loss": result.evals[-1]["val_loss"],
    }


def train_run(run: RunConfig, device=None) -> dict:
    """Train (or load from the cache) one run; returns weights, history and summary numbers."""
    return cache.cached("matmulfree-run", run, lambda: _train(run, device), seed=run.train.seed,
                        check=cache.has_keys("state_dict", "history"))


def load_run(run: RunConfig, device=None) -> tuple[torch.nn.Module, toolkit.Corpus, dict]:
    """The trained model of ``run`` (eval mode), its corpus, and the cached result."""
    result = train_run(run, device)
    corpus = toolkit.build_corpus(run.corpus)
    model = make_model(run, corpus.tokenizer.vocab_size)
    model.load_state_dict(result["state_dict"])
    return model.to(auto_device(device)).eval(), corpus, result


def _summary(run: RunConfig, result: dict) -> dict:
    history = TrainResult.from_dict(result["history"])
    eval_steps, val = history.eval_history("val_loss")
    return {"kind": run.kind, "d_model": run.d_model, "lr": run.train.lr,
            "n_parameters": result["n_parameters"], "n_non_embedding": result["n_non_embedding"],
            "flops": result["flops"], "tokens": result["tokens"], "final_val_loss": result["final_val_loss"],
            "steps": history.steps, "train_loss": history.loss, "eval_steps": eval_steps, "val_loss": val,
            "train_seconds": history.seconds}


def add_only_check(model: torch.nn.Module, corpus: toolkit.Corpus, n_prompts: int,
                   max_new_tokens: int) -> dict:
    """Greedy generation through the packed (add-only) model vs the dequantised float model."""
    packed = pack_model(model)
    prompts = [corpus.tokenizer.encode(s)[:3] for s in corpus.val_sentences[:n_prompts]]
    with cpu_threads(1):
        t0 = time.perf_counter()
        float_tokens = generate(model, prompts, max_new_tokens, greedy=True)
        t1 = time.perf_counter()
        packed_tokens = generate(packed, prompts, max_new_tokens, greedy=True)
        t2 = time.perf_counter()
        # Peak memory of the same generation runs (profiled separately, so the timings above are clean):
        # weights held + the peak of what PyTorch allocates while generating (activations, and on the
        # float path the quantised weight copies made in every forward).
        _, transient_float = peak_cpu_allocation(
            lambda: generate(model, prompts, max_new_tokens, greedy=True))
        _, transient_packed = peak_cpu_allocation(
            lambda: generate(packed, prompts, max_new_tokens, greedy=True))
        x = torch.randint(0, corpus.tokenizer.vocab_size, (4, model.config.context_length),
                          generator=torch.Generator().manual_seed(0))  # not the global RNG: same x on reruns
        with torch.no_grad():
            logit_gap = (model(x) - packed(x)).abs().max().item()
    resident_float = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    resident_packed = sum(t.numel() * t.element_size() for t in packed.state_dict().values())
    return {
        "prompts": prompts, "float_tokens": float_tokens, "packed_tokens": packed_tokens,
        "n_equal": sum(a == b for a, b in zip(float_tokens, packed_tokens)), "n_prompts": len(prompts),
        "float_text": [corpus.tokenizer.decode(p + t) for p, t in zip(prompts, float_tokens)],
        "max_logit_difference": logit_gap,
        "float_seconds": t1 - t0, "packed_seconds": t2 - t1,
        "resident_bytes_float": resident_float, "resident_bytes_packed": resident_packed,
        "peak_bytes_float": resident_float + transient_float,
        "peak_bytes_packed": resident_packed + transient_packed,
    }



def run(config: MatMulFreeExperimentConfig, device=None) -> dict:
    """All of the chapter's results (JSON-able).

    The learning-rate sweep comes first, at ``sweep_d_model``; every other run of a family then uses the
    sweep's best learning rate for it (the fp variant and ternary attention take the MatMul-free LM's), so
    the size comparison is not decided by a learning rate that suits one family only. Every model trains on
    ``device`` (checked before any work); the add-only inference check measures CPU time and memory, so it
    runs on the CPU.
    """
    device = auto_device(device)
    sweep = [_summary(r, train_run(r, device)) for kind in ("transformer", "matmulfree")
             for r in [config.run_config(kind, config.sweep_d_model, lr) for lr in config.sweep_lrs]]
    best_lr = {kind: min((r for r in sweep if r["kind"] == kind), key=lambda r: r["final_val_loss"])["lr"]
               for kind in ("transformer", "matmulfree")}
    best_lr["fp"] = best_lr["ternary_attention"] = best_lr["matmulfree"]
    scaling = [_summary(r, train_run(r, device)) for kind in ("transformer", "matmulfree", "fp")
               for r in [config.run_config(kind, d, best_lr[kind]) for d in config.sizes]]
    ablation = [_summary(r, train_run(r, device)) for r in
                [config.run_config(kind, config.sweep_d_model, best_lr[kind])
                 for kind in ("matmulfree", "ternary_attention")]]
    largest = config.run_config("matmulfree", max(config.sizes), best_lr["matmulfree"])
    model, corpus, _ = load_run(largest, device)
    model = model.cpu()
    return {
        "scaling": scaling, "sweep": sweep, "ablation": ablation, "best_lr": best_lr,
        "memory": weight_bytes(model),
        "inference": add_only_check(model, corpus, config.n_prompts, config.corpus.context_length - 4),
        "entropy_per_token": corpus.grammar.exact_entropy_per_token(),
        "largest_d_model": max(config.sizes),
    }


EXPERIMENT = Experiment(name="matmulfree", chapter="book/03-matmulfree.md", configs=CONFIGS, run=run)
