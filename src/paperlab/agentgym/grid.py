"""A gridworld with instructions, after BabyAI (Chevalier-Boisvert et al., 2019; AgentGym's ``babyai``).

A 5 x 5 room holds two objects (a colour and a kind: ``red ball``, ``blue key``); the instruction asks
to go to one of them or to pick it up. The agent sees where each object is relative to itself, as
AgentGym's text version of BabyAI describes it (steps ahead or behind, to the left or right)::

    grid: pick up the red ball. red ball 2 ahead 1 left, blue key 1 behind.

and acts with ``turn left``, ``turn right``, ``move forward`` and ``pick up``. Going to an object is done
when it is right in front of the agent (one step ahead); picking it up needs ``pick up`` there. Objects
and walls block the way. The expert is a rule on the target's relative place, in the spirit of BabyAI's
bot (AgentGym's wrapper searches for shortest paths instead): walk forward while the target is ahead and
off to a side, turn towards it when it is beside or behind, walk up to it when it is straight ahead. Only
layouts the rule solves within the step limit are instructions.
"""

from __future__ import annotations

import random

from paperlab.agentgym.base import Move, TextEnv

SIZE = 5
COLOURS = ("red", "green", "blue", "purple", "yellow", "grey")
KINDS = ("ball", "key", "box")
HEADINGS = ((0, 1), (1, 0), (0, -1), (-1, 0))  # north, east, south, west as (dx, dy); turning right: +1
ACTIONS = ("turn left", "turn right", "move forward", "pick up")
WORLD_SEED = 13


class GridEnv(TextEnv):
    """A task is ``{"verb": "go to" | "pick up", "target": (colour, kind), "objects": {cell: name},
    "agent": (x, y), "heading": index into HEADINGS}``."""

    name = "grid"
    max_steps = 6
    n_train = 400
    n_test = 100

    @classmethod
    def make_tasks(cls) -> list[dict]:
        rng = random.Random(WORLD_SEED)
        seen, tasks = set(), []
        while len(tasks) < cls.n_train + cls.n_test:
            task = _random_layout(rng)
            key = (task["verb"], task["target"], tuple(sorted(task["objects"].items())), task["agent"],
                   task["heading"])
            if key not in seen and _rule_solves(task, cls.max_steps):
                seen.add(key)
                tasks.append(task)
        return tasks

    @classmethod
    def vocabulary(cls) -> set[str]:
        return set(COLOURS) | set(KINDS) | {str(n) for n in range(SIZE)} | {
            "grid", "go", "to", "the", "pick", "up", "ahead", "behind", "left", "right", "turn", "move",
            "forward", "blocked", "nothing", "here", "you", "picked", "reached", "invalid", "action",
            "use", "or", "is", "not", "one", ",", ".", ":"}

    def _start(self) -> str:
        self.position, self.heading = self.task["agent"], self.task["heading"]
        colour, kind = self.task["target"]
        return f"grid: {self.task['verb']} the {colour} {kind}. {self._describe()}."

    def _describe(self) -> str:
        """Each object's place relative to the agent: ``red ball 2 ahead 1 left``."""
        parts = []
        for cell, (colour, kind) in sorted(self.task["objects"].items(), key=lambda item: item[1]):
            ahead, right = _relative(self.position, self.heading, cell)
            words = [f"{abs(ahead)} {'ahead' if ahead > 0 else 'behind'}"] if ahead else []
            words += [f"{abs(right)} {'right' if right > 0 else 'left'}"] if right else []
            parts.append(f"{colour} {kind} {' '.join(words)}")
        return ", ".join(parts)

    def _act(self, action: str) -> tuple[str, float, bool]:
        target_cell = next(c for c, o in self.task["objects"].items() if o == self.task["target"])
        front = _ahead_of(self.position, self.heading)
        if action == "turn left" or action == "turn right":
            self.heading = (self.heading + (1 if action == "turn right" else -1)) % 4
        elif action == "move forward":
            if not _inside(front) or front in self.task["objects"]:
                return "blocked.", 0.0, False
            self.position = front
        elif action == "pick up":
            if front not in self.task["objects"]:
                return "nothing to pick up here.", 0.0, False
            colour, kind = self.task["objects"][front]
            if self.task["verb"] == "pick up" and front == target_cell:
                return f"you picked up the {colour} {kind}.", 1.0, True
            return f"the {colour} {kind} is not the one.", 0.0, False
        else:
            return "invalid action: use turn left, turn right, move forward or pick up.", 0.0, False
        if self.task["verb"] == "go to" and _ahead_of(self.position, self.heading) == target_cell:
            return f"{self._describe()}. reached.", 1.0, True
        return f"{self._describe()}.", 0.0, False

    def random_action(self, rng: random.Random) -> str:
        return rng.choice(ACTIONS)

    def expert_action(self) -> Move:
        """The rule (module docstring); the thought is where the target is (read off the observation)."""
        target_cell = next(c for c, o in self.task["objects"].items() if o == self.task["target"])
        ahead, right = _relative(self.position, self.heading, target_cell)
        where = " ".join(([f"{abs(ahead)} {'ahead' if ahead > 0 else 'behind'}"] if ahead else [])
                         + ([f"{abs(right)} {'right' if right > 0 else 'left'}"] if right else []))
        return Move(f"{where}.", _rule(ahead, right))


def _relative(position, heading, cell) -> tuple[int, int]:
    """(steps ahead, steps to the right) of ``cell`` seen from ``position`` facing ``heading``."""
    dx, dy = cell[0] - position[0], cell[1] - position[1]
    fx, fy = HEADINGS[heading]
    rx, ry = HEADINGS[(heading + 1) % 4]
    return dx * fx + dy * fy, dx * rx + dy * ry


def _ahead_of(position, heading) -> tuple[int, int]:
    return position[0] + HEADINGS[heading][0], position[1] + HEADINGS[heading][1]


def _inside(cell) -> bool:
    return 0 <= cell[0] < SIZE and 0 <= cell[1] < SIZE


def _rule(ahead: int, right: int) -> str:
    """The expert's action for a target ``ahead`` steps ahead and ``right`` steps to the right."""
    if ahead == 1 and right == 0:
        return "pick up"  # (a go-to task is already done here)
    if ahead > 0:
        return "move forward"
    return "turn left" if right < 0 else "turn right"  # beside or behind: face it (behind: turn right)


def _rule_solves(task: dict, max_steps: int) -> bool:
    """Does the rule finish ``task`` within ``max_steps`` steps (and not at once)?"""
    env = GridEnv()
    env.task, env.position, env.heading = task, task["agent"], task["heading"]
    target_cell = next(c for c, o in task["objects"].items() if o == task["target"])
    if task["verb"] == "go to" and _ahead_of(env.position, env.heading) == target_cell:
        return False
    for _ in range(max_steps):
        _, reward, done = env._act(_rule(*_relative(env.position, env.heading, target_cell)))
        if done:
            return reward == 1.0
    return False


def _random_layout(rng: random.Random) -> dict:
    cells = [(x, y) for x in range(SIZE) for y in range(SIZE)]
    agent, first, second = rng.sample(cells, 3)
    colours, kinds = rng.sample(COLOURS, 2), [rng.choice(KINDS), rng.choice(KINDS)]
    objects = {first: (colours[0], kinds[0]), second: (colours[1], kinds[1])}
    return {"verb": rng.choice(("go to", "pick up")), "target": objects[first], "objects": objects,
            "agent": agent, "heading": rng.randrange(4)}
