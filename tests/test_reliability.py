"""Issue 23: every entry point rejects bad input before working, and nothing a reader does loses work.

The command lines (``python -m paperlab``, ``python -m paperlab.bench``) and the public constructors of
every chapter package. The cache's side of the issue is in ``test_config_cache.py``.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from paperlab import cache, cli, experiments, registry
from paperlab.train import TrainConfig


# ------------------------------------------------------------------------------------ python -m paperlab
@dataclass(frozen=True)
class Tiny:
    steps: int = 1

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"Tiny.steps must be a positive integer, got {self.steps}")


@pytest.fixture
def dummy(monkeypatch, tmp_path):
    """A registered experiment ``dummy`` that records its calls; returns that list."""
    monkeypatch.setenv("PAPERLAB_PROFILE", "fast")
    monkeypatch.setenv("PAPERLAB_CACHE", str(tmp_path / "cache"))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    calls = []

    def run(config, device=None):
        calls.append((config, device))
        seconds = 1.5 + len(calls)  # a different wall-clock time on every run
        return {"loss": 0.25, "train_seconds": seconds,
                "history": {"loss": [1.0, 0.5], "seconds": seconds},
                "runs": [{"x": 1, "seconds": seconds}, {"x": 2}],
                "cost": {"by_length": {"128": seconds}}}

    def check(config):
        if config.steps == 2:
            raise ValueError("Tiny.steps must not be 2 for run()")

    exp = experiments.Experiment("dummy", "book/none.md", {"fast": Tiny(), "full": Tiny()}, run,
                                 timings=("cost",), check=check)
    monkeypatch.setitem(registry.REGISTRY, "dummy", ("x:y", "a test experiment"))
    monkeypatch.setattr(registry, "get", lambda name: exp if name == "dummy" else pytest.fail(name))
    return calls


def _main(argv, capsys):
    from paperlab.__main__ import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines()


def test_no_cache_is_a_cold_run_in_a_fresh_cache_that_is_removed(dummy, monkeypatch, tmp_path, capsys):
    """--no-cache recomputes everything, but what two pieces of the run share is computed once (with the
    cache disabled, the SAE experiment retrained its language model for every SAE), and neither the
    reader's cache nor the temporary one is left with anything."""
    from paperlab import cache

    computed, folders = [], []

    def run(config, device=None):
        for _ in range(2):  # two pieces that need the same shared result
            cache.cached("shared", config, lambda: computed.append(1) or {"value": 3})
        folders.append(Path(cache.cache_dir()))
        return {"loss": 0.25}

    exp = experiments.Experiment("dummy", "book/none.md", {"fast": Tiny(), "full": Tiny()}, run)
    monkeypatch.setattr(registry, "get", lambda name: exp)
    user_cache = tmp_path / "cache"
    code, err = _main(["run", "dummy", "--no-cache", "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    assert len(computed) == 1  # computed once in the run, not read from the reader's cache
    assert folders[0] != user_cache and not folders[0].exists()  # the fresh cache is gone
    assert not user_cache.exists() or not any(user_cache.rglob("*.json"))
    assert cache.cache_dir() == user_cache  # the reader's setting is back
    code, err = _main(["run", "dummy", "--no-cache", "--out", str(tmp_path / "o")], capsys)
    assert code == 0 and len(computed) == 2  # a second cold run computes again


def test_ctrl_c_during_a_run_says_what_is_kept_in_one_line(dummy, monkeypatch, tmp_path, capsys):
    from paperlab import cache

    def run(config, device=None):
        cache.cached("finished", config, lambda: {"value": 3})
        raise KeyboardInterrupt  # the reader presses Ctrl-C

    exp = experiments.Experiment("dummy", "book/none.md", {"fast": Tiny(), "full": Tiny()}, run)
    monkeypatch.setattr(registry, "get", lambda name: exp)
    code, err = _main(["run", "dummy", "--out", str(tmp_path / "o")], capsys)
    assert code == 130 and err == [f"interrupted: the runs that finished are in the cache "
                                   f"({cache.cache_dir()}): the same command resumes from them"]
    assert any(cache.cache_dir().rglob("*.json"))
    code, err = _main(["run", "dummy", "--no-cache", "--out", str(tmp_path / "o")], capsys)
    assert code == 130 and err == ["interrupted: nothing is kept (--no-cache)"]
    assert not list((tmp_path / "o").glob("*.json"))  # no results file for an interrupted run


@pytest.mark.parametrize("device", ["tpu", "bogus", "xla", "cuda:99", "cpu:1"])
def test_run_rejects_a_device_before_running(dummy, capsys, tmp_path, device):
    code, err = _main(["run", "dummy", "--device", device, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and not dummy
    assert len(err) == 1 and err[0].startswith("error: --device") and repr(device) in err[0]


def test_run_rejects_an_out_that_is_a_file_before_running(dummy, capsys, tmp_path):
    target = tmp_path / "results"
    target.write_text("my notes")
    code, err = _main(["run", "dummy", "--out", str(target)], capsys)
    assert code == 2 and not dummy and len(err) == 1 and "is a file, not a folder" in err[0]
    assert target.read_text() == "my notes"
    code, err = _main(["run", "dummy", "--out", str(target / "sub")], capsys)  # a folder under a file
    assert code == 2 and not dummy and len(err) == 1 and "not a writable folder" in err[0]


def test_run_rejects_a_results_path_that_is_a_folder(dummy, capsys, tmp_path):
    (tmp_path / "dummy-fast.json").mkdir()
    code, err = _main(["run", "dummy", "--out", str(tmp_path)], capsys)
    assert code == 2 and not dummy and len(err) == 1 and "is a folder" in err[0]


@pytest.mark.parametrize("env, value, message", [
    ("RANK", "x", "RANK must be an integer"),
    ("PAPERLAB_PROFILE", "turbo", "unknown profile"),
    ("PAPERLAB_CACHE_DISABLE", "false-ish", "PAPERLAB_CACHE_DISABLE must be 1/true/yes/on"),
    ("PAPERLAB_CACHE", __file__, "(PAPERLAB_CACHE) is a file; point PAPERLAB_CACHE at a folder"),
])
def test_run_rejects_a_bad_environment_before_running(dummy, capsys, monkeypatch, tmp_path, env, value,
                                                      message):
    monkeypatch.setenv(env, value)
    code, err = _main(["run", "dummy", "--out", str(tmp_path)], capsys)
    assert code == 2 and not dummy and len(err) == 1 and message in err[0]


def test_run_rejects_a_bad_override_before_running(dummy, capsys, tmp_path):
    code, err = _main(["run", "dummy", "--set", "steps=0", "--out", str(tmp_path)], capsys)
    assert code == 2 and not dummy and err == ["error: Tiny.steps must be a positive integer, got 0"]
    code, err = _main(["run", "dummy", "--set", "steps=2", "--out", str(tmp_path)], capsys)  # its check
    assert code == 2 and not dummy and err == ["error: Tiny.steps must not be 2 for run()"]


def test_a_package_edited_during_a_run_ends_it_in_one_line_with_nothing_stored(dummy, monkeypatch, tmp_path,
                                                                              capsys):
    exp = registry.get("dummy")
    edited = Path(cache.__file__)
    mtime, size, _ = cache._LOADED[edited]

    def run(config, device=None):  # a package file is saved (other bytes) while the run goes on
        monkeypatch.setitem(cache._LOADED, edited, (mtime - 1, size, b"the bytes this process loaded"))
        return cache.cached("dummy-piece", config, lambda: pytest.fail("computed under an edited package"))

    monkeypatch.setattr(registry, "get", lambda name: dataclasses.replace(exp, run=run))
    code, err = _main(["run", "dummy", "--out", str(tmp_path)], capsys)
    assert code == 1 and err == ["error: paperlab/cache.py changed on disk after this process loaded it: "
                                 "restart the kernel (or rerun the command) so that results are computed "
                                 "and cached by the code on disk"]
    assert not (tmp_path / "dummy-fast.json").exists() and not any((tmp_path / "cache").rglob("*.json"))


def test_run_writes_timings_apart_so_reruns_compare_bitwise(dummy, capsys, tmp_path):
    texts = []
    for _ in range(2):
        assert _main(["run", "dummy", "--out", str(tmp_path)], capsys)[0] == 0
        texts.append(json.loads((tmp_path / "dummy-fast.json").read_text()))
    first, second = texts
    assert json.dumps(first["results"]) == json.dumps(second["results"])  # bit for bit
    assert first["results"] == {"loss": 0.25, "history": {"loss": [1.0, 0.5]}, "runs": [{"x": 1}, {"x": 2}]}
    timed = first["timings"]["results"]
    assert timed == {"train_seconds": 2.5, "history": {"seconds": 2.5}, "runs": [{"seconds": 2.5}, None],
                     "cost": {"by_length": {"128": 2.5}}}
    assert second["timings"]["results"]["train_seconds"] == 3.5 and first["timings"]["total_seconds"] >= 0
    assert not list(tmp_path.glob(".*.tmp"))


def test_run_keeps_the_results_when_the_final_write_fails(dummy, capsys, tmp_path, monkeypatch):
    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli.os, "replace", disk_full)
    code, err = _main(["run", "dummy", "--out", str(tmp_path)], capsys)
    assert code == 1 and len(dummy) == 1
    fallback = Path(err[0].rsplit(" ", 1)[-1])
    assert err[0].startswith("error: could not write") and fallback.parent != tmp_path
    assert json.loads(fallback.read_text())["results"]["loss"] == 0.25
    fallback.unlink()


def test_split_timings_finds_every_wall_clock_field_of_the_experiments():
    """Every wall-clock field the chapters' experiments return is named ``seconds`` or ``*_seconds``, or
    lies in a subtree the experiment declares (the SSD cost sweep)."""
    import ast

    import paperlab

    root = Path(paperlab.__file__).parent
    timed_names = set()
    for path in root.rglob("*.py"):
        if "bench" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            # a dict literal with a value computed from a clock or from a TrainResult's seconds
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values):
                    if isinstance(value, ast.Dict):
                        continue  # a nested dict literal: its own keys are visited by the walk
                    text = ast.unparse(value)
                    if isinstance(key, ast.Constant) and ("perf_counter" in text or ".seconds" in text
                                                          or "t1 - t0" in text or "t2 - t1" in text):
                        timed_names.add(key.value)
    assert timed_names and all(cli.is_timing_key(name) for name in timed_names), timed_names
    assert registry.get("ssd").timings == ("cost",)


def test_cli_entry_point_prints_one_error_line():
    proc = subprocess.run([sys.executable, "-m", "paperlab", "run", "toolkit", "--device", "tpu"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "error: --device 'tpu' is not a device; use cpu or cuda (cuda:N for GPU N)"]


@pytest.mark.parametrize("override, message", [
    ("d_model=0", "ToolkitConfig.d_model must be a positive integer"),
    ("n_heads=3", "n_heads must be a divisor of d_model"),
    ("val_fraction=0", "ToolkitConfig.val_fraction must be a finite number in (0, 1)"),
    ("eval_windows=0", "ToolkitConfig.eval_windows must be a positive integer"),
    ("train.steps=0", "TrainConfig.steps must be an int >= 1"),
    ("train.eval_every=0", "ToolkitConfig.train must be a TrainConfig with >= 5 evaluations"),
    ("seeds=[]", "ToolkitConfig.seeds must be a non-empty tuple"),
])
def test_toolkit_overrides_are_checked_before_training(override, message):
    experiment = registry.get("toolkit")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        experiment.check(experiments.override(experiment.config("fast"), [override]))


def test_toolkit_run_checks_its_evaluations_before_training(monkeypatch):
    from paperlab import toolkit

    monkeypatch.setattr(toolkit, "over_seeds", lambda *a, **k: pytest.fail("trained before checking"))
    config = experiments.override(toolkit.CONFIGS["fast"], ["train.eval_every=300"])  # 300 steps: 1 eval
    with pytest.raises(ValueError, match="it has 1"):
        toolkit.run(config)


# ---------------------------------------------------------------------------------- python -m paperlab.bench
@pytest.fixture
def bench_spy(monkeypatch):
    import paperlab.bench.__main__ as bench_main

    seen = []
    monkeypatch.setattr(bench_main, "measure_machine", lambda ctx: seen.append(ctx) or [])
    return bench_main, seen


@pytest.mark.parametrize("argv, message", [
    (["--repeats", "0"], "--repeats must be >= 1, got 0"),
    (["--repeats", "-3"], "--repeats must be >= 1, got -3"),
    (["--device", "bogus"], "--device 'bogus' is not a device"),
    (["--device", "tpu"], "--device 'tpu' is not a device"),
    (["--device", "cuda:99"], "--device 'cuda:99'"),
    (["--device", "cpu:1"], "--device 'cpu:1': the CPU is one device (cpu)"),
])
def test_bench_rejects_bad_arguments_before_measuring(bench_spy, capsys, argv, message):
    bench_main, seen = bench_spy
    with pytest.raises(SystemExit) as exit_info:
        bench_main.main(["rmsnorm", *argv])
    assert exit_info.value.code == 2 and not seen
    assert message in capsys.readouterr().err


def test_bench_uses_the_repeats_it_is_given(bench_spy, monkeypatch):
    bench_main, seen = bench_spy
    monkeypatch.setattr(bench_main, "registry", lambda: {})
    assert bench_main.main(["--repeats", "3", "--device", "cpu"]) == 0
    assert bench_main.main(["--quick", "--device", "cpu"]) == 0
    assert [ctx.repeats for ctx in seen] == [3, 5]


# ------------------------------------------------------------------------- constructors of every package
def _nllb_model(**kw):
    from paperlab.nllb.model import ModelConfig

    return ModelConfig(vocab_size=50, **kw)


def _cases():
    from paperlab.bot.experiments import BoTConfig
    from paperlab.bot.model import DataConfig as BoTData
    from paperlab.bot.model import ModelConfig as BoTModel
    from paperlab.data import GrammarConfig
    from paperlab.ditto.methods import OnlineDPOConfig
    from paperlab.geometry.experiments import GeometryConfig
    from paperlab.geometry.lm import CorpusConfig, LMConfig
    from paperlab.geometry.synthetic import PlantedConfig
    from paperlab.matmulfree.experiments import MatMulFreeExperimentConfig
    from paperlab.matmulfree.experiments import RunConfig as MMFRun
    from paperlab.matmulfree.model import MatMulFreeConfig
    from paperlab.nllb.data import WorldConfig
    from paperlab.nllb.experiments import NLLBExperimentConfig
    from paperlab.nllb.train import RunConfig as NLLBRun
    from paperlab.nn import GPTConfig
    from paperlab.sae.data import LMDataConfig, SyntheticConfig
    from paperlab.sae.experiments import SAEExperimentConfig
    from paperlab.sae.train import RunConfig as SAERun
    from paperlab.sayself.base import BaseConfig as SaySelfBase
    from paperlab.sayself.experiments import SaySelfConfig
    from paperlab.ssd.experiments import CostConfig, MQARConfig, SSDConfig
    from paperlab.ssd.model import Mamba2Config
    from paperlab.toolkit import ToolkitConfig

    tk = ToolkitConfig()
    return [
        # NLLB: silently accepted before (issue 23)
        (lambda: _nllb_model(ffn="moe", n_experts=1), "ModelConfig.n_experts must be at least 2"),
        (lambda: _nllb_model(pad_id=50), r"ModelConfig.pad_id must be an integer in \[0, 49\]"),
        (lambda: _nllb_model(pad_id=-1), "ModelConfig.pad_id"),
        (lambda: _nllb_model(ffn="moe", expert_hidden=-1), "ModelConfig.expert_hidden must be a positive"),
        (lambda: _nllb_model(label_smoothing=1.5), r"ModelConfig.label_smoothing must be a finite number in"),
        (lambda: _nllb_model(ffn="cmoe", moe_every=3), "ModelConfig.moe_every must be at most the layers"),
        (lambda: WorldConfig(n_low=True), "WorldConfig.n_low must be a positive integer, got True"),
        (lambda: WorldConfig(low_noise=float("nan")), "WorldConfig.low_noise"),
        (lambda: NLLBRun(train=TrainConfig(steps=0, batch_size=1)), "TrainConfig.steps must be an int >= 1"),
        (lambda: NLLBRun(languages=("xx",)), r"unknown or hub language code\(s\) \['xx'\]"),
        (lambda: NLLBRun(languages="ara"), "languages must be a non-empty tuple of language codes"),
        (lambda: NLLBRun(dropout=1.0), "ModelConfig.dropout"),
        (lambda: NLLBExperimentConfig(n_experts=1), "n_experts must be at least 2"),
        (lambda: NLLBExperimentConfig(bilingual_train=TrainConfig(steps=400, batch_size=8, eval_every=200)),
         "NLLBExperimentConfig.bilingual_train must be a TrainConfig with at least 3 evaluations"),
        # SSD
        (lambda: Mamba2Config(a_init_min=-1.0), "Mamba2Config.a_init_min must be a finite number > 0"),
        (lambda: Mamba2Config(dt_max=float("inf")), "Mamba2Config.dt_max must be a finite number > 0"),
        (lambda: Mamba2Config(a_init_min=20.0), "Mamba2Config.a_init_max must be >= a_init_min"),
        (lambda: CostConfig(lengths=()), "CostConfig.lengths must be a non-empty tuple"),
        (lambda: CostConfig(repeats=0), "CostConfig.repeats"),
        (lambda: MQARConfig(n_pairs=40), r"MQARConfig: n_pairs = 40 needs seq_len >= 4 \* n_pairs - 1 = 159"),
        (lambda: MQARConfig(width=24, headdim=32), "MQARConfig: Mamba2Config.headdim"),
        (lambda: MQARConfig(attention_lrs=("fast",)), "MQARConfig.attention_lrs"),
        (lambda: SSDConfig(mqar=3), "SSDConfig.mqar must be a MQARConfig"),
        # toolkit
        (lambda: ToolkitConfig(d_model=0), "ToolkitConfig.d_model must be a positive integer"),
        (lambda: ToolkitConfig(n_heads=3), "n_heads must be a divisor of d_model"),
        (lambda: ToolkitConfig(val_fraction=0.0), r"ToolkitConfig.val_fraction must be a finite number in"),
        (lambda: ToolkitConfig(eval_windows=0), "ToolkitConfig.eval_windows"),
        (lambda: ToolkitConfig(n_sentences=4), "ToolkitConfig.n_sentences must be large enough"),
        (lambda: ToolkitConfig(seeds=(0, 0)), "ToolkitConfig.seeds must be distinct seeds"),
        (lambda: ToolkitConfig(seeds=(-1,)), "ToolkitConfig.seeds must be a non-empty tuple of seeds"),
        (lambda: ToolkitConfig(n_samples=0), "ToolkitConfig.n_samples must be a positive integer"),
        (lambda: GrammarConfig(n_nouns=True), "GrammarConfig.n_nouns must be a positive integer"),
        (lambda: GrammarConfig(p_plural="0.5"), "GrammarConfig.p_plural must be a finite number in"),
        (lambda: GPTConfig(vocab_size=8, context_length=8, tie_embeddings="yes"), "GPTConfig.tie_embeddings"),
        # MatMul-free
        (lambda: MatMulFreeConfig(vocab_size=8, context_length=8, scan="fast"), "MatMulFreeConfig.scan"),
        (lambda: MatMulFreeConfig(vocab_size=8, context_length=8, impl="cuda"), "MatMulFreeConfig.impl"),
        (lambda: MatMulFreeConfig(vocab_size=8, context_length=8, d_hidden=0), "MatMulFreeConfig.d_hidden"),
        (lambda: MMFRun(kind="fp", d_model=20, train=TrainConfig(steps=5, batch_size=2), corpus=tk),
         "RunConfig.d_model must be a multiple"),
        (lambda: MMFRun(kind="fp", d_model=32, train=TrainConfig(steps=5, batch_size=2, lr=0.0), corpus=tk),
         "TrainConfig.lr must be a finite number"),
        (lambda: MatMulFreeExperimentConfig(sizes=(16, 20)), r"MatMulFreeExperimentConfig \(sizes"),
        (lambda: MatMulFreeExperimentConfig(sweep_lrs=()), "MatMulFreeExperimentConfig.sweep_lrs"),
        # SAE
        (lambda: SAERun(k=0), r"RunConfig.k must be an integer in \[1, 512\]"),
        (lambda: SAERun(n_latents=4, k=8), r"RunConfig.k must be an integer in \[1, 4\]"),
        (lambda: SAERun(train=TrainConfig(steps=5, batch_size=2, warmup_steps=20)),
         "TrainConfig.warmup_steps must be at most"),
        (lambda: SyntheticConfig(mean_active=0.0), "SyntheticConfig.mean_active"),
        (lambda: LMDataConfig(layer=7), r"LMDataConfig.layer must be an integer in \[0, 2\]"),
        (lambda: LMDataConfig(toolkit_profile="turbo"), "LMDataConfig.toolkit_profile must be one of"),
        (lambda: SAEExperimentConfig(ks=(2, 100)), "SAEExperimentConfig.ks"),
        (lambda: SAEExperimentConfig(sizes=(64,)), "SAEExperimentConfig.sizes must be a tuple of at least 3"),
        # geometry
        (lambda: CorpusConfig(roots=()), "CorpusConfig.roots must be a non-empty tuple"),
        (lambda: CorpusConfig(min_tokens=1), "CorpusConfig.min_tokens"),
        (lambda: LMConfig(n_heads=3), "LMConfig: GPTConfig.n_heads"),
        (lambda: PlantedConfig(anisotropy=0.5), "PlantedConfig.anisotropy"),
        (lambda: GeometryConfig(plane=("animal.n.01",)), "GeometryConfig.plane must be a tuple of 2"),
        (lambda: GeometryConfig(alphas=(1.0,)), "GeometryConfig.alphas"),
        (lambda: GeometryConfig(held_out_fraction=1.0), "GeometryConfig.held_out_fraction"),
        (lambda: GeometryConfig(simplex=("mammal.n.01", "bogus.n.01", "fish.n.01")),
         "GeometryConfig.simplex must be synsets of the shipped WordNet .*unknown synset 'bogus.n.01'"),
        (lambda: GeometryConfig(lm=LMConfig(corpus=CorpusConfig(roots=("plant.n.02",)))),
         "GeometryConfig.plane .*'animal.n.01' is not under the corpus roots plant.n.02"),
        (lambda: CorpusConfig(roots=("animal",)), "CorpusConfig.roots must be synsets .*unknown synset"),
        # seeds: a repeated seed would count one run twice (SAE, Buffer of Thoughts, SaySelf)
        (lambda: SAEExperimentConfig(seeds=(0, 0)), "SAEExperimentConfig.seeds must be distinct seeds"),
        (lambda: BoTConfig(seeds=(1, 1)), "BoTConfig.seeds must be distinct seeds"),
        (lambda: SaySelfConfig(seeds=(2, 2)), "SaySelfConfig.seeds must be distinct seeds"),
        (lambda: BoTConfig(seeds=()), r"BoTConfig.seeds must be a non-empty tuple of seeds \(integers in"),
        (lambda: SaySelfConfig(seeds=(-1,)), r"SaySelfConfig.seeds must be a non-empty tuple of seeds"),
        # Buffer of Thoughts
        (lambda: BoTConfig(delta=float("nan")), r"BoTConfig.delta must be a finite number in \[0, 1\]"),
        (lambda: BoTConfig(novelty=1.5), r"BoTConfig.novelty must be a finite number in \(0, 1\]"),
        (lambda: BoTConfig(deltas=()), "BoTConfig.deltas must be a non-empty tuple"),
        (lambda: BoTConfig(tot_breadth=0), "BoTConfig.tot_breadth must be a positive integer"),
        (lambda: BoTConfig(sandbox_memory_mb=-1), "BoTConfig.sandbox_memory_mb must be a positive integer"),
        (lambda: BoTConfig(claim_gain=float("inf")), "BoTConfig.claim_gain must be a finite number >= 0"),
        (lambda: BoTModel(d_model=64, n_heads=3), "ModelConfig: GPTConfig.n_heads must be a divisor"),
        (lambda: BoTData(n_test=0), "DataConfig.n_test must be a positive integer"),
        # SaySelf
        (lambda: SaySelfConfig(temperature=-1.0), "SaySelfConfig.temperature must be a finite number > 0"),
        (lambda: SaySelfConfig(kl_coef=float("nan")), "SaySelfConfig.kl_coef must be a finite number >= 0"),
        (lambda: SaySelfConfig(sft_val_fraction=1.0), r"SaySelfConfig.sft_val_fraction must be a finite"),
        (lambda: SaySelfConfig(rl_prompts=64, rl_samples=1), "SaySelfConfig.rl_samples must be an integer"),
        (lambda: SaySelfBase(n_heads=0), "BaseConfig: GPTConfig.n_heads must be a positive integer"),
        (lambda: SaySelfBase(dropout=1.0), "BaseConfig: GPTConfig.dropout"),
        # DITTO
        (lambda: OnlineDPOConfig(mix=(0.5, 0.5, 0.5)), "OnlineDPOConfig.mix must be 3 fractions .* sum to 1"),
    ]


@pytest.mark.parametrize("case", range(len(_cases())))
def test_constructors_reject_bad_values_naming_the_field(case):
    make, message = _cases()[case]
    with pytest.raises(ValueError, match=message):
        make()


def test_every_profile_of_every_experiment_is_a_valid_config():
    for name in registry.names():
        experiment = registry.get(name)
        for profile in ("fast", "full"):
            config = experiment.config(profile)
            assert dataclasses.replace(config) == config  # __post_init__ accepts it again


def test_train_directions_rejects_unknown_codes():
    from paperlab.nllb.data import train_directions

    with pytest.raises(ValueError, match=r"unknown or hub language code\(s\) \['xx', 'pax'\]"):
        train_directions(("ara", "xx", "pax"))
    with pytest.raises(ValueError, match="non-empty tuple"):
        train_directions("ara")  # one string, not a tuple: would have been read as 'a', 'r', 'a'
    assert train_directions(("ara",)) == [("ara", "pax"), ("pax", "ara")]


def test_extract_concepts_rejects_empty_roots():
    from paperlab.geometry.hierarchy import Hierarchy, extract_concepts

    hierarchy = Hierarchy(lemmas={"a.n.01": ("a",)}, hypernyms={"a.n.01": ()})
    with pytest.raises(ValueError, match="roots must be a non-empty sequence"):
        extract_concepts(hierarchy, ["a"], min_tokens=2, roots=())
    with pytest.raises(ValueError, match="not one string"):
        extract_concepts(hierarchy, ["a"], min_tokens=2, roots="a.n.01")


# ---------------------------------------------------------------------------------------- model inputs
def _ssd_lm():
    from paperlab.ssd.model import Mamba2Config, Mamba2LM

    return Mamba2LM(Mamba2Config(vocab_size=16, d_model=16, headdim=8, chunk_size=4, n_layers=1))


def _mmf_lm():
    from paperlab.matmulfree.model import MatMulFreeConfig, MatMulFreeLM

    return MatMulFreeLM(MatMulFreeConfig(vocab_size=16, context_length=8, d_model=16, n_layers=1))


@pytest.mark.parametrize("make", [_ssd_lm, _mmf_lm], ids=["Mamba2LM", "MatMulFreeLM"])
def test_language_models_reject_bad_token_ids_in_one_line(make):
    model = make()
    with pytest.raises(ValueError, match=r"idx has no tokens \(shape \(1, 0\)\)"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token ids in \[3, 16\], outside \[0, vocab_size = 16\)"):
        model(torch.tensor([[3, 16]]))
    with pytest.raises(ValueError, match=r"token ids in \[-1, 2\]"):
        model(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match="integer token ids"):
        model(torch.zeros(1, 4))
    assert model(torch.tensor([[1, 2, 3]])).shape == (1, 3, 16)


def test_toolkit_checks_its_streams_before_training(monkeypatch):
    from paperlab import toolkit
    from paperlab.train import TrainConfig

    monkeypatch.setattr(toolkit, "train", lambda *a, **k: pytest.fail("trained before checking the data"))
    config = toolkit.ToolkitConfig(n_sentences=30, context_length=32, d_model=16, n_heads=2,
                                   train=TrainConfig(steps=3, batch_size=2, eval_every=1))
    with pytest.raises(ValueError, match=r"the validation stream has \d+ tokens, fewer than context_length"):
        toolkit.train_model(config, device="cpu")
    # python -m paperlab run checks the streams up front, before the seeds' worker processes start
    with pytest.raises(ValueError, match="the train stream has .* lower val_fraction"):
        toolkit.check_runnable(dataclasses.replace(toolkit.CONFIGS["fast"], val_fraction=0.999))


def test_matmulfree_checks_its_streams_before_training(monkeypatch):
    """A corpus too short for a window is refused before any training: up front by the experiment's
    check (``python -m paperlab run matmulfree --set corpus.n_sentences=20``), and in each run."""
    from paperlab.matmulfree import experiments as mmf

    short = dataclasses.replace(mmf.CONFIGS["fast"].corpus, n_sentences=20)
    config = dataclasses.replace(mmf.CONFIGS["fast"], corpus=short)
    with pytest.raises(ValueError, match=r"the validation stream has \d+ tokens, fewer than context_length"):
        mmf.EXPERIMENT.check(config)
    monkeypatch.setattr(mmf, "train", lambda *a, **k: pytest.fail("trained before checking the data"))
    with pytest.raises(ValueError, match=r"stream has \d+ tokens, fewer than context_length"):
        mmf._train(config.run_config("matmulfree", config.sizes[0], config.sweep_lrs[0]), "cpu")
    mmf.EXPERIMENT.check(mmf.CONFIGS["fast"])  # the book's own configs pass
    mmf.EXPERIMENT.check(mmf.CONFIGS["full"])


def test_matmulfree_lm_rejects_a_mask_of_another_shape():
    model = _mmf_lm()
    with pytest.raises(ValueError, match=r"attention_mask must have the shape of idx \(1, 4\), got \(2, 3\)"):
        model(torch.ones(1, 4, dtype=torch.long), attention_mask=torch.ones(2, 3))


def test_mqar_needs_at_least_one_pair():
    from paperlab.ssd.mqar import mqar_batch

    with pytest.raises(ValueError, match="n_pairs must be a positive integer, got 0"):
        mqar_batch(2, 0, 0, 32, torch.Generator())


@pytest.mark.parametrize("side", ["source", "decoder_input"])
def test_seq2seq_rejects_an_empty_sentence_in_one_line(side):
    from paperlab.nllb.model import ModelConfig, Seq2Seq

    model = Seq2Seq(ModelConfig(vocab_size=50))
    sentence = torch.ones(1, 3, dtype=torch.long)
    inputs = {"source": sentence, "decoder_input": sentence}
    inputs[side] = torch.zeros(1, 0, dtype=torch.long)
    with pytest.raises(ValueError, match=f"{side} has no tokens"):
        model(**inputs)


@pytest.mark.parametrize("module", ["bot", "sayself"])
def test_bot_and_sayself_need_three_seeds_and_evaluations_before_any_work(module, monkeypatch):
    """Fewer than three seeds, or a training run with too few evaluations for its convergence check, is a
    one-line error from run() (and from python -m paperlab run, up front) before any model is trained."""
    import importlib

    experiments = importlib.import_module(f"paperlab.{module}.experiments")
    name = "BoTConfig" if module == "bot" else "SaySelfConfig"
    monkeypatch.setattr(experiments, "auto_device", lambda device: pytest.fail("started work"))
    config = experiments.CONFIGS["fast"]
    with pytest.raises(ValueError, match=rf"{name}.seeds must be a tuple of >= 3 seeds"):
        experiments.run(dataclasses.replace(config, seeds=(0, 1)), device="cpu")
    field = "train" if module == "bot" else "sft"
    few = dataclasses.replace(getattr(config, field), eval_every=0)
    with pytest.raises(ValueError, match=rf"{name}.{field} must be a TrainConfig with >= 5 evaluations"):
        experiments.run(dataclasses.replace(config, **{field: few}), device="cpu")
    for profile in ("fast", "full"):
        experiments.EXPERIMENT.check(experiments.CONFIGS[profile])


def test_bot_refuses_a_novelty_of_zero_in_its_config():
    from paperlab.bot.experiments import BoTConfig

    with pytest.raises(ValueError, match=r"BoTConfig.novelty must be"):
        BoTConfig(novelty=0.0)
