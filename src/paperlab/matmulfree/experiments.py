"""The MatMul-free chapter's experiments, on the toolkit's grammar corpus (known entropy floor), and the
SSD chapter's recall task (MQAR).

Every training run is one :class:`RunConfig` (or :class:`MQARRun`) and one cache entry
(:func:`paperlab.cache.cached`), so the learning-rate sweep, the size study over seeds and the ablations
share runs whose settings coincide. Model families (``kind``):

- ``"transformer"``: the toolkit GPT (Transformer++: RoPE, SwiGLU, RMSNorm), full precision, its LM head
  **untied** from the embedding (as the MatMul-free LM's, and as in the reference code);
- ``"matmulfree"``: the MatMul-free LM (ternary BitLinear, MLGRU, GLU, ternary LM head);
- ``"fp"``: the same architecture without quantisation;
- ``"ternary_attention"``: the MatMul-free LM with MLGRU replaced by attention with ternary projections.

Each family gets its own learning-rate sweep (first seed, at ``sweep_d_model``) over a grid of equally many
rates, a factor of about 3 apart (``sweep_lrs`` for the MatMul-free LM and its fp variant,
``transformer_lrs`` for the Transformer++; the same grid in the full profile), and every family's rate is
chosen by one rule on the chapter's primary metric: the lowest validation **sentence loss**. Every other run
of the family uses its best rate (ternary attention uses the MatMul-free LM's). A model is
scored by the toolkit's **sentence loss** (:func:`paperlab.toolkit.sentence_loss`) on validation sentences:
nats per token of whole sentences, comparable to the grammar's entropy per token.

Runs train in worker processes, one thread each (:func:`paperlab.utils.parallel_map`), one per core.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from paperlab import cache, toolkit
from paperlab.config import (
    check_choice,
    check_int_tuple,
    check_ints,
    check_number_tuple,
    check_seeds,
    check_that,
    check_type,
)
from paperlab.data import lm_batches
from paperlab.experiments import Experiment
from paperlab.matmulfree.layers import BITLINEAR_EPS, BitLinear
from paperlab.matmulfree.model import MatMulFreeConfig, MatMulFreeLM
from paperlab.matmulfree.packed import PackedBitLinear, pack_model, weight_bytes
from paperlab.matmulfree.quant import ternary_weight
from paperlab.nn import GPT, GPTConfig, count_parameters, generate
from paperlab.ssd.experiments import accuracy_by_query, elimination_guess
from paperlab.ssd.mqar import MQAR_LOSS_FLOOR, MQARTask, train_mqar
from paperlab.train import (
    TrainConfig,
    TrainResult,
    auto_device,
    check_convergence_evaluations,
    seeded_batches,
    train,
)
from paperlab.utils import cpu_threads, parallel_map
from paperlab_kernels import rmsnorm as rms_kernels

__all__ = ["RunConfig", "MQARSettings", "MQARRun", "MatMulFreeExperimentConfig", "CONFIGS", "make_model",
           "train_run", "load_run", "summarise_run", "mqar_run", "add_only_check", "model_bytes", "run",
           "EXPERIMENT", "KINDS", "FAMILIES", "best_rates", "larger_lr", "shortcut_accuracy"]

KINDS = ("transformer", "matmulfree", "fp", "ternary_attention")
FAMILIES = ("transformer", "matmulfree", "fp")  # the families of the size study, each with its own sweep


@dataclass(frozen=True)
class RunConfig:
    """One training run on the grammar corpus: everything that determines its result (its cache key)."""

    kind: str
    d_model: int
    corpus: toolkit.ToolkitConfig
    train: TrainConfig
    n_layers: int = 2
    n_heads: int = 4
    eval_windows: int = 64
    n_val_sentences: int = 500

    def __post_init__(self):
        check_choice(self, "kind", KINDS)
        check_type(self, "corpus", toolkit.ToolkitConfig)
        check_type(self, "train", TrainConfig)  # TrainConfig checks its own fields
        check_ints(self, "d_model", "n_layers", "n_heads", "eval_windows", "n_val_sentences")
        head_dim = self.d_model / self.n_heads  # attention (GPT and ternary) splits d_model into even heads
        check_that(self, head_dim == int(head_dim) and int(head_dim) % 2 == 0, "d_model",
                   f"a multiple of 2 * n_heads = {2 * self.n_heads} (even heads for RoPE)")


@dataclass(frozen=True)
class MQARSettings(MQARTask):
    """The recall task (:mod:`paperlab.ssd.mqar`, the SSD chapter's task and its defaults) and the two
    models trained on it: the ternary MatMul-free LM (``"mlgru"``) and the Transformer++ (``"attention"``),
    both ``n_layers`` layers of width ``width``. Each kind's learning rate is chosen from ``lrs`` (the same
    grid for both) with the first seed (validation accuracy); the other seeds train at it; the test set
    scores each final model, also query by query (:func:`paperlab.ssd.experiments.accuracy_by_query`).

    The SSD chapter's recipe: batches of 128 sequences, because every model first learns a shortcut that
    needs no recall (guessing among the values not yet asked for, :func:`shortcut_accuracy`), and with
    batches of 32 attention stayed on it (test accuracy 0.49 here, below the shortcut's 0.52)."""

    width: int = 32
    n_layers: int = 2
    seeds: tuple[int, ...] = (0, 1, 2)
    lrs: tuple[float, ...] = (1e-2, 3e-2)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=1500, batch_size=128, warmup_steps=150, weight_decay=0.0, eval_every=50))

    def __post_init__(self):
        super().__post_init__()  # the task's own checks
        check_type(self, "train", TrainConfig)
        check_convergence_evaluations(self, "train", self.train)
        check_ints(self, "width", "n_layers")
        check_seeds(self)
        check_number_tuple(self, "lrs", low=0, open_low=True)
        check_that(self, self.width % 8 == 0, "width", "a multiple of 8 (4 attention heads of even size)")


