"""The Buffer of Thoughts pipeline and Tree of Thoughts with a real-model backend: the plain-English
prompts (paperlab.bot.prompts.ChatPrompts) sent through paperlab.llm.OpenAIClient to a fake
OpenAI-compatible server on 127.0.0.1, which answers every role correctly (or, for one model, gives
wrong parameter values until it is shown the error)."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from paperlab import llm
from paperlab.bot import buffer, methods, tasks
from paperlab.bot.prompts import ChatPrompts
from paperlab.bot.sandbox import Limits

PROBLEMS = [tasks.generate(name, 2, seed=21)[k] for name in tasks.FAMILIES for k in range(2)]


def _reply(text: str, model: str, state: dict) -> str:
    """What a competent model would answer to each of ChatPrompts' prompts."""
    statements = {p.statement(0): p for p in PROBLEMS}
    if "expert at distilling problems" in text:
        problem = statements[text.split("Problem: ")[-1].strip()]
        family = tasks.family(problem.family)
        lines = [f"Task: {family.phrasings[0].task}"]
        lines += [f"{k}: {v.strip()}" for k, v in (part.split(":", 1) for part in
                                                   family.format_params(problem.params).split(";"))]
        return "\n".join(lines)
    if "You apply a thought template" in text:
        distilled = text.split("Distilled problem:\n", 1)[1]
        values = "\n".join(line for line in distilled.splitlines()
                           if ":" in line and not line.lower().startswith(("task", "your previous")))
        if model == "stubborn" and "failed" not in text:
            state["bad"] += 1
            return "numbers: 1 2"  # wrong until the error is shown
        return values
    if "Possible next steps" in text:
        numbers = [int(x) for x in re.findall(r"Input: ([\d ]+)\n", text)[-1].split()]
        return "\n".join(f"{a} {op} {b} = {r} (left: {' '.join(map(str, left))})"
                         for a, op, b, r, left in tasks.integer_steps(numbers))
    if "can reach 24" in text:
        numbers = tuple(sorted(int(x) for x in text.strip().splitlines()[-1].split()))
        return "thinking...\n" + ("sure" if tasks.solvable_with_integer_steps(numbers) else "impossible")
    if "Solve the problem below" in text:
        problem = statements[text.split("Problem: ")[-1].strip()]
        return f"Let me think.\nAnswer: {problem.answer}"
    return "I do not understand."


def _app():
    app = FastAPI()
    state = {"bad": 0, "requests": 0}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        state["requests"] += 1
        text = body["messages"][-1]["content"]
        n = int(body.get("n", 1))
        reply = _reply(text, body["model"], state)
        return JSONResponse({
            "id": "x", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": i, "message": {"role": "assistant", "content": reply},
                         "finish_reason": "stop"} for i in range(n)],
            "usage": {"prompt_tokens": len(text) // 4, "completion_tokens": n * max(1, len(reply) // 4)}})

    return app, state


@pytest.fixture(scope="module")
def server(serve_app):
    """The fake server on 127.0.0.1 (a free port, in a thread): its base URL and its state."""
    app, state = _app()
    with serve_app(app) as url:
        yield f"{url}/v1", state


def _client(server, model="competent"):
    return llm.from_env(spec=f"openai:{server[0]}/{model}", timeout=10.0, max_retries=1, backoff=0.01)


def test_bot_pipeline_through_the_openai_client(server):
    model = _client(server)
    statements = [p.statement(0) for p in PROBLEMS]
    ledger = methods.Ledger(model, len(PROBLEMS))
    records = methods.buffer_of_thoughts(ledger, ChatPrompts(), statements,
                                         buffer.MetaBuffer(buffer.book_templates()), delta=0.25,
                                         runner=methods.ProgramRunner(Limits(wall_seconds=20)))
    assert [r.path for r in records] == ["template"] * len(PROBLEMS)
    assert all(tasks.check(p, r.answer) for p, r in zip(PROBLEMS, records))
    assert [c.calls for c in ledger.costs] == [2] * len(PROBLEMS)  # distil, then instantiate
    assert all(c.generated_tokens > 0 and c.prompt_tokens > 0 for c in ledger.costs)


def test_inspector_shows_the_error_to_a_real_model(server):
    model = _client(server, "stubborn")
    problem = PROBLEMS[0]
    ledger = methods.Ledger(model, 1)
    before = server[1]["bad"]
    records = methods.buffer_of_thoughts(ledger, ChatPrompts(), [problem.statement(0)],
                                         buffer.MetaBuffer(buffer.book_templates()), delta=0.25,
                                         runner=methods.ProgramRunner(Limits(wall_seconds=20)), max_retries=2)
    record = records[0]
    assert server[1]["bad"] == before + 1
    assert record.retries == 1 and "four whole numbers" in record.errors[0]
    assert record.path == "template" and tasks.check(problem, record.answer)
    assert ledger.costs[0].calls == 3  # distil, a wrong instantiation, the corrected one


def test_tree_of_thoughts_and_single_query_methods_through_the_client(server):
    model = _client(server)
    game24 = [p for p in PROBLEMS if p.family == "game24"]
    ledger = methods.Ledger(model, len(game24))
    answers = methods.tree_of_thoughts(ledger, ChatPrompts(), [p.params["numbers"] for p in game24])
    for problem, answer in zip(game24, answers):
        expected = tasks.solvable_with_integer_steps(tuple(problem.params["numbers"]))
        assert tasks.check(problem, answer) == expected
    assert all(c.calls >= 3 for c in ledger.costs)
    statements = [p.statement(0) for p in PROBLEMS]
    for method in (methods.io, methods.chain_of_thought):
        answers = method(methods.Ledger(model, len(PROBLEMS)), ChatPrompts(), statements)
        assert all(tasks.check(p, a) for p, a in zip(PROBLEMS, answers))
