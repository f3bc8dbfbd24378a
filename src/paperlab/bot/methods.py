"""The reasoning methods the chapter compares, each on any :class:`paperlab.llm.LLM`:

- single-query: :func:`io` (answer directly) and :func:`chain_of_thought` (steps, then the answer);
- multi-query: :func:`tree_of_thoughts` on the Game of 24 (breadth-first search: propose next steps,
  value each new state, keep the best ``breadth``; the Tree of Thoughts paper's set-up);
- :func:`buffer_of_thoughts`: distil the problem, retrieve a thought template from the meta-buffer,
  instantiate it, run the program in the sandbox, and let an inspector retry a failed instantiation;
- :func:`run_stream`: Buffer of Thoughts over a stream of problems with a buffer manager that grows
  the meta-buffer.

Every model call goes through a :class:`Ledger`, which batches queries for the tiny model and charges
each query to the problem it serves: calls (one per prompt, whatever ``n``), prompt tokens, generated
tokens (all ``n`` samples) and seconds (a batch's time shared among its queries).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from paperlab import llm
from paperlab.bot import tasks
from paperlab.bot.buffer import BufferManager, MetaBuffer, Template, write_template
from paperlab.bot.prompts import Prompts, Query, Step
from paperlab.bot.sandbox import Limits, RunResult, run_program

__all__ = ["Cost", "Ledger", "io", "chain_of_thought", "tree_of_thoughts", "buffer_of_thoughts", "run_stream",
           "BoTRecord", "ProgramRunner", "distilled_task"]


# --------------------------------------------------------------------------------------------------
# Cost accounting
# --------------------------------------------------------------------------------------------------
@dataclass
class Cost:
    """What one problem cost: model calls (prompts sent), prompt tokens, generated tokens, seconds."""

    calls: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def _generated(completion: llm.Completion) -> int:
    if completion.tokens is not None:
        return len(completion.tokens)
    if completion.logprobs is not None:
        return len(completion.logprobs)
    return math.ceil(len(completion.text) / 4)


class Ledger:
    """Sends queries to ``model`` and charges each to its owner (a problem index in ``range(n_owners)``).

    For the tiny model, queries with equal settings go in one batch (``complete`` with many prompts); a
    real model gets one request per query, and each request's usage is charged to its owner.
    """

    def __init__(self, model: llm.LLM, n_owners: int):
        if not isinstance(model, llm.LLM):
            raise TypeError(f"Ledger needs a paperlab.llm.LLM, got {type(model).__name__}")
        self.model = model
        self.costs = [Cost() for _ in range(n_owners)]
        self.batched = isinstance(model, llm.TinyLM)

    def ask(self, queries: Sequence[Query], owners: Sequence[int]) -> list[list[llm.Completion]]:
        """The completions of each query (in order), charged to ``owners[i]``."""
        if len(queries) != len(owners):
            raise ValueError(f"{len(queries)} queries but {len(owners)} owners")
        out: list[list[llm.Completion] | None] = [None] * len(queries)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, query in enumerate(queries):
            groups[query.settings if self.batched else (i,)].append(i)
        for members in groups.values():
            n, temperature, max_tokens, stop = queries[members[0]].settings
            before, start = self.model.usage.copy(), time.perf_counter()
            replies = self.model.complete([queries[i].prompt for i in members], n=n, temperature=temperature,
                                          max_tokens=max_tokens, stop=list(stop) or None)
            seconds = (time.perf_counter() - start) / len(members)
            spent = self.model.usage - before
            for i, reply in zip(members, replies):
                cost = self.costs[owners[i]]
                cost.calls += 1
                cost.seconds += seconds
                if self.batched:
                    cost.prompt_tokens += len(self.model.encode_prompt(queries[i].prompt))
                    cost.generated_tokens += sum(_generated(c) for c in reply)
                else:
                    cost.prompt_tokens += spent.prompt_tokens
                    cost.generated_tokens += spent.generated_tokens
                out[i] = reply
        return out  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# Single-query methods
# --------------------------------------------------------------------------------------------------
def io(ledger: Ledger, prompts: Prompts, statements: Sequence[str]) -> list[str | None]:
    """Input-output prompting: one query per problem, the answer read from the reply."""
    replies = ledger.ask([prompts.io(s) for s in statements], range(len(statements)))
    return [prompts.read_answer(r[0].text) for r in replies]


def chain_of_thought(ledger: Ledger, prompts: Prompts, statements: Sequence[str],
                     owners: Sequence[int] | None = None) -> list[str | None]:
    """Chain of thought: one query per problem; steps, then the answer after ``answer :``."""
    owners = range(len(statements)) if owners is None else owners
    replies = ledger.ask([prompts.cot(s) for s in statements], owners)
    return [prompts.read_answer(r[0].text) for r in replies]


# --------------------------------------------------------------------------------------------------
# Tree of Thoughts (Game of 24)
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Node:
    left: tuple[int, ...]
    steps: tuple[Step, ...] = ()


def tree_of_thoughts(ledger: Ledger, prompts: Prompts, puzzles: Sequence[Sequence[int]], *,
                     breadth: int = 5, depth: int = 3,
                     owners: Sequence[int] | None = None) -> list[str | None]:
    """Breadth-first Tree of Thoughts on Game of 24 puzzles (Yao et al., 2023, sec. 4.1), all puzzles
    in step: at each of ``depth`` levels,

    1. **propose**: one query per kept state for next steps ``a op b = c ( left : ... )``;
    2. **value**: one query per new state (``n`` samples of sure / likely / impossible, scored by the
       value map 20 / 1 / 0.001 and summed); like the reference code, a state's value is cached by its
       prompt, so a state met again costs nothing;
    3. **select**: keep the ``breadth`` best states (greedy).

    The answer is built from the steps of the best final state (the reference code asks the model once
    more to write it). Differences from the reference: new states that leave the same numbers are
    merged (the first path is kept), and proposals that do not parse are dropped.
    """
    if breadth < 1 or depth < 1:
        raise ValueError(f"breadth and depth must be >= 1, got {breadth} and {depth}")
    owners = list(range(len(puzzles))) if owners is None else list(owners)
    frontier = {i: [_Node(tuple(sorted(int(x) for x in p)))] for i, p in enumerate(puzzles)}
    value_cache: dict[str, float] = {}
    for _ in range(depth):
        expand = [(i, node) for i, nodes in frontier.items() for node in nodes if len(node.left) > 1]
        replies = ledger.ask([prompts.propose(node.left) for _, node in expand],
                             [owners[i] for i, _ in expand])
        children: dict[int, dict[tuple, _Node]] = defaultdict(dict)
        for (i, node), reply in zip(expand, replies):
            for step in prompts.read_proposals([c.text for c in reply]):
                children[i].setdefault(step.left, _Node(step.left, node.steps + (step,)))
        to_value = [(i, child) for i, kids in children.items() for child in kids.values()
                    if prompts.value(child.left).prompt not in value_cache]
        seen: dict[str, int] = {}
        queries, query_owners = [], []
        for i, child in to_value:
            prompt = prompts.value(child.left).prompt
            if prompt not in seen:
                seen[prompt] = len(queries)
                queries.append(prompts.value(child.left))
                query_owners.append(owners[i])
        for query, reply in zip(queries, ledger.ask(queries, query_owners)):
            value_cache[query.prompt] = prompts.read_value([c.text for c in reply])
        for i in frontier:
            kids = list(children.get(i, {}).values())
            if kids:
                ranked = sorted(kids, key=lambda n: -value_cache[prompts.value(n.left).prompt])
                frontier[i] = ranked[:breadth]
    answers = []
    for i, puzzle in enumerate(puzzles):
        best = frontier[i][0]
        try:
            answers.append(tasks.steps_to_expression(puzzle, [s.as_tuple() for s in best.steps])
                           if len(best.left) == 1 else None)
        except ValueError:
            answers.append(None)
    return answers


# --------------------------------------------------------------------------------------------------
# Buffer of Thoughts
# --------------------------------------------------------------------------------------------------
class ProgramRunner:
    """Runs instantiated programs in the sandbox, once per distinct program (they are deterministic), and
    keeps the seconds spent."""

    def __init__(self, limits: Limits | None = None):
        self.limits = limits or Limits()
        self.results: dict[str, RunResult] = {}
        self.seconds = 0.0
        self.runs = 0

    def __call__(self, source: str) -> RunResult:
        if source not in self.results:
            result = run_program(source, self.limits)
            self.results[source] = result
            self.seconds += result.seconds
            self.runs += 1
        return self.results[source]


@dataclass
class BoTRecord:
    """What Buffer of Thoughts did with one problem.

    ``path``: ``"template"`` (a template's program gave the answer), ``"no template"`` (nothing similar
    enough in the buffer: the fallback reasoner answered) or ``"failed"`` (a template was retrieved but
    every instantiation failed: the fallback answered). ``errors``: the failures, in order.
    """

    distilled: str
    task: str
    template: str | None
    similarity: float
    path: str
    answer: str | None
    retries: int = 0
    errors: list[str] = field(default_factory=list)
    program_seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def distilled_task(distilled: str) -> str:
    """The ``task`` line of a distilled problem (empty if there is none)."""
    for part in distilled.replace("\n", ";").split(";"):
        key, sep, value = part.partition(":")
        if sep and key.strip().lower() == "task":
            return value.strip()
    return ""


def _instantiate(template: Template, text: str) -> str:
    """The template's program with the values written in ``text`` (``name : value`` lines)."""
    values = tasks.family(template.family).parse_params(text)
    return template.instantiate(values)


