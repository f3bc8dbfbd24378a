"""paperlab.survey: the addition task and its gold checker, the measurements of the experiments, and the
taxonomy (kept equal to the chapter's table)."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
import torch

from paperlab import align
from paperlab.nn import GPT, GPTConfig
from paperlab.survey import experiments as E
from paperlab.survey import taxonomy
from paperlab.survey.models import answer_logprob, check_examples, verifier_probability
from paperlab.survey.task import AdditionTask, Question, TaskConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def task():
    return AdditionTask(TaskConfig(n_demos=50, n_transfer=40, n_unlabelled=30, n_test=20), seed=3)


def test_splits_are_disjoint_and_sized(task):
    splits = [task.demos, task.transfer, task.unlabelled, task.test]
    assert [len(s) for s in splits] == [50, 40, 30, 20]
    pairs = [(q.a, q.b) for s in splits for q in s]
    assert len(set(pairs)) == len(pairs)
    assert all(0 <= a < 100 and 0 <= b < 100 for a, b in pairs)
    other = AdditionTask(TaskConfig(n_demos=50, n_transfer=40, n_unlabelled=30, n_test=20), seed=4)
    assert [q.prompt for q in other.test] != [q.prompt for q in task.test]


def test_gold_reward_is_exact_correctness(task):
    q = Question(47, 38)
    assert task.gold(q, "85") == 1.0
    for wrong in ("84", "085", "8 5", "", "850", "85?"):
        assert task.gold(q, wrong) == 0.0, wrong
    assert task.parse("0") == 0 and task.parse("07") is None and task.parse("1000") is None


def test_near_misses_are_wrong_and_close(task):
    rng = random.Random(0)
    for q in task.test:
        miss = int(task.near_miss(q, rng))
        assert miss != q.a + q.b and abs(miss - (q.a + q.b)) in (1, 10) and miss >= 0


def test_decode_rejects_special_tokens(task):
    tok = task.tokenizer
    assert task.decode(tok.encode("85", add_eos=True)) == "85"
    assert task.decode(tok.encode("85") + [tok.eos_id, tok.pad_id]) == "85"
    assert task.decode([tok.unk_id] + tok.encode("5")) == ""
    assert task.decode([tok.bos_id] + tok.encode("5")) == ""


def test_longest_sequences_fit_the_context(task):
    q = Question(99, 99)
    check = task.check_ids(q, "198") + task.answer_ids("y")
    assert len(check) - 1 <= task.context_length  # the model sees all but the last token
    assert len(task.prompt_ids(q)) + task.max_answer_tokens <= task.context_length + 1


def test_task_config_checks():
    with pytest.raises(ValueError, match="distinct questions"):
        TaskConfig(n_digits=1, n_demos=50, n_transfer=50, n_unlabelled=1, n_test=1)
    with pytest.raises(ValueError, match="n_demos must be a positive integer"):
        TaskConfig(n_demos=0)


def test_check_examples_are_balanced_and_labelled(task):
    examples, candidates, truth = check_examples(task, task.demos, random.Random(1))
    assert len(examples) == len(task.demos) and 10 < sum(truth) < 40
    for q, candidate, right, (prompt, response) in zip(task.demos, candidates, truth, examples):
        assert (candidate == q.answer) == right
        assert task.tokenizer.decode(prompt) == f"{q.a}+{q.b}={candidate}?"
        assert task.decode(response) == ("y" if right else "n")
    _, _, said = check_examples(task, task.demos, random.Random(1), labels=[True] * len(task.demos))
    assert said == truth  # labels replace what is said, not the truth


def tiny_model(task, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=task.tokenizer.vocab_size, context_length=task.context_length,
                         d_model=16, n_layers=1, n_heads=2)).eval()


def test_checkers_reject_unreadable_candidates_without_the_model(task):
    model = tiny_model(task)
    questions = task.test[:3]
    p = verifier_probability(model, task, questions, [questions[0].answer, "", "0x"])
    assert p[0] > 0 and p[1] == 0 and p[2] == 0
    lp = answer_logprob(model, task, questions, [questions[0].answer, "", "12"])
    assert torch.isfinite(lp[0]) and lp[1] == float("-inf") and torch.isfinite(lp[2])


def test_vote_accuracy_averages_disjoint_blocks(task):
    q = Question(1, 2)
    samples = [["3", "4", "3", "5"]]
    assert E.vote_accuracy(task, [q], samples, 1) == pytest.approx(0.5)
    assert E.vote_accuracy(task, [q], samples, 2) == pytest.approx(1.0)  # ("3","4") -> 3, ("3","5") -> 3
    assert E.vote_accuracy(task, [q], samples, 4) == pytest.approx(1.0)
    assert E.vote_accuracy(task, [q], [["4", "4", "3", ""]], 4) == 0.0  # "" (unreadable) does not vote


def test_best_of_n_curve_picks_by_proxy_and_reports_gold():
    gold = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    proxy = torch.tensor([[0.1, 0.9, 0.5, 0.2]])
    curve = E.best_of_n_curve(gold, proxy, [1, 2, 4])
    assert curve["gold"] == [pytest.approx(0.25), pytest.approx(0.5), pytest.approx(1.0)]
    assert curve["proxy"][2] == pytest.approx(0.9) and curve["kl"][0] == 0.0
    bad = E.best_of_n_curve(gold, -proxy, [4])  # a proxy that prefers wrong answers
    assert bad["gold"] == [0.0]


def test_balanced_accuracy():
    correct = torch.tensor([True, True, False, False, False, False])
    assert E.balanced_accuracy(torch.ones(6, dtype=torch.bool), correct) == pytest.approx(0.5)
    assert E.balanced_accuracy(correct, correct) == pytest.approx(1.0)
    assert E.balanced_accuracy(torch.tensor([True, False, False, False, False, True]), correct) == \
        pytest.approx(0.5 * (0.5 + 0.75))
    assert E.balanced_accuracy(correct, torch.ones(6, dtype=torch.bool)) is None


def test_environment_reward_reads_the_question_from_the_prompt(task):
    reward = E.environment_reward(task)
    q = Question(47, 38)
    responses = [task.answer_ids("85"), task.answer_ids("86"), task.tokenizer.encode("85")]
    assert reward([task.prompt_ids(q)] * 3, responses) == [1.0, 0.0, 1.0]


def test_implicit_reward_is_zero_at_the_reference_and_beta_scaled(task):
    model = tiny_model(task)
    reference = align.freeze(model)
    prompts = [task.prompt_ids(q) for q in task.test[:4]]
    responses = [task.answer_ids(q.answer) for q in task.test[:4]]
    assert E.implicit_reward(model, reference, 0.5)(prompts, responses) == [0.0] * 4
    other = tiny_model(task, seed=1)
    small = torch.tensor(E.implicit_reward(other, reference, 0.5)(prompts, responses))
    large = torch.tensor(E.implicit_reward(other, reference, 1.0)(prompts, responses))
    torch.testing.assert_close(large, 2 * small)


def test_pairs_hold_one_right_and_one_wrong_answer(task):
    questions = [Question(1, 2), Question(3, 4), Question(5, 5)]
    texts = [["3", "4"], ["7", "7"], ["9", "10"]]
    ids = [[task.answer_ids(t) for t in group] for group in texts]
    triples = E._pairs_of_own_answers(task, questions, texts, ids, random.Random(0))
    assert [(q.prompt, task.decode(c), task.decode(r)) for q, c, r in triples] == [
        ("1+2=", "3", "4"), ("5+5=", "10", "9")]


# --------------------------------------------------------------------------------------------------
# The taxonomy
# --------------------------------------------------------------------------------------------------
def test_sunburst_rows_form_a_tree():
    rows = taxonomy.sunburst_rows()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    assert sum(r["parent"] == "" for r in rows) == 1
    assert all(r["parent"] in set(ids) for r in rows if r["parent"])
    for source in taxonomy.TAXONOMY:
        assert source in ids
    for place in taxonomy.CHAPTERS:
        assert any(r["id"].endswith("/" + place.chapter) for r in rows)


def test_chapter_table_matches_the_placements():
    """The chapter's Markdown table and taxonomy.CHAPTERS list the same chapters, places and links."""
    text = (ROOT / "book" / "07-alignment.md").read_text()
    table = text[text.index("| chapter | source of the signal"):]
    table = table[: table.index("\n\n")]
    rows = [line.split(" | ") for line in table.splitlines()[2:]]
    parsed = []
    for cells in rows:
        chapter, source, branch, why = (c.strip(" |") for c in cells)
        link = re.fullmatch(r"\[(.+)\]\(#([\w-]+)\)( \(this chapter\))?", chapter)
        if link:
            name, target = link.group(1) + (link.group(3) or ""), link.group(2)
        else:
            name, target = chapter.removesuffix(" (planned)"), None
        parsed.append((name, source, branch, why, target))
    expected = [(p.chapter, p.source, p.branch, p.why, p.target) for p in taxonomy.CHAPTERS]
    assert parsed == expected


