"""The live explorers: the pattern (paperlab.explore) and each chapter's explorer, built headless with
tiny models and driven through their ipywidgets controls, as a reader in JupyterLab drives them."""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytest.importorskip("ipywidgets")

from paperlab import explore  # noqa: E402
from paperlab.explore import Choice, Explorer, IntSlider, Slider  # noqa: E402


@pytest.fixture(autouse=True)
def close_widgets():
    """Close the widgets a test made (left open, they would be closed at interpreter shutdown, noisily)."""
    yield
    import ipywidgets

    ipywidgets.Widget.close_all()


def drive(explorer: Explorer, name: str, value) -> bytes:
    """Build the live view, move one control to ``value``; return the image before and check that the
    redraw happened with that value and changed the image."""
    box = explorer.widget()
    before = explorer.last_png
    assert before and explorer.last_values == explorer.defaults
    assert value != explorer.defaults[name]
    box.controls[name].value = value  # what a reader's slider or dropdown does
    assert explorer.last_values[name] == value, "the control did not reach draw()"
    assert explorer.last_png != before, f"moving {name} to {value!r} did not change the figure"
    return before


# ------------------------------------------------------------------------------------------ pattern
def _line_explorer() -> Explorer:
    def draw(fig, *, slope: float, n: int, style: str):
        ax = fig.subplots()
        ax.plot(range(n), [slope * i for i in range(n)], style)

    return Explorer(draw, {"slope": Slider(-2.0, 2.0, 1.0), "n": IntSlider(2, 20, 5),
                           "style": Choice({"line": "-", "points": "o"}, "-")}, what="the slope")


def test_explorer_redraws_when_a_control_moves():
    explorer = _line_explorer()
    drive(explorer, "slope", -1.5)
    drive(explorer, "style", "o")
    assert explorer.last_seconds >= 0


def test_explorer_checks_values_before_drawing():
    explorer = _line_explorer()
    with pytest.raises(ValueError, match="unknown control"):
        explorer.figure(slopes=1.0)
    with pytest.raises(ValueError, match=r"slope must be in \[-2, 2\]"):
        explorer.figure(slope=3.0)
    with pytest.raises(ValueError, match="n must be an integer"):
        explorer.figure(n=2.5)
    with pytest.raises(ValueError, match="style must be one of"):
        explorer.figure(style="--")
    with pytest.raises(ValueError, match="low < high"):
        Slider(1.0, 0.0, 0.5)
    with pytest.raises(ValueError, match="must be in"):  # a default outside its range
        Explorer(lambda fig, x: None, {"x": Slider(0.0, 1.0, 2.0)}, what="x")
    with pytest.raises(TypeError, match="draw must be a function"):
        Explorer("not a function", {"x": Slider(0.0, 1.0, 0.5)}, what="x")
    with pytest.raises(ValueError, match="what must say"):
        Explorer(lambda fig, x: None, {"x": Slider(0.0, 1.0, 0.5)}, what=" ")


@pytest.mark.parametrize("static, progress, live", [("1", None, False), ("0", "0", True), (None, "0", False),
                                                     (None, None, False)])
def test_live_or_static(monkeypatch, static, progress, live):
    for name, value in (("PAPERLAB_STATIC", static), ("PAPERLAB_PROGRESS", progress), ("CI", None)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert explore.is_live() is live  # outside a kernel (this test) only PAPERLAB_STATIC=0 makes it live


def test_static_view_is_the_default_figure_with_a_one_line_note(monkeypatch):
    import IPython.display

    monkeypatch.setenv("PAPERLAB_STATIC", "1")
    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objects: shown.extend(objects))
    explorer = _line_explorer()
    explorer.show()
    assert len(shown) == 1 and isinstance(shown[0], IPython.display.Image)
    assert explorer.last_values == explorer.defaults
    assert shown[0].data != explorer.render(), "the static view must carry the note"
    assert "\n" not in explorer.static_note and "JupyterLab" in explorer.static_note


def test_live_view_shows_the_controls(monkeypatch):
    import IPython.display
    import ipywidgets

    monkeypatch.setenv("PAPERLAB_STATIC", "0")
    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objects: shown.extend(objects))
    _line_explorer().show()
    boxes = [shown_object for shown_object in shown if isinstance(shown_object, ipywidgets.VBox)]
    assert len(boxes) == 1 and set(boxes[0].controls) == {"slope", "n", "style"}
    assert any(isinstance(shown_object, IPython.display.Image) for shown_object in shown)  # the figure


# --------------------------------------------------------------------------------- chapter explorers
def test_ssd_explorer_decay_and_chunk_size():
    from paperlab.ssd.explore import semiseparable_explorer

    explorer = semiseparable_explorer(seqlen=24)
    drive(explorer, "decay", 0.6)
    drive(explorer, "chunk_size", 12)


def test_toolkit_explorer_temperature():
    from paperlab import toolkit
    from paperlab.toolkit_explore import temperature_explorer

    config = dataclasses.replace(toolkit.EXPERIMENT.config("fast"), n_sentences=300)
    corpus = toolkit.build_corpus(config)
    torch.manual_seed(0)
    model = toolkit.make_model(config, corpus.tokenizer.vocab_size).eval()
    drive(temperature_explorer(model, corpus, n_samples=4, n_shown=4), "temperature", 2.5)


@pytest.fixture(scope="module")
def tiny_matmulfree():
    from paperlab import toolkit
    from paperlab.matmulfree.model import MatMulFreeConfig, MatMulFreeLM

    corpus = toolkit.build_corpus(dataclasses.replace(toolkit.EXPERIMENT.config("fast"), n_sentences=300))
    torch.manual_seed(0)
    model = MatMulFreeLM(MatMulFreeConfig(vocab_size=corpus.tokenizer.vocab_size, context_length=32,
                                          d_model=16, n_layers=1, n_heads=2)).eval()
    return model, torch.tensor(corpus.tokenizer.encode(corpus.val_sentences[0]))


