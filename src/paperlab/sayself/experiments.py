"""The SaySelf chapter's experiment: pretrain the toolkit's GPT on the knowledge world, then run SaySelf
and its baselines for each seed, and measure accuracy and calibration in and out of distribution.

1. :func:`load_base` pretrains one GPT on the world's corpus (the stand-in for the paper's Mistral-7B:
   fixed, like the paper's base model, for every seed); cached.
2. :func:`run_branch`, for each seed and each of the four independent :data:`BRANCHES` (all of them side
   by side, one job per core, longest first; each cached):

   - Stage 1: ``N`` chains per training question from the base model (through :class:`paperlab.llm.TinyLM`;
     :func:`stage1_samples`, cached once per seed and read by the seed's other jobs), consistency
     confidence and rationale (:func:`paperlab.sayself.method.stage1`);
   - supervised fine-tuning of three models from the base: **SaySelf** (reasoning, answer, rationale,
     confidence), **no rationale** (the ablation), and the **plain SFT** baseline (gold chains stated
     with confidence 10: no consistency target), each in its own branch;
   - Stage 2 (REINFORCE on the confidence tokens, :class:`paperlab.align.PolicyGradient`) from the SaySelf
     and the no-rationale models; the Stage-1 models are the "without RL" ablations;
   - evaluation by greedy decoding on the in-distribution test questions (kinds ``born_in``, ``works_for``,
     ``born_country`` about test people) and the out-of-distribution ones (``employer_city``), and
     **self-consistency** at test time (``N`` samples of the base model per question, majority answer,
     vote share as the confidence: the expensive reference);
   - faithfulness of the SaySelf model's rationales: do the values a rationale names occur among the
     model's own ``N`` samples for that question, compared with another question's rationale (shuffled).
3. :func:`run_seed`'s assembly: each seed's branches merged into one record per seed.

Everything returned is JSON (numbers, strings, lists); the chapter computes the metrics from it.
"""

from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass, field

import numpy as np

from paperlab import align, cache, llm
from paperlab.config import check_ints, check_numbers, check_seeds, check_that, check_type
from paperlab.experiments import Experiment
from paperlab.nn import GPT, count_parameters
from paperlab.sayself import method
from paperlab.sayself.base import BaseConfig, corpus_ids, load_base, make_model
from paperlab.sayself.calibration import auroc, binned_ece, parse, unbinned_ece
from paperlab.sayself.world import ID_KINDS, OOD_KINDS, Question, World, WorldConfig
from paperlab.train import TrainConfig, TrainResult, auto_device, check_convergence_evaluations, train
from paperlab.utils import cpu_threads, parallel_map

__all__ = ["SaySelfConfig", "CONFIGS", "EXPERIMENT", "BRANCHES", "stage1_samples", "run_branch", "run_seed",
           "run", "METHODS", "TABLE_METHODS", "evaluate", "self_consistency", "faithfulness", "metrics"]

# method name -> (model it is evaluated with, description)
METHODS = {
    "plain SFT": "fine-tuned on the gold chains, every answer stated with confidence 10",
    "self-consistency": "the base model, N samples per test question; majority answer, vote share",
    "SaySelf w/o RL": "Stage 1 only: fine-tuned on consistency confidence and rationales",
    "SaySelf w/o rationale": "Stage 1 without rationales, then Stage 2",
    "SaySelf": "Stage 1 (consistency confidence, rationales), then Stage 2 (RL on the confidence)",
}