def test_every_placed_chapter_target_exists_in_the_book():
    labels = set()
    for path in (ROOT / "book").glob("*.md"):
        labels |= set(re.findall(r"^\(([\w-]+)\)=$", path.read_text(), flags=re.M))
    for place in taxonomy.CHAPTERS:
        if place.target is not None:
            assert place.target in labels, f"{place.chapter}: no label ({place.target})= in book/"


def test_registry_lists_the_survey():
    from paperlab import registry

    experiment = registry.get("survey")
    assert experiment.chapter == "book/07-alignment.md"
    assert set(experiment.configs) == {"fast", "full"}


# --------------------------------------------------------------------------------------------------
# Config checks: one-line errors before any work
# --------------------------------------------------------------------------------------------------
def test_survey_config_checks():
    from dataclasses import replace

    config = E.EXPERIMENT.config("fast")
    with pytest.raises(ValueError, match="SurveyConfig.vote_ks must be a non-empty tuple of integers in"):
        replace(config, vote_ks=(1, 2, 64))
    with pytest.raises(ValueError, match="SurveyConfig.n_bon_questions must be an integer in"):
        replace(config, n_bon_questions=config.base.task.n_test + 1)
    with pytest.raises(ValueError, match="SurveyConfig.pair_samples must be an integer >= 2"):
        replace(config, pair_samples=1)
    with pytest.raises(ValueError, match="SurveyConfig.dpo_betas must be"):
        replace(config, dpo_betas=(0.5, 0.0))
    with pytest.raises(ValueError, match="ModelConfig.d_model .* multiple of n_heads"):
        E.ModelConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="BaseConfig.n_val must be"):
        replace(config.base, n_val=config.base.task.n_test + 1)


