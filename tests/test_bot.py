"""paperlab.bot: the task families' generators and exact checkers, the meta-buffer (instantiation,
retrieval, the buffer manager), the sandbox's limits, and the methods' logic with a scripted model."""

from __future__ import annotations

import os
import re

import pytest
import torch
from fakes import Scripted

from paperlab.bot import buffer, experiments, methods, tasks
from paperlab.bot.prompts import TinyPrompts, read_step
from paperlab.bot.sandbox import Limits, run_program


# --------------------------------------------------------------------------------------------------
# Tasks: generators and checkers
# --------------------------------------------------------------------------------------------------
def test_game24_checker_needs_every_number_exactly_once():
    numbers = [4, 7, 8, 8]
    assert tasks.why_wrong_24(numbers, "(7 - 8 / 8) * 4") is None
    assert tasks.why_wrong_24(numbers, "( 8 - 4 ) * ( 7 - 1 )") is not None  # 1 not given, an 8 unused
    assert tasks.why_wrong_24(numbers, "8 * 8 - 8 * 5") is not None  # 8 used three times, 4 and 7 missing
    assert tasks.why_wrong_24(numbers, "4 * 7 - 8 + 8 / 8") is not None  # a reused 8: five numbers
    assert "uses" in tasks.why_wrong_24([1, 2, 3, 4], "24")  # the value alone is not enough
    assert "not 24" in tasks.why_wrong_24(numbers, "4 + 7 + 8 + 8")
    assert "zero" in tasks.why_wrong_24([1, 1, 2, 3], "3 / (1 - 1) + 2")
    assert tasks.why_wrong_24(numbers, "__import__('os').getcwd()") is not None
    assert tasks.why_wrong_24([1, 5, 5, 5], "5 * (5 - 1 / 5)") is None  # exact fractions
    assert tasks.why_wrong_24([3, 3, 8, 8], "8 / (3 - 8 / 3) = 24") is None


@pytest.mark.slow
def test_every_solvable_24_puzzle_is_found():
    puzzles = tasks.all_24_puzzles()
    assert len(puzzles) == 1362  # of the 1,820 multisets of four numbers from 1 to 13
    assert (1, 1, 1, 1) not in puzzles and (1, 5, 5, 5) in puzzles
    assert all(tasks.why_wrong_24(p, tasks.solvable_24(p)) is None for p in puzzles[::37])


@pytest.mark.parametrize("name", tasks.FAMILIES)
def test_generated_problems_round_trip_and_check(name):
    problems = tasks.generate(name, 12, seed=5)
    assert len({tasks.family(name).format_params(p.params) for p in problems}) == 12
    assert tasks.generate(name, 12, seed=5) == problems  # reproducible from the seed
    family = tasks.family(name)
    for problem in problems:
        assert tasks.check(problem, problem.answer)
        for phrasing in range(len(family.phrasings)):
            assert family.parse_params(family.distilled(problem, phrasing)) == problem.params
            assert problem.statement(phrasing) != problem.statement((phrasing + 1) % len(family.phrasings))
        cot = family.cot(problem)
        if cot is not None:
            assert tasks.check(problem, cot.split("answer :")[-1].strip())
    assert {p.difficulty for p in tasks.generate(name, 60, seed=1)} == {"easy", "hard"}


def test_checkers_reject_wrong_answers():
    arithmetic = tasks.generate("arithmetic", 1, seed=0)[0]
    assert not tasks.check(arithmetic, str(int(arithmetic.answer) + 1))
    assert not tasks.check(arithmetic, "twelve")
    words = tasks.generate("word_sorting", 1, seed=0)[0]
    assert not tasks.check(words, " ".join(reversed(words.answer.split())))
    assert "words" in tasks.why_wrong(words, " ".join(words.answer.split()[1:]))
    mate = tasks.generate("checkmate", 1, seed=0)[0]
    board = tasks.board_of(mate.params["position"])
    quiet = [m for m in board.legal_moves if m not in tasks.mating_moves(board)]
    assert "does not checkmate" in tasks.why_wrong(mate, f"{quiet[0].uci()[:2]} {quiet[0].uci()[2:4]}")
    assert "not a legal move" in tasks.why_wrong(mate, "a1 a1")
    san = board.san(tasks.mating_moves(board)[0])
    assert tasks.check(mate, san)  # a real model may answer in standard notation