@dataclass(frozen=True)
class SaySelfConfig:
    """Everything that determines the chapter's runs (and so their cache keys).

    - ``base``: the knowledge world, the GPT and its pretraining (:class:`paperlab.sayself.base.BaseConfig`).
    - ``n_samples``: N, the chains sampled per question (Stage 1, self-consistency, faithfulness);
      ``temperature``: their sampling temperature.
    - ``sft``: Stage-1 fine-tuning (the same for SaySelf, its ablation and the plain baseline);
      ``sft_val_fraction``: the share of training people whose questions are held out to measure its
      validation loss; ``replay_windows``: windows of the pretraining corpus in each fine-tuning batch
      (:func:`paperlab.sayself.method.fine_tune`).
    - ``rl``: Stage-2 training (``rl.batch_size`` = ``rl_prompts * rl_samples``); ``rl_prompts`` prompts
      per step, ``rl_samples`` responses each (leave-one-out baseline); ``kl_coef``: beta of the KL
      penalty to the Stage-1 model, on the confidence tokens.
    - ``seeds``: one run of every fine-tuning stage per seed.
    """

    base: BaseConfig = field(default_factory=BaseConfig)
    n_samples: int = 10
    temperature: float = 1.0
    sft: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=200, batch_size=32, lr=1e-3, warmup_steps=20, eval_every=20))
    sft_val_fraction: float = 0.1
    replay_windows: int = 8
    rl: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=100, batch_size=64, lr=1e-4, warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.0))
    rl_prompts: int = 16
    rl_samples: int = 4
    kl_coef: float = 0.05
    seeds: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self) -> None:
        check_type(self, "base", BaseConfig)
        check_type(self, "sft", TrainConfig)
        check_type(self, "rl", TrainConfig)
        if isinstance(self.n_samples, bool) or not isinstance(self.n_samples, int) or self.n_samples < 2:
            raise ValueError(f"SaySelfConfig.n_samples (N) must be an integer >= 2: consistency compares "
                             f"several samples, got {self.n_samples!r}")
        check_seeds(self)
        check_numbers(self, "temperature", low=0, open_low=True)
        check_numbers(self, "sft_val_fraction", low=0, high=1, open_low=True, open_high=True)
        check_numbers(self, "kl_coef", low=0)
        check_ints(self, "replay_windows", low=0)
        check_ints(self, "rl_prompts")
        check_ints(self, "rl_samples", low=2)  # the leave-one-out baseline needs another response
        if self.rl.batch_size != self.rl_prompts * self.rl_samples:
            raise ValueError(f"SaySelfConfig.rl.batch_size ({self.rl.batch_size}) must be rl_prompts * "
                             f"rl_samples = {self.rl_prompts * self.rl_samples}")


CONFIGS = {
    "fast": SaySelfConfig(
        base=BaseConfig(world=WorldConfig(n_people=120, qa_per_kind=30, qa_ood_per_kind=10),
                        train=TrainConfig(steps=200, batch_size=32, lr=3e-3, warmup_steps=20, eval_every=50)),
        n_samples=4,
        sft=TrainConfig(steps=40, batch_size=16, lr=1e-3, warmup_steps=5, eval_every=10), replay_windows=4,
        rl=TrainConfig(steps=8, batch_size=16, lr=3e-4, warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.0),
        rl_prompts=8, rl_samples=2, seeds=(0, 1, 2),
    ),
    "full": SaySelfConfig(),
}


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------
def evaluate(model: llm.LLM, questions: list[Question], *, needs_reflection: bool,
             ask_confidence: bool = True) -> dict:
    """Greedy answers to ``questions``: per question the answer's correctness, the stated confidence, whether
    the response was well formed, whether its confidence had to be asked for (``forced``), the rationale
    and the response text.

    As in the authors' evaluation, a response that stops without ``confidence:`` is continued from
    ``<response> confidence:`` to get one (the authors first resample, which greedy decoding cannot
    vary); a confidence still missing or malformed counts as 0, as in their parser. ``ask_confidence=False``
    skips that (for the base model, which was never taught to state one)."""
    outs = model.complete([q.prompt for q in questions], n=1, temperature=0, max_tokens=method.MAX_NEW_TOKENS)
    texts = [completion.text for (completion,) in outs]
    missing = [i for i, text in enumerate(texts) if "confidence:" not in text] if ask_confidence else []
    forced: dict[int, str] = {}  # question -> the confidence text it gave when asked
    if missing:
        asked = model.complete([f"{questions[i].prompt} {texts[i]} confidence:" for i in missing], n=1,
                               temperature=0, max_tokens=2)
        forced = {i: c.text.strip() for i, (c,) in zip(missing, asked)}
    records = {"correct": [], "confidence": [], "well_formed": [], "forced": [], "reflection": [], "text": []}
    for i, q in enumerate(questions):
        fields = parse(texts[i], needs_reflection=needs_reflection)
        confidence = fields.confidence
        if i in forced and re.fullmatch(r"10|[1-9]", forced[i]):
            confidence = int(forced[i])
        records["correct"].append(method.correct(q, fields.answer))
        records["confidence"].append(confidence or 0)
        records["well_formed"].append(fields.well_formed)
        records["forced"].append(i in forced)
        records["reflection"].append(fields.reflection)
        records["text"].append(texts[i] + (f" confidence: {forced[i]}" if i in forced else ""))
    return records


