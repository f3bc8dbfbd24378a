"""Every experiment runs where ``device`` says (issue 19): its models are built on, and trained on, the
device given, and an unknown device is a one-line error before any work starts.

Without a GPU the test maps the requested device to PyTorch's ``meta`` device: ``auto_device`` is replaced
by one that records what it was asked for and answers ``meta``, and the training loop by one that records
where the model is and what device it was told to use, then stops the experiment. An experiment that
ignored ``device`` (the SAE one used to train on the CPU whatever it was given) leaves the model on the CPU
and fails. The CUDA run of the same experiments is ``tools/gpu-check.sh`` (stage ``experiments``).
"""

from __future__ import annotations

import importlib
import time

import pytest
import torch

from paperlab import registry

# experiment -> the modules whose ``auto_device`` and ``train`` names the experiment calls
MODULES = {
    "toolkit": ["paperlab.toolkit"],
    "ssd": ["paperlab.ssd.experiments", "paperlab.ssd.mqar"],
    "matmulfree": ["paperlab.matmulfree.experiments", "paperlab.ssd.mqar"],
    "nllb": ["paperlab.nllb.experiments", "paperlab.nllb.train"],
    "geometry": ["paperlab.geometry.lm"],
    "sae": ["paperlab.sae.experiments", "paperlab.sae.train"],
    "survey": ["paperlab.survey.experiments", "paperlab.survey.models"],
    "bot": ["paperlab.bot.experiments", "paperlab.bot.model"],
    "sayself": ["paperlab.sayself.experiments", "paperlab.sayself.base"],
    "ditto": ["paperlab.ditto.experiments"],
    "agentgym": ["paperlab.agentgym.experiments", "paperlab.agentgym.pretrain", "paperlab.agentgym.evol"],
}


class Stop(Exception):
    """Raised by the stand-in training loop once it has seen the model."""


@pytest.fixture(autouse=True)
def _no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPERLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PAPERLAB_CACHE_DISABLE", "1")
    monkeypatch.setenv("PAPERLAB_PROGRESS", "0")


def test_every_registered_experiment_is_covered():
    assert set(MODULES) == set(registry.names())


@pytest.mark.parametrize("name", sorted(MODULES))
def test_models_train_on_the_device_given(name, monkeypatch):
    asked, seen = [], []

    def fake_auto_device(device=None):
        asked.append(str(device))
        return torch.device("meta")

    def fake_train(model, *args, device=None, **kwargs):
        model.to(device)  # what the real loop does first
        seen.append((str(device), {p.device.type for p in model.parameters()}))
        raise Stop

    # Runs that would go to worker processes (several seeds or models at once on a CPU) stay in this one,
    # where the stand-ins above apply. (SSD's sweep runs in this process on any device but the CPU.)
    serial = lambda fn, jobs, workers=None, desc="": [fn(*job) for job in jobs]  # noqa: E731
    for module_name in ("paperlab.experiments", "paperlab.bot.experiments", "paperlab.geometry.experiments"):
        monkeypatch.setattr(importlib.import_module(module_name), "parallel_map", serial)
    if name == "ssd":  # the equivalence checks and the cost sweep time CPU code by design
        ssd = importlib.import_module("paperlab.ssd.experiments")
        monkeypatch.setattr(ssd, "equivalence", lambda *a, **k: {})
        monkeypatch.setattr(ssd, "cost_sweep", lambda *a, **k: {})
    for module_name in MODULES[name]:
        module = importlib.import_module(module_name)
        if hasattr(module, "auto_device"):
            monkeypatch.setattr(module, "auto_device", fake_auto_device)
        if hasattr(module, "train"):
            monkeypatch.setattr(module, "train", fake_train)
    experiment = registry.get(name)
    with pytest.raises(Stop):
        experiment.run(experiment.config("fast"), device="cuda:1")
    assert asked and asked[0] == "cuda:1"  # the experiment asked for the device it was given, first
    assert seen == [("meta", {"meta"})]  # and its first model trains there


@pytest.mark.parametrize("name", sorted(MODULES))
def test_an_unknown_device_fails_before_any_work(name, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("work started before the device was checked")

    for module_name in MODULES[name]:
        module = importlib.import_module(module_name)
        if hasattr(module, "train"):
            monkeypatch.setattr(module, "train", no_training)
    if name == "ssd":  # its first work is not training: the equivalence checks and the cost sweep
        ssd = importlib.import_module("paperlab.ssd.experiments")
        monkeypatch.setattr(ssd, "equivalence", no_training)
        monkeypatch.setattr(ssd, "cost_sweep", no_training)
    experiment = registry.get(name)
    start = time.perf_counter()
    with pytest.raises(ValueError, match="'tpu' is not a valid torch device"):
        experiment.run(experiment.config("fast"), device="tpu")
    assert time.perf_counter() - start < 10.0