def test_checkmate_positions_are_verified_mates_in_one():
    for problem in tasks.generate("checkmate", 10, seed=2):
        board = tasks.board_of(problem.params["position"])
        assert board.is_valid() and not board.is_check()
        assert tasks.mating_moves(board)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="unknown task family 'chess'.*game24"):
        tasks.family("chess")
    with pytest.raises(ValueError, match="four whole numbers"):
        tasks.family("game24").parse_params("task : x ; numbers : 4 7")
    with pytest.raises(ValueError, match="no 'numbers'"):
        tasks.family("game24").parse_params("task : make 24 from 4 7 8 8")
    with pytest.raises(ValueError, match="not a legal position"):
        tasks.family("checkmate").parse_params("position : K g1 K g2 k g8")
    with pytest.raises(ValueError, match="expression"):
        tasks.family("arithmetic").parse_params("expression : import os")
    with pytest.raises(ValueError, match="cannot make 24"):
        tasks.family("game24").problem([1, 1, 1, 1])


def test_game24_steps_compose_the_expression():
    numbers = [4, 7, 8, 8]
    steps = [(8, "/", 8, 1, (1, 4, 7)), (7, "-", 1, 6, (4, 6)), (6, "*", 4, 24, (24,))]
    expression = tasks.steps_to_expression(numbers, steps)
    assert tasks.why_wrong_24(numbers, expression) is None
    with pytest.raises(ValueError, match="not among the numbers left"):
        tasks.steps_to_expression(numbers, [(9, "+", 8, 17, (4, 7, 17))])
    assert all(s[3] >= 0 for s in tasks.integer_steps([4, 7, 8, 8]))
    assert tasks.solvable_with_integer_steps((4, 6)) and not tasks.solvable_with_integer_steps((1, 1, 1))
    assert read_step("8 / 8 = 1 ( left : 1 4 7 )") == methods.Step(8, "/", 8, 1, (1, 4, 7))
    assert read_step("8/8=1 (left: 7 4 1)").left == (1, 4, 7) and read_step("no step") is None


# --------------------------------------------------------------------------------------------------
# The meta-buffer
# --------------------------------------------------------------------------------------------------
def test_templates_instantiate_and_solve_in_the_sandbox():
    for template in buffer.book_templates():
        problem = tasks.generate(template.family, 1, seed=11)[0]
        source = template.instantiate(problem.params)
        assert "${" not in source
        result = run_program(source, Limits(wall_seconds=20))
        assert result.ok, result.reason
        assert tasks.check(problem, result.answer)


def test_template_with_a_missing_parameter_is_an_error():
    template = buffer.book_templates(["game24"])[0]
    with pytest.raises(ValueError, match=r"missing the parameter\(s\) \['numbers'\]"):
        template.instantiate({"nums": [1, 2, 3, 4]})
    with pytest.raises(ValueError, match="four whole numbers"):
        template.instantiate({"numbers": [1, 2, 3]})
    with pytest.raises(ValueError, match="slots"):
        buffer.Template("t", "task", "thought", "x = ${numbers}\ny = ${target}", ("numbers",), "game24")
    with pytest.raises(ValueError, match="unknown task family"):
        buffer.Template("t", "task", "thought", "x = ${numbers}", ("numbers",), "sudoku")
    # values become literals: text from a model cannot add code to the program
    words = buffer.book_templates(["word_sorting"])[0].instantiate({"words": ["a'); import os; print('x"]})
    assert "import os" not in words