def self_consistency(chains: list[list[method.Chain]], questions: list[Question]) -> dict:
    """Test-time self-consistency from ``N`` sampled chains per question: the majority answer and its vote
    share as the confidence (on the same 1..10 scale)."""
    records = {"correct": [], "confidence": [], "well_formed": []}
    for q, samples in zip(questions, chains):
        clusters = method.cluster([c.answer for c in samples])
        answer, size = clusters[0] if clusters else (None, 0)
        records["correct"].append(method.correct(q, answer))
        records["confidence"].append(method.consistency_confidence(size, len(samples)))
        records["well_formed"].append(answer is not None)
    return records


def faithfulness(reflections: list[str | None], chains: list[list[method.Chain]], questions: list[Question],
                 seed: int) -> dict:
    """For each rationale that names values (``"i am unsure ...: A or B"``), the fraction of its named
    values that occur among the first-hop entities of the model's own samples for that question; and the
    same for a rationale of another question of the same kind (a random derangement within each kind):
    the shuffled control."""
    sampled = [{c.hops[0] for c in samples} for samples in chains]
    named = [method.named_values(r) for r in reflections]
    rng = random.Random(seed)
    partner: list[int | None] = [None] * len(questions)
    for kind in sorted({q.kind for q in questions}):
        members = [i for i, q in enumerate(questions) if q.kind == kind]
        rng.shuffle(members)
        if len(members) > 1:  # a cyclic shift of a random order: nobody keeps their own rationale
            for i, j in zip(members, members[1:] + members[:1]):
                partner[i] = j
    own, control = [], []
    for i, names in enumerate(named):
        if names:
            own.append(sum(v in sampled[i] for v in names) / len(names))
        other = named[partner[i]] if partner[i] is not None else []
        if other:
            control.append(sum(v in sampled[i] for v in other) / len(other))
    return {"own": own, "shuffled": control, "n_named": sum(bool(n) for n in named), "n": len(named)}


# --------------------------------------------------------------------------------------------------
# One seed: Stage 1, fine-tuning, Stage 2, evaluation
# --------------------------------------------------------------------------------------------------
def _sft(base: GPT, world: World, examples, val_examples, config: SaySelfConfig, seed: int, device,
         desc: str) -> tuple[GPT, TrainResult]:
    model = make_model(config.base, world.tokenizer.vocab_size)
    model.load_state_dict(base.state_dict())
    history = method.fine_tune(model, world.tokenizer, examples, dataclasses.replace(config.sft, seed=seed),
                               val_examples, replay=corpus_ids(world), replay_windows=config.replay_windows,
                               device=device, desc=desc)
    return model.eval(), history


def _rl(sft_model: GPT, world: World, questions: list[Question], config: SaySelfConfig, seed: int, device,
        *, needs_reflection: bool, desc: str) -> tuple[GPT, TrainResult, list[dict]]:
    tok = world.tokenizer
    prompts = [tok.encode(q.prompt, add_bos=True) for q in questions]
    by_prompt = {tuple(p): q for p, q in zip(prompts, questions)}
    pg = align.PolicyGradient(
        sft_model, prompts, method.reward_fn(tok, by_prompt, needs_reflection=needs_reflection),
        align.PolicyGradientConfig(prompts_per_step=config.rl_prompts, n_samples=config.rl_samples,
                                   max_new_tokens=method.MAX_NEW_TOKENS, kl_coef=config.kl_coef,
                                   use_cache=True),
        eos_id=tok.eos_id, pad_id=tok.pad_id, seed=seed,
        optimise=lambda prompt, response: method.confidence_span(tok, response))
    policy = make_model(config.base, tok.vocab_size)
    policy.load_state_dict(sft_model.state_dict())
    log: list[dict] = []
    history = train(policy, pg.get_batch(policy), pg.loss_fn, dataclasses.replace(config.rl, seed=seed),
                    device=device, desc=desc, on_step=lambda step, m: log.append({"step": step, **pg.last}))
    return policy.eval(), history, log