@dataclass(frozen=True)
class MQARRun:
    """One MQAR model: ``kind`` ``"mlgru"`` or ``"attention"``, the task, and its training (lr, seed)."""

    kind: str
    task: MQARSettings
    train: TrainConfig

    def __post_init__(self):
        check_choice(self, "kind", ("mlgru", "attention"))


@dataclass(frozen=True)
class MatMulFreeExperimentConfig:
    """The chapter's settings for one profile. ``train`` is every run's schedule; its ``lr`` and ``seed``
    are replaced by the run's. ``sweep_lrs`` is the learning-rate grid of the MatMul-free LM's and the fp
    variant's sweeps (its smallest rate is the weight-flip claim's), ``transformer_lrs`` the
    Transformer++'s: equally many rates, so that every family gets the same tuning. In the full profile
    both are 1e-3, 3e-3, 1e-2: chosen on the validation sentence loss at 800 steps, the common grid
    1e-3 .. 3e-2 put every family's best rate at 3e-3 (the Transformer++'s at 1e-3 / 3e-3 / 1e-2 / 3e-2:
    2.397, 2.375, 2.378, 2.415 nats/token), so 3e-2 is the rate farthest from every optimum."""

    corpus: toolkit.ToolkitConfig = field(default_factory=toolkit.ToolkitConfig)
    sizes: tuple[int, ...] = (32, 48, 64)  # d_model of the size study
    seeds: tuple[int, ...] = (0, 1, 2)
    n_layers: int = 2
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=800, batch_size=16, warmup_steps=60, eval_every=100, log_every=10))
    sweep_d_model: int = 48
    sweep_lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2)  # the MatMul-free LM and its fp variant
    transformer_lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    eval_windows: int = 64
    n_val_sentences: int = 500  # validation sentences of the sentence loss
    n_prompts: int = 256  # validation sentences on which the packed and float models are compared
    mqar: MQARSettings = field(default_factory=MQARSettings)

    def __post_init__(self):
        check_type(self, "corpus", toolkit.ToolkitConfig)
        check_type(self, "mqar", MQARSettings)
        check_int_tuple(self, "sizes")
        check_seeds(self)
        check_number_tuple(self, "sweep_lrs", low=0, open_low=True)
        check_number_tuple(self, "transformer_lrs", low=0, open_low=True)
        check_that(self, len(self.transformer_lrs) == len(self.sweep_lrs), "transformer_lrs",
                   f"as many learning rates as sweep_lrs ({len(self.sweep_lrs)}): every family's sweep "
                   "gets the same number of runs")
        check_type(self, "train", TrainConfig)
        check_convergence_evaluations(self, "train", self.train)
        check_ints(self, "n_layers", "sweep_d_model", "eval_windows", "n_val_sentences", "n_prompts")
        check_that(self, self.corpus.context_length >= 5, "corpus",
                   "a ToolkitConfig with context_length >= 5 (3 prompt tokens, then generation)")
        for d_model in self.sizes:  # every run's own checks, before any training
            try:
                self.run_config("transformer", d_model, self.sweep_lrs[0])
            except ValueError as err:
                raise ValueError(f"MatMulFreeExperimentConfig (sizes): {err}") from None
        check_that(self, self.sweep_d_model in self.sizes, "sweep_d_model",
                   f"one of sizes {self.sizes} (its best runs are part of the size study)")

    def lrs(self, kind: str) -> tuple[float, ...]:
        """The learning-rate grid of ``kind``'s sweep."""
        return self.transformer_lrs if kind == "transformer" else self.sweep_lrs

    def run_config(self, kind: str, d_model: int, lr: float, seed: int | None = None) -> RunConfig:
        seed = self.seeds[0] if seed is None else seed
        return RunConfig(kind=kind, d_model=d_model, corpus=self.corpus, n_layers=self.n_layers,
                         train=dataclasses.replace(self.train, lr=lr, seed=seed),
                         eval_windows=self.eval_windows, n_val_sentences=self.n_val_sentences)

    def mqar_run(self, kind: str, lr: float, seed: int) -> MQARRun:
        return MQARRun(kind, self.mqar, dataclasses.replace(self.mqar.train, lr=lr, seed=seed))