def test_run_needs_three_seeds_and_evaluations_before_any_work():
    from dataclasses import replace

    config = E.EXPERIMENT.config("fast")
    with pytest.raises(ValueError, match="SurveyConfig.seeds must be a tuple of >= 3 seeds"):
        E.run(replace(config, seeds=(0, 1)))
    with pytest.raises(ValueError, match="SurveyConfig.rl must be a TrainConfig with >= 5 evaluations"):
        E.run(replace(config, rl=replace(config.rl, eval_every=0)))



def test_equals_greedy_is_the_control_filter_that_checks_nothing():
    samples = [["3", "4", "3"], ["7", "7", "8"]]
    kept = E.equals_greedy(samples, ["3", "8"])
    assert kept.tolist() == [True, False, True, False, False, True]
    correct = torch.tensor([True, False, True, True, True, False])
    checked = E._checked(kept, correct)
    assert checked["accepted_share"] == pytest.approx(0.5)
    assert checked["accepted_accuracy"] == pytest.approx(2 / 3)  # the greedy answer to question 2 is wrong
    with pytest.raises(ValueError):
        E.equals_greedy(samples, ["3"])  # one greedy answer per question


def test_likelihood_reward_is_the_reference_log_probability_and_ranks_best_of_n(task):
    model = tiny_model(task, seed=1)
    q = task.test[0]
    prompts = [task.prompt_ids(q)] * 3
    answers = [task.answer_ids(a) for a in (q.answer, str(int(q.answer) + 1), "0")]
    scores = E.likelihood_reward(model)(prompts, answers)
    expected = [answer_logprob(model, task, [q], [task.decode(a)]).item() for a in answers]
    assert scores == pytest.approx(expected, abs=1e-5)
    gold = torch.tensor([[1.0, 0.0, 0.0]])
    best = int(torch.tensor(scores).argmax())
    assert E.best_of_n_curve(gold, torch.tensor([scores]), [3])["gold"] == [gold[0, best].item()]
