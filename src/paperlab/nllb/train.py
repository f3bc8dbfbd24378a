"""Training and scoring one translation model of the synthetic world (:mod:`paperlab.nllb.data`).

:class:`RunConfig` describes a run completely (world, architecture, which languages, schedule), so it is
the cache key of :func:`run_cached`. A run:

1. tokenises every training direction once (:func:`encode_pairs`: source ``[<2src>, x.., <eos>]``, decoder
   input ``[<bos>, <2tgt>, y..]``, target ``[<2tgt>, y.., <eos>]``);
2. trains with :func:`paperlab.train.train`; each batch draws its examples' directions with
   **temperature sampling** (``P(direction d) ~ n_d^(1/T)``, which up-samples low-resource pairs as in
   NLLB and so makes them repeat for many epochs) and, with a **curriculum**, gives low-resource
   directions probability 0 until step ``curriculum_step``;
3. records the validation loss per direction every ``eval_every`` steps and the MoE routing statistics
   (``l_aux``, dropped fraction) every step; then, at the checkpoint it keeps (``select``), the test loss
   of every direction (zero-shot directions included, with a null: the same sources against shifted
   references), chrF++ and BLEU (sacrebleu) of greedy translations, and the expert usage per language
   (:func:`routing_by_language`) of the trained model and of the null (the trained model with its MoE
   gates put back to their initial weights, :func:`_initial_gates`);
4. when it trains a low-resource direction, also scores those directions (``low_best``) at the
   checkpoint of their own lowest mean validation loss, the rule the transfer comparison applies to the
   multilingual model and the bilingual baselines alike.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import sacrebleu
import torch

from paperlab import cache
from paperlab.config import check_choice, check_flags, check_ints, check_numbers, check_type
from paperlab.nllb.data import (
    HUB,
    LANGUAGES,
    LOW,
    WorldConfig,
    build_tokenizer,
    check_languages,
    detokenize,
    make_world,
    tag,
    train_directions,
    zero_shot_directions,
)
from paperlab.nllb.model import ModelConfig, Seq2Seq, beam_search, greedy_decode
from paperlab.tokenizers import SPECIAL_TOKENS
from paperlab.train import BestWeights, TrainConfig, batch_generator, train
from paperlab.utils import cpu_threads, parallel_map

__all__ = [
    "NLLB_TRAIN",
    "RunConfig",
    "Translator",
    "encode_pairs",
    "build_model",
    "train_run",
    "run_cached",
    "prefetch",
    "load_run",
    "score",
    "routing_by_language",
    "validation_loss",
]


def _name(direction: tuple[str, str]) -> str:
    return f"{direction[0]}-{direction[1]}"


NLLB_TRAIN = TrainConfig(steps=1000, batch_size=64, lr=2e-3, weight_decay=0.01, betas=(0.9, 0.98),
                         warmup_steps=50, grad_clip=1.0, eval_every=100, log_every=10, min_lr_ratio=0.1)
"""The schedule of a translation run (``batch_size`` in sentence pairs): AdamW with betas (0.9, 0.98) as
in fairseq's transformer recipes, warmup, then cosine to a tenth of ``lr``."""