_FAST_CORPUS = dataclasses.replace(toolkit.CONFIGS["fast"], context_length=32)
_FULL_CORPUS = dataclasses.replace(toolkit.CONFIGS["full"], context_length=32)

CONFIGS = {
    "fast": MatMulFreeExperimentConfig(
        corpus=_FAST_CORPUS, sizes=(16, 32),
        train=TrainConfig(steps=24, batch_size=8, warmup_steps=3, eval_every=8, log_every=2),
        sweep_d_model=32, sweep_lrs=(3e-3, 3e-2), transformer_lrs=(3e-3, 3e-2), eval_windows=8,
        n_val_sentences=40, n_prompts=16,
        mqar=MQARSettings(seq_len=8, n_pairs=2, vocab_size=32, width=16, lrs=(1e-2,),
                          train=TrainConfig(steps=24, batch_size=16, warmup_steps=3, weight_decay=0.0,
                                            eval_every=8),
                          n_val=64, n_test=128),
    ),
    "full": MatMulFreeExperimentConfig(corpus=_FULL_CORPUS),  # the defaults, on the full corpus
}


def make_model(run: RunConfig, vocab_size: int) -> torch.nn.Module:
    """The model of ``run.kind`` at width ``run.d_model`` (LM heads untied in every family)."""
    common = dict(vocab_size=vocab_size, context_length=run.corpus.context_length, d_model=run.d_model,
                  n_layers=run.n_layers, n_heads=run.n_heads)
    if run.kind == "transformer":
        return GPT(GPTConfig(**common, tie_embeddings=False))
    mixer = "attention" if run.kind == "ternary_attention" else "mlgru"
    return MatMulFreeLM(MatMulFreeConfig(**common, quantise=run.kind != "fp", token_mixer=mixer))


class FlipCounter:
    """How often the latent weights of a model's BitLinears change their ternary value during training.

    Call :meth:`step` after every optimizer step. It compares the ternary codes ``W_t`` of every BitLinear
    with those after the previous step, and keeps, per log interval, the **flip rate** (the fraction of
    ternary weights whose value changed, per step), and over the whole run, which weights ever changed
    and which end with a value other than their initial one.
    """

    def __init__(self, model: torch.nn.Module, log_every: int):
        self.layers = [m for m in model.modules() if isinstance(m, BitLinear) and m.quantise]
        self.log_every = log_every
        self.initial = self.previous = self.codes()
        self.ever = torch.zeros_like(self.initial, dtype=torch.bool)
        self.count, self.since = 0, 0
        self.steps: list[int] = []
        self.rates: list[float] = []

    def codes(self) -> torch.Tensor:
        return torch.cat([ternary_weight(m.weight.detach())[0].flatten() for m in self.layers])

    def step(self, t: int, model=None) -> None:
        now = self.codes()
        changed = now != self.previous  # W_t of these weights changed in this step
        self.ever |= changed
        self.count += int(changed.sum())
        self.since += 1
        self.previous = now
        if t % self.log_every == 0:
            self.steps.append(t)
            self.rates.append(self.count / (self.since * now.numel()))
            self.count, self.since = 0, 0

    def summary(self) -> dict:
        return {"steps": self.steps, "rate": self.rates, "ever": float(self.ever.float().mean()),
                "net": float((self.previous != self.initial).float().mean()),
                "n_weights": self.initial.numel()}


