"""A shop search over a generated catalogue, after WebShop (Yao et al., 2022; AgentGym's ``webshop``).

The catalogue holds products described by a colour, a material and a kind, each at a price in dollars
(two products per description, at different prices). The instruction asks for one description under a
price limit::

    shop: buy a red wool hat under 40.

``search <words>`` shows the three products that share the most words with the query (ties in an order
the episode seed draws)::

    1: red wool hat 55; 2: red wool hat 25; 3: red wool scarf 10.

and ``buy <n>`` buys product ``n`` of the last results and ends the episode. As in WebShop the reward is
the fraction of the instruction's requirements the purchase meets (colour, material, kind, price); success
is a reward of 1. Exactly one product of the asked description is under the limit, so the agent must
compare prices. The expert searches for the description and buys the product under the limit.
"""

from __future__ import annotations

import random

from paperlab.agentgym.base import Move, TextEnv

COLOURS = ("red", "blue", "green", "black", "white", "brown")
MATERIALS = ("cotton", "wool", "leather", "linen")
KINDS = ("shirt", "hat", "bag", "shoes", "scarf", "jacket")
PRICES = tuple(range(10, 100, 5))
N_RESULTS = 3
WORLD_SEED = 14


def catalogue() -> list[dict]:
    """Two products per (colour, material, kind), at two different prices: 288 products."""
    rng = random.Random(WORLD_SEED)
    products = []
    for colour in COLOURS:
        for material in MATERIALS:
            for kind in KINDS:
                for price in sorted(rng.sample(PRICES, 2)):
                    products.append({"colour": colour, "material": material, "kind": kind, "price": price})
    return products


PRODUCTS = catalogue()


def describe(product: dict) -> str:
    return f"{product['colour']} {product['material']} {product['kind']}"


class ShopEnv(TextEnv):
    """A task is ``{"colour", "material", "kind", "limit"}``: exactly one matching product costs less."""

    name = "shop"
    max_steps = 4
    n_train = 400
    n_test = 100

    @classmethod
    def make_tasks(cls) -> list[dict]:
        rng = random.Random(WORLD_SEED + 1)
        options = []
        for colour in COLOURS:
            for material in MATERIALS:
                for kind in KINDS:
                    low, high = sorted(p["price"] for p in PRODUCTS
                                       if (p["colour"], p["material"], p["kind"]) == (colour, material, kind))
                    for limit in range(low + 5, high + 1, 5):  # low < limit <= high: one product fits
                        options.append({"colour": colour, "material": material, "kind": kind, "limit": limit})
        rng.shuffle(options)
        if len(options) < cls.n_train + cls.n_test:
            raise RuntimeError(f"shop: only {len(options)} distinct instructions")
        return options[: cls.n_train + cls.n_test]

    @classmethod
    def vocabulary(cls) -> set[str]:
        return set(COLOURS) | set(MATERIALS) | set(KINDS) | {str(p) for p in PRICES} | {
            str(n) for n in range(1, N_RESULTS + 1)} | {
            "shop", "buy", "a", "under", "search", "bought", "for", "is", "no", "such", "product", "in",
            "the", "results", "nothing", "found", "first", "invalid", "action", "use", "or", ":", ";", "."}

    def _start(self) -> str:
        self.results: list[dict] = []
        t = self.task
        return f"shop: buy a {t['colour']} {t['material']} {t['kind']} under {t['limit']}."

    def _act(self, action: str) -> tuple[str, float, bool]:
        verb, _, rest = action.partition(" ")
        if verb == "search" and rest:
            words = set(rest.split())
            scored = [(len(words & set(describe(p).split())), self.rng.random(), i)
                      for i, p in enumerate(PRODUCTS)]
            best = sorted(scored, key=lambda s: (-s[0], s[1]))[:N_RESULTS]
            if best[0][0] == 0:
                self.results = []
                return "nothing found.", 0.0, False
            self.results = [PRODUCTS[i] for _, _, i in best]
            return "; ".join(f"{n}: {describe(p)} {p['price']}"
                             for n, p in enumerate(self.results, 1)) + ".", 0.0, False
        if verb == "buy" and rest:
            if not self.results:
                return "search first.", 0.0, False
            if rest not in {str(n) for n in range(1, len(self.results) + 1)}:
                return "no such product in the results.", 0.0, False
            product = self.results[int(rest) - 1]
            reward = self.reward(product)
            return f"bought {describe(product)} for {product['price']}.", reward, True
        return "invalid action: use search or buy.", 0.0, False

    def reward(self, product: dict) -> float:
        """WebShop-style: the fraction of the four requirements (colour, material, kind, price) met."""
        t = self.task
        met = [product[k] == t[k] for k in ("colour", "material", "kind")] + [product["price"] < t["limit"]]
        return sum(met) / len(met)

    def random_action(self, rng: random.Random) -> str:
        if rng.random() < 0.5:
            return f"buy {rng.randint(1, N_RESULTS)}"
        asked = [self.task["colour"], self.task["material"], self.task["kind"]]
        words = asked if rng.random() < 0.7 else list(COLOURS + MATERIALS + KINDS)
        return "search " + " ".join(rng.sample(words, rng.randint(1, 3)))

    def expert_action(self) -> Move:
        t = self.task
        for n, product in enumerate(self.results, 1):
            if self.reward(product) == 1.0:
                return Move(f"{product['price']} is under {t['limit']}.", f"buy {n}")
        return Move("search first.", f"search {t['colour']} {t['material']} {t['kind']}")