def test_matmulfree_explorer_scale_and_clip(tiny_matmulfree):
    from paperlab.matmulfree.explore import quantisation_explorer

    model, tokens = tiny_matmulfree
    explorer = quantisation_explorer(model, tokens)
    drive(explorer, "kappa", 3.0)
    drive(explorer, "clip", 0.3)


def test_matmulfree_explorer_at_factor_one_is_the_package_quantiser(tiny_matmulfree):
    from paperlab.matmulfree.explore import bitlinear_inputs, int8_at, ternary_at
    from paperlab.matmulfree.quant import activation_quant, weight_quant

    model, tokens = tiny_matmulfree
    w = torch.randn(8, 12)
    assert torch.equal(ternary_at(w, 1.0), weight_quant(w))
    assert not torch.equal(ternary_at(w, 3.0), weight_quant(w))
    inputs = bitlinear_inputs(model, tokens)
    layer_name, layer = next(iter(model.bitlinears().items()))
    assert torch.equal(int8_at(inputs[layer_name], 1.0), activation_quant(inputs[layer_name]))
    # what the explorer quantises is what the layer quantises: its input after its RMSNorm
    seen = {}
    handle = layer.register_forward_pre_hook(lambda module, args: seen.setdefault("x", args[0]))
    with torch.no_grad():
        model(tokens[None])
    handle.remove()
    layer.impl = "reference"
    with torch.no_grad():
        expected = layer.normalise(seen["x"])[0]
    assert torch.allclose(int8_at(inputs[layer_name], 1.0), expected, atol=1e-6)


def test_sae_explorer_k_and_sae():
    from paperlab.sae.data import SyntheticConfig, make_synthetic
    from paperlab.sae.explore import topk_explorer
    from paperlab.sae.model import TopKSAE

    data = make_synthetic(SyntheticConfig(d_model=16, n_features=64))
    saes = {"TopK": TopKSAE(16, 64, 4, seed=0), "Multi-TopK": TopKSAE(16, 64, 4, multi_topk=True, seed=1)}
    explorer = topk_explorer(saes, data, n_tokens=64, max_k=16)
    drive(explorer, "k", 8)
    drive(explorer, "sae", "TopK")


def test_nllb_explorer_language():
    from paperlab.nllb.data import WorldConfig, build_tokenizer, make_world
    from paperlab.nllb.explore import gate_probabilities, routing_explorer
    from paperlab.nllb.train import RunConfig, Translator, build_model

    world_config = WorldConfig(n_high=100, n_low=10, n_valid=4, n_test=4)
    world = make_world(world_config)
    tokenizer = build_tokenizer(world)
    run = RunConfig(world=world_config, ffn="moe", n_experts=4, d_model=32, d_hidden=64)
    translator = Translator(build_model(run, tokenizer.vocab_size).eval(), tokenizer)
    explorer = routing_explorer(translator, world)
    drive(explorer, "language", "bel")
    # batching the languages does not change a sentence's gate probabilities
    batched = gate_probabilities(translator, {"ara": world.test["ara"][0], "bel": world.test["bel"][0]})
    alone = gate_probabilities(translator, {"bel": world.test["bel"][0]})
    for layer in batched:
        assert torch.allclose(batched[layer]["bel"], alone[layer]["bel"], atol=1e-5)
        assert torch.allclose(batched[layer]["bel"].sum(-1), torch.ones(len(batched[layer]["bel"])))


@pytest.fixture(scope="module")
def tiny_geometry():
    from paperlab.geometry import experiments as E
    from paperlab.geometry.hierarchy import load_hierarchy
    from paperlab.geometry.lm import CorpusConfig, HierarchyCorpus, LMConfig, make_model

    corpus = HierarchyCorpus(CorpusConfig(), load_hierarchy())
    torch.manual_seed(0)
    model = make_model(LMConfig(d_model=16, n_heads=2), corpus).eval()
    return model, corpus, dataclasses.replace(E.EXPERIMENT.config("fast"), n_contexts=16)


def test_geometry_explorer_alpha(tiny_geometry):
    from paperlab.geometry.explore import intervention_explorer

    drive(intervention_explorer(*tiny_geometry), "alpha", 3.0)


def test_geometry_explorer_agrees_with_the_chapters_intervention(tiny_geometry):
    from paperlab.geometry import experiments as E
    from paperlab.geometry.explore import _differences, intervention_setup

    model, corpus, config = tiny_geometry
    with torch.no_grad():
        reference = E._intervention(model, corpus, config)
    setup = intervention_setup(model, corpus, config)
    for alpha, parent, child in zip(reference["alphas"], reference["parent"], reference["child"]):
        ours = _differences(setup, config, alpha)
        assert ours == pytest.approx((parent, child), abs=1e-5)


def test_survey_vote_explorer():
    from paperlab.nn import GPT, GPTConfig
    from paperlab.survey.explore import vote_explorer
    from paperlab.survey.task import AdditionTask, TaskConfig

    task = AdditionTask(TaskConfig(n_demos=10, n_transfer=10, n_unlabelled=10, n_test=20), seed=0)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=task.tokenizer.vocab_size, context_length=task.context_length,
                          d_model=16, n_layers=1, n_heads=2)).eval()
    explorer = vote_explorer(model, task, n_questions=10, n_samples=8)
    drive(explorer, "temperature", 2.5)
    drive(explorer, "question", 3)
    with pytest.raises(ValueError, match="n_questions must be in"):
        vote_explorer(model, task, n_questions=1)
