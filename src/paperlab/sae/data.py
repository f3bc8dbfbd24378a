"""The two data sources of the SAE chapter.

1. :class:`SyntheticConfig` / :func:`make_synthetic`: activations in superposition with known features.
   ``n_features`` random unit directions ``f_i`` in ``d_model`` dimensions (many more features than
   dimensions); feature ``i`` is active in a sample with probability ``p_i`` following a Zipf law
   (``p_i ∝ (i + 1)^(-zipf_exponent)``, scaled so that ``mean_active`` features are active on average),
   with magnitude ``~ Uniform(0.5, 1.5)``; a sample is ``x = sum_i a_i f_i + noise_std * N(0, I)``.
2. :func:`lm_activations`: residual-stream activations of the toolkit's tiny GPT (after block
   ``layer - 1``) on fresh sentences of its grammar, with a binary label per token for the probe: whether
   the token is a plural noun (a feature shared by many tokens; a single latent captures it only if the
   SAE learned "plural noun" rather than one latent per word).
   As for the paper's released TopK SAEs, each activation is layer-normalised over ``d_model`` before
   the SAE sees it, ``x = (h - mean(h)) / std(h)`` (:func:`layer_normalise`), and un-normalised after
   (``h_hat = x_hat * std + mean``). Without it, a few tokens with very large activations (the first
   position of each window) dominate the variance, and a single latent can "explain" 97% of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from paperlab import cache, toolkit
from paperlab.config import PROFILES, check_choice, check_ints, check_numbers
from paperlab.utils import cpu_threads

__all__ = ["SyntheticConfig", "SyntheticData", "make_synthetic", "LMDataConfig", "lm_activations",
           "layer_normalise"]


def layer_normalise(h: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``((h - mean) / std, mean, std)`` with mean and std over the last dimension (kept, size 1)."""
    mean = h.mean(-1, keepdim=True)
    std = (h - mean).pow(2).mean(-1, keepdim=True).add(eps).sqrt()
    return (h - mean) / std, mean, std


FEATURE_SEED_OFFSET = 7_919
"""The true features of ``SyntheticConfig(seed=s)`` are drawn with seed ``FEATURE_SEED_OFFSET + s``."""


@dataclass(frozen=True)
class SyntheticConfig:
    d_model: int = 64
    n_features: int = 512
    mean_active: float = 5.0
    zipf_exponent: float = 0.7
    noise_std: float = 0.02
    seed: int = 0

    def __post_init__(self):
        check_ints(self, "d_model", "n_features")
        check_ints(self, "seed", low=0)
        check_numbers(self, "mean_active", low=0, high=self.n_features, open_low=True)
        check_numbers(self, "zipf_exponent", "noise_std", low=0)


@dataclass
class SyntheticData:
    config: SyntheticConfig
    features: torch.Tensor  # (n_features, d_model), unit rows
    probabilities: torch.Tensor  # (n_features,)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` samples: (n, d_model)."""
        c = self.config
        active = torch.rand(n, c.n_features, generator=generator) < self.probabilities
        rows, cols = active.nonzero(as_tuple=True)
        magnitude = 0.5 + torch.rand(rows.numel(), generator=generator)  # a_i ~ U(0.5, 1.5), active only
        x = torch.zeros(n, c.d_model).index_add_(0, rows, magnitude[:, None] * self.features[cols])
        return x + c.noise_std * torch.randn(n, c.d_model, generator=generator)


def make_synthetic(config: SyntheticConfig) -> SyntheticData:
    if config.n_features < 1 or config.d_model < 1:
        raise ValueError(f"n_features and d_model must be >= 1, got {config.n_features}, {config.d_model}")
    if not 0 < config.mean_active <= config.n_features:
        raise ValueError(f"mean_active must be in (0, n_features], got {config.mean_active}")
    # The features get their own seed stream: an SAE seeded like the data (``torch.randn(n, d)`` with the
    # same seed) would otherwise start with its decoder exactly on the first n true features.
    generator = torch.Generator().manual_seed(FEATURE_SEED_OFFSET + config.seed)
    features = torch.randn(config.n_features, config.d_model, generator=generator)
    features /= features.norm(dim=1, keepdim=True)
    weights = (torch.arange(config.n_features, dtype=torch.float64) + 1) ** -config.zipf_exponent
    probabilities = (weights * config.mean_active / weights.sum()).clamp(max=1.0).float()
    return SyntheticData(config, features, probabilities)


