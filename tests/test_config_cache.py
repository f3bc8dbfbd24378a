"""Profiles, the artifact cache (including its corruption path) and config overrides."""

from __future__ import annotations

import json
import os
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


def test_a_torchrun_launch_of_several_processes_has_keys_of_its_own(tmp_cache, monkeypatch):
    """Data-parallel training on 2 processes is not the one-process run: neither may load the other's."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    alone = cache.cache_key("run", Outer(), seed=0)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert cache.cache_key("run", Outer(), seed=0) == alone  # a launch of one is a plain run
    monkeypatch.setenv("WORLD_SIZE", "2")
    two = cache.cache_key("run", Outer(), seed=0)
    assert two[0] != alone[0] and two[1]["world_size"] == 2
    cache.cached("run", Outer(), lambda: {"ranks": 2}, seed=0)
    monkeypatch.delenv("WORLD_SIZE")
    assert cache.cached("run", Outer(), lambda: {"ranks": 1}, seed=0) == {"ranks": 1}


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


def test_write_interrupted_after_the_meta_file_leaves_no_entry(tmp_cache, monkeypatch):
    import os

    calls, real_fsync = [], os.fsync

    def interrupted_second_time(fd):  # the meta file is written, then the value's write is killed
        calls.append(fd)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_fsync(fd)

    cache.cached("i2", Outer(), lambda: [1])
    monkeypatch.setattr(cache.os, "fsync", interrupted_second_time)
    with pytest.raises(KeyboardInterrupt):
        cache.store("i2", Outer(steps=3), {"w": torch.ones(1)})
    monkeypatch.setattr(cache.os, "fsync", real_fsync)
    assert len(calls) == 2 and len(list((tmp_cache / "i2").glob("*.meta.json"))) == 2  # the new meta is there
    assert not list((tmp_cache / "i2").glob(".*tmp")) and not list((tmp_cache / "i2").glob("*.pt"))
    assert cache.lookup("i2", Outer(steps=3)) == (False, None)
    assert cache.lookup("i2", Outer()) == (True, [1])  # the folder's other entry is untouched


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
    with pytest.raises(ValueError, match="steps must be an int"):
        experiments.override(Outer(), ["steps=1.5"])
    with pytest.raises(ValueError, match="not of the form"):
        experiments.override(Outer(), ["steps"])


def test_override_takes_the_spelling_the_config_prints():
    # a tuple as Python prints it, as well as the JSON list; a wrong one names the form to write
    assert experiments.override(Outer(), ["betas=(0.8, 0.9)"]).betas == (0.8, 0.9)
    assert experiments.override(Outer(), ["betas=[0.8, 0.9]"]).betas == (0.8, 0.9)
    with pytest.raises(ValueError, match=r"betas must be a tuple, written like \[0.9, 0.95\]"):
        experiments.override(Outer(), ["betas=0.8"])
    assert experiments.override(Outer(), ["name=(hello"]).name == "(hello"  # neither JSON nor a literal


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


# ------------------------------------------------------------------ the cache never loses a result (issue 23)
def _readonly(monkeypatch):
    """Make every cache write fail as in a read-only folder (tests run as root, where chmod does not bite)."""

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache.tempfile, "mkstemp", refuse)


def test_unwritable_cache_warns_and_returns_the_result(tmp_cache, monkeypatch):
    _readonly(monkeypatch)
    with pytest.warns(RuntimeWarning, match=r"could not store w .*PermissionError.*returned but not cached"):
        out = cache.cached("w", Outer(), lambda: {"w": torch.ones(3)})
    assert torch.equal(out["w"], torch.ones(3))
    with pytest.warns(RuntimeWarning, match="could not store j"):
        assert cache.cached("j", Outer(), lambda: [1, 2]) == [1, 2]


def test_cache_folder_that_is_a_file_warns_and_returns_the_result(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("PAPERLAB_CACHE", str(blocker))
    monkeypatch.delenv("PAPERLAB_CACHE_DISABLE", raising=False)
    with pytest.warns(RuntimeWarning, match="could not store"):
        assert cache.cached("f", Outer(), lambda: 7) == 7


def test_corrupt_entry_in_a_readonly_cache_is_recomputed_without_a_crash(tmp_cache, monkeypatch):
    cache.cached("r", Outer(), lambda: {"w": torch.ones(2)})
    (entry,) = (tmp_cache / "r").glob("*.pt")
    entry.write_bytes(b"garbage")
    _readonly(monkeypatch)

    def cannot_delete(self, missing_ok=False):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(cache.Path, "unlink", cannot_delete)
    with pytest.warns(RuntimeWarning) as record:
        out = cache.cached("r", Outer(), lambda: {"w": torch.zeros(2)})
    messages = " | ".join(str(w.message) for w in record)
    assert "unreadable" in messages and "could not delete" in messages and "could not store" in messages
    assert torch.equal(out["w"], torch.zeros(2))


def test_wellformed_file_with_other_contents_is_recomputed(tmp_cache):
    cache.cached("m", Outer(), lambda: {"state_dict": {"w": torch.ones(2)}})
    (entry,) = (tmp_cache / "m").glob("*.pt")
    torch.save({"something": "else"}, entry)  # a valid torch file, but not the stored one
    with pytest.warns(RuntimeWarning, match="does not match the checksum"):
        out = cache.cached("m", Outer(), lambda: {"state_dict": {"w": torch.full((2,), 5.0)}})
    assert torch.equal(out["state_dict"]["w"], torch.full((2,), 5.0))
    assert cache.lookup("m", Outer())[0]  # rewritten: found again, no warning


def test_entry_without_its_meta_file_is_recomputed(tmp_cache):
    cache.cached("n", Outer(), lambda: [1])
    (meta,) = (tmp_cache / "n").glob("*.meta.json")
    meta.unlink()
    with pytest.warns(RuntimeWarning, match="meta file is missing"):
        assert cache.cached("n", Outer(), lambda: [2]) == [2]


def test_check_rejects_a_stored_value_its_reader_cannot_use(tmp_cache):
    cache.store("k", Outer(), {"history": []}, code=None)  # well formed, checksum fine, no "state_dict"
    with pytest.warns(RuntimeWarning, match=r"lacks the key\(s\) \['state_dict'\]"):
        out = cache.cached("k", Outer(), lambda: {"state_dict": 1, "history": []},
                           check=cache.has_keys("state_dict", "history"))
    assert out["state_dict"] == 1
    assert cache.lookup("k", Outer(), check=cache.has_keys("state_dict")) == (True, out)


def test_toolkit_recomputes_an_artifact_without_weights(tmp_cache):
    from paperlab import toolkit
    from paperlab.train import TrainConfig

    config = toolkit.ToolkitConfig(n_sentences=300, context_length=8, d_model=16, n_layers=1, n_heads=2,
                                   train=TrainConfig(steps=3, batch_size=4, eval_every=1), eval_windows=2)
    cache.store("toolkit-gpt", config, {"history": {}}, seed=0, code=("paperlab.toolkit",))
    with pytest.warns(RuntimeWarning, match="state_dict"):
        model, _, history = toolkit.load_trained(config, device="cpu")  # was: KeyError: 'state_dict'
    assert history.steps[-1] == 3 and model.config.d_model == 16


def test_temporaries_of_killed_writers_are_removed(tmp_cache):
    import os
    import subprocess
    import sys
    import time

    cache.cached("t", Outer(), lambda: 1)
    folder = tmp_cache / "t"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    host = cache._HOST
    killed = folder / f".abc.json.{host}-{dead_pid}.x1.tmp"  # its writer is gone
    old = folder / ".abc.json.y2.tmp"  # an older naming, a day old
    alive = folder / f".abc.json.{host}-{os.getpid()}.z3.tmp"  # a write in progress (this process)
    for path in (killed, old, alive):
        path.write_text("partial")
    day_ago = time.time() - cache.STALE_SECONDS - 60
    os.utime(old, (day_ago, day_ago))
    cache.cached("t", Outer(steps=2), lambda: 2)  # the next write to the folder cleans up
    assert not killed.exists() and not old.exists() and alive.exists()


def test_source_hash_is_of_the_code_this_process_loaded(tmp_path, tmp_cache, monkeypatch):
    dirs = {top: tmp_path / top for top in cache.PACKAGES}
    for directory in dirs.values():
        directory.mkdir()
        (directory / "__init__.py").write_text("")
    a = dirs["paperlab"] / "a.py"
    a.write_text("x = 1\n")
    monkeypatch.setattr(cache, "_package_dirs", lambda: dirs)
    monkeypatch.setattr(cache, "_LOADED", cache._snapshot())  # as if this process had just imported them
    cache._code_files.cache_clear()

    def later(path):  # a save a second later (a file system's clock may not tick between two writes)
        os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)

    try:
        before, whole_before = cache.source_hash(("paperlab.a",)), cache.source_hash()
        a.write_text("x = 2\n")  # same length, other bytes
        later(a)
        # this process runs x = 1: neither the old hash nor the new one may be given to what it computes
        for roots in (("paperlab.a",), None):
            with pytest.raises(cache.CodeChangedError, match=r"^paperlab/a.py changed on disk after this "
                                                             r"process loaded it: restart the kernel"):
                cache.source_hash(roots)
        with pytest.raises(cache.CodeChangedError):
            cache.cached("t", Outer(), lambda: pytest.fail("computed under a changed package"))
        assert not any(tmp_cache.rglob("*.json"))  # nothing stored
        on_disk = cache.source_hash(("paperlab.a",), on_disk=True)  # what tools/book.py's kernels will load
        assert on_disk != before
        monkeypatch.setattr(cache, "_LOADED", cache._snapshot())  # a fresh process hashes the new bytes
        assert cache.source_hash(("paperlab.a",)) == on_disk and cache.source_hash() != whole_before
        later(a)  # touched, the same bytes: nothing changed
        assert cache.source_hash(("paperlab.a",)) == on_disk
        a.unlink()
        with pytest.raises(cache.CodeChangedError, match="^paperlab/a.py was deleted"):
            cache.source_hash(("paperlab.a",))
    finally:
        cache._code_files.cache_clear()  # forget the temporary packages' files


def test_relative_imports_resolve_against_the_importing_module():
    assert cache.imported_modules("from ._dispatch import x", "paperlab_kernels.rmsnorm") == {
        "paperlab_kernels", "paperlab_kernels._dispatch"}
    assert cache.imported_modules("from .. import cache", "paperlab.ssd.model") == {
        "paperlab", "paperlab.cache"}
    assert "_dispatch.py" in {p.name for p in cache.code_closure(["paperlab_kernels.rmsnorm"])}


def test_an_entry_stored_again_as_another_kind_replaces_the_old_file(tmp_cache):
    cache.store("k", {"a": 1}, [1])  # JSON
    cache.store("k", {"a": 1}, {"w": torch.ones(1)})  # a tensor: torch.save
    found, value = cache.lookup("k", {"a": 1})
    assert found and torch.equal(value["w"], torch.ones(1))
    cache.store("k", {"a": 1}, [2])
    assert cache.lookup("k", {"a": 1}) == (True, [2])


@pytest.mark.parametrize("value, disabled", [("", False), ("0", False), ("false", False), (" No ", False),
                                             ("1", True), ("true", True), ("YES", True), ("on", True)])
def test_cache_disable_reads_the_usual_spellings(monkeypatch, value, disabled):
    monkeypatch.setenv("PAPERLAB_CACHE_DISABLE", value)
    assert cache.disabled() is disabled


def test_cache_disable_rejects_other_values(monkeypatch):
    monkeypatch.setenv("PAPERLAB_CACHE_DISABLE", "sometimes")
    with pytest.raises(ValueError, match="PAPERLAB_CACHE_DISABLE must be 1/true/yes/on or 0/false/no/off"):
        cache.disabled()
