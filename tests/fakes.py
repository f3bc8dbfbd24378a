"""Fakes shared by the tests (not a test module): a language model whose replies come from a function."""

from __future__ import annotations

from paperlab import llm


class Scripted(llm.LLM):
    """A model whose replies come from ``respond(prompt, i) -> text`` (``i``: the sample's index); it keeps
    every prompt it was asked in ``prompts``."""

    name = "scripted"

    def __init__(self, respond):
        super().__init__()
        self.respond, self.prompts = respond, []

    def _complete(self, prompts, n, temperature, max_tokens, stop):
        self.prompts += prompts
        out = [[llm.Completion(self.respond(p, i)) for i in range(n)] for p in prompts]
        return out, sum(len(p) for p in prompts), sum(len(c.text) for group in out for c in group)

    def _logprob(self, prompts, continuations):
        return [0.0] * len(prompts), 0
