"""One interface for "a language model": the tiny GPT, an OpenAI-compatible server, or a local HF model.

The reasoning and alignment chapters program against :class:`LLM`, so the same chapter code runs with the
book's tiny model (what the rendered book uses) or, when a reader has one, with a real model behind a
local server. Every backend offers two calls and one record:

- ``complete(prompts, n=1, temperature=1.0, max_tokens=32, stop=None)`` returns, for each prompt, ``n``
  :class:`Completion` objects (the text, the finish reason and, where the backend has them, the
  log-probability of each generated token). ``temperature=0`` is greedy decoding.
- ``logprob(prompts, continuations)`` returns ``log p(continuation | prompt)`` for each pair (nats).
- ``usage``: a :class:`Usage` that counts calls, prompt tokens, generated tokens and seconds, so that a
  chapter can plot accuracy against cost (``before = llm.usage.copy(); ...; spent = llm.usage - before``).

How to use::

    from paperlab import llm

    model = llm.from_env(tiny=lambda: llm.TinyLM(gpt, tokenizer))   # PAPERLAB_LLM chooses the backend
    outs = model.complete(["12+34="], n=4, temperature=1.0, max_tokens=4)
    [c.text for c in outs[0]], outs[0][0].logprobs                   # 4 samples; per-token log-probs
    model.logprob(["12+34="], ["46"])                                 # [-0.02]
    model.usage                                                       # Usage(calls=2, ...)

The switch ``PAPERLAB_LLM`` (read by :func:`from_env`; default ``tiny``) takes one of

- ``tiny``: the chapter's own tiny GPT (:class:`TinyLM`), trained in the chapter;
- ``openai:<base URL ending in /v1>/<model>``: an OpenAI-compatible server's chat endpoint
  (``/chat/completions``), as served by vLLM, llama.cpp's server or Ollama, e.g.
  ``openai:http://127.0.0.1:8080/v1/qwen2.5-0.5b-instruct`` (the model name may contain ``/`` or ``:``);
  ``openai-completions:...`` uses the plain completions endpoint instead (no chat template);
  the key, if the server needs one, comes from ``PAPERLAB_LLM_KEY`` or ``OPENAI_API_KEY``;
- ``hf:<path>``: a Hugging Face causal LM saved in a local folder (needs the optional ``transformers``
  package; nothing is downloaded).

A real model's numbers are that model's, never the tiny model's: chapters print ``model.name``.
Bad arguments (an empty prompt list, ``n < 1``, a negative temperature, an unknown backend) raise a
ValueError naming the problem before any work starts.
"""

from __future__ import annotations

import json
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "ENV_VAR",
    "VALID_FORMS",
    "Completion",
    "Usage",
    "LLM",
    "TinyLM",
    "OpenAIClient",
    "HFCausalLM",
    "LLMError",
    "LLMTimeoutError",
    "LLMResponseError",
    "parse_spec",
    "from_env",
]

ENV_VAR = "PAPERLAB_LLM"
VALID_FORMS = (
    "tiny",
    "openai:<base URL ending in /v1>/<model>  (e.g. openai:http://127.0.0.1:8080/v1/my-model)",
    "openai-completions:<base URL ending in /v1>/<model>",
    "hf:<path to a local Hugging Face model folder>",
)


# --------------------------------------------------------------------------------------------------
# What every backend returns and records
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Completion:
    """One generated continuation.

    ``text``: the continuation (without the prompt, cut before any stop string).
    ``finish_reason``: ``"stop"`` (end-of-sequence token or a stop string) or ``"length"`` (max_tokens).
    ``logprobs``: log-probability (nats) of each generated token under the model at temperature 1, or None
    when the backend does not report them.
    ``tokens``: the generated token ids, for backends whose tokenizer is ours (the tiny model; e.g. to
    fine-tune on the samples), else None. Both include the end-of-sequence token when one was generated.
    """

    text: str
    finish_reason: str = "stop"
    logprobs: tuple[float, ...] | None = None
    tokens: tuple[int, ...] | None = None

    @property
    def logprob(self) -> float | None:
        """Sum of the token log-probabilities (None when they are unknown)."""
        return None if self.logprobs is None else float(sum(self.logprobs))