@dataclass(frozen=True)
class RunConfig:
    """One training run.

    languages: the non-hub languages whose pairs with the hub are trained on (both directions); a
    bilingual baseline names one. Architecture: see :class:`paperlab.nllb.model.ModelConfig`.
    train: the schedule (:data:`NLLB_TRAIN`); temperature ``T`` of the direction sampling;
    dropout: on attention outputs, FFN hidden units and embeddings (NLLB: 0.3 for its MoE models);
    label_smoothing of the training cross-entropy (NLLB: 0.1);
    curriculum_step: low-resource directions are sampled only after this step (0 = from the start);
    select: ``"last"`` checkpoint or ``"best"`` (lowest mean validation loss over the trained
    directions, used for bilingual baselines); test_zero_shot: also score the directions between two
    trained non-hub languages (:func:`paperlab.nllb.data.zero_shot_directions`).
    """

    world: WorldConfig = WorldConfig()
    languages: tuple[str, ...] = tuple(c for c in LANGUAGES if c != HUB)
    max_len: int = 24
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    d_hidden: int = 128
    dropout: float = 0.0
    label_smoothing: float = 0.1
    ffn: str = "dense"
    n_experts: int = 8
    capacity_factor: float = 1.0
    eom_p: float = 0.0
    train: TrainConfig = NLLB_TRAIN
    temperature: float = 5.0
    curriculum_step: int = 0
    select: str = "last"
    test_zero_shot: bool = True

    def __post_init__(self):
        check_type(self, "world", WorldConfig)
        try:
            check_languages(self.languages)
        except ValueError as err:
            raise ValueError(f"RunConfig.languages: {err}") from None
        check_type(self, "train", TrainConfig)  # TrainConfig checks its own fields
        check_ints(self, "max_len", "d_model", "n_heads", "n_layers", "d_hidden", "n_experts")
        check_numbers(self, "temperature", "capacity_factor", low=0, open_low=True)
        check_ints(self, "curriculum_step", low=0, high=self.train.steps - 1)
        check_choice(self, "select", ("last", "best"))
        check_flags(self, "test_zero_shot")
        try:  # dropout, ffn, eom_p, heads, experts: the model's own rules (the vocabulary comes later)
            self.model_config(vocab_size=len(SPECIAL_TOKENS) + len(LANGUAGES))
        except ValueError as err:
            raise ValueError(f"RunConfig: {err}") from None

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(
            vocab_size=vocab_size,
            max_len=self.max_len,
            d_model=self.d_model,
            n_heads=self.n_heads,
            n_encoder_layers=self.n_layers,
            n_decoder_layers=self.n_layers,
            d_hidden=self.d_hidden,
            dropout=self.dropout,
            label_smoothing=self.label_smoothing,
            ffn=self.ffn,
            n_experts=self.n_experts,
            capacity_factor=self.capacity_factor,
            eom_p=self.eom_p,
        )

    @property
    def directions(self) -> list[tuple[str, str]]:
        return train_directions(self.languages)


