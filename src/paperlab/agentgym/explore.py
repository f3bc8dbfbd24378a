"""The AgentGym chapter's live explorer: AgentEvol's exploration step against its temperature and the
number of samples per instruction (see :mod:`paperlab.explore` for the pattern, ``11-agentgym.md``
(sec-agentgym-evolution) for the exploration rounds).

An exploration round samples the current agent on training instructions and keeps what succeeded, once
each and only if the expert data does not already hold it
(:func:`paperlab.agentgym.evol.filter_trajectories`). Two numbers say what a round can find: the share of
instructions with at least one success among their samples (what the filter can keep at all), and the
distinct successful trajectories kept per instruction (how much new data it adds: a copy of an expert
trajectory adds none). Greedy decoding (temperature 0) repeats one episode per instruction; a high
temperature varies the episodes and, past some point, breaks them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from paperlab.agentgym.agent import Trajectory, rollout
from paperlab.agentgym.client import LocalClient
from paperlab.config import check_ints, check_number_tuple, check_that, pick
from paperlab.explore import Choice, Explorer, IntSlider
from paperlab.nn import GPT
from paperlab.plot import labelled

__all__ = ["ExploreConfig", "EXPLORE_CONFIGS", "explore_config", "exploration_grid", "exploration_explorer"]


@dataclass(frozen=True)
class ExploreConfig:
    """The grid the explorer precomputes: the first ``n_instructions`` training instructions of each
    environment, ``samples`` episodes each at every temperature of ``temperatures``; ``seed`` seeds the
    sampling."""

    temperatures: tuple[float, ...] = (0.0, 0.6, 1.2, 1.8)
    samples: int = 3
    n_instructions: int = 12
    seed: int = 0
    default_temperature: float = 1.2  # the paper's (and the chapter's) exploration temperature

    def __post_init__(self) -> None:
        check_number_tuple(self, "temperatures", low=0)
        check_ints(self, "samples", low=2)
        check_ints(self, "n_instructions")
        check_ints(self, "seed", low=0)
        check_that(self, self.default_temperature in self.temperatures, "default_temperature",
                   f"one of temperatures {self.temperatures}")


EXPLORE_CONFIGS = {"fast": ExploreConfig(temperatures=(0.0, 1.2), samples=2, n_instructions=2),
                   "full": ExploreConfig()}


def explore_config(profile: str | None = None) -> ExploreConfig:
    return pick(EXPLORE_CONFIGS, profile)


def exploration_grid(model: GPT, envs: tuple[str, ...], config: ExploreConfig, *,
                     max_tokens: int = 16, existing: Iterable[Trajectory] = ()) -> dict:
    """Sample ``model`` on the grid of ``config``. Returns ``{temperature: {env: [[(success, key, new),
    ...] per sample] per instruction]}}``, where ``key`` identifies the trajectory (for de-duplication)
    and ``new`` says that ``existing`` (the expert data the filter merges with) does not hold it."""
    from paperlab.agentgym.experiments import as_llm  # the agent's decoding, as in the experiment

    held = {t.key() for t in existing}
    clients = {env: LocalClient(env) for env in envs}
    episodes = [(env, i, 0) for env in envs for i in range(config.n_instructions)
                for _ in range(config.samples)]
    grid = {}
    for temperature in config.temperatures:
        played = rollout(as_llm(model, config.seed), clients, episodes, temperature=temperature,
                         max_tokens=max_tokens)
        grid[temperature] = {
            env: [[(t.success, t.key(), t.key() not in held) for t in played[k:k + config.samples]]
                  for k in range(e * config.n_instructions * config.samples,
                                 (e + 1) * config.n_instructions * config.samples, config.samples)]
            for e, env in enumerate(envs)}
    return grid


def _found(rows: list, samples: int) -> tuple[float, float, float]:
    """(share of the first ``samples`` episodes that succeeded, share of instructions with a success among
    them, distinct successful trajectories per instruction that the filter keeps: not in the expert data)
    over one environment's instructions."""
    episodes = [row[:samples] for row in rows]
    succeeded = sum(ok for row in episodes for ok, _, _ in row) / (len(rows) * samples)
    covered = sum(any(ok for ok, _, _ in row) for row in episodes) / len(rows)
    distinct = sum(len({key for ok, key, new in row if ok and new}) for row in episodes) / len(rows)
    return succeeded, covered, distinct


def exploration_explorer(model: GPT, envs: tuple[str, ...], config: ExploreConfig | None = None, *,
                         max_tokens: int = 16, existing: Iterable[Trajectory] = ()) -> Explorer:
    """Controls: the exploration ``temperature`` and the ``samples`` per instruction (the rounds of the
    chapter use ``samples_per_instruction`` of them). ``existing``: the expert data the filter merges with
    (its trajectories are not counted as kept).

    Left, per environment, the share of sampled episodes that succeed and the share of instructions with
    at least one success among their samples, at the chosen temperature; right, the distinct successful
    trajectories the filter keeps per instruction against the temperature (all precomputed when the
    explorer is built), the chosen temperature marked.
    """
    config = config or explore_config()
    grid = exploration_grid(model, envs, config, max_tokens=max_tokens, existing=existing)
    temperatures = list(config.temperatures)

    def draw(fig, *, temperature: float, samples: int):
        bars_ax, curve_ax = fig.subplots(1, 2)
        found = [_found(grid[temperature][env], samples) for env in envs]
        x = range(len(envs))
        bars_ax.bar([i - 0.2 for i in x], [f[0] for f in found], width=0.4, label="episodes that succeed")
        bars_ax.bar([i + 0.2 for i in x], [f[1] for f in found], width=0.4,
                    label=f"instructions solved in {samples} sample{'s' if samples > 1 else ''}")
        bars_ax.set_xticks(list(x), list(envs))
        bars_ax.set_ylim(0, 1.25)
        bars_ax.legend(loc="upper left", fontsize=7)
        labelled(bars_ax, "environment", "share", f"temperature {temperature:g}")
        for k, env in enumerate(envs):
            curve_ax.plot(temperatures, [_found(grid[t][env], samples)[2] for t in temperatures], "o-", ms=3,
                          color=f"C{k}", label=env)
        curve_ax.axvline(temperature, color="k", ls=":", lw=1)
        curve_ax.set_ylim(-0.05 * samples, samples * 1.05)  # a line at 0 stays visible
        curve_ax.legend(loc="upper left", fontsize=7)
        labelled(curve_ax, "sampling temperature", "distinct successes kept per instruction",
                 f"{samples} sample{'s' if samples > 1 else ''} per instruction")

    controls = {"temperature": Choice({f"{t:g}": t for t in temperatures}, config.default_temperature,
                                      label="temperature"),
                "samples": IntSlider(1, config.samples, config.samples, label="samples per instruction")}
    return Explorer(draw, controls,
                    what="the exploration temperature and the samples per instruction")