def _split(records: dict, n_id: int) -> tuple[dict, dict]:
    return ({k: v[:n_id] for k, v in records.items()}, {k: v[n_id:] for k, v in records.items()})


@dataclass(frozen=True)
class _Seed:
    """What every job of one seed shares, rebuilt in each job from the world and the cached Stage-1
    samples: the base model, the Stage-1 items split into those fine-tuned on (``fit``) and those held out
    for the validation loss (``held``), and the test questions."""

    base: GPT
    world: World
    train_questions: list[Question]
    val_people: set[str]
    items: list[method.Stage1]
    test_id: list[Question]
    test_ood: list[Question]

    @property
    def fit(self) -> list[method.Stage1]:
        return [item for item in self.items if item.question.person not in self.val_people]

    @property
    def held(self) -> list[method.Stage1]:
        return [item for item in self.items if item.question.person in self.val_people]

    @property
    def test(self) -> list[Question]:
        return self.test_id + self.test_ood


@cpu_threads(1)
def _stage1_samples(seed: int, config: SaySelfConfig, device) -> list[list[str]]:
    """Stage 1's sampling: ``N`` chains per training question from the base model (the response texts)."""
    base, world, _ = load_base(config.base, device)
    base_llm = llm.TinyLM(base, world.tokenizer, seed=seed, use_cache=True, logprobs=False)
    questions = method.world_questions(world, ID_KINDS, world.train_people)
    chains = method.sample_chains(base_llm, questions, config.n_samples, temperature=config.temperature)
    return [[c.text for c in samples] for samples in chains]


def stage1_samples(seed: int, config: SaySelfConfig, device=None) -> list[list[str]]:
    """:func:`_stage1_samples` through the artifact cache (one entry per seed)."""
    return cache.cached("sayself-stage1", config, lambda: _stage1_samples(seed, config, device), seed=seed)


def _seed_data(seed: int, config: SaySelfConfig, device) -> _Seed:
    base, world, _ = load_base(config.base, device)
    train_questions = method.world_questions(world, ID_KINDS, world.train_people)
    texts = stage1_samples(seed, config, device)
    chains = [[method.read_chain(q, t) for t in samples] for q, samples in zip(train_questions, texts)]
    people = list(world.train_people)
    random.Random(seed).shuffle(people)  # the people held out for the SFT validation loss differ per seed
    val_people = set(people[:max(1, round(config.sft_val_fraction * len(people)))])
    return _Seed(base, world, train_questions, val_people, method.stage1(train_questions, chains),
                 method.world_questions(world, ID_KINDS, world.test_people),
                 method.world_questions(world, OOD_KINDS, world.test_people))


def _evaluate_model(data: _Seed, model: GPT, seed: int, *, needs_reflection: bool) -> tuple[dict, float]:
    """Greedy evaluation on the test questions, split in and out of distribution, and the generated tokens
    per question."""
    tiny = llm.TinyLM(model, data.world.tokenizer, seed=seed, use_cache=True, logprobs=False)
    records = evaluate(tiny, data.test, needs_reflection=needs_reflection)
    per_question = tiny.usage.generated_tokens / len(data.test)
    return dict(zip(("id", "ood"), _split(records, len(data.test_id)))), per_question


def _sft_summary(history: TrainResult) -> dict:
    return {"steps": [e["step"] for e in history.evals], "val_loss": [e["val_loss"] for e in history.evals],
            **history.convergence("val_loss").record()}


# branch -> (the SFT model's name, the RL model's name or None, with rationale); the base model's branch
# ("base model") fine-tunes nothing
BRANCHES = {
    "SaySelf": ("SaySelf w/o RL", "SaySelf", True),
    "no rationale": ("no rationale, w/o RL", "SaySelf w/o rationale", False),
    "plain SFT": ("plain SFT", None, False),
    "base model": (None, None, False),
}