@dataclass
class Usage:
    """What a backend spent: requests, prompt tokens sent, tokens generated, wall-clock seconds.

    Prompt tokens count once per prompt per call (as APIs bill them), generated tokens once per returned
    token (all ``n`` samples). ``estimated`` is True when a server did not report token counts and they were
    estimated (4 characters per token). ``usage - earlier`` is the spending between two snapshots.
    """

    calls: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0
    estimated: bool = False

    def copy(self) -> Usage:
        return Usage(**self.as_dict())

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __sub__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(self.calls - other.calls, self.prompt_tokens - other.prompt_tokens,
                     self.generated_tokens - other.generated_tokens, self.seconds - other.seconds,
                     self.estimated or other.estimated)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.generated_tokens


class LLMError(RuntimeError):
    """A backend could not answer (server error, missing model, refused request)."""


class LLMTimeoutError(LLMError):
    """No reply within the timeout, after the allowed retries."""


class LLMResponseError(LLMError):
    """The server replied, but not with what the OpenAI API specifies (the message says what is missing)."""


# --------------------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------------------
def _check_texts(name: str, texts) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise ValueError(f"{name} must be a list of strings, got {type(texts).__name__}"
                         + (" (wrap a single prompt in a list)" if isinstance(texts, str) else ""))
    if len(texts) == 0:
        raise ValueError(f"{name} is empty; give at least one")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"{name}[{i}] must be a str, got {type(text).__name__}")
    return list(texts)


def _check_stop(stop) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, Sequence) or not all(isinstance(s, str) and s for s in stop):
        raise ValueError(f"stop must be None, a non-empty str or a list of non-empty str, got {stop!r}")
    return tuple(stop)