# ----------------------------------------------------------------------------------------------------------
# Tokenised data and the user-facing translator
# ----------------------------------------------------------------------------------------------------------
class Translator:
    """Tokeniser + model: ``translate(sentences, source, target)`` with the checks a user needs.

    Bad input gets an error naming the problem: an unknown language, an empty sentence, a sentence longer
    than the model's ``max_len`` tokens (tag and ``<eos>`` included), a source equal to the target.
    """

    def __init__(self, model: Seq2Seq | None, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.max_len = model.config.max_len if model is not None else 32

    def tag_id(self, language: str) -> int:
        return self.tokenizer.token_to_id[tag(language)]

    def encode_source(self, sentence: str, source: str) -> list[int]:
        """``[<2src>, x_1 .. x_n, <eos>]`` for one sentence (checked)."""
        if not isinstance(sentence, str) or not sentence.strip():
            raise ValueError(f"empty source sentence {sentence!r}: nothing to translate")
        ids = [self.tag_id(source), *self.tokenizer.encode(sentence), self.tokenizer.eos_id]
        if len(ids) > self.max_len:
            raise ValueError(
                f"source sentence has {len(ids)} tokens with its tag and <eos>, more than "
                f"max_len = {self.max_len}: {sentence[:60]!r}"
            )
        return ids

    def encode_target(self, sentence: str, target: str) -> tuple[list[int], list[int]]:
        """(decoder input ``[<bos>, <2tgt>, y..]``, target ``[<2tgt>, y.., <eos>]``)."""
        ids = [self.tag_id(target), *self.tokenizer.encode(sentence)]
        if len(ids) + 1 > self.max_len:
            raise ValueError(f"target sentence has {len(ids) + 1} tokens, more than max_len = {self.max_len}")
        return [self.tokenizer.bos_id, *ids], [*ids, self.tokenizer.eos_id]

    def _check_direction(self, source: str, target: str) -> None:
        for role, code in (("source", source), ("target", target)):
            if code not in LANGUAGES:
                raise ValueError(f"unknown {role} language {code!r}; known languages: {', '.join(LANGUAGES)}")
        if source == target:
            raise ValueError(f"source and target language are both {source!r}")

    def translate(
        self,
        sentences: list[str],
        source: str,
        target: str,
        *,
        beam_size: int = 1,
        return_ids: bool = False,
        max_new: int | None = None,
    ):
        """Translate ``sentences`` from ``source`` to ``target``: greedy (``beam_size=1``) or beam search.
        Returns detokenised strings, or the token ids ``[<2tgt>, y..]`` with ``return_ids``."""
        self._check_direction(source, target)
        if isinstance(sentences, str):
            raise ValueError("sentences must be a list of strings, not a single str (wrap it in a list)")
        if not sentences:
            raise ValueError("sentences is empty: nothing to translate")
        rows = [self.encode_source(s, source) for s in sentences]
        device = next(self.model.parameters()).device
        src = _pad(rows, self.tokenizer.pad_id).to(device)
        tags = torch.full((len(rows),), self.tag_id(target), dtype=torch.long, device=device)
        decode = greedy_decode if beam_size == 1 else beam_search
        kwargs = {"max_new": max_new} if beam_size == 1 else {"beam_size": beam_size, "max_new": max_new}
        out = decode(
            self.model, src, tags, bos_id=self.tokenizer.bos_id, eos_id=self.tokenizer.eos_id, **kwargs
        )
        if return_ids:
            return out
        return [detokenize(self.tokenizer.decode(ids[1:])) for ids in out]


def _pad(rows: list[list[int]], pad_id: int, length: int | None = None) -> torch.Tensor:
    length = max(map(len, rows)) if length is None else length
    out = torch.full((len(rows), length), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def encode_pairs(translator: Translator, pairs: list[tuple[str, str]], direction: tuple[str, str]):
    """(source, decoder input, target) id tensors, right-padded, for the pairs of one direction."""
    src = [translator.encode_source(s, direction[0]) for s, _ in pairs]
    dec = [translator.encode_target(t, direction[1]) for _, t in pairs]
    pad = translator.tokenizer.pad_id
    return _pad(src, pad), _pad([d[0] for d in dec], pad), _pad([d[1] for d in dec], pad)


def _trim(batch: tuple[torch.Tensor, ...], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Cut trailing all-padding columns (source and target sides separately)."""
    src, dec, tgt = batch
    ls = int((src != pad_id).sum(1).max())
    lt = int((tgt != pad_id).sum(1).max())
    return src[:, :ls], dec[:, :lt], tgt[:, :lt]


# ----------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------
@torch.no_grad()
def validation_loss(model: Seq2Seq, data: tuple[torch.Tensor, ...], batch_size: int = 256) -> float:
    """Mean token cross-entropy (nats/token, no label smoothing) of ``model`` on (source, input, target)."""
    total, tokens = 0.0, 0
    device = next(model.parameters()).device
    pad = model.config.pad_id
    for i in range(0, data[0].shape[0], batch_size):
        src, dec, tgt = (t.to(device) for t in _trim(tuple(t[i : i + batch_size] for t in data), pad))
        per_sentence = model.loss(src, dec, tgt, reduction="sentence")
        n = (tgt[:, 1:] != pad).sum(1)
        total += float((per_sentence * n).sum())
        tokens += int(n.sum())
    return total / max(tokens, 1)


def score(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """chrF++ (``sacrebleu.CHRF(word_order=2)``) and BLEU of a corpus, both in [0, 100]."""
    return {
        "chrf": sacrebleu.CHRF(word_order=2).corpus_score(hypotheses, [references]).score,
        "bleu": sacrebleu.BLEU().corpus_score(hypotheses, [references]).score,
    }


@torch.no_grad()
def routing_by_language(model: Seq2Seq, translator: Translator, world, languages: tuple[str, ...]) -> dict:
    """Expert usage per language on the validation sets (teacher forcing, eval mode).

    Encoder MoE layers are read on ``language -> hub`` (tokens of the source language ``language``), decoder
    MoE layers on ``hub -> language`` (tokens generated in ``language``); the hub's own tokens are read from
    the ``hub -> x`` / ``x -> hub`` sides. Returns ``{layer: {language: fraction of real tokens whose first
    choice is expert e, for e < E}}`` and the dropped fraction per layer.
    """
    layers = model.moe_layers()
    if not layers:
        return {}
    model.eval()
    counts = {name: {} for name in layers}
    dropped = {name: [] for name in layers}
    for code in (*languages, HUB):
        others = [c for c in languages if c != code] if code == HUB else [HUB]
        for direction in [(code, o) for o in others] + [(o, code) for o in others]:
            data = encode_pairs(translator, world.pairs(*direction, split="valid"), direction)
            src, dec, tgt = _trim(data, translator.tokenizer.pad_id)
            model(src, dec)
            for name, layer in layers.items():
                side_language = direction[0] if name.startswith("encoder") else direction[1]
                if side_language != code:
                    continue
                record = layer.last
                first = record["expert_index"][:, 0][record["valid"]]
                c = torch.bincount(first.cpu(), minlength=layer.n_experts).double()
                counts[name][code] = counts[name].get(code, 0) + c
                dropped[name].append(record["dropped"])
    usage = {name: {code: (c / c.sum()).tolist() for code, c in per.items()} for name, per in counts.items()}
    return {"usage": usage, "eval_dropped": {name: sum(v) / len(v) for name, v in dropped.items()}}


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------
def build_model(run: RunConfig, vocab_size: int) -> Seq2Seq:
    torch.manual_seed(run.train.seed)
    return Seq2Seq(run.model_config(vocab_size))


def train_run(run: RunConfig, device: str | torch.device | None = "cpu") -> tuple[Seq2Seq, Translator, dict]:
    """Train the model of ``run``; returns (model on the CPU in eval mode, translator, JSON-able record)."""
    with cpu_threads(1, device=device or "cpu"):  # small models: one thread is faster than two busy cores
        return _train_run(run, device)


def _train_run(run: RunConfig, device) -> tuple[Seq2Seq, Translator, dict]:
    """The three steps of the module docstring: tokenise, train (with validation and MoE logs), score."""
    world = make_world(run.world)
    tokenizer = build_tokenizer(world)
    model = build_model(run, tokenizer.vocab_size)
    translator = Translator(model, tokenizer)
    directions = run.directions
    get_batch = _direction_sampler(run, [encode_pairs(translator, world.pairs(*d), d) for d in directions],
                                   directions, tokenizer.pad_id)
    validation = _Validation({_name(d): encode_pairs(translator, world.pairs(*d, split="valid"), d)
                              for d in directions})
    select = BestWeights(validation, score=_Validation.mean) if run.select == "best" else None
    low = [d for d in directions if d[0] in LOW or d[1] in LOW]
    low_best = BestWeights(select or validation, score=_Validation.low_mean) if low else None
    eval_fn = low_best or select or validation
    moe_log = _MoELog()
    result = train(model, get_batch, lambda m, b: m.loss(*b), run.train, eval_fn=eval_fn, device=device,
                   desc=f"NLLB {run.ffn} {'+'.join(run.languages)}", on_step=moe_log)
    low_record = None
    if low_best is not None:  # the low-resource directions at their own best validation checkpoint
        kept = {k: v.detach().clone() for k, v in model.state_dict().items()}
        low_step = low_best.restore(model, result)
        model.eval()
        low_record = {"step": low_step, "test": _test_scores(run, translator, world, low, zero_shot=False)}
        model.load_state_dict(kept)
    best_step = select.restore(model, result) if select is not None else run.train.steps
    model.eval()
    test = _test_scores(run, translator, world, directions)
    model.cpu()
    translator.model = model
    null = _initial_gates(model, run, tokenizer.vocab_size)
    return model, translator, {
        "history": result.to_dict(),
        "moe_log": moe_log.record,
        "test": test,
        "low_best": low_record,
        "routing": routing_by_language(model, translator, world, run.languages),
        "routing_initial_gate": routing_by_language(null, Translator(null, tokenizer), world, run.languages),
        "best_step": best_step,
        "parameters": sum(p.numel() for p in model.parameters()),
        "directions": [_name(d) for d in directions],
        "seconds": result.seconds,
    }


def _initial_gates(model: Seq2Seq, run: RunConfig, vocab_size: int) -> Seq2Seq:
    """The routing null: a copy of the trained ``model`` whose MoE gates ``W_g`` are put back to their
    initial weights (same seed), eval mode. The rest of the network stays trained, so whatever the trained
    embeddings and layers already do to separate languages is in the null too; only what training the
    gate added is not."""
    null = build_model(run, vocab_size)
    initial = {name: layer.gate.weight.detach().clone() for name, layer in null.moe_layers().items()}
    null.load_state_dict(model.state_dict())
    with torch.no_grad():
        for name, layer in null.moe_layers().items():
            layer.gate.weight.copy_(initial[name])
    return null.eval()


def _direction_sampler(run: RunConfig, data: list[tuple[torch.Tensor, ...]], directions: list, pad_id: int):
    """``get_batch(step, rank, world_size)`` over the pairs of every direction in ``data``: each example's
    direction is drawn with **temperature sampling**, ``P(d) ~ n_d^(1/T)``, and with a curriculum the
    low-resource directions get probability 0 until step ``curriculum_step``; then a pair of that
    direction, uniformly. Random numbers from :func:`paperlab.train.batch_generator`."""
    sizes = torch.tensor([d[0].shape[0] for d in data], dtype=torch.float64)  # n_d
    src_all, dec_all, tgt_all = (_concatenate([d[i] for d in data]) for i in range(3))
    offsets = torch.cat([torch.zeros(1, dtype=torch.float64), sizes.cumsum(0)[:-1]])
    weight = sizes ** (1.0 / run.temperature)  # n_d^(1/T)
    low = torch.tensor([(d[0] in LOW or d[1] in LOW) for d in directions])
    start_low = run.curriculum_step
    probs_all = weight / weight.sum()
    probs_late = torch.where(low, 0.0, weight)  # before start_low: low-resource directions get none
    probs_early = probs_late / probs_late.sum() if bool((~low).any()) else probs_all
    batch_size = run.train.batch_size

    def get_batch(step: int, rank: int, world_size: int):
        generator = batch_generator(run.train.seed, step, rank)
        probs = probs_early if step <= start_low else probs_all
        which = torch.multinomial(probs, batch_size, replacement=True, generator=generator)
        uniform = torch.rand(batch_size, generator=generator, dtype=torch.float64)
        index = (offsets[which] + (uniform * sizes[which]).floor()).long()  # a pair of direction `which`
        return _trim((src_all[index], dec_all[index], tgt_all[index]), pad_id)

    return get_batch


def _concatenate(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Right-padded id tensors of several directions stacked into one, padded to the widest (pad id 0)."""
    width = max(t.shape[1] for t in tensors)
    return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in tensors])


class _Validation:
    """The ``eval_fn`` of a run: validation loss per direction (with ``select="best"`` wrapped in
    :class:`paperlab.train.BestWeights`, which keeps the weights of the lowest mean loss)."""

    def __init__(self, valid: dict[str, tuple[torch.Tensor, ...]]) -> None:
        self.valid = valid

    def __call__(self, model: Seq2Seq) -> dict[str, float]:
        return {f"val/{name}": validation_loss(model, v) for name, v in self.valid.items()}

    @staticmethod
    def mean(losses: dict[str, float]) -> float:
        """The score ``select="best"`` minimises: the mean validation loss over the trained directions."""
        return sum(losses.values()) / len(losses)

    @staticmethod
    def low_mean(losses: dict[str, float]) -> float:
        """The score of the ``low_best`` checkpoint: the mean validation loss over the trained directions
        with a low-resource language on either side (for a bilingual baseline, all of them)."""
        low = [v for k, v in losses.items() if any(x in LOW for x in k.removeprefix("val/").split("-"))]
        return sum(low) / len(low)


class _MoELog:
    """The ``on_step`` of a run: per step, the cross-entropy and the MoE layers' mean ``l_aux``, dropped
    fractions and (CMoE) mean gate."""

    def __init__(self) -> None:
        self.record = {"step": [], "l_aux": [], "dropped": [], "dropped_tokens": [], "ce": [], "gate": []}

    def __call__(self, step: int, model: Seq2Seq) -> None:
        log = self.record
        log["step"].append(step)
        log["ce"].append(model.last_losses.get("ce", float("nan")))
        layers = list(model.moe_layers().values())
        if layers:
            for key in ("l_aux", "dropped", "dropped_tokens"):
                log[key].append(sum(layer.last[key] for layer in layers) / len(layers))
        gates = [b.ffn.ffn.last_gate for b in (*model.encoder, *model.decoder) if b.ffn.kind == "cmoe"]
        if gates:
            log["gate"].append(sum(gates) / len(gates))


def _test_scores(run: RunConfig, translator: Translator, world, directions: list,
                 zero_shot: bool = True) -> dict:
    """Per direction of the test set (``directions``, and the zero-shot directions between trained
    languages when ``zero_shot`` and ``run.test_zero_shot``): the test loss (nats/token, teacher forcing),
    chrF++ and BLEU of greedy translations, three examples; for zero-shot directions also
    ``shifted_loss``, the loss of the same sources against the references shifted by one sentence (right
    language, wrong meaning): the null that the true references' loss is compared with."""
    unseen = zero_shot_directions(run.languages) if zero_shot and run.test_zero_shot else []
    test = {}
    for d in list(directions) + unseen:
        pairs = world.pairs(*d, split="test")
        hypotheses = translator.translate([s for s, _ in pairs], *d)
        test[_name(d)] = {
            **score(hypotheses, [t for _, t in pairs]),
            "loss": validation_loss(translator.model, encode_pairs(translator, pairs, d)),
            "zero_shot": d not in directions,
            "examples": [[s, h, t] for (s, t), h in list(zip(pairs, hypotheses))[:3]],
        }
        if d not in directions:
            shifted = [(s, t) for (s, _), (_, t) in zip(pairs, pairs[1:] + pairs[:1])]
            test[_name(d)]["shifted_loss"] = validation_loss(translator.model,
                                                             encode_pairs(translator, shifted, d))
    return test


ARTIFACT_KEYS = cache.has_keys("state_dict", "record")  # a stored artifact without them is corrupt
_MEMO: dict[RunConfig, dict] = {}  # artifacts of this process (needed when the disk cache is disabled)


def run_cached(run: RunConfig, device: str | torch.device | None = "cpu") -> dict:
    """``{"state_dict": ..., "record": ...}`` for ``run``, from the artifact cache (trained on ``device`` if
    missing; the weights come back on the CPU)."""
    if run in _MEMO:
        return _MEMO[run]

    def compute():
        model, _, record = train_run(run, device)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return {"state_dict": state, "record": record}

    _MEMO[run] = cache.cached("nllb-run", run, compute, seed=run.train.seed, check=ARTIFACT_KEYS)
    return _MEMO[run]


def prefetch(runs: list[RunConfig], workers: int = 2, device: str | torch.device | None = "cpu") -> None:
    """Train the runs that are neither in this process nor in the disk cache, ``workers`` at a time in
    separate processes (:func:`paperlab.utils.parallel_map`: one CPU thread each, so two workers use two
    cores), longest first. On a GPU (``device`` not the CPU) the runs train one after the other here."""
    missing = []
    disabled = cache.disabled()
    for run in dict.fromkeys(runs):
        if run in _MEMO:
            continue
        key = ("nllb-run", run, run.train.seed, (__name__,), ARTIFACT_KEYS)
        found, value = (False, None) if disabled else cache.lookup(*key)
        if found:
            _MEMO[run] = value
        else:
            missing.append(run)
    if torch.device(device or "cpu").type != "cpu":
        for run in missing:
            run_cached(run, device)
        return
    missing.sort(key=lambda r: -r.train.steps)
    artifacts = parallel_map(run_cached, [(run,) for run in missing], workers=workers, desc="NLLB runs")
    _MEMO.update(zip(missing, artifacts))


def load_run(run: RunConfig) -> tuple[Translator, dict]:
    """The trained model of ``run`` wrapped in a :class:`Translator` (eval mode, CPU), and its record."""
    artifact = run_cached(run)
    tokenizer = build_tokenizer(make_world(run.world))
    model = build_model(run, tokenizer.vocab_size)
    model.load_state_dict(artifact["state_dict"])
    return Translator(model.eval(), tokenizer), artifact["record"]


def replace(run: RunConfig, **changes) -> RunConfig:
    """``dataclasses.replace`` for run configs."""
    return dataclasses.replace(run, **changes)