@cpu_threads(1)
def _run_branch(seed: int, branch: str, config: SaySelfConfig, device) -> dict:
    """One seed's models of one ``branch`` of :data:`BRANCHES`, trained and evaluated:

    - ``"SaySelf"`` and ``"no rationale"``: Stage-1 SFT (with or without rationales), Stage 2 (RL on the
      confidence), greedy evaluation of both; for SaySelf also the faithfulness of both models' rationales;
    - ``"plain SFT"``: the baseline's SFT and its evaluation;
    - ``"base model"``: the base model's greedy answers and test-time self-consistency.
    """
    out: dict = {"results": {}, "usage": {}, "faithfulness": {}, "rl": {}, "sft": {}}
    if branch == "base model":  # needs no Stage-1 samples
        base, world, _ = load_base(config.base, device)
        test_id = method.world_questions(world, ID_KINDS, world.test_people)
        test = test_id + method.world_questions(world, OOD_KINDS, world.test_people)
        base_llm = llm.TinyLM(base, world.tokenizer, seed=seed, use_cache=True, logprobs=False)
        greedy = evaluate(base_llm, test, needs_reflection=False, ask_confidence=False)
        out["results"]["base model, greedy"] = dict(zip(("id", "ood"), _split(greedy, len(test_id))))
        before = base_llm.usage.copy()
        chains = method.sample_chains(base_llm, test, config.n_samples, temperature=config.temperature)
        out["usage"]["self-consistency"] = (base_llm.usage - before).generated_tokens / len(test)
        out["results"]["self-consistency"] = dict(zip(("id", "ood"), _split(self_consistency(chains, test),
                                                                              len(test_id))))
        return out
    data = _seed_data(seed, config, device)  # Stage 1's samples: from the cache, or sampled here
    tok = data.world.tokenizer
    sft_name, rl_name, with_rationale = BRANCHES[branch]
    if branch == "plain SFT":
        examples = method.plain_examples([q for q in data.train_questions if q.person not in data.val_people])
        val = method.plain_examples([q for q in data.train_questions if q.person in data.val_people])
    else:
        examples = method.sayself_examples(data.fit, with_rationale=with_rationale)
        val = method.sayself_examples(data.held, with_rationale=with_rationale)
    models = {}
    models[sft_name], history = _sft(data.base, data.world, examples, val, config, seed, device,
                                     f"SFT ({sft_name})")
    out["sft"][sft_name] = _sft_summary(history)
    if rl_name is not None:  # Stage 2: RL on the confidence tokens
        models[rl_name], _, out["rl"][rl_name] = _rl(
            models[sft_name], data.world, [item.question for item in data.fit], config, seed, device,
            needs_reflection=with_rationale, desc=f"RL ({rl_name})")
    for name, model in models.items():
        out["results"][name], out["usage"][name] = _evaluate_model(data, model, seed,
                                                                   needs_reflection=with_rationale)
    if branch == "SaySelf":  # faithfulness: the model's own N samples for each in-distribution question
        for name, model in models.items():
            sampler = llm.TinyLM(model, tok, seed=seed + 1, use_cache=True, logprobs=False)
            own = method.sample_chains(sampler, data.test_id, config.n_samples,
                                       temperature=config.temperature)
            out["faithfulness"][name] = faithfulness(out["results"][name]["id"]["reflection"], own,
                                                     data.test_id, seed)
    return out


def run_branch(seed: int, branch: str, config: SaySelfConfig, device=None) -> dict:
    """:func:`_run_branch` through the artifact cache (one entry per seed and branch)."""
    if branch not in BRANCHES:
        raise ValueError(f"unknown branch {branch!r}; choose one of {', '.join(BRANCHES)}")
    return cache.cached(f"sayself-{branch.replace(' ', '-')}", config,
                        lambda: _run_branch(seed, branch, config, device), seed=seed)


def run_seed(seed: int, config: SaySelfConfig, device=None) -> dict:
    """Every method for one seed, one branch after another (:func:`run` runs the branches of every seed
    side by side), with Stage 1's summary: the JSON the chapter reads."""
    return _assemble(seed, config, device, [run_branch(seed, b, config, device) for b in BRANCHES])