def buffer_of_thoughts(ledger: Ledger, prompts: Prompts, statements: Sequence[str], buffer: MetaBuffer, *,
                       delta: float, runner: ProgramRunner, max_retries: int = 2,
                       distilled: Sequence[str] | None = None,
                       fallback: Callable[[list[int]], list[str | None]] | None = None) -> list[BoTRecord]:
    """Buffer of Thoughts on each statement (paper sec. 3, Fig. 2):

    1. **distil** (one query each; or take ``distilled``, texts distilled before);
    2. **retrieve** the most similar template if its similarity is at least ``delta``;
    3. **instantiate** it (real models: one more query for the parameter values) and **run** the program
       in the sandbox; the answer is the program's last printed line;
    4. **inspect**: on a failure (values that do not parse, a program error, a limit hit), retry up to
       ``max_retries`` times: the tiny distiller is sampled again at temperature 0.7, a real model is
       shown the error;
    5. with no template, or after the retries, **fall back** to ``fallback(indices)`` (the generic
       reasoner: chain of thought), charged to the same problems.
    """
    if distilled is None:  # 1. x_d = LLM(phi(x)), eq. (eq-bot-distill)
        replies = ledger.ask([prompts.distill(s) for s in statements], range(len(statements)))
        distilled = [r[0].text for r in replies]
    records = []
    for text in distilled:
        task = distilled_task(text)
        found = buffer.retrieve(task, delta)  # 2. the template T_j, eq. (eq-bot-retrieve)
        path = "no template" if found.template is None else "template"
        records.append(BoTRecord(text, task, found.template.name if found.template else None,
                                 found.similarity, path, None))
    templates = {t.name: t for t in buffer.templates}
    pending = [i for i, r in enumerate(records) if r.template is not None]
    current = {i: records[i].distilled for i in pending}
    for attempt in range(max_retries + 1):
        if not pending:
            break
        values = _values(ledger, prompts, pending, current, records, templates)
        failed = []
        for i in pending:
            record = records[i]
            try:  # 3. S_x = instantiate(x_d, T_j), eq. (eq-bot-instantiate): fill the skeleton, run it
                source = _instantiate(templates[record.template], values[i])
            except ValueError as err:
                record.errors.append(f"instantiation: {err}")
                failed.append(i)
                continue
            result = runner(source)
            record.program_seconds += result.seconds
            if result.answer is None:
                record.errors.append(f"program: {result.reason or 'printed nothing'}")
                failed.append(i)
            else:
                record.answer = result.answer
        if failed and attempt < max_retries:  # 4. the inspector
            for i in failed:
                records[i].retries += 1
            if prompts.binds_params:  # the tiny distiller wrote the values: sample it again
                replies = ledger.ask([prompts.distill(statements[i], temperature=0.7) for i in failed],
                                     failed)
                current.update({i: r[0].text for i, r in zip(failed, replies)})
        pending = failed
    for i in pending:
        records[i].path = "failed"
    needs_fallback = [i for i, r in enumerate(records) if r.answer is None]
    if needs_fallback and fallback is not None:  # 5. a new kind of problem: general reasoning
        for i, answer in zip(needs_fallback, fallback(needs_fallback)):
            records[i].answer = answer
    return records