def _cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` cut before the earliest stop string, and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


class LLM(ABC):
    """A language model behind :meth:`complete` and :meth:`logprob` (see the module docstring).

    Subclasses implement ``_complete`` and ``_logprob`` on already-validated arguments and return their
    token counts; this class checks the arguments, times the call and keeps :attr:`usage`.
    """

    name: str = "language model"

    def __init__(self) -> None:
        self.usage = Usage()

    def complete(self, prompts: Sequence[str], n: int = 1, *, temperature: float = 1.0,
                 max_tokens: int = 32, stop: str | Sequence[str] | None = None) -> list[list[Completion]]:
        """``n`` completions of each prompt: a list (one per prompt) of lists of :class:`Completion`.

        temperature: >= 0; 0 is greedy decoding (then the ``n`` completions are equal).
        max_tokens: >= 1 generated tokens at most. stop: strings that end a completion (not included).
        """
        prompts = _check_texts("prompts", prompts)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not math.isfinite(temperature) or temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
        stop = _check_stop(stop)
        start = time.perf_counter()
        out, prompt_tokens, generated = self._complete(prompts, n, float(temperature), max_tokens, stop)
        self._record(prompt_tokens, generated, time.perf_counter() - start)
        return out

    def logprob(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[float]:
        """``log p(continuation | prompt)`` in nats for each pair (0.0 for an empty continuation)."""
        prompts = _check_texts("prompts", prompts)
        continuations = _check_texts("continuations", continuations)
        if len(prompts) != len(continuations):
            raise ValueError(f"prompts ({len(prompts)}) and continuations ({len(continuations)}) differ in "
                             "length; give one continuation per prompt")
        start = time.perf_counter()
        values, tokens = self._logprob(prompts, continuations)
        self._record(tokens, 0, time.perf_counter() - start)
        return values

    def _record(self, prompt_tokens: int, generated_tokens: int, seconds: float) -> None:
        self.usage.calls += 1
        self.usage.prompt_tokens += int(prompt_tokens)
        self.usage.generated_tokens += int(generated_tokens)
        self.usage.seconds += seconds

    @abstractmethod
    def _complete(self, prompts: list[str], n: int, temperature: float, max_tokens: int,
                  stop: tuple[str, ...]) -> tuple[list[list[Completion]], int, int]:
        """(completions, prompt tokens, generated tokens)."""

    @abstractmethod
    def _logprob(self, prompts: list[str], continuations: list[str]) -> tuple[list[float], int]:
        """(log-probabilities, tokens scored)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.name}>"


# --------------------------------------------------------------------------------------------------
# 1. The book's tiny GPT
# --------------------------------------------------------------------------------------------------
class TinyLM(LLM):
    """The toolkit's :class:`paperlab.nn.GPT` with its tokenizer, behind the :class:`LLM` interface.

    Prompts are encoded with a leading ``<bos>``; generation stops at ``<eos>`` (batched, left-padded:
    :func:`paperlab.nn.generate`), then at the first stop string. Token log-probabilities are those of the
    model at temperature 1 (one extra forward pass over the batch; ``logprobs=False`` skips it and leaves
    ``Completion.logprobs`` None). ``use_cache=True`` decodes with a key-value cache
    (:class:`paperlab.nn.KVCache`): the same samples up to floating-point rounding, several times faster
    on long prompts. Sampling draws from a generator seeded with ``seed``, so a sequence of calls is
    reproducible; :meth:`reseed` restarts it.
    A prompt with characters (or words) the tokenizer does not know is an error, not a silent ``<unk>``.
    """

    def __init__(self, model, tokenizer, *, seed: int = 0, batch_size: int = 2048, add_bos: bool = True,
                 logprobs: bool = True, use_cache: bool = False):
        super().__init__()
        from paperlab.nn import GPT, count_parameters

        if not isinstance(model, GPT):
            raise TypeError(f"TinyLM needs a paperlab.nn.GPT, got {type(model).__name__}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.add_bos = batch_size, add_bos
        self.want_logprobs, self.use_cache = bool(logprobs), bool(use_cache)
        self.device = next(model.parameters()).device
        self.reseed(seed)
        self.name = (f"tiny GPT ({count_parameters(model):,} parameters, {type(tokenizer).__name__} of "
                     f"{tokenizer.vocab_size} tokens)")

    def reseed(self, seed: int) -> None:
        """Restart the sampling stream from ``seed``."""
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed))

    def encode_prompt(self, prompt: str) -> list[int]:
        ids = self.tokenizer.encode(prompt, add_bos=self.add_bos)
        if self.tokenizer.unk_id in ids:
            known = set(self.tokenizer.tokens)
            unknown = sorted({p for p in self.tokenizer._split(prompt) if p not in known})
            raise ValueError(f"prompt {prompt!r} has pieces the tiny model's tokenizer does not know: "
                             f"{unknown}")
        return ids

    def _complete(self, prompts, n, temperature, max_tokens, stop):
        from paperlab.align import token_logprobs
        from paperlab.nn import generate

        encoded = [self.encode_prompt(p) for p in prompts]
        longest, context = max(len(e) for e in encoded), self.model.config.context_length
        if longest + max_tokens > context + 1:
            raise ValueError(f"a prompt of {longest} tokens plus max_tokens = {max_tokens} exceeds the tiny "
                             f"model's context of {context} tokens")
        rows = [e for e in encoded for _ in range(n)]  # prompt i's samples are rows i*n .. i*n + n - 1
        new_tokens: list[list[int]] = []
        token_lp: list[list[float]] = []
        eos = self.tokenizer.eos_id
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            out = generate(self.model, chunk, max_tokens, temperature=max(temperature, 1e-6),
                           greedy=temperature == 0, eos_id=eos, pad_id=self.tokenizer.pad_id,
                           generator=self.generator, use_cache=self.use_cache)
            new_tokens += out
            if not self.want_logprobs:
                token_lp += [None] * len(out)
                continue
            with torch.no_grad():
                lp, mask = token_logprobs(self.model, chunk, [o if o else [eos] for o in out],
                                          pad_id=self.tokenizer.pad_id)
            token_lp += [row[m].tolist() for row, m in zip(lp.cpu(), mask.cpu())]
        completions = []
        for tokens, lps in zip(new_tokens, token_lp):
            ended = bool(tokens) and tokens[-1] == eos
            body = tokens[:-1] if ended else tokens
            text, stopped = _cut_at_stop(self.tokenizer.decode(body), stop)
            if stopped:  # keep the tokens (and log-probs) whose text survives the cut
                kept = next(i for i in range(len(body) + 1)
                            if len(self.tokenizer.decode(body[:i])) >= len(text))
                tokens = body[:kept]
            lps = None if lps is None else tuple(lps[:len(tokens)])
            completions.append(Completion(text, "stop" if ended or stopped else "length", lps,
                                          tuple(tokens)))
        grouped = [completions[i * n:(i + 1) * n] for i in range(len(prompts))]
        return grouped, sum(len(e) for e in encoded), sum(len(t) for t in new_tokens)

    def _logprob(self, prompts, continuations):
        from paperlab.nn import sequence_logprob

        encoded = [self.encode_prompt(p) for p in prompts]
        conts = [self.tokenizer.encode(c) for c in continuations]
        values: list[float] = []
        with torch.no_grad():
            for start in range(0, len(encoded), self.batch_size):
                values += sequence_logprob(self.model, encoded[start:start + self.batch_size],
                                           conts[start:start + self.batch_size],
                                           pad_id=self.tokenizer.pad_id).tolist()
        return values, sum(len(e) + len(c) for e, c in zip(encoded, conts))


# --------------------------------------------------------------------------------------------------
# 2. An OpenAI-compatible HTTP server (vLLM, llama.cpp's server, Ollama)
# --------------------------------------------------------------------------------------------------
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class OpenAIClient(LLM):
    """A model behind an OpenAI-compatible HTTP API, through :mod:`httpx`.

    base_url: ends in ``/v1`` (e.g. ``http://127.0.0.1:8080/v1``); default ``$PAPERLAB_LLM_BASE_URL``.
    model: the server's model name; default ``$PAPERLAB_LLM_MODEL``.
    api_key: sent as ``Authorization: Bearer <key>`` if given; default ``$PAPERLAB_LLM_KEY`` or
        ``$OPENAI_API_KEY`` (local servers usually need none).
    endpoint: ``"chat"`` (``/chat/completions``; each prompt is one user message) or ``"completions"``
        (``/completions``; raw text continuation, like the tiny model).
    timeout: seconds to wait for a reply. max_retries: further attempts after a 429, a 5xx, a timeout or a
        refused connection, waiting ``backoff * 2**attempt`` seconds (or the server's Retry-After, capped
        at 30 s) in between. Other errors (a 404 for an unknown model, a 401) are raised at once.
    logprobs: ask for token log-probabilities (not every server supports them).

    :meth:`logprob` needs the completions endpoint with ``echo`` (vLLM supports it); it sums the log-probs
    of the echoed tokens that start at or after the end of the prompt (a token that straddles the
    boundary counts as the prompt's).
    """

    def __init__(self, base_url: str | None = None, model: str | None = None, *, api_key: str | None = None,
                 endpoint: str = "chat", timeout: float = 60.0, max_retries: int = 3, backoff: float = 0.5,
                 logprobs: bool = False, transport=None):
        super().__init__()
        import httpx

        base_url = base_url or os.environ.get("PAPERLAB_LLM_BASE_URL")
        model = model or os.environ.get("PAPERLAB_LLM_MODEL")
        if not base_url:
            raise ValueError("OpenAIClient needs base_url (or $PAPERLAB_LLM_BASE_URL), e.g. http://127.0.0.1:8080/v1")
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if not model or not isinstance(model, str):
            raise ValueError(f"OpenAIClient needs model (or $PAPERLAB_LLM_MODEL): the server's model name, "
                             f"got {model!r}")
        if endpoint not in ("chat", "completions"):
            raise ValueError(f"endpoint must be 'chat' or 'completions', got {endpoint!r}")
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        if not (isinstance(backoff, (int, float)) and backoff >= 0):
            raise ValueError(f"backoff must be a number of seconds >= 0, got {backoff!r}")
        self.base_url, self.model, self.endpoint = base_url.rstrip("/"), model, endpoint
        self.max_retries, self.backoff, self.want_logprobs = max_retries, float(backoff), logprobs
        api_key = api_key or os.environ.get("PAPERLAB_LLM_KEY") or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(timeout=timeout, headers=headers, transport=transport)
        self.timeout = float(timeout)
        self.name = f"{model} at {self.base_url} ({endpoint} endpoint)"

    def close(self) -> None:
        self.http.close()

    # ---------------------------------------------------------------- HTTP with retries
    def _post(self, path: str, payload: dict) -> dict:
        import httpx

        url = f"{self.base_url}{path}"
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                response = self.http.post(url, json=payload)
            except httpx.TimeoutException:
                if last:
                    raise LLMTimeoutError(f"no reply from {url} within {self.timeout:g} s "
                                          f"({self.max_retries + 1} attempts)") from None
                self._wait(attempt, None)
                continue
            except httpx.TransportError as err:
                if last:
                    raise LLMError(f"cannot reach {url} ({type(err).__name__}: {err}); is the server "
                                   "running?") from None
                self._wait(attempt, None)
                continue
            if response.status_code in RETRY_STATUS and not last:
                self._wait(attempt, response.headers.get("retry-after"))
                continue
            return self._parse_json(response, url)
        raise AssertionError("unreachable")  # pragma: no cover

    def _wait(self, attempt: int, retry_after: str | None) -> None:
        delay = self.backoff * 2**attempt
        if retry_after is not None:
            try:
                delay = max(delay, min(float(retry_after), 30.0))
            except ValueError:
                pass
        time.sleep(delay)

    def _parse_json(self, response, url: str) -> dict:
        try:
            data = response.json()
        except (json.JSONDecodeError, ValueError):
            data = None
        if response.status_code == 404:
            raise LLMError(f"{url} answered 404 ({_server_message(data, response)}): check the model name "
                           f"{self.model!r} (the server has: {self._available_models()}) and that the base "
                           "URL ends in /v1")
        if response.status_code in (401, 403):
            raise LLMError(f"{url} refused the request ({response.status_code}: "
                           f"{_server_message(data, response)}); set PAPERLAB_LLM_KEY or OPENAI_API_KEY")
        if response.status_code >= 400:
            raise LLMError(f"{url} answered {response.status_code}: {_server_message(data, response)}")
        if not isinstance(data, dict):
            raise LLMResponseError(f"malformed reply from {url}: not a JSON object: {response.text[:200]!r}")
        return data

    def _available_models(self) -> str:
        try:
            data = self.http.get(f"{self.base_url}/models").json()
            names = sorted(str(m["id"]) for m in data["data"])
            return ", ".join(names) if names else "no models"
        except Exception:  # noqa: BLE001 - best effort, only to improve an error message
            return "unknown (GET /models failed)"

    # ---------------------------------------------------------------- the two calls
    def _request(self, prompt: str, n: int, temperature: float, max_tokens: int,
                 stop: tuple[str, ...]) -> dict:
        payload: dict = {"model": self.model, "n": n, "temperature": temperature, "max_tokens": max_tokens}
        if stop:
            payload["stop"] = list(stop)
        if self.endpoint == "chat":
            payload["messages"] = [{"role": "user", "content": prompt}]
            if self.want_logprobs:
                payload["logprobs"] = True
            return self._post("/chat/completions", payload)
        payload["prompt"] = prompt
        if self.want_logprobs:
            payload["logprobs"] = 1
        return self._post("/completions", payload)

    def _parse_choice(self, choice, url: str) -> Completion:
        if not isinstance(choice, dict):
            raise LLMResponseError(f"malformed reply from {url}: a choice is not an object: {choice!r:.200}")
        if self.endpoint == "chat":
            message = choice.get("message")
            text = message.get("content") if isinstance(message, dict) else None
            entries = (choice.get("logprobs") or {}).get("content") if isinstance(choice.get("logprobs"),
                                                                                  dict) else None
            logprobs = tuple(float(e["logprob"]) for e in entries) if entries else None
        else:
            text = choice.get("text")
            lp = choice.get("logprobs")
            values = lp.get("token_logprobs") if isinstance(lp, dict) else None
            logprobs = tuple(float(v) for v in values if v is not None) if values else None
        if not isinstance(text, str):
            where = "message.content" if self.endpoint == "chat" else "text"
            raise LLMResponseError(f"malformed reply from {url}: a choice has no {where} string: "
                                   f"{choice!r:.200}")
        finish = choice.get("finish_reason") or "stop"
        return Completion(text, "length" if finish == "length" else "stop", logprobs)

    def _complete(self, prompts, n, temperature, max_tokens, stop):
        url = f"{self.base_url}/{'chat/completions' if self.endpoint == 'chat' else 'completions'}"
        out, prompt_tokens, generated = [], 0, 0
        for prompt in prompts:
            samples: list[Completion] = []
            for _ in range(n):  # servers that ignore n (some do) are asked again for the rest
                data = self._request(prompt, n - len(samples), temperature, max_tokens, stop)
                choices = data.get("choices")
                if not isinstance(choices, list) or not choices:
                    raise LLMResponseError(f"malformed reply from {url}: no 'choices' list: {data!r:.200}")
                parsed = [self._parse_choice(c, url) for c in choices]
                samples += parsed[: n - len(samples)]
                p, g = self._usage_of(data, prompt, parsed)
                prompt_tokens, generated = prompt_tokens + p, generated + g
                if len(samples) >= n:
                    break
            out.append(samples)
        return out, prompt_tokens, generated

    def _usage_of(self, data: dict, prompt: str, completions: list[Completion]) -> tuple[int, int]:
        usage = data.get("usage")
        if isinstance(usage, dict) and "prompt_tokens" in usage:
            return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        self.usage.estimated = True
        return math.ceil(len(prompt) / 4), sum(math.ceil(len(c.text) / 4) for c in completions)

    def _logprob(self, prompts, continuations):
        url = f"{self.base_url}/completions"
        values, tokens = [], 0
        for prompt, continuation in zip(prompts, continuations):
            if not continuation:
                values.append(0.0)
                continue
            data = self._post("/completions", {"model": self.model, "prompt": prompt + continuation,
                                               "max_tokens": 1, "echo": True, "logprobs": 0,
                                               "temperature": 0})
            choices = data.get("choices")
            lp = choices[0].get("logprobs") if isinstance(choices, list) and choices and \
                isinstance(choices[0], dict) else None
            if not isinstance(lp, dict) or not lp.get("token_logprobs") or not lp.get("text_offset"):
                raise LLMResponseError(f"{url} did not return echoed prompt log-probabilities (logprobs."
                                       "token_logprobs and text_offset); logprob() needs a server whose "
                                       "completions endpoint supports echo=True (vLLM does)")
            end = len(prompt + continuation)
            total = sum(float(v) for v, offset in zip(lp["token_logprobs"], lp["text_offset"])
                        if v is not None and len(prompt) <= offset < end)
            values.append(total)
            usage = data.get("usage")
            tokens += int(usage["prompt_tokens"]) if isinstance(usage, dict) and "prompt_tokens" in usage \
                else math.ceil(end / 4)
        return values, tokens


def _server_message(data, response) -> str:
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if data.get("detail"):
            return str(data["detail"])
    return response.text[:200] or response.reason_phrase


# --------------------------------------------------------------------------------------------------
# 3. A local Hugging Face causal LM (optional: needs transformers)
# --------------------------------------------------------------------------------------------------
def _transformers():
    try:
        import transformers
    except ImportError as err:
        raise ImportError("the hf backend needs the transformers package (pip install transformers); it "
                          "is not a dependency of paperlab, and the tiny and openai backends do not need "
                          "it") from err
    return transformers


def _stream_seed(*parts: int) -> int:
    """One 63-bit seed from integers (``(seed, call, prompt)``): distinct parts give unrelated streams."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> 1)


class HFCausalLM(LLM):
    """A Hugging Face ``AutoModelForCausalLM`` saved in a local folder (``local_files_only``: no download).

    Sampling uses ``model.generate``; token log-probabilities are recomputed with one forward pass
    (temperature 1). Reproducible: prompt ``i`` of call ``c`` samples from its own stream, seeded from
    ``(seed, c, i)``, inside :func:`torch.random.fork_rng`, so prompts of one call (even the same prompt
    twice) draw independent samples and the caller's global random state is left as it was.
    :meth:`logprob` counts as the continuation the tokens after the prompt's own tokenization (a token
    that merges the end of the prompt with the start of the continuation counts as the continuation's).
    """

    def __init__(self, path: str | Path, *, device: str | torch.device | None = None, seed: int = 0):
        super().__init__()
        path = Path(path).expanduser()
        if not path.is_dir():
            raise ValueError(f"hf backend: {str(path)!r} is not a folder holding a saved model")
        transformers = _transformers()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = transformers.AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        self.seed = int(seed)
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id
        self.name = f"{path.name} (Hugging Face, local)"

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]

    @torch.no_grad()
    def _token_logprobs(self, prompt_ids: list[int], continuation_ids: list[int]) -> list[float]:
        ids = torch.tensor([prompt_ids + continuation_ids], device=self.device)
        logits = self.model(ids).logits[0, :-1].float()
        logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[0, 1:, None]).squeeze(-1)
        return logp[len(prompt_ids) - 1:].tolist()

    @torch.no_grad()
    def _complete(self, prompts, n, temperature, max_tokens, stop):
        out, prompt_tokens, generated = [], 0, 0
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        for index, prompt in enumerate(prompts):
            ids = self._encode(prompt)
            if not ids:
                raise ValueError("hf backend: a prompt encodes to no tokens; give a non-empty prompt")
            sampling = {"do_sample": True, "temperature": temperature, "top_k": 0} if temperature > 0 \
                else {"do_sample": False}
            inputs = torch.tensor([ids], device=self.device)
            with torch.random.fork_rng(devices=cuda):  # generate() draws from the global generator
                torch.manual_seed(_stream_seed(self.seed, self.usage.calls, index))
                sequences = self.model.generate(
                    inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_tokens,
                    num_return_sequences=n if temperature > 0 else 1, pad_token_id=self.pad_id, **sampling)
            rows = sequences.tolist() if temperature > 0 else sequences.tolist() * n  # greedy: one answer
            samples = []
            for row in rows:
                new = row[len(ids):]
                ended = self.eos_id is not None and self.eos_id in new
                if ended:
                    new = new[:new.index(self.eos_id) + 1]
                body = new[:-1] if ended else new
                text, stopped = _cut_at_stop(self.tokenizer.decode(body, skip_special_tokens=True), stop)
                logprobs = self._token_logprobs(ids, new) if new else []
                samples.append(Completion(text, "stop" if ended or stopped else "length", tuple(logprobs)))
                generated += len(new)
            out.append(samples)
            prompt_tokens += len(ids)
        return out, prompt_tokens, generated

    def _logprob(self, prompts, continuations):
        values, tokens = [], 0
        for prompt, continuation in zip(prompts, continuations):
            prompt_ids, full = self._encode(prompt), self._encode(prompt + continuation)
            if not prompt_ids:
                raise ValueError("hf backend: a prompt encodes to no tokens; give a non-empty prompt")
            cut = min(len(prompt_ids), len(full))
            scored = self._token_logprobs(full[:cut], full[cut:]) if len(full) > cut else []
            values.append(float(sum(scored)))
            tokens += len(full)
        return values, tokens


# --------------------------------------------------------------------------------------------------
# The switch
# --------------------------------------------------------------------------------------------------
def _bad_spec(spec: str, why: str) -> ValueError:
    forms = "\n  ".join(VALID_FORMS)
    return ValueError(f"{ENV_VAR}={spec!r}: {why}. Valid forms:\n  {forms}")


def parse_spec(spec: str) -> tuple[str, dict]:
    """``"openai:http://h:8080/v1/m"`` -> ``("openai", {"base_url": "http://h:8080/v1", "model": "m",
    "endpoint": "chat"})``; ``"hf:/p"`` -> ``("hf", {"path": "/p"})``; ``"tiny"`` -> ``("tiny", {})``."""
    if not isinstance(spec, str) or not spec.strip():
        raise _bad_spec(str(spec), "empty value")
    spec = spec.strip()
    if spec == "tiny":
        return "tiny", {}
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise _bad_spec(spec, f"unknown backend {spec!r}")
    if kind in ("openai", "openai-completions"):
        base, marker, model = rest.partition("/v1/")
        if not marker or not model.strip("/"):
            raise _bad_spec(spec, "the URL must be <base URL ending in /v1>/<model name>")
        return "openai", {"base_url": base + "/v1", "model": model.strip("/"),
                          "endpoint": "chat" if kind == "openai" else "completions"}
    if kind == "hf":
        return "hf", {"path": rest}
    raise _bad_spec(spec, f"unknown backend {kind!r}")


def from_env(*, tiny: LLM | Callable[[], LLM] | None = None, spec: str | None = None, **kwargs) -> LLM:
    """The language model that ``$PAPERLAB_LLM`` (or ``spec``) names; ``tiny`` when unset.

    tiny: the chapter's tiny model, or a function that builds it (called only when the tiny backend is
    chosen, so a reader with a real model does not train the tiny one). ``kwargs`` go to the chosen
    backend's constructor (e.g. ``timeout=`` for :class:`OpenAIClient`, ``device=`` for :class:`HFCausalLM`).
    """
    spec = spec if spec is not None else (os.environ.get(ENV_VAR, "").strip() or "tiny")
    kind, arguments = parse_spec(spec)
    if kind == "tiny":
        if tiny is None:
            raise ValueError(f"{ENV_VAR}=tiny needs the chapter's tiny model: from_env(tiny=...)")
        model = tiny() if callable(tiny) and not isinstance(tiny, LLM) else tiny
        if not isinstance(model, LLM):
            raise TypeError(f"tiny must be an LLM (or build one), got {type(model).__name__}")
        return model
    if kind == "openai":
        return OpenAIClient(**arguments, **kwargs)
    return HFCausalLM(arguments["path"], **kwargs)