def test_retrieval_returns_the_planted_template_and_respects_the_threshold():
    held = buffer.MetaBuffer(buffer.book_templates())
    for name in tasks.FAMILIES:
        found = held.retrieve(tasks.family(name).phrasings[0].task, delta=0.25)
        assert found.template is not None and found.template.family == name, (name, found)
    planted = buffer.Template("planted", "count the vowels in a word", "Count a e i o u.", "print(${words})",
                              ("words",), "word_sorting")
    held.add(planted)
    assert held.retrieve("count the vowels of a word", 0.5).template is planted
    assert held.retrieve("translate a sentence into french", 0.5).template is None
    found = held.retrieve("translate a sentence into french", 0.0)
    assert found.template is found.nearest and found.similarity < 0.5
    assert buffer.MetaBuffer().retrieve("anything", 0.0).template is None
    with pytest.raises(ValueError, match="delta"):
        held.retrieve("x", 1.5)


def test_buffer_manager_compares_descriptions_as_retrieval_does():
    held = buffer.MetaBuffer(buffer.book_templates(["game24", "word_sorting"]))
    manager = buffer.BufferManager(held, novelty=0.4)
    near = buffer.write_template("game of 24 with four numbers", "another 24")  # same kind, close wording
    decision = manager.consider(near)
    assert not decision.admitted and decision.nearest == "game24 (book)" and len(held) == 2
    # the gate's similarity is retrieval's: description against description, not the whole template
    assert decision.similarity == pytest.approx(held.retrieve(near.task, 0.0).similarity)
    assert decision.similarity < 0.5  # the shared program would have made the whole texts near-identical
    far = buffer.write_template("order words as in a dictionary", "sorting, other wording")
    assert manager.consider(far).admitted and len(held) == 3  # the sorting program under a far description
    novel = buffer.write_template("evaluate an arithmetic expression", "arithmetic")
    assert manager.consider(novel).admitted and len(held) == 4
    assert buffer.write_template("write a sonnet about the sea", "poem") is None
    decoded = buffer.write_template("work out a multi - step calculation", "as the tokenizer decodes it")
    assert decoded.family == "arithmetic" and decoded.task == "work out a multi - step calculation"
    assert buffer.BufferManager(buffer.MetaBuffer()).novelty == buffer.DEFAULT_DELTA
    with pytest.raises(ValueError, match="novelty"):
        buffer.BufferManager(held, novelty=0.0)


# --------------------------------------------------------------------------------------------------
# The sandbox
# --------------------------------------------------------------------------------------------------
LIMITS = Limits(wall_seconds=2.0, cpu_seconds=1, memory_mb=256)


def test_sandbox_runs_a_program_and_reports_its_error():
    result = run_program("print(6 * 7)", LIMITS)
    assert result.ok and result.answer == "42"
    result = run_program("x = 1\nraise KeyError('boom')", LIMITS)
    assert not result.ok and "KeyError" in result.reason and "line 2" in result.reason


def test_sandbox_stops_an_infinite_loop():
    result = run_program("while True:\n    pass", LIMITS)
    assert not result.ok
    assert "timed out" in result.reason or "CPU time limit" in result.reason
    assert result.seconds < 10


def test_sandbox_stops_a_huge_allocation():
    result = run_program("x = bytearray(8 * 1024 ** 3)\nprint('allocated')", LIMITS)
    assert not result.ok and result.reason == "memory limit of 256 MB reached"


def test_sandbox_refuses_sockets():
    result = run_program("import socket\nsocket.create_connection(('127.0.0.1', 9))", LIMITS)
    assert not result.ok and "network access is not allowed" in result.reason


def test_sandbox_refuses_writes_outside_its_directory(tmp_path):
    target = tmp_path / "escaped.txt"
    result = run_program(f"open({str(target)!r}, 'w').write('x')", LIMITS)
    assert not result.ok and "only the sandbox's temporary directory is writable" in result.reason
    assert not target.exists()
    result = run_program(f"import os\nos.remove({str(tmp_path)!r})", LIMITS)
    assert not result.ok and "os.remove" in result.reason
    result = run_program("import subprocess\nsubprocess.run(['true'])", LIMITS)
    assert not result.ok and "subprocess" in result.reason
    inside = run_program("open('note.txt', 'w').write('kept')\nprint(open('note.txt').read())", LIMITS)
    assert inside.ok and inside.answer == "kept"


