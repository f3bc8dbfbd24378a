"""A gridworld with instructions, after BabyAI (Chevalier-Boisvert et al., 2019; AgentGym's ``babyai``).

A 5 x 5 room holds two objects (a colour and a kind: ``red ball``, ``blue key``); the instruction asks
to go to one of them or to pick it up. The agent sees where each object is relative to itself, as
AgentGym's text version of BabyAI describes it (steps ahead or behind, to the left or right)::

    grid: pick up the red ball. red ball 2 ahead 1 left, blue key 1 behind.

and acts with ``turn left``, ``turn right``, ``move forward`` and ``pick up``. Going to an object is done
when it is right in front of the agent (one step ahead); picking it up needs ``pick up`` there. Objects
and walls block the way. The expert is a breadth-first search over (position, heading), as in AgentGym's
BabyAI wrapper; only layouts it solves within the step limit are instructions.
"""

from __future__ import annotations

import functools
import random
from collections import deque

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
            if key not in seen and 1 <= len(_plan(_freeze(task))) <= cls.max_steps:
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

    def expert_action(self) -> Move:
        plan = _plan(_freeze({**self.task, "agent": self.position, "heading": self.heading}))
        target_cell = next(c for c, o in self.task["objects"].items() if o == self.task["target"])
        ahead, right = _relative(self.position, self.heading, target_cell)
        where = " ".join(([f"{abs(ahead)} {'ahead' if ahead > 0 else 'behind'}"] if ahead else [])
                         + ([f"{abs(right)} {'right' if right > 0 else 'left'}"] if right else []))
        return Move(f"{where}.", plan[0])


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


def _freeze(task: dict) -> tuple:
    return (task["verb"], task["target"], tuple(sorted(task["objects"].items())), task["agent"],
            task["heading"])


@functools.cache
def _plan(frozen: tuple) -> tuple[str, ...]:
    """Shortest action sequence (breadth-first over position and heading) that completes the task."""
    verb, target, objects, start, heading = frozen
    objects = dict(objects)
    target_cell = next(c for c, o in objects.items() if o == target)
    queue, came = deque([(start, heading)]), {(start, heading): None}
    while queue:
        position, facing = state = queue.popleft()
        if _ahead_of(position, facing) == target_cell:
            path = []
            while came[state] is not None:
                state, action = came[state]
                path.append(action)
            return tuple(reversed(path)) + (("pick up",) if verb == "pick up" else ())
        front = _ahead_of(position, facing)
        moves = [("turn left", (position, (facing - 1) % 4)), ("turn right", (position, (facing + 1) % 4))]
        if _inside(front) and front not in objects:
            moves.insert(0, ("move forward", (front, facing)))
        for action, nxt in moves:
            if nxt not in came:
                came[nxt] = (state, action)
                queue.append(nxt)
    raise RuntimeError(f"grid: no way to reach {target} from {start}")  # pragma: no cover


def _random_layout(rng: random.Random) -> dict:
    cells = [(x, y) for x in range(SIZE) for y in range(SIZE)]
    agent, first, second = rng.sample(cells, 3)
    colours, kinds = rng.sample(COLOURS, 2), [rng.choice(KINDS), rng.choice(KINDS)]
    objects = {first: (colours[0], kinds[0]), second: (colours[1], kinds[1])}
    return {"verb": rng.choice(("go to", "pick up")), "target": objects[first], "objects": objects,
            "agent": agent, "heading": rng.randrange(4)}
