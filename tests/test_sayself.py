"""paperlab.sayself: the reward and calibration metrics against their definitions, the output parser,
Stage 1 (clusters, consistency confidence, rationales), the confidence-only RL mask, the knowledge world,
and errors for bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from paperlab import align, llm
from paperlab.nn import GPT, GPTConfig
from paperlab.sayself import calibration, experiments, method
from paperlab.sayself.calibration import binned_ece, parse, reward
from paperlab.sayself.world import ID_KINDS, OOD_KINDS, World, WorldConfig

SMALL = WorldConfig(n_people=40, qa_per_kind=5, qa_ood_per_kind=2)


@pytest.fixture(scope="module")
def world():
    return World(SMALL)


# --------------------------------------------------------------------------------------------------
# Reward
# --------------------------------------------------------------------------------------------------
def test_reward_values():
    assert reward(True, 10) == 1.0  # R(1, 1) = 1
    assert reward(False, 10) == -1.0  # R(0, 1) = -1
    assert reward(True, 5) == reward(False, 5) == 0.5  # R(any, 0.5) = 0.5
    assert reward(False, 1) == pytest.approx(2 * (0.5 - 0.01))
    assert reward(True, None) == reward(False, None) == -1.0  # missing or malformed confidence


def test_expected_reward_peaks_at_the_accuracy():
    """A proper scoring rule: at accuracy p the best stated confidence is c = 10 p."""
    for p in np.linspace(0.1, 1.0, 10):
        best = max(range(1, 11), key=lambda c: calibration.expected_reward(p, c))
        assert best == round(10 * p)
        # and it is a strict maximum over the neighbours
        for c in (best - 1, best + 1):
            if 1 <= c <= 10:
                assert calibration.expected_reward(p, c) < calibration.expected_reward(p, best)


def test_reward_rejects_bad_values():
    with pytest.raises(ValueError, match="confidence must be an integer in 1..10"):
        reward(True, 11)
    with pytest.raises(ValueError, match="correct must be"):
        reward(0.5, 5)


# --------------------------------------------------------------------------------------------------
# Calibration metrics
# --------------------------------------------------------------------------------------------------
def test_binned_ece_of_a_calibrated_predictor_is_near_zero():
    rng = np.random.default_rng(0)
    confidence = rng.integers(1, 11, 40_000) / 10
    correct = rng.random(40_000) < confidence  # right with exactly the stated probability
    assert binned_ece(confidence, correct) < 0.01


@pytest.mark.parametrize("p", [0.3, 0.62, 0.9])
def test_binned_ece_of_an_always_certain_predictor_is_one_minus_accuracy(p):
    n = 1000
    correct = np.arange(n) < round(p * n)
    assert binned_ece(np.ones(n), correct) == pytest.approx(1 - p)
    assert calibration.unbinned_ece(np.ones(n), correct) == pytest.approx(1 - p)


def test_reliability_bins_each_stated_level_apart():
    bins = calibration.reliability([0.1, 0.1, 0.2, 1.0], [1, 0, 1, 1])
    assert bins["count"] == [2, 1, 0, 0, 0, 0, 0, 0, 0, 1]
    assert bins["accuracy"][0] == 0.5 and bins["confidence"][1] == pytest.approx(0.2)
    assert np.isnan(bins["accuracy"][2])


def test_auroc():
    assert calibration.auroc([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]) == 1.0
    assert calibration.auroc([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0]) == 0.5  # ties count half
    assert np.isnan(calibration.auroc([0.5, 0.7], [1, 1]))


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="at least one prediction"):
        binned_ece([], [])
    with pytest.raises(ValueError, match="divide a 1..10 confidence by 10"):
        binned_ece([7], [1])
    with pytest.raises(ValueError, match="differ in length"):
        binned_ece([0.7, 0.5], [1])


# --------------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------------
GOOD = ("reasoning: Kalo was born in Dalford. answer: Dalford. reflection: i am unsure of the birthplace: "
        "Dalford or Tiston. confidence: 7")


def test_parser_reads_every_field():
    parsed = parse(GOOD, needs_reflection=True)
    assert parsed.well_formed and parsed.confidence == 7 and parsed.answer == "Dalford"
    assert parsed.reflection == "i am unsure of the birthplace: Dalford or Tiston"
    assert parse("reasoning: K was born in D. answer: D. confidence: 10").confidence == 10


@pytest.mark.parametrize("text, problem", [
    ("reasoning: K was born in D. answer: D.", "expected"),  # no confidence
    ("reasoning: K was born in D. answer: D. confidence: 11", "not one integer"),
    ("reasoning: K was born in D. answer: D. confidence: 0", "not one integer"),
    ("reasoning: K was born in D. answer: D. confidence: 7 7", "not one integer"),
    ("reasoning: K was born in D. answer: D. confidence: seven", "not one integer"),
    ("reasoning: K was born in D. answer: D. confidence:", "not one integer"),
    ("answer: D. reasoning: K was born in D. confidence: 3", "expected"),
    ("reasoning: K. answer: D. confidence: 3 confidence: 4", "expected"),
    ("confidence: 3", "expected"),
])
def test_parser_rejects_malformed_outputs(text, problem):
    parsed = parse(text)
    assert parsed.confidence is None and not parsed.well_formed and problem in parsed.error
    assert reward(True, parsed.confidence) == -1.0


def test_parser_needs_the_rationale_when_asked():
    assert not parse("reasoning: K. answer: D. confidence: 3", needs_reflection=True).well_formed


# --------------------------------------------------------------------------------------------------
# Stage 1
# --------------------------------------------------------------------------------------------------
def test_consistency_confidence_and_clusters():
    # largest first, ties in the order first seen; unreadable answers (None) join no cluster
    assert method.cluster(["b", "a", None, "a", "b", "c"]) == [("b", 2), ("a", 2), ("c", 1)]
    assert method.consistency_confidence(10, 10) == 10
    assert method.consistency_confidence(3, 10) == 3
    assert method.consistency_confidence(0, 10) == 1  # at least 1
    assert method.consistency_confidence(1, 4) == 2  # round(2.5) = 2 (to even)


def test_stage1_rationale_names_the_disagreement(world):
    q = world.question("born_country", world.train_people[0])
    city, country = q.hops
    other = next(c for c in world.cities if c != city)
    right = f"reasoning: {q.person} was born in {city}. {city} is in {country}. answer: {country}."
    wrong = (f"reasoning: {q.person} was born in {other}. {other} is in {world.object_of('city_in', other)}. "
             f"answer: {world.object_of('city_in', other)}.")
    chains = [method.read_chain(q, t) for t in [right] * 6 + [wrong] * 3 + ["reasoning: nonsense"]]
    assert chains[0].hops == (city.lower(), country.lower()) and chains[-1].answer is None
    (item,) = method.stage1([q], [chains])
    assert item.chosen.text == right
    if world.object_of("city_in", other) != country:
        assert item.confidence == 6  # 6 of the 10 samples give the chosen answer
    assert item.rationale == f"i am unsure of the birthplace: {city} or {other}"
    assert method.named_values(item.rationale) == [city.lower(), other.lower()]
    (prompt, response), = method.sayself_examples([item])
    assert prompt == q.prompt and parse(response, needs_reflection=True).well_formed
    assert response.endswith(f"confidence: {item.confidence}")
    (_, bare), = method.sayself_examples([item], with_rationale=False)
    assert "reflection" not in bare and parse(bare).confidence == item.confidence
    sure = method.rationale(q, [chains[0]] * 4)
    assert sure == "i am sure of the birthplace" and method.named_values(sure) == []


def test_stage1_needs_a_reasoning_in_the_largest_cluster(world):
    q = world.question("born_in", world.train_people[0])
    bare = method.read_chain(q, f"answer: {q.answer}.")  # an answer without any reasoning
    assert bare.answer == q.answer.lower()
    assert method.stage1([q], [[bare, bare]]) == []  # no target to imitate: dropped
    full = method.read_chain(q, f"reasoning: {q.reasoning} answer: {q.answer}.")
    (item,) = method.stage1([q], [[bare, full, bare]])
    assert item.chosen is full and item.confidence == 10

def test_tokenizer_round_trips_the_formats(world):
    tok = world.tokenizer
    q = world.question("employer_city", world.test_people[0])
    for text in (q.prompt, method.plain_examples([q])[0][1], GOOD.replace("Kalo", q.person)
                 .replace("Dalford", world.cities[0]).replace("Tiston", world.cities[1])):
        ids = tok.encode(text)
        assert tok.unk_id not in ids and tok.decode(ids) == text
    for doc in world.corpus[:50]:
        assert tok.decode(tok.encode(doc)) == doc


# --------------------------------------------------------------------------------------------------
# Stage 2: only the confidence tokens
# --------------------------------------------------------------------------------------------------
def test_confidence_span_marks_the_tokens_after_the_marker(world):
    tok = world.tokenizer
    response = tok.encode("reasoning: K. answer: D. confidence: 7", add_eos=True)
    span = method.confidence_span(tok, response)
    assert [tok.tokens[t] for t, s in zip(response, span) if s] == ["7", "<eos>"]
    stopped = tok.encode("reasoning: K. answer: D.", add_eos=True)
    assert method.confidence_span(tok, stopped) == [False] * (len(stopped) - 1) + [True]  # only its <eos>


def test_rl_gradient_reaches_only_the_confidence_tokens(world):
    """One REINFORCE batch with the confidence mask: the log-probabilities of the reasoning, answer and
    rationale tokens get exactly zero gradient; the confidence tokens get some."""
    tok = world.tokenizer
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, context_length=64, d_model=16, n_layers=1, n_heads=2))
    questions = world.questions(("born_in",), world.train_people[:4])
    examples = method.plain_examples(questions, confidence=6)
    prompts, responses = method.encode_examples(tok, examples)
    # teach the format for a few steps so that the sampled responses are well formed
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(80):
        optimizer.zero_grad()
        model.loss(*align.sft_batch(prompts, responses, pad_id=tok.pad_id)).backward()
        optimizer.step()
    by_prompt = {tuple(p): q for p, q in zip(prompts, questions)}
    pg = align.PolicyGradient(model, prompts, method.reward_fn(tok, by_prompt, needs_reflection=False),
                              align.PolicyGradientConfig(prompts_per_step=4, n_samples=4,
                                                         max_new_tokens=method.MAX_NEW_TOKENS, kl_coef=0.05),
                              eos_id=tok.eos_id, optimise=lambda p, r: method.confidence_span(tok, r))
    tokens, prompt_lengths, response_lengths, advantages, optimised = pg.sample(model, 1)
    logprobs, mask, _ = align._logprobs_of_padded(model, tokens, prompt_lengths, response_lengths)
    leaf = logprobs.detach().requires_grad_(True)
    align.reinforce_loss(leaf, mask & optimised, advantages).backward()
    assert torch.count_nonzero(leaf.grad[mask & ~optimised]) == 0
    well_formed = optimised.sum(1) == 2  # the confidence number and <eos>
    assert well_formed.float().mean() > 0.5
    assert torch.count_nonzero(leaf.grad[optimised]) > 0


# --------------------------------------------------------------------------------------------------
# The world
# --------------------------------------------------------------------------------------------------
def test_world_is_deterministic_and_splits_people(world):
    again = World(SMALL)
    assert again.corpus == world.corpus and again.mentions == world.mentions
    assert not set(world.train_people) & set(world.test_people)
    assert {q.person for q in world.worked_examples} <= set(world.train_people)
    assert {q.kind for q in world.worked_examples} == set(ID_KINDS + OOD_KINDS)
    # every stated person fact appears in the corpus exactly as often as its statements count
    person, relation = world.people[0], "born_in"
    sentence = f"{person} was born in {world.object_of(relation, person)}."
    assert world.corpus.count(sentence) == world.statements[relation, person]
    q = world.question("employer_city", person)
    assert q.answer == world.object_of("based_in", world.object_of("works_for", person))
    assert q.mentions == world.mentions["works_for", person]


def test_world_rejects_bad_config():
    with pytest.raises(ValueError, match="n_countries"):
        WorldConfig(n_cities=3, n_countries=4)
    with pytest.raises(ValueError, match="test_fraction"):
        WorldConfig(test_fraction=1.0)


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------
def test_bad_input_is_named(world):
    tok = world.tokenizer
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, context_length=64, d_model=16, n_layers=1, n_heads=2))
    tiny = llm.TinyLM(model, tok)
    questions = world.questions(("born_in",), world.test_people[:2])
    with pytest.raises(ValueError, match=r"n_samples \(N\) must be an integer >= 2"):
        method.sample_chains(tiny, questions, 1)
    with pytest.raises(ValueError, match="question set is empty"):
        method.sample_chains(tiny, [], 4)
    with pytest.raises(ValueError, match=r"n_samples \(N\) must be an integer >= 2"):
        method.consistency_confidence(1, 1)
    with pytest.raises(ValueError, match="no fine-tuning examples"):
        method.fine_tune(model, tok, [], experiments.CONFIGS["fast"].sft, [])
    with pytest.raises(ValueError, match=r"n_samples \(N\) must be an integer >= 2"):
        dataclasses.replace(experiments.CONFIGS["fast"], n_samples=1)
    with pytest.raises(ValueError, match="question set for kinds"):
        method.world_questions(world, ID_KINDS, [])
    with pytest.raises(ValueError, match="unknown branch 'RLHF'; choose one of SaySelf"):
        experiments.run_branch(0, "RLHF", experiments.CONFIGS["fast"])


def test_faithfulness_against_a_shuffled_control(world):
    questions = world.questions(("born_in",), world.test_people[:3])

    def chains(q, values):
        return [method.read_chain(q, f"reasoning: {q.person} was born in {v}. answer: {v}.") for v in values]

    # each question's samples and rationale name two cities of its own, disjoint from the others': every
    # rationale names only its own samples' values, and another question's rationale names none of them
    pairs = [tuple(world.cities[2 * i: 2 * i + 2]) for i in range(3)]
    samples = [chains(q, pair) for q, pair in zip(questions, pairs)]
    reflections = [f"i am unsure of the birthplace: {a} or {b}" for a, b in pairs]
    result = experiments.faithfulness(reflections, samples, questions, seed=0)
    assert result["own"] == [1.0, 1.0, 1.0] and result["n_named"] == 3
    assert result["shuffled"] == [0.0, 0.0, 0.0]  # a rationale kept by its own question would score 1
    # a rationale naming one sampled and one unsampled city scores 1/2
    half = [f"i am unsure of the birthplace: {pairs[0][0]} or {pairs[1][0]}", *reflections[1:]]
    assert experiments.faithfulness(half, samples, questions, seed=0)["own"][0] == 0.5


# --------------------------------------------------------------------------------------------------
# Explorer
# --------------------------------------------------------------------------------------------------
def test_reliability_explorer_redraws_and_matches_the_metric():
    pytest.importorskip("ipywidgets")
    import ipywidgets

    from paperlab.sayself.explore import pooled, reliability_explorer

    rng = np.random.default_rng(0)

    def records(n):
        return {"confidence": rng.integers(1, 11, n).tolist(), "correct": (rng.random(n) < 0.5).tolist()}

    results = {"seeds": [{"results": {m: {"id": records(30), "ood": records(10)} for m in ("a", "b")}}
                         for _ in range(3)]}
    conf, right = pooled(results, "b", "id")
    assert conf.shape == right.shape == (90,) and conf.max() <= 1.0
    explorer = reliability_explorer(results, ("a", "b"))
    box = explorer.widget()
    before = explorer.last_png
    assert explorer.last_values == {"method": "b", "split": "id", "n_bins": 10}
    box.controls["n_bins"].value = 4
    assert explorer.last_values["n_bins"] == 4 and explorer.last_png != before
    with pytest.raises(ValueError, match="n_bins"):
        explorer.values(n_bins=50)
    ipywidgets.Widget.close_all()