def test_sandbox_arguments_checked():
    with pytest.raises(ValueError, match="non-empty"):
        run_program("   ")
    with pytest.raises(ValueError, match="memory_mb"):
        Limits(memory_mb=0)


# --------------------------------------------------------------------------------------------------
# The methods, with a scripted model
# --------------------------------------------------------------------------------------------------
def _oracle(problems, phrasing=0):
    """A perfect tiny-format model for ``problems``: distils, answers and searches without a mistake."""
    family = {p.statement(phrasing): p for p in problems}

    def respond(prompt, i):
        role, _, rest = prompt.partition(" : ")
        text = rest.removesuffix(" =>")
        if role in ("propose", "value"):
            state = tuple(sorted(int(x) for x in text.split()))
            if role == "value":
                return "sure" if tasks.solvable_with_integer_steps(state) else "impossible"
            steps = tasks.integer_steps(state)
            a, op, b, r, left = steps[i % len(steps)]
            return f"{a} {op} {b} = {r} ( left : {' '.join(map(str, left))} )"
        problem = family[text]
        if role == "distill":
            return tasks.family(problem.family).distilled(problem, phrasing)
        if role == "cot":
            return tasks.family(problem.family).cot(problem) or f"answer : {problem.answer}"
        return problem.answer

    return respond


def test_tree_of_thoughts_solves_with_an_oracle_and_counts_calls():
    puzzles = [[4, 7, 8, 8], [1, 2, 3, 4], [3, 3, 8, 8]]
    model = Scripted(_oracle([]))
    ledger = methods.Ledger(model, len(puzzles))
    answers = methods.tree_of_thoughts(ledger, TinyPrompts(n_propose=40), puzzles, breadth=5, depth=3)
    integer_solvable = [tasks.solvable_with_integer_steps(tuple(sorted(p))) for p in puzzles]
    assert integer_solvable == [True, True, False]  # 3 3 8 8 needs 8 / (3 - 8 / 3)
    assert [tasks.why_wrong_24(p, a) is None for p, a in zip(puzzles, answers)] == integer_solvable
    for cost in ledger.costs:
        # propose: 1 + <= 5 + <= 5 queries; value: one per new state, at most 5 x (steps of a state)
        assert 3 <= cost.calls
    assert sum(c.calls for c in ledger.costs) == model.usage.calls == len(model.prompts)


def test_buffer_of_thoughts_with_an_oracle_distiller():
    problems = [tasks.generate(name, 2, seed=3)[k] for name in tasks.FAMILIES for k in range(2)]
    statements = [p.statement(0) for p in problems]
    model = Scripted(_oracle(problems))
    ledger = methods.Ledger(model, len(problems))
    runner = methods.ProgramRunner(Limits(wall_seconds=20))
    records = methods.buffer_of_thoughts(ledger, TinyPrompts(), statements, buffer.MetaBuffer(
        buffer.book_templates()), delta=0.25, runner=runner)
    assert all(r.path == "template" for r in records)
    assert all(tasks.check(p, r.answer) for p, r in zip(problems, records))
    assert [c.calls for c in ledger.costs] == [1] * len(problems)  # one distillation each
    assert runner.runs == len(problems)


