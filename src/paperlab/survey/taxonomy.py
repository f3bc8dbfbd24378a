"""The survey's map of automated alignment (Cao et al. 2024), as data.

Four sources of alignment signal, each with its sub-branches and a few representative methods (from the
survey and its companion list, icip-cas/awesome-auto-alignment), plus the survey's section on mechanisms.
:data:`CHAPTERS` places every chapter of this book on the map: where its method gets its signal, or,
for the chapters whose papers are not about alignment, the branch "outside the map".

The chapter draws this as a sunburst (:func:`sunburst_rows`) and lists the placements as a table with
links; the data lives here once.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Branch", "TAXONOMY", "MECHANISMS", "Placement", "CHAPTERS", "sunburst_rows"]


@dataclass(frozen=True)
class Branch:
    """A sub-branch of one signal source: its name, what the signal is, and example methods."""

    name: str
    signal: str
    examples: tuple[str, ...]


# source of the signal -> its sub-branches (one section of the survey each)
TAXONOMY: dict[str, tuple[Branch, ...]] = {
    "Inductive bias": (
        Branch("Uncertainty filtering", "agreement among the model's own samples",
               ("self-consistency", "LMSI", "West-of-N")),
        Branch("Self-judge / critique / refine", "the model grades or revises its own outputs",
               ("Constitutional AI", "Self-Rewarding LMs", "OAIF")),
        Branch("Context distillation", "behaviour under a guiding prompt, distilled into the weights",
               ("Askell et al. 2021", "RLCD")),
        Branch("Task decomposition", "solving a hard task through easier sub-tasks",
               ("IDA", "least-to-most prompting", "plan-and-solve")),
        Branch("Self-play", "games between copies of the model (generator vs discriminator, debate)",
               ("SPIN", "APO", "Consensus Game", "debate")),
    ),
    "Behaviour imitation": (
        Branch("Instruction construction", "instructions written by a model",
               ("Self-Instruct", "Alpaca", "WizardLM", "instruction back-translation")),
        Branch("Response-guided distillation", "a stronger model's responses",
               ("GPT-4 distillation", "WizardMath", "FireAct")),
        Branch("Preference-guided distillation", "a stronger model's preferences",
               ("UltraFeedback", "Zephyr")),
        Branch("Weak-to-strong alignment", "a weaker supervisor's labels",
               ("Burns et al. 2023", "easy-to-hard generalisation")),
    ),
    "Model feedback": (
        Branch("Scalar reward", "a reward model's score",
               ("RLHF", "RLAIF", "RAFT", "best-of-n")),
        Branch("Binary verifier", "a verifier's accept / reject",
               ("Cobbe et al. 2021", "STaR", "process reward models", "Math-Shepherd")),
        Branch("Text critic", "a critique in words", ("Shepherd", "Saunders et al. 2022")),
    ),
    "Environment feedback": (
        Branch("Social interaction", "simulated social agents' reactions",
               ("Stable Alignment", "SOTOPIA-pi")),
        Branch("Human collective intelligence", "principles gathered from the public",
               ("Collective Constitutional AI",)),
        Branch("Tool-execution feedback", "a tool's output: tests pass, a calculator agrees",
               ("Self-Debug", "CRITIC")),
        Branch("Embodied environment", "reward from an interactive environment",
               ("TWOSOME", "Voyager", "ETO")),
    ),
}

# The survey's section on underlying mechanisms: why automated alignment can work at all.
MECHANISMS: tuple[Branch, ...] = (
    Branch("What alignment changes", "alignment mostly elicits what pre-training learnt",
           ("LIMA", "URIAL", "superficial alignment hypothesis")),
    Branch("Why self-feedback works", "checking can be easier than producing (generator-verifier gap)",
           ("Generative AI paradox", "generator-validator consistency", "CriticBench")),
    Branch("Is weak-to-strong feasible?", "a strong model can exceed its weak supervisor",
           ("Burns et al. 2023", "easy-to-hard generalisation")),
)

OUTSIDE = "Outside the map"


@dataclass(frozen=True)
class Placement:
    """Where one chapter of the book sits: ``source`` (a key of :data:`TAXONOMY`, ``"Mechanisms"`` or
    :data:`OUTSIDE`), ``branch`` (a sub-branch name there), the reason in a phrase, and the chapter's
    MyST target (``None`` for a chapter not yet in the book)."""

    chapter: str
    source: str
    branch: str
    why: str
    target: str | None


CHAPTERS: tuple[Placement, ...] = (
    Placement("Automated alignment: a map (this chapter)", "Model feedback", "Scalar reward",
              "reward model, best-of-n, policy gradient and DPO; and one demo per source", "sec-align-why"),
    Placement("Buffer of Thoughts", "Inductive bias", "Task decomposition",
              "retrieves and reuses high-level thought templates at inference time", "sec-bot-why"),
    Placement("SaySelf", "Inductive bias", "Uncertainty filtering",
              "self-consistency of sampled answers supervises stated confidence, then a scalar reward",
              "sec-sayself-why"),
    Placement("DITTO", "Behaviour imitation", "Preference-guided distillation",
              "a user's demonstrations are preferred over the model's own samples (self-play comparisons)",
              "sec-ditto"),
    Placement("AgentGym", "Environment feedback", "Embodied environment",
              "an agent improves from the rewards of interactive environments (AgentEvol)", "sec-agentgym"),
    Placement("The toolkit", OUTSIDE, "Pre-training", "the tiny GPT every chapter builds on",
              "sec-toolkit-why"),
    Placement("Mamba-2 and state space duality", OUTSIDE, "Architecture", "a sequence-model architecture",
              "sec-ssd-why"),
    Placement("MatMul-free language models", OUTSIDE, "Architecture", "an efficient architecture",
              "sec-mmf-idea"),
    Placement("NLLB", OUTSIDE, "Pre-training", "multilingual translation with mixtures of experts",
              "sec-nllb-why"),
    Placement("Sparse autoencoders", "Mechanisms", "Interpretability",
              "reading what a model represents: a tool for checking alignment, not a signal", "sec-sae-why"),
    Placement("Geometry of concepts", "Mechanisms", "Interpretability",
              "how concepts are laid out inside a model: a tool for checking alignment", "sec-geometry-why"),
)


def _check_placements() -> None:
    for place in CHAPTERS:
        if place.source in TAXONOMY:
            names = {b.name for b in TAXONOMY[place.source]}
            if place.branch not in names:
                raise ValueError(f"{place.chapter}: {place.branch!r} is not a branch of {place.source!r}")
        elif place.source not in ("Mechanisms", OUTSIDE):
            raise ValueError(f"{place.chapter}: unknown source {place.source!r}")


_check_placements()


def sunburst_rows() -> list[dict]:
    """Rows ``{id, parent, label, hover}`` for a plotly sunburst: root -> source -> branch -> chapter.

    Every branch of the survey appears (with its signal and examples on hover); chapters hang under the
    branch that places them (a chapter outside the map, or under "Mechanisms", gets its own branch).
    """
    root = "Where the alignment signal comes from"
    rows = [{"id": root, "parent": "", "label": "Alignment<br>signals", "hover": root}]
    for source, branches in TAXONOMY.items():
        rows.append({"id": source, "parent": root, "label": source, "hover": source})
        for branch in branches:
            rows.append({"id": f"{source}/{branch.name}", "parent": source, "label": branch.name,
                         "hover": f"{branch.signal}<br>e.g. {', '.join(branch.examples)}"})
    extra_sources = {"Mechanisms": "why automated alignment can work (the survey's section on mechanisms)",
                     OUTSIDE: "chapters whose papers are not about alignment"}
    for source, hover in extra_sources.items():
        rows.append({"id": source, "parent": root, "label": source, "hover": hover})
    for branch in MECHANISMS:
        rows.append({"id": f"Mechanisms/{branch.name}", "parent": "Mechanisms", "label": branch.name,
                     "hover": f"{branch.signal}<br>e.g. {', '.join(branch.examples)}"})
    known = {row["id"] for row in rows}
    for place in CHAPTERS:
        parent = f"{place.source}/{place.branch}"
        if parent not in known:
            rows.append({"id": parent, "parent": place.source, "label": place.branch, "hover": place.branch})
            known.add(parent)
        status = "" if place.target else " (planned)"
        rows.append({"id": f"{parent}/{place.chapter}", "parent": parent,
                     "label": f"<b>{place.chapter.split(' (')[0]}</b>{status}",
                     "hover": f"chapter: {place.chapter}{status}<br>{place.why}"})
    return rows