def _train(run: RunConfig, device) -> dict:
    device = auto_device(device)
    corpus = toolkit.build_corpus(run.corpus)
    toolkit.check_streams(corpus, run.corpus)  # before training, not at the first evaluation
    train_ids = corpus.train_ids.to(device)
    torch.manual_seed(run.train.seed)
    model = make_model(run, corpus.tokenizer.vocab_size).to(device)
    get_batch = seeded_batches(
        lambda generator: lm_batches(train_ids, run.train.batch_size, run.corpus.context_length, generator),
        run.train.seed)
    quantised = run.kind in ("matmulfree", "ternary_attention")
    flips = FlipCounter(model, run.train.log_every) if quantised else None

    def eval_fn(m):
        return {"val_loss": toolkit.window_loss(m, corpus.val_ids, run.corpus, run.eval_windows)}

    with cpu_threads(1, device=device):
        result = train(model, get_batch, lambda m, b: m.loss(*b), run.train, eval_fn=eval_fn, device=device,
                       desc=f"{run.kind} d={run.d_model} lr={run.train.lr:g} seed={run.train.seed}",
                       on_step=flips.step if flips else None)
        model.eval()
        with torch.no_grad():  # nats/token of whole validation sentences, comparable to the entropy floor
            sentence_loss = toolkit.sentence_loss(model, corpus, corpus.val_sentences[:run.n_val_sentences])
    convergence = result.convergence("val_loss")
    return {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "history": result.to_dict(),
        "n_parameters": count_parameters(model),
        "n_non_embedding": count_parameters(model, exclude_embeddings=True),  # without embedding and head
        "sentence_loss": sentence_loss,
        "final_val_loss": result.evals[-1]["val_loss"],
        **convergence.record(),
        "flips": flips.summary() if flips else None,
    }


def train_run(run: RunConfig, device=None) -> dict:
    """Train (or load from the cache) one run; returns weights, history and summary numbers."""
    return cache.cached("matmulfree-run-v2", run, lambda: _train(run, device), seed=run.train.seed,
                        check=cache.has_keys("state_dict", "history", "sentence_loss"))


def load_run(run: RunConfig, device=None) -> tuple[torch.nn.Module, toolkit.Corpus, dict]:
    """The trained model of ``run`` (eval mode), its corpus, and the cached result."""
    result = train_run(run, device)
    corpus = toolkit.build_corpus(run.corpus)
    model = make_model(run, corpus.tokenizer.vocab_size)
    model.load_state_dict(result["state_dict"])
    return model.to(auto_device(device)).eval(), corpus, result


def summarise_run(run: RunConfig, device=None) -> dict:
    """Train (or load) ``run`` and return its JSON-able summary (no weights). A module-level function, so
    that worker processes can run it."""
    result = train_run(run, device)
    history = TrainResult.from_dict(result["history"])
    eval_steps, val = history.eval_history("val_loss")
    return {"kind": run.kind, "d_model": run.d_model, "lr": run.train.lr, "seed": run.train.seed,
            "n_parameters": result["n_parameters"], "n_non_embedding": result["n_non_embedding"],
            "sentence_loss": result["sentence_loss"], "final_val_loss": result["final_val_loss"],
            "converged": result["converged"], "convergence": result["convergence"],
            "convergence_check": result["convergence_check"],
            "steps": history.steps, "train_loss": history.loss, "eval_steps": eval_steps, "val_loss": val,
            "flips": result["flips"], "train_seconds": history.seconds}