def test_inspector_retries_are_bounded_then_the_fallback_answers():
    problem = tasks.generate("game24", 1, seed=4)[0]
    statement = problem.statement(0)

    def respond(prompt, i):
        if prompt.startswith("distill"):
            return "task : combine four numbers with + - * / to reach 24 ; numbers : 4 4"  # never valid
        return f"answer : {problem.answer}"

    model = Scripted(respond)
    ledger = methods.Ledger(model, 1)
    fallback_calls = []
    records = methods.buffer_of_thoughts(
        ledger, TinyPrompts(), [statement], buffer.MetaBuffer(buffer.book_templates()), delta=0.25,
        runner=methods.ProgramRunner(), max_retries=2,
        fallback=lambda idx: fallback_calls.append(idx) or methods.chain_of_thought(
            ledger, TinyPrompts(), [statement], owners=idx))
    record = records[0]
    assert record.path == "failed" and record.retries == 2 and len(record.errors) == 3
    assert "four whole numbers" in record.errors[0]
    assert fallback_calls == [[0]] and tasks.check(problem, record.answer)
    assert ledger.costs[0].calls == 1 + 2 + 1  # distil, two re-distillations, the fallback


def _stream_problems():
    problems = [tasks.generate(name, 3, seed=9)[k] for k in range(3) for name in tasks.FAMILIES]
    distilled = [tasks.family(p.family).distilled(p, k % 3) for k, p in enumerate(problems)]
    return problems, distilled


def test_stream_admits_every_template_its_retrieval_missed():
    problems, distilled = _stream_problems()
    out = methods.run_stream(problems, distilled, [None] * len(problems),
                             methods.ProgramRunner(Limits(wall_seconds=20)), delta=0.2, novelty=0.2)
    assert sorted(set(out["families"])) == sorted(tasks.FAMILIES)
    assert out["held"] == sorted(out["held"]) and out["used"][0] is None  # the buffer starts empty
    # gate and retrieval read the same descriptions with one threshold: a problem that found no template
    # is novel, so its template comes in, and no task line of the stream is left without one
    assert all(e["admitted"] for e in out["events"])
    assert sum(u is None for u in out["used"]) == len(out["events"]) == out["held"][-1]
    held = buffer.MetaBuffer([buffer.write_template(t, t) for t in out["tasks"]])
    for p, text in zip(problems, distilled):
        found = held.retrieve(methods.distilled_task(text), 0.2).template
        assert found is not None and found.family == p.family
    # a problem that missed a template of its own family held in the buffer brought a second one in
    missed = [k for k, m in enumerate(out["missed"]) if m]
    assert all(out["used"][k] is None for k in missed)
    assert len(out["families"]) - len(set(out["families"])) == len(missed)
    # a problem that retrieved its own family's template is answered by the program, correctly
    own = [k for k, p in enumerate(problems) if out["used"][k] == p.family]
    assert len(own) >= len(problems) // 2 and all(out["correct"][k] for k in own)


def test_stream_with_a_stricter_gate_leaves_problems_without_a_template():
    problems, distilled = _stream_problems()
    out = methods.run_stream(problems, distilled, [None] * len(problems),
                             methods.ProgramRunner(Limits(wall_seconds=20)), delta=0.2, novelty=0.1)
    refused = [e for e in out["events"] if not e["admitted"]]
    assert refused and all(0.1 <= e["similarity"] < 0.2 for e in refused)
    assert sum(u is None for u in out["used"]) > out["held"][-1]


def test_each_seed_draws_its_own_stream():
    orders = [experiments.stream_order(192, 120, seed) for seed in (0, 1, 2)]
    assert all(len(o) == len(set(o)) == 120 and max(o) < 192 for o in orders)
    assert orders[0] != orders[1] != orders[2] != orders[0]
    assert experiments.stream_order(192, 120, 1) == orders[1]  # reproducible
    assert sorted(experiments.stream_order(5, 120, 0)) == list(range(5))


def test_ledger_charges_each_owner():
    model = Scripted(lambda prompt, i: "abcd" * (i + 1))
    ledger = methods.Ledger(model, 2)
    prompts = TinyPrompts()
    ledger.ask([prompts.io("x"), prompts.io("y"), prompts.value([1, 2])], [0, 1, 1])
    assert [c.calls for c in ledger.costs] == [1, 2]
    # a model other than the tiny one reports its own counts (this one counts characters): 4 + (4 + 8 + 12)
    assert ledger.costs[1].generated_tokens == 28 and ledger.costs[0].generated_tokens == 4
    with pytest.raises(ValueError, match="owners"):
        ledger.ask([prompts.io("x")], [0, 1])