def _values(ledger, prompts, pending, current, records, templates) -> dict[int, str]:
    """The text holding each pending problem's parameter values: the distilled text itself (tiny), or a
    real model's reply to the instantiation prompt (with the last error, on a retry)."""
    queries = {i: prompts.instantiate(templates[records[i].template], current[i],
                                      records[i].errors[-1] if records[i].errors else None) for i in pending}
    asked = [i for i in pending if queries[i] is not None]
    out = {i: current[i] for i in pending}
    if asked:
        for i, reply in zip(asked, ledger.ask([queries[i] for i in asked], asked)):
            out[i] = reply[0].text
    return out


def run_stream(problems: Sequence[tasks.Problem], distilled: Sequence[str],
               fallback_answers: Sequence[str | None], runner: ProgramRunner, *, delta: float, novelty: float,
               writer: Callable[[str, str], Template | None] = write_template) -> dict:
    """Buffer of Thoughts over a stream of problems, starting from an empty meta-buffer.

    For each problem in order: retrieve with threshold ``delta``; if a template is found, instantiate and
    run it (a failure falls back); otherwise answer with the fallback reasoner and ask ``writer`` to
    distil a template from the distilled problem, which the :class:`BufferManager` admits only if its
    description's similarity to every held template's description is below ``novelty``. Returns JSON-able
    lists, one entry per problem: templates held after it, whether it was answered correctly, the family
    of the template it used (None: none), whether it found no template although the buffer held one of
    its family (``missed``), and the manager's decisions.
    """
    buffer = MetaBuffer()
    manager = BufferManager(buffer, novelty)
    held, correct, used, missed, events = [], [], [], [], []
    for k, (problem, text, fallback) in enumerate(zip(problems, distilled, fallback_answers)):
        task = distilled_task(text)
        found = buffer.retrieve(task, delta)
        missed.append(found.template is None and problem.family in {t.family for t in buffer.templates})
        answer = None
        if found.template is not None:
            try:
                answer = runner(_instantiate(found.template, text)).answer
            except ValueError:
                answer = None
        if answer is None:
            answer = fallback
        if found.template is None:
            candidate = writer(task, f"template {len(buffer) + 1}")
            if candidate is not None:
                decision = manager.consider(candidate)
                events.append({"problem": k, "family": problem.family, "admitted": decision.admitted,
                               "nearest": decision.nearest, "similarity": decision.similarity,
                               "task": candidate.task})
        held.append(len(buffer))
        correct.append(tasks.check(problem, answer))
        used.append(found.template.family if found.template is not None else None)
    return {"held": held, "correct": correct, "used": used, "missed": missed, "events": events,
            "families": [t.family for t in buffer.templates], "tasks": [t.task for t in buffer.templates]}