# ---------------------------------------------------------------------------------------------- MQAR
def _mqar_model(run: MQARRun) -> torch.nn.Module:
    task = run.task
    if run.kind == "attention":
        return GPT(GPTConfig(vocab_size=task.vocab_size, context_length=task.seq_len, d_model=task.width,
                             n_layers=task.n_layers, n_heads=4, tie_embeddings=False))
    return MatMulFreeLM(MatMulFreeConfig(vocab_size=task.vocab_size, context_length=task.seq_len,
                                         d_model=task.width, n_layers=task.n_layers))


def shortcut_accuracy(task: MQARTask) -> float:
    """Test accuracy of the shortcut that needs no recall: at each query, guess among the values of the
    sequence not asked for yet (right 1 time in ``n_pairs`` at the first query, ..., always at the last;
    :func:`paperlab.ssd.experiments.elimination_guess`), averaged over the queries. The null of the
    recall claim: a model at this accuracy has not shown that it recalls anything."""
    return float(sum(elimination_guess(task.n_pairs)) / task.n_pairs)


def mqar_run(run: MQARRun, device=None) -> dict:
    """Train one MQAR model from its seed and score it (cached): ``{"kind", "lr", "seed", "val_accuracy",
    "test_accuracy", "test_accuracy_by_query", "val_curve", "converged", "convergence"}``. Module-level,
    so that worker processes can run it."""
    task, tc = run.task, run.train

    def compute() -> dict:
        dev = auto_device(device)
        model, result, test_accuracy = train_mqar(lambda: _mqar_model(run), task, tc, dev,
                                                  desc=f"MQAR {run.kind}")
        with cpu_threads(1, device=dev):
            by_query = accuracy_by_query(model, task)
        steps, accuracy = result.eval_history("val_accuracy")
        convergence = result.convergence("val_loss", floor=MQAR_LOSS_FLOOR)  # as in the SSD chapter
        return {"kind": run.kind, "lr": tc.lr, "seed": tc.seed,
                "val_accuracy": accuracy[-1], "test_accuracy": test_accuracy,
                "test_accuracy_by_query": by_query, "val_curve": {"steps": steps, "val_accuracy": accuracy},
                **convergence.record()}

    return cache.cached("matmulfree-mqar-run", run, compute, seed=tc.seed)