def test_tiny_prompts_are_the_training_format():
    prompts = TinyPrompts()
    problem = tasks.generate("word_sorting", 1, seed=0)[0]
    prompt, response = prompts.example("distill", problem, 1)
    assert prompt == prompts.distill(problem.statement(1)).prompt
    assert methods.distilled_task(response) == tasks.family("word_sorting").phrasings[1].task
    assert prompts.read_answer("first letters : a b ; answer : apple bread") == "apple bread"
    assert prompts.read_value(["sure", "impossible", "likely"]) == pytest.approx(21.001)
    assert prompts.example("cot", tasks.family("game24").problem([3, 3, 8, 8])) is None  # fractions only


def _problems_and_tokenizer():
    """Five problems of every family and a word tokenizer over their training texts."""
    from paperlab.tokenizers import WordTokenizer

    problems = [p for name in tasks.FAMILIES for p in tasks.generate(name, 5, seed=0)]
    texts = [t for p in problems for role in ("distill", "io", "cot")
             for t in (TinyPrompts().example(role, p, 0) or ())]
    tokenizer = WordTokenizer.fit(texts + [" ".join(str(i) for i in range(201)),
                                           "propose value sure impossible left"])
    return problems, tokenizer


def test_experiment_configs_and_sampler():
    from paperlab.bot import experiments, model

    config = experiments.EXPERIMENT.config("fast")
    assert experiments.EXPERIMENT.config("full").data.n_train >= config.data.n_train
    problems, tokenizer = _problems_and_tokenizer()
    sampler = model.ExampleSampler(problems, tokenizer, batch_size=8)
    idx, targets = sampler(torch.Generator().manual_seed(0))
    assert idx.shape == targets.shape and idx.shape[0] == 8
    assert (targets != -100).any(dim=1).all()  # every example has response tokens to learn
    again, _ = sampler(torch.Generator().manual_seed(0))
    assert torch.equal(idx, again)


