"""The book's experiments by name, for ``python -m paperlab``.

Entries are import paths, so listing experiments imports nothing heavy. (This lives apart from
:mod:`paperlab.experiments` so that adding an entry does not change the code, and so the cache keys, of
the experiments themselves.)
"""

from __future__ import annotations

import importlib

from paperlab.experiments import Experiment

# name -> ("module:attribute", one-line summary)
REGISTRY: dict[str, tuple[str, str]] = {
    "toolkit": (
        "paperlab.toolkit:EXPERIMENT",
        "Train the tiny GPT on the synthetic grammar corpus; loss curve, entropy bound, samples (chapter 1).",
    ),
    "matmulfree": (
        "paperlab.matmulfree.experiments:EXPERIMENT",
        "MatMul-free LM (ternary BitLinear + MLGRU) vs Transformer++: loss vs size, LR sweep, ternary "
        "attention, packed memory, add-only inference.",
    ),
    "ssd": (
        "paperlab.ssd.experiments:EXPERIMENT",
        "Mamba-2 / SSD: recurrence = attention form = chunked algorithm; cost vs length and state size; "
        "MQAR recall vs state size.",
    ),
    "sae": (
        "paperlab.sae.experiments:EXPERIMENT",
        "TopK sparse autoencoders: MSE-L0 frontier, scaling law, dead latents, feature recovery, Multi-TopK, "
        "downstream and probe loss.",
    ),
    "nllb": (
        "paperlab.nllb.experiments:EXPERIMENT",
        "NLLB: multilingual transfer vs bilingual, dense vs top-2 MoE (same active parameters), EOM and "
        "curriculum on low-resource directions, routing by language, zero-shot, on a synthetic world.",
    ),
    "survey": (
        "paperlab.survey.experiments:EXPERIMENT",
        "Automated alignment, one demo per signal source on an addition task with a gold checker: "
        "self-consistency, generator-verifier gap, weak-to-strong, reward models, best-of-n, policy "
        "gradient, DPO, environment feedback.",
    ),
    "bot": (
        "paperlab.bot.experiments:EXPERIMENT",
        "Buffer of Thoughts: tiny models as distiller and reasoners on four task families; IO, CoT, Tree of "
        "Thoughts and BoT (meta-buffer, retrieval threshold, sandboxed programs, buffer manager); accuracy "
        "and cost.",
    ),
    "agentgym": (
        "paperlab.agentgym.experiments:EXPERIMENT",
        "AgentGym: four text environments behind one HTTP interface; a tiny GPT agent by behavioural cloning "
        "(BC_base, BC_large) and AgentEvol (explore, keep successes, retrain), on held-out instructions.",
    ),
    "geometry": (
        "paperlab.geometry.experiments:EXPERIMENT",
        "Geometry of categorical/hierarchical concepts: causal inner product, concept vectors, hierarchical "
        "orthogonality vs controls, simplices, interventions (WordNet + tiny LM).",
    ),
    "sayself": (
        "paperlab.sayself.experiments:EXPERIMENT",
        "SaySelf: calibrated confidence with self-reflective rationales (consistency SFT, then RL on the "
        "confidence tokens) vs plain SFT and self-consistency, in and out of distribution, on a synthetic "
        "knowledge world.",
    ),
    "ditto": (
        "paperlab.ditto.experiments:EXPERIMENT",
        "DITTO: adapt a tiny GPT to held-out synthetic authors from 7 demonstrations; few-shot, SFT, SPIN "
        "and DITTO judged head to head by two style classifiers; sample efficiency, iterations, ablations.",
    ),
}


def names() -> list[str]:
    return sorted(REGISTRY)


def get(name: str) -> Experiment:
    """The registered experiment called ``name`` (imported on demand)."""
    if name not in REGISTRY:
        raise KeyError(f"unknown experiment {name!r}; known experiments: {', '.join(names())}")
    target, _ = REGISTRY[name]
    module_name, attribute = target.split(":")
    return getattr(importlib.import_module(module_name), attribute)
