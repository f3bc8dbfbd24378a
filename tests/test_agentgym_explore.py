"""The AgentGym chapter's explorer, built headless on a tiny untrained agent and driven through its
ipywidgets controls (the pattern's own tests are in test_explore.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("ipywidgets")

from paperlab.agentgym.agent import agent_tokenizer  # noqa: E402
from paperlab.agentgym.evol import AgentModelConfig, initial_model  # noqa: E402
from paperlab.agentgym.explore import ExploreConfig, _found, exploration_explorer, exploration_grid  # noqa: E402

ENVS = ("craft",)
CONFIG = ExploreConfig(temperatures=(0.0, 1.2), samples=2, n_instructions=1)


@pytest.fixture(autouse=True)
def close_widgets():
    yield
    import ipywidgets

    ipywidgets.Widget.close_all()


@pytest.fixture(scope="module")
def agent():
    return initial_model(AgentModelConfig(d_model=16, n_layers=1, n_heads=2), agent_tokenizer().vocab_size,
                         0).eval()


def test_exploration_explorer_temperature_and_samples(agent):
    explorer = exploration_explorer(agent, ENVS, CONFIG)
    box = explorer.widget()
    assert explorer.last_values == {"temperature": 1.2, "samples": 2}
    before = explorer.last_png
    box.controls["temperature"].value = 0.0  # what a reader's dropdown does
    assert explorer.last_values["temperature"] == 0.0 and explorer.last_png != before
    with pytest.raises(ValueError, match="samples"):
        explorer.figure(samples=3)  # more samples than were drawn


def test_greedy_exploration_repeats_one_episode_per_instruction(agent):
    grid = exploration_grid(agent, ENVS, CONFIG)
    assert set(grid) == set(CONFIG.temperatures)
    for env in ENVS:
        rows = grid[0.0][env]
        assert len(rows) == CONFIG.n_instructions and all(len(row) == CONFIG.samples for row in rows)
        assert all(len({key for _, key, _ in row}) == 1 for row in rows)  # temperature 0: the same episode


def test_trajectories_the_expert_data_holds_are_not_counted_as_kept(agent):
    """AgentEvol's filter drops a sampled trajectory the expert data already holds: so does the explorer."""
    from paperlab.agentgym.agent import rollout
    from paperlab.agentgym.client import LocalClient
    from paperlab.agentgym.experiments import as_llm

    greedy = rollout(as_llm(agent), {"craft": LocalClient("craft")}, [("craft", 0, 0)], temperature=0.0)
    config = ExploreConfig(temperatures=(0.0, 1.2), samples=2, n_instructions=1)
    plain, held = (exploration_grid(agent, ENVS, config, existing=e)[0.0]["craft"] for e in ((), greedy))
    assert [key for _, key, new in plain[0]] == [greedy[0].key()] * 2 and all(new for *_, new in plain[0])
    assert not any(new for *_, new in held[0])  # the greedy episode is the expert's: nothing new
    assert _found(held, 2)[2] == 0


def test_found_counts_successes_coverage_and_distinct_trajectories():
    rows = [[(True, "a", True), (True, "a", True), (False, "b", True)],
            [(False, "c", True), (True, "d", True), (True, "e", False)],  # "e" is the expert's
            [(False, "f", True), (False, "g", True), (False, "h", True)]]
    assert _found(rows, 3) == (4 / 9, 2 / 3, 2 / 3)
    assert _found(rows, 1) == (1 / 3, 1 / 3, 1 / 3)


def test_explore_config_checks():
    with pytest.raises(ValueError, match="ExploreConfig.default_temperature"):
        ExploreConfig(temperatures=(0.0, 1.0))
    with pytest.raises(ValueError, match="ExploreConfig.samples"):
        ExploreConfig(samples=1)