# ------------------------------------------------------------------------------------ packed inference
@torch.no_grad()
def _int8_codes(model: torch.nn.Module, idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits of ``model`` on ``idx`` and the int8 codes ``q`` that each of its (packed or float)
    BitLinears computes from its input, in call order."""
    codes, handles = [], []
    for module in model.modules():
        if isinstance(module, (BitLinear, PackedBitLinear)):
            def hook(m, args):
                q, _ = rms_kernels.rms_norm_quant_reference(args[0].float(), m.norm_weight.float(),
                                                            BITLINEAR_EPS)
                codes.append(q)
            handles.append(module.register_forward_pre_hook(hook))
    try:
        logits = model(idx).float()
    finally:
        for handle in handles:
            handle.remove()
    return logits, codes


def add_only_check(model: MatMulFreeLM, corpus: toolkit.Corpus, n_prompts: int) -> dict:
    """The packed (add-only) model against the dequantised float model, teacher-forced on ``n_prompts``
    validation sentences (each after the boundary token), plus greedy generations from 3-token prompts.

    Per sentence: the largest |logit difference|, whether every position's argmax agrees, and how many
    of the int8 activation codes (every BitLinear's input quantiser) differ between the two paths.
    """
    packed = pack_model(model)
    sentences = corpus.val_sentences[:n_prompts]
    max_diff, agree, positions, codes_total, codes_changed, code_step = [], 0, 0, 0, 0, 0
    with cpu_threads(1):
        for sentence in sentences:
            tokens = [corpus.end_id] + corpus.tokenizer.encode(sentence)
            idx = torch.tensor([tokens[:model.config.context_length]])
            float_logits, float_codes = _int8_codes(model, idx)
            packed_logits, packed_codes = _int8_codes(packed, idx)
            max_diff.append(float((float_logits - packed_logits).abs().max()))
            agree += int((float_logits.argmax(-1) == packed_logits.argmax(-1)).sum())
            positions += idx.shape[1]
            for a, b in zip(float_codes, packed_codes):
                codes_total += a.numel()
                codes_changed += int((a != b).sum())
                code_step = max(code_step, int((a.int() - b.int()).abs().max()))
        prompts = [corpus.tokenizer.encode(s)[:3] for s in sentences]
        new_tokens = model.config.context_length - 4
        float_tokens = generate(model, prompts, new_tokens, greedy=True)
        packed_tokens = generate(packed, prompts, new_tokens, greedy=True)
    return {
        "n_sentences": len(sentences), "max_logit_difference": max_diff,
        "argmax_agree": agree, "positions": positions,
        "codes_changed": codes_changed, "codes_total": codes_total, "largest_code_change": code_step,
        "n_equal_generations": sum(a == b for a, b in zip(float_tokens, packed_tokens)),
        "float_text": [corpus.tokenizer.decode(p + t) for p, t in zip(prompts[:3], float_tokens[:3])],
    }


def model_bytes(config: MatMulFreeExperimentConfig, vocab_size: int) -> dict:
    """Bytes of every family's weights at every width, from the architecture (not the training):
    ``{kind: {d_model: {"fp32", "bf16", ["packed"]}}}``. ``packed`` (MatMul-free LM only) is the one
    accounting used throughout: each ternary matrix at 2 bits per weight plus one fp32 scale, and every
    other tensor (embedding table, norm gains) in bf16 (:func:`paperlab.matmulfree.packed.weight_bytes`)."""
    out = {}
    for kind in ("transformer", "matmulfree"):
        out[kind] = {}
        for d in config.sizes:
            model = make_model(config.run_config(kind, d, config.sweep_lrs[0]), vocab_size)
            n = count_parameters(model)
            sizes = {"fp32": 4 * n, "bf16": 2 * n}
            if kind == "matmulfree":
                sizes["packed"] = weight_bytes(model)["model_packed"]
            out[kind][str(d)] = sizes
    return out


# ------------------------------------------------------------------------------------------- the run
def _job(run: RunConfig | MQARRun, device: str) -> dict:
    """One training job of either kind (the workers of :func:`_train_all` run it)."""
    return mqar_run(run, device) if isinstance(run, MQARRun) else summarise_run(run, device)


# Milliseconds per optimizer step on one CPU thread, measured for the full profile's shapes: a language
# model of width d costs about (2.5 + 0.1 d) ms times its family's factor (batch 16 x 32 tokens); an MQAR
# model (batch 128 x 16 tokens, width 32) its kind's time. Only the order of the jobs depends on them.
_LM_FACTOR = {"transformer": 1.0, "fp": 1.05, "matmulfree": 1.25, "ternary_attention": 1.55}
_MQAR_MS = {"mlgru": 47.0, "attention": 25.0}


def _cost(run: RunConfig | MQARRun) -> float:
    """Estimated seconds of a job, to start the longest first (so that the two workers end together)."""
    if isinstance(run, MQARRun):
        size = run.train.batch_size * run.task.seq_len * run.task.width / (128 * 16 * 32)
        return run.train.steps * _MQAR_MS[run.kind] * size / 1000
    size = run.train.batch_size * run.corpus.context_length / (16 * 32)
    return run.train.steps * (2.5 + 0.1 * run.d_model) * _LM_FACTOR[run.kind] * size / 1000


def _train_all(runs: list, device, desc: str) -> list[dict]:
    """Every distinct run, side by side on the cores (longest first); results in the order of ``runs``."""
    unique = sorted(dict.fromkeys(runs), key=lambda r: -_cost(r))
    workers = 1 if auto_device(device).type != "cpu" else None
    results = dict(zip(unique, parallel_map(_job, [(r, str(device)) for r in unique], workers=workers,
                                            desc=desc)))
    return [results[r] for r in runs]


def best_rates(sweep: list[dict], kinds) -> dict:
    """Each kind's learning rate with the lowest validation sentence loss among its ``sweep`` runs: one
    rule, on the chapter's primary metric, for every family."""
    return {kind: min((r for r in sweep if r["kind"] == kind), key=lambda r: r["sentence_loss"])["lr"]
            for kind in kinds}


def larger_lr(config: MatMulFreeExperimentConfig, best_lr: dict) -> float | None:
    """The rate at which the learning-rate claim trains the MatMul-free LM against the Transformer++'s best
    rate: the ternary model's own best rate if it is above the Transformer++'s, else the smallest rate of
    its grid above the Transformer++'s best (``None`` if there is none: the claim cannot be tested)."""
    if best_lr["matmulfree"] > best_lr["transformer"]:
        return best_lr["matmulfree"]
    above = [lr for lr in config.lrs("matmulfree") if lr > best_lr["transformer"]]
    return min(above) if above else None


def run(config: MatMulFreeExperimentConfig, device=None) -> dict:
    """All of the chapter's results (JSON-able).

    1. Each family's learning-rate sweep (:meth:`MatMulFreeExperimentConfig.lrs`) at ``sweep_d_model`` with
       the first seed, and each MQAR model's on
       the recall task; the best rate is the one with the lowest validation sentence loss, the same rule
       for every family (MQAR: the best validation accuracy, for both models).
    2. At each family's best rate: every width and seed; ternary attention over the seeds; the MatMul-free
       LM over the seeds also at the Transformer++'s best rate, at :func:`larger_lr` and at the smallest
       rate of the grid (for the learning-rate and weight-flip claims); the MQAR models over the seeds.
    3. The packed model against the float model (largest width, first seed), on the CPU.
    """
    device = auto_device(device)
    first = config.seeds[0]
    sweep_runs = [config.run_config(kind, config.sweep_d_model, lr) for kind in FAMILIES
                  for lr in config.lrs(kind)]
    mqar_sweep_runs = [config.mqar_run(kind, lr, first) for kind in ("mlgru", "attention")
                       for lr in config.mqar.lrs]
    done = _train_all(sweep_runs + mqar_sweep_runs, device, "learning-rate sweeps")
    sweep, mqar_sweep = done[:len(sweep_runs)], done[len(sweep_runs):]
    best_lr = best_rates(sweep, FAMILIES)
    best_lr["ternary_attention"] = best_lr["matmulfree"]
    mqar_lr = {kind: max((r for r in mqar_sweep if r["kind"] == kind),
                         key=lambda r: r["val_accuracy"])["lr"] for kind in ("mlgru", "attention")}
    d_sweep, seeds = config.sweep_d_model, config.seeds
    up = larger_lr(config, best_lr)
    groups = {
        "scaling": [config.run_config(kind, d, best_lr[kind], s) for kind in FAMILIES for d in config.sizes
                    for s in seeds],
        "attention": [config.run_config("ternary_attention", d_sweep, best_lr["matmulfree"], s)
                      for s in seeds],
        "at_transformer_lr": [config.run_config("matmulfree", d_sweep, best_lr["transformer"], s)
                              for s in seeds],
        "at_larger_lr": [config.run_config("matmulfree", d_sweep, up, s) for s in seeds] if up else [],
        "at_lowest_lr": [config.run_config("matmulfree", d_sweep, min(config.sweep_lrs), s) for s in seeds],
        "mqar": [config.mqar_run(kind, mqar_lr[kind], s) for kind in ("mlgru", "attention") for s in seeds],
    }
    trained = _train_all([r for runs in groups.values() for r in runs], device, "models")
    results, start = {}, 0
    for name, runs in groups.items():
        results[name] = trained[start:start + len(runs)]
        start += len(runs)
    largest = config.run_config("matmulfree", max(config.sizes), best_lr["matmulfree"])
    model, corpus, _ = load_run(largest, device)
    return {
        **results, "sweep": sweep, "best_lr": best_lr, "mqar_sweep": mqar_sweep, "mqar_lr": mqar_lr,
        "larger_lr": up, "mqar_shortcut": shortcut_accuracy(config.mqar),
        "bytes": model_bytes(config, corpus.tokenizer.vocab_size),
        "inference": add_only_check(model.cpu(), corpus, config.n_prompts),
        "entropy_per_token": corpus.grammar.exact_entropy_per_token(),
        "largest_d_model": max(config.sizes),
    }


def check_runnable(config: MatMulFreeExperimentConfig) -> None:
    """What :func:`run` needs beyond a valid config: token streams of the corpus long enough for a window
    (:func:`paperlab.toolkit.check_streams`); a ValueError before any training (``python -m paperlab run``
    calls it up front, and :func:`_train` again)."""
    toolkit.check_streams(toolkit.build_corpus(config.corpus), config.corpus)


EXPERIMENT = Experiment(name="matmulfree", chapter="book/03-matmulfree.md", configs=CONFIGS, run=run,
                        check=check_runnable)
