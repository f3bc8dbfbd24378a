"""A crafting game with a recipe tree, after TextCraft (Prasad et al., 2023; AgentGym's ``textcraft``).

The instruction names an item to make and lists the recipes that matter, plus one that does not::

    craft: make lamp. recipes: glass = sand; rope = reed + wool; lamp = glass + coal.

Base materials are gathered (``get sand``), everything else is crafted from what the inventory holds
(``craft glass`` consumes one sand). The task is done when the goal item is crafted. Each instruction
draws its own recipe tree (depth 1 or 2, every item distinct) from a fixed set of item names, so held-out
instructions are new trees over the same words: the agent must read the recipes, not remember them.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import ClassVar

from paperlab.agentgym.base import Move, TextEnv

BASE = ("log", "stone", "sand", "clay", "wool", "iron", "gold", "reed", "coal", "flint", "bone", "salt")
CRAFTED = ("plank", "stick", "brick", "glass", "rope", "nail", "cloth", "paper", "bowl", "lamp", "torch",
           "chest", "bucket", "arrow", "bow", "shears", "bed", "boat", "sign", "ladder", "fence", "door",
           "pot", "hammer")
WORLD_SEED = 11


class CraftEnv(TextEnv):
    """Make the goal item; a task is ``(goal, recipes)`` with recipes ``{item: ingredients}``."""

    name = "craft"
    max_steps = 10
    n_train = 400
    n_test = 100
    PREFIX: ClassVar[str] = "craft:"

    @classmethod
    def make_tasks(cls) -> list[dict]:
        rng = random.Random(WORLD_SEED)
        seen, tasks = set(), []
        while len(tasks) < cls.n_train + cls.n_test:
            task = _random_tree(rng)
            key = (task["goal"], tuple(sorted((k, tuple(v)) for k, v in task["recipes"].items())))
            if key not in seen:
                seen.add(key)
                tasks.append(task)
        return tasks

    @classmethod
    def vocabulary(cls) -> set[str]:
        return set(BASE) | set(CRAFTED) | {
            "craft", "make", "recipes", "get", "got", "crafted", "working", "on", "missing", "there", "is",
            "no", "recipe", "for", "cannot", "be", "gathered", "invalid", "action", "use", "or", "unknown",
            "item", ":", ".", ";", "=", "+", ",", "done"}

    def _start(self) -> str:
        self.inventory: Counter[str] = Counter()
        recipes = list(self.task["recipes"].items())
        self.rng.shuffle(recipes)  # the episode seed orders the listed recipes
        listed = "; ".join(f"{item} = {' + '.join(parts)}" for item, parts in recipes)
        return f"craft: make {self.task['goal']}. recipes: {listed}."

    def _act(self, action: str) -> tuple[str, float, bool]:
        verb, _, item = action.partition(" ")
        recipes = self.task["recipes"]
        if verb in ("get", "craft") and item not in BASE and item not in CRAFTED:
            return "unknown item.", 0.0, False  # (the agent's words are never echoed back unchecked)
        if verb == "get":
            if item in BASE:
                self.inventory[item] += 1
                return f"got {item}.", 0.0, False
            return f"{item} cannot be gathered.", 0.0, False
        if verb == "craft":
            if item not in recipes:
                return f"there is no recipe for {item}.", 0.0, False
            missing = [part for part, n in Counter(recipes[item]).items() if self.inventory[part] < n]
            if missing:
                return f"missing {', '.join(missing)}.", 0.0, False
            self.inventory.subtract(recipes[item])
            self.inventory[item] += 1
            if item == self.task["goal"]:
                return f"crafted {item}. done.", 1.0, True
            return f"crafted {item}.", 0.0, False
        return "invalid action: use get or craft.", 0.0, False

    def expert_action(self) -> Move:
        """Depth first: the first missing ingredient of the first recipe not yet made, bottom up. The
        thought is the recipe being worked on, copied from the instruction."""
        target = self._next_craft(self.task["goal"])
        recipe = self.task["recipes"][target]
        thought = f"{target} = {' + '.join(recipe)}."
        for part in recipe:
            if self.inventory[part] < recipe.count(part):
                return Move(thought, f"get {part}")
        return Move(thought, f"craft {target}")

    def random_action(self, rng: random.Random) -> str:
        recipes = self.task["recipes"]
        named = list(recipes) + [part for parts in recipes.values() for part in parts]
        item = rng.choice(named if rng.random() < 0.8 else BASE + CRAFTED)
        return f"{rng.choice(('get', 'craft'))} {item}"

    def _next_craft(self, item: str) -> str:
        """The deepest item under ``item`` whose ingredients are gathered or gatherable now."""
        for part in self.task["recipes"][item]:
            if part in self.task["recipes"] and self.inventory[part] == 0:
                return self._next_craft(part)
        return item


def _random_tree(rng: random.Random) -> dict:
    """A goal with two ingredients, each a base material or (30% of the time) an item made of one or two
    base materials; plus a distractor recipe. Every item in the tree is distinct."""
    crafted = rng.sample(CRAFTED, 4)
    bases = iter(rng.sample(BASE, 7))
    goal, recipes = crafted[0], {}
    parts = []
    for sub in crafted[1:3]:
        if rng.random() < 0.3:
            recipes[sub] = [next(bases) for _ in range(rng.choice((1, 2)))]
            parts.append(sub)
        else:
            parts.append(next(bases))
    recipes[goal] = parts
    recipes[crafted[3]] = rng.sample(BASE, rng.choice((1, 2)))  # the distractor
    return {"goal": goal, "recipes": recipes}