@dataclass(frozen=True)
class LMDataConfig:
    """Which GPT (a toolkit profile's), which layer, which activation, and how many tokens of fresh grammar
    sentences. ``component``: ``"residual"`` (the residual stream ``h_layer`` after the first ``layer``
    blocks) or
    ``"block"`` (what that block added to it, ``h_layer - h_{layer-1}``: the stream without the token's
    embedding, which carries the token's identity)."""

    toolkit_profile: str = "fast"
    layer: int = 1  # the residual stream after block 1 of 2: the middle of the model
    component: str = "residual"
    n_train_sentences: int = 8_000
    n_val_sentences: int = 800
    seed: int = 1  # sentences sampled with seeds distinct from the toolkit's training data (seed 0)

    def __post_init__(self):
        check_choice(self, "toolkit_profile", PROFILES)
        check_ints(self, "n_train_sentences", "n_val_sentences")
        check_ints(self, "seed", low=0)
        check_ints(self, "layer", low=0, high=toolkit.EXPERIMENT.config(self.toolkit_profile).n_layers)
        check_choice(self, "component", ("residual", "block"))
        if self.component == "block" and self.layer == 0:
            raise ValueError("LMDataConfig.component 'block' needs layer >= 1 (layer 0 is the embedding)")


def _plural_noun_labels(grammar, sentences) -> list[int]:
    """Per word: 1 if it is a plural noun, else 0."""
    plural = set(grammar.categories["N[pl]"])
    return [int(word in plural) for sentence in sentences for word in sentence.words]


def _compute_lm_activations(config: LMDataConfig) -> dict:
    tk_config = toolkit.EXPERIMENT.config(config.toolkit_profile)
    with cpu_threads(1):  # a tiny GPT: one thread is as fast, and robust when the cores are shared
        model, corpus, _ = toolkit.load_trained(tk_config, device="cpu")
    if not 0 <= config.layer <= tk_config.n_layers:
        raise ValueError(f"layer must be in [0, {tk_config.n_layers}], got {config.layer}")
    out = {}
    for split, n, seed in (("train", config.n_train_sentences, 1000 + config.seed),
                           ("val", config.n_val_sentences, 2000 + config.seed)):
        sentences = corpus.grammar.sample(n, seed=seed)
        ids = torch.tensor([i for s in sentences for i in corpus.tokenizer.encode(s.text)], dtype=torch.long)
        labels = torch.tensor(_plural_noun_labels(corpus.grammar, sentences), dtype=torch.long)
        if labels.numel() != ids.numel():  # the word tokenizer maps each word to one id
            raise RuntimeError("token and word counts differ; cannot align the probe labels")
        seq = tk_config.context_length
        n_windows = (ids.numel() - 1) // seq
        idx = ids[: n_windows * seq].view(n_windows, seq)
        targets = ids[1: n_windows * seq + 1].view(n_windows, seq)
        with torch.no_grad():
            _, hidden = model(idx, return_hidden=True)
        h = hidden[config.layer] - (hidden[config.layer - 1] if config.component == "block" else 0)
        normalised, _, _ = layer_normalise(h.reshape(-1, tk_config.d_model))
        out[split] = {"activations": normalised.contiguous(),
                      "idx": idx, "targets": targets,
                      "labels": labels[: n_windows * seq].contiguous()}
    return out


def lm_activations(config: LMDataConfig) -> dict:
    """``{"train"|"val": {"activations": (N, d) layer-normalised, "idx", "targets": (windows, seq),
    "labels": (N,) in {0, 1}}}``, from the artifact cache (the GPT is the toolkit's, trained and cached if
    needed)."""
    return cache.cached("sae-lm-activations", config, lambda: _compute_lm_activations(config))
