"""Profiles, the artifact cache (including its corruption path) and config overrides."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
import torch

from paperlab import cache, config, experiments, registry


@dataclass(frozen=True)
class Inner:
    d_model: int = 8
    lr: float = 1e-3


@dataclass(frozen=True)
class Outer:
    steps: int = 10
    name: str = "x"
    model: Inner = field(default_factory=Inner)
    betas: tuple = (0.9, 0.95)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPERLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PAPERLAB_CACHE_DISABLE", raising=False)
    return tmp_path / "cache"


def test_profile_default_and_choice(monkeypatch):
    monkeypatch.delenv("PAPERLAB_PROFILE", raising=False)
    assert config.current_profile() == "full"
    monkeypatch.setenv("PAPERLAB_PROFILE", "fast")
    assert config.pick({"fast": 1, "full": 2}) == 1
    assert config.pick({"fast": 1, "full": 2}, profile="full") == 2


def test_an_experiment_gives_the_config_of_the_current_profile(monkeypatch):
    from paperlab import toolkit

    monkeypatch.setenv("PAPERLAB_PROFILE", "fast")
    assert toolkit.EXPERIMENT.config() is toolkit.CONFIGS["fast"]
    assert toolkit.EXPERIMENT.config("full") is toolkit.CONFIGS["full"]
    with pytest.raises(ValueError, match="unknown profile 'turbo'"):
        toolkit.EXPERIMENT.config("turbo")


def test_unknown_profile_lists_valid_ones(monkeypatch):
    monkeypatch.setenv("PAPERLAB_PROFILE", "turbo")
    with pytest.raises(ValueError, match=r"unknown profile 'turbo'.*fast, full"):
        config.current_profile()
    with pytest.raises(ValueError, match="lack the profile"):
        config.pick({"fast": 1}, profile="fast")


def test_config_to_dict_rejects_unhashable_things():
    assert config.config_to_dict(Outer())["model"]["d_model"] == 8
    with pytest.raises(TypeError, match="cannot use a object"):
        config.config_to_dict({"x": object()})


def test_cached_computes_once_per_key(tmp_cache):
    calls = []

    def compute():
        calls.append(1)
        return {"loss": [1.0, 0.5], "steps": (1, 2)}

    first = cache.cached("exp", Outer(), compute, seed=0)
    second = cache.cached("exp", Outer(), compute, seed=0)
    assert len(calls) == 1
    assert first == second == {"loss": [1.0, 0.5], "steps": [1, 2]}  # same types on hit and miss
    cache.cached("exp", Outer(), compute, seed=1)  # another seed: another entry
    cache.cached("exp", Outer(steps=11), compute, seed=0)  # another config: another entry
    assert len(calls) == 3
    assert len(list((tmp_cache / "exp").glob("*.json"))) == 3 * 2  # result + meta each


def test_cached_stores_tensors_and_key_depends_on_source(tmp_cache, monkeypatch):
    weights = {"w": torch.arange(6.0).reshape(2, 3), "step": 3}
    out = cache.cached("weights", Outer(), lambda: weights)
    again = cache.cached("weights", Outer(), lambda: pytest.fail("should be cached"))
    assert torch.equal(again["w"], out["w"]) and again["step"] == 3
    key, _ = cache.cache_key("weights", Outer())
    monkeypatch.setattr(cache, "source_hash", lambda code=None: "edited source")
    assert cache.cache_key("weights", Outer())[0] != key


@pytest.mark.parametrize("suffix,garbage", [(".json", b'{"result": [1, 2'), (".pt", b"not a torch file")])
def test_corrupt_entry_is_recomputed_with_a_warning(tmp_cache, suffix, garbage):
    value = [1, 2] if suffix == ".json" else {"w": torch.ones(2)}
    cache.cached("c", Outer(), lambda: value)
    (entry,) = [p for p in (tmp_cache / "c").glob(f"*{suffix}") if not p.name.endswith(".meta.json")]
    entry.write_bytes(garbage)
    with pytest.warns(RuntimeWarning, match="unreadable"):
        result = cache.cached("c", Outer(), lambda: value)
    if suffix == ".json":
        assert result == [1, 2]
    else:
        assert torch.equal(result["w"], torch.ones(2))
    # the entry was rewritten and is readable again, without a warning
    found, _ = cache.lookup("c", Outer())
    assert found


def test_interrupted_write_leaves_no_entry(tmp_cache, monkeypatch):
    def boom(value, handle):
        handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        cache.store("i", Outer(), {"w": torch.ones(1)})
    assert not list((tmp_cache / "i").glob("*.pt")) and not list((tmp_cache / "i").glob(".*tmp"))
    assert cache.lookup("i", Outer()) == (False, None)


def test_disable_and_clear(tmp_cache, monkeypatch):
    monkeypatch.setenv("PAPERLAB_CACHE_DISABLE", "1")
    calls = []
    for _ in range(2):
        cache.cached("d", Outer(), lambda: calls.append(1) or 1)
    assert len(calls) == 2 and not (tmp_cache / "d").exists()
    monkeypatch.delenv("PAPERLAB_CACHE_DISABLE")
    cache.cached("d", Outer(), lambda: 1)
    cache.clear()
    assert not tmp_cache.exists()


def test_bad_cache_name():
    with pytest.raises(ValueError, match="cache name"):
        cache.cache_key("a/b", Outer())


def test_override_nested_fields_with_type_checks():
    cfg = experiments.override(Outer(), ["steps=20", "model.lr=1", "model.d_model=16", "betas=[0.8, 0.9]"])
    assert cfg.steps == 20 and cfg.model == Inner(d_model=16, lr=1.0) and cfg.betas == (0.8, 0.9)
    assert experiments.override(Outer(), ["name=hello"]).name == "hello"
    with pytest.raises(ValueError, match="unknown config field 'stepz'"):
        experiments.override(Outer(), ["stepz=1"])
    with pytest.raises(ValueError, match="steps must be a int"):
        experiments.override(Outer(), ["steps=1.5"])
    with pytest.raises(ValueError, match="not of the form"):
        experiments.override(Outer(), ["steps"])


def test_cli_lists_and_rejects_unknown(capsys):
    from paperlab.__main__ import main

    assert main(["list"]) == 0
    assert "toolkit" in capsys.readouterr().out
    assert main(["run", "nope"]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err


def test_cli_runs_a_registered_experiment(tmp_path, tmp_cache, monkeypatch, capsys):
    from paperlab.__main__ import main

    monkeypatch.setenv("PAPERLAB_PROFILE", "full")  # main() sets it; monkeypatch restores it afterwards
    ran = {}

    def run(cfg, device=None):
        ran["cfg"] = cfg
        return {"final_loss": 0.25, "device": device}

    exp = experiments.Experiment("dummy", "book/none.md", {"fast": Outer(steps=1), "full": Outer()}, run)
    monkeypatch.setitem(registry.REGISTRY, "dummy", ("x:y", "a test experiment"))
    monkeypatch.setattr(registry, "get", lambda name: exp)
    out = tmp_path / "out"
    assert main(["run", "dummy", "--profile", "fast", "--set", "steps=3", "--out", str(out)]) == 0
    record = json.loads((out / "dummy-fast.json").read_text())
    assert ran["cfg"].steps == 3 and record["results"]["final_loss"] == 0.25
    assert record["config"]["steps"] == 3 and record["profile"] == "fast"


def test_code_closure_follows_imports_and_stays_within_a_chapter():
    closure = {p.name for p in cache.code_closure(["paperlab.toolkit"])}
    assert {"toolkit.py", "nn.py", "train.py", "data.py", "tokenizers.py", "cache.py"} <= closure
    assert "registry.py" not in closure and "rmsnorm.py" not in closure
    assert cache.imported_modules("from paperlab import nn\nimport paperlab_kernels.rmsnorm\nimport os") == {
        "paperlab", "paperlab.nn", "paperlab_kernels", "paperlab_kernels.rmsnorm"}


def test_cached_keys_on_the_calling_modules_code(tmp_cache, monkeypatch):
    import paperlab.toolkit as toolkit_module

    seen = []
    monkeypatch.setattr(cache, "store", lambda name, config, value, seed, code: seen.append(code))
    cache.cached("x", Outer(), lambda: 1)  # called from a test module: all of both packages
    # called from inside the package: that module's closure
    exec("from paperlab import cache\ncache.cached('x', cfg, lambda: 1)", {"__name__": "paperlab.toolkit",
                                                                         "cfg": Outer()})
    assert seen == [None, ("paperlab.toolkit",)] and toolkit_module
    assert cache.source_hash(("paperlab.toolkit",)) != cache.source_hash(None)