def test_packed_batches_train_the_same_response_tokens():
    from paperlab.bot import model

    problems, tokenizer = _problems_and_tokenizer()
    padded = model.ExampleSampler(problems, tokenizer, batch_size=24)
    packed = model.ExampleSampler(problems, tokenizer, batch_size=24, pack_length=128)
    idx, targets, _, _ = packed(torch.Generator().manual_seed(3))
    ref_idx, ref_targets = padded(torch.Generator().manual_seed(3))  # the same 24 examples, one per row
    assert idx.shape[1] <= 127 and idx.shape[0] < ref_idx.shape[0]  # fewer rows, none over the context
    assert idx.numel() < 0.75 * ref_idx.numel()  # far fewer token positions to compute
    # exactly the same target tokens (as a multiset), so the same responses are learned
    assert sorted(targets[targets != -100].tolist()) == sorted(ref_targets[ref_targets != -100].tolist())
    assert int((idx == tokenizer.bos_id).sum()) == 24  # every example's <bos>, several per row
    # with its block-diagonal mask and per-example positions, a packed batch gives the padded batch's loss
    _, _, mask, positions = packed(torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    gpt = model.make_gpt(model.ModelConfig(d_model=16, n_layers=1, n_heads=2), tokenizer.vocab_size).double()
    loss = gpt.loss(idx, targets, attention_mask=mask, positions=positions)
    assert torch.allclose(loss, gpt.loss(ref_idx, ref_targets), atol=1e-9)
    leaky = gpt(idx)  # unmasked, the later examples of a row see the earlier ones
    assert not torch.allclose(leaky, gpt(idx, attention_mask=mask, positions=positions), atol=1e-6)
    rows = model.pack([([1, 2, 3], [4, 5]), ([6] * 70, [7] * 55), ([8], [9])], pack_length=128)
    assert [sum(len(t) for t, _ in row) for row in rows] == [127, 5]  # first fit, longest first
    assert rows[0] == [([6] * 70, False), ([7] * 55, True), ([8], False), ([9], True)]
    assert rows[1] == [([1, 2, 3], False), ([4, 5], True)]
    with pytest.raises(ValueError, match="does not fit in pack_length=8"):
        model.pack([([1] * 5, [2] * 4)], pack_length=8)
    with pytest.raises(ValueError, match="pack_length must be at least 2"):
        model.ExampleSampler(problems, tokenizer, batch_size=4, pack_length=1)


def test_sandbox_leaves_no_temporary_directory():
    before = {p for p in os.listdir("/tmp") if p.startswith("paperlab-sandbox-")}
    run_program("print(1)", LIMITS)
    after = {p for p in os.listdir("/tmp") if p.startswith("paperlab-sandbox-")}
    assert after <= before
    assert re.fullmatch(r"\d+", run_program("import os\nprint(len(os.listdir('.')))", LIMITS).answer)


def _fake_results():
    """A results dict shaped like experiments.run's, with a two-threshold sweep over 8 problems."""
    families = [name for name in tasks.FAMILIES for _ in range(2)]

    def row(delta, template):
        return {"delta": delta, "path": ["template" if t else "no template" for t in template],
                "wrong": [False] * 8, "correct": list(template), "accuracy": sum(template) / 8,
                "wrong_template": 0.0, "fallback": 1 - sum(template) / 8}

    sweep = {"all templates": [row(0.2, [True] * 8), row(0.9, [False, True] * 4)],
             "no arithmetic template": [row(0.2, [True, True, False, False] + [True] * 4),
                                        row(0.9, [False] * 8)]}
    return {"families": list(tasks.FAMILIES), "test_families": families,
            "seeds": [{"sweep": sweep}, {"sweep": sweep}]}


def test_threshold_explorer_reads_the_sweep():
    pytest.importorskip("ipywidgets")
    import ipywidgets

    from paperlab.bot.explore import threshold_breakdown, threshold_explorer

    results = _fake_results()
    breakdown = threshold_breakdown(results, "no arithmetic template", 0.2)
    assert breakdown["answered by a template"]["arithmetic"] == [0.0, 0.0]
    assert breakdown["correct"]["game24"] == [1.0, 1.0]
    with pytest.raises(ValueError, match="was not swept"):
        threshold_breakdown(results, "all templates", 0.5)
    explorer = threshold_explorer(results, delta=0.2)
    try:
        box = explorer.widget()
        before = explorer.last_png
        box.controls["delta"].value = 0.9  # what a reader's dropdown does
        assert explorer.last_values["delta"] == 0.9 and explorer.last_png != before
        box.controls["buffer"].value = "no arithmetic template"
        assert explorer.last_values["buffer"] == "no arithmetic template"
    finally:
        ipywidgets.Widget.close_all()


def test_summaries_of_the_results():
    from paperlab.bot import experiments

    families = [name for name in tasks.FAMILIES for _ in range(2)]  # two test problems per family
    game24 = [i for i, f in enumerate(families) if f == "game24"]

    def seed(io_marks, cot_marks, bot_marks):
        cost = {"calls": 1, "generated_tokens": 10, "seconds": 0.5}
        return {"correct": {"io": io_marks, "cot": cot_marks, "bot": bot_marks, "tot": [True, False]},
                "costs": {m: [cost] * (len(game24) if m == "tot" else len(families))
                          for m in ("io", "cot", "bot", "tot")}}

    io_marks = [True, True] + [False] * 6  # IO solves the Game of 24 only
    cot_marks = [False, False] + [True, False] * 3  # CoT half of each other family
    runs = [seed(io_marks, cot_marks, [True] * 8), seed(io_marks, cot_marks, [True] * 7 + [False])]
    results = {"families": list(tasks.FAMILIES), "test_families": families, "seeds": runs}
    accuracy = experiments.family_accuracy(results, "cot")
    assert accuracy["game24"] == [0.0, 0.0] and accuracy["checkmate"] == [0.5, 0.5]
    assert experiments.family_accuracy(results, "tot") == {"game24": [0.5, 0.5]}
    assert experiments.mean_accuracy(results, "bot") == [1.0, pytest.approx(7 / 8)]
    baseline, choice = experiments.best_single_query(results)
    assert choice == {"game24": "io", "arithmetic": "cot", "word_sorting": "cot", "checkmate": "cot"}
    assert baseline == [pytest.approx((1 + 0.5 * 3) / 4)] * 2  # the better method per family
    assert experiments.cost_per_problem(results, "tot", "game24")["calls"] == [1.0, 1.0]


def test_distiller_accuracy_counts_exact_parameters():
    from paperlab.bot import experiments, model

    config = experiments.EXPERIMENT.config("fast")
    problems = model.problems_of(model.build_data(config.data), "test")
    # as the word tokenizer decodes them: no space before punctuation
    right = [tasks.family(p.family).distilled(p, 1).replace(" ; ", "; ") for p in problems]
    wrong = right[:-1] + [right[-1].rsplit(" ", 1)[0]]  # the last problem loses a parameter's last token
    unseen = ["task : something never taught ; " + tasks.family(p.family).format_params(p.params)
              for p in problems]
    runs = [{"bot_records": [{"distilled": d} for d in right], "held_out_distilled": unseen},
            {"bot_records": [{"distilled": d} for d in wrong],
             "held_out_distilled": ["task : x"] * len(problems)}]
    results = {"seeds": runs}
    assert experiments.distiller_accuracy(results, config) == [1.0, pytest.approx(1 - 1 / len(problems))]
    assert experiments.distiller_accuracy(results, config, held_out=True) == [1.0, 0.0]


def test_plan_runs_each_step_once_after_what_it_needs_and_balances_two_cores():
    from paperlab.bot import experiments

    for seeds in ((0, 1, 2), (0, 1, 2, 3, 4), (7,)):
        for workers in (1, 2, 3, 4, 16):
            chains = experiments.plan(seeds, workers)
            assert 1 <= len(chains) <= workers
            steps = [step for chain in chains for step in chain]
            expected = {(kind, size, seed) for kind in ("train", "measure") for size in ("small", "large")
                        for seed in seeds}
            assert len(steps) == len(expected) and set(steps) == expected  # each exactly once
            for chain in chains:  # a measurement follows its model's training in the same chain
                for k, (kind, size, seed) in enumerate(chain):
                    if kind == "measure":
                        assert ("train", size, seed) in chain[:k]
    chains = experiments.plan((0, 1, 2), 2)  # the third seed split over both cores
    assert [sum(1 for kind, _, seed in chain if kind == "train" and seed == 2) for chain in chains] == [1, 1]
    assert len(experiments.plan((0, 1, 2), 1)) == 1


def test_measure_seed_merges_the_two_models_results_in_order():
    from paperlab.bot import experiments

    small = {"seed": 0, "answers": {"io": [1], "cot": [2], "tot": [3], "bot": [4]},
             "correct": {"io": [True], "cot": [True], "tot": [False], "bot": [True]},
             "costs": {m: [] for m in ("io", "cot", "tot", "bot")},
             "seconds": {m: 1.0 for m in ("io", "cot", "tot", "bot")}, "sweep": {},
             "training": {"small": {"converged": True}}}
    large = {"seed": 0, "answers": {"io_large": [5], "cot_large": [6]},
             "correct": {"io_large": [False], "cot_large": [True]},
             "costs": {"io_large": [], "cot_large": []},
             "seconds": {"io_large": 2.0, "cot_large": 2.0}, "training": {"large": {"converged": False}}}
    merged = experiments._merge(small, large)
    assert list(merged["answers"]) == ["io", "cot", "io_large", "cot_large", "tot", "bot"]
    assert merged["correct"]["cot_large"] == [True] and merged["sweep"] == {}
    assert merged["training"] == {"small": {"converged": True}, "large": {"converged": False}}
