"""The NLLB chapter's live explorer: the routing of one sentence through the experts, language by
language (see :mod:`paperlab.explore` for the pattern, ``05-nllb.md`` (sec-nllb-routing) for routing)."""

from __future__ import annotations

import torch

from paperlab.explore import Choice, Explorer, IntSlider
from paperlab.nllb.data import HUB, LANGUAGES, World
from paperlab.nllb.train import Translator
from paperlab.plot import labelled

__all__ = ["routing_explorer", "gate_probabilities"]


@torch.no_grad()
def gate_probabilities(translator: Translator,
                       sentences: dict[str, str]) -> dict[str, dict[str, torch.Tensor]]:
    """The gate's probabilities ``p = softmax(W_g x)`` in every encoder MoE layer for each token of each
    sentence (``{language: sentence}``, each read as its language, with its tag and ``<eos>``), in one
    padded batch: ``{layer: {language: (tokens, n_experts)}}``."""
    model = translator.model
    layers = {name: layer for name, layer in model.moe_layers().items() if name.startswith("encoder")}
    rows = [translator.encode_source(sentence, code) for code, sentence in sentences.items()]
    width = max(len(row) for row in rows)
    pad = translator.tokenizer.pad_id
    source = torch.tensor([row + [pad] * (width - len(row)) for row in rows])
    logits, handles = {}, []
    for name, layer in layers.items():  # the gate sees (batch * seq, d_model), row by row
        handles.append(layer.gate.register_forward_hook(
            lambda module, args, out, name=name: logits.__setitem__(name, out.float())))
    try:
        model.eval()
        model.encode(source)
    finally:
        for handle in handles:
            handle.remove()
    return {name: {code: value.view(len(rows), width, -1)[i, : len(rows[i])].softmax(-1)
                   for i, code in enumerate(sentences)} for name, value in logits.items()}


def routing_explorer(translator: Translator, world: World, *, language: str | None = None,
                     languages: tuple[str, ...] | None = None) -> Explorer:
    """Controls: the ``sentence`` (a meaning of the multi-way test set, the same in every language), the
    ``language`` it is read in (one of ``languages``, default every language of the world; first shown:
    ``language``, default the first one after the hub), and the encoder MoE ``layer``.

    Left, the gate's probability of each expert for each token of the sentence in that language, the
    first choice (e1) and second choice (e2, in evaluation the next most likely) marked; right, for the
    same meaning in every language, the share of its tokens whose first choice is each expert: how the
    routing of one meaning differs by language and family. Each change runs the encoder once, on the
    sentence in every language as one batch; nothing is trained.
    """
    layers = [name for name in translator.model.moe_layers() if name.startswith("encoder")]
    if not layers:
        raise ValueError("routing_explorer needs a model with an encoder MoE layer (ffn='moe' or 'cmoe')")
    wanted = LANGUAGES if languages is None else languages
    languages = [code for code in LANGUAGES if code in world.test and code in wanted]
    if language is not None and language not in languages:
        raise ValueError(f"language {language!r} is not one of the explorer's languages {languages}")
    n_experts = translator.model.config.n_experts
    tokenizer = translator.tokenizer

    def draw(fig, *, sentence: int, language: str, layer: str):
        per_language = gate_probabilities(translator, {c: world.test[c][sentence] for c in languages})[layer]
        probs = per_language[language]
        ids = translator.encode_source(world.test[language][sentence], language)
        tokens = [tokenizer.tokens[i] for i in ids]
        token_ax, language_ax = fig.subplots(1, 2, width_ratios=[1, 1])
        image = token_ax.imshow(probs.numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
        top2 = probs.topk(min(2, n_experts), dim=-1).indices
        for row, choices in enumerate(top2.tolist()):
            for rank, expert in enumerate(choices):
                token_ax.text(expert, row, f"e{rank + 1}", ha="center", va="center", fontsize=7,
                              color="w" if probs[row, expert] < 0.6 else "k")
        token_ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
        token_ax.set_xticks(range(n_experts))
        token_ax.grid(False)
        fig.colorbar(image, ax=token_ax, shrink=0.8, label="gate probability p_e")
        labelled(token_ax, "expert", f"token of the {language} sentence",
                 f"{layer}: '{world.test[language][sentence][:40]}'")
        shares = torch.stack([torch.bincount(per_language[code].argmax(-1), minlength=n_experts).float()
                              / per_language[code].shape[0] for code in languages])
        image = language_ax.imshow(shares.numpy(), cmap="magma", vmin=0, vmax=1, aspect="auto")
        language_ax.set_yticks(range(len(languages)),
                               [f"{code} ({LANGUAGES[code]['family']})" for code in languages], fontsize=8)
        language_ax.get_yticklabels()[languages.index(language)].set_fontweight("bold")
        language_ax.set_xticks(range(n_experts))
        language_ax.grid(False)
        fig.colorbar(image, ax=language_ax, shrink=0.8, label="share of first choices")
        labelled(language_ax, "expert", "language (family)", f"test sentence {sentence} in every language")

    return Explorer(draw, {
        "sentence": IntSlider(0, len(world.test[languages[0]]) - 1, 0, label="test sentence"),
        "language": Choice(languages, language or next((c for c in languages if c != HUB), languages[0]),
                           label="language"),
        "layer": Choice(layers, layers[0], label="encoder MoE layer"),
    }, what="the sentence, its language and the MoE layer", figsize=(12, 4.2))