def _assemble(seed: int, config: SaySelfConfig, device, branches: list[dict]) -> dict:
    out: dict = {"seed": seed}
    for key in ("results", "usage", "faithfulness", "rl", "sft"):
        out[key] = {name: value for branch in branches for name, value in branch[key].items()}
    data = _seed_data(seed, config, device)
    out["stage1"] = {"confidence": [item.confidence for item in data.items],
                     "correct": [method.correct(item.question, item.chosen.answer) for item in data.items],
                     "n_clusters": [len(item.clusters) for item in data.items],
                     "unsure": [bool(method.named_values(item.rationale)) for item in data.items],
                     "examples": method.sayself_examples(data.items[:6])}
    return out


TABLE_METHODS = ("plain SFT", "self-consistency", "SaySelf w/o RL", "SaySelf w/o rationale", "SaySelf")


def metrics(records: dict) -> dict:
    """Accuracy, binned ECE (ten bins, :func:`paperlab.sayself.calibration.binned_ece`), AUROC, the
    authors' unbinned ECE, mean stated confidence and the share of confidences that had to be asked for,
    from one method's records on one split (confidence on the 1..10 scale)."""
    confidence = np.asarray(records["confidence"], dtype=float) / 10
    correct = np.asarray(records["correct"], dtype=float)
    return {"accuracy": float(correct.mean()), "ece": binned_ece(confidence, correct),
            "auroc": auroc(confidence, correct), "unbinned_ece": unbinned_ece(confidence, correct),
            "confidence": float(confidence.mean()), "forced": float(np.mean(records.get("forced", [False])))}


def describe_questions(questions: list[Question]) -> dict:
    """The kind and the pretraining mentions of each question (for the chapter's per-question plots)."""
    return {"kind": [q.kind for q in questions], "mentions": [q.mentions for q in questions]}


def run(config: SaySelfConfig, device=None) -> dict:
    """The base model (pretrained once); Stage 1's samples for every seed; then every branch of every seed
    (:func:`run_branch`), two jobs at a time (one per core; one after another on a GPU), assembled per
    seed as :func:`run_seed` does. JSON-able."""
    check_runnable(config)
    device = None if device is None else str(auto_device(device))
    base, world, history = load_base(config.base, device)
    workers = 1 if device is not None and device.startswith("cuda") else None
    # every (seed, branch) job on both cores, longest branches first; a seed's first job samples its Stage 1
    # (cached), the later ones read it (seeds alternate, so two jobs of one seed rarely start together)
    jobs = [(seed, branch, config, device) for branch in BRANCHES for seed in config.seeds]
    done = parallel_map(run_branch, jobs, workers=workers, desc="SaySelf seeds and branches")
    seeds = [_assemble(seed, config, device, [r for (s, *_), r in zip(jobs, done) if s == seed])
             for seed in config.seeds]
    test_id = world.questions(ID_KINDS, world.test_people)
    test_ood = world.questions(OOD_KINDS, world.test_people)
    return {
        "n_parameters": count_parameters(base),
        "vocab_size": world.tokenizer.vocab_size,
        "corpus_documents": len(world.corpus),
        "corpus_tokens": int(corpus_ids(world).numel()),
        "pretrain": {"steps": [e["step"] for e in history.evals],
                     "corpus_loss": [e["corpus_loss"] for e in history.evals],
                     **history.convergence("corpus_loss").record(),
                     "seconds": history.seconds},
        "questions": {"id": describe_questions(test_id), "ood": describe_questions(test_ood)},
        "seeds": seeds,
    }


def check_runnable(config: SaySelfConfig) -> None:
    """What :func:`run` needs beyond a valid config: >= 3 seeds (the scorecard's intervals over seeds) and
    >= 5 evaluations in the pretraining and in Stage-1 fine-tuning (their convergence checks); a
    ValueError before any training (``python -m paperlab run`` calls it up front)."""
    check_that(config, len(config.seeds) >= 3, "seeds", "a tuple of >= 3 seeds (95% intervals over seeds)")
    check_convergence_evaluations(config, "base", config.base.train)
    check_convergence_evaluations(config, "sft", config.sft)


EXPERIMENT = Experiment(name="sayself", chapter="book/09-sayself.md", configs=CONFIGS, run=run,
                        check=check_runnable)
