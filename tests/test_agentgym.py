"""paperlab.agentgym: the environments, the uniform interface in-process and over HTTP, the server's
robustness, and the agent's text format."""

from __future__ import annotations

import contextlib
import random
import threading
import time

import httpx
import pytest
import torch
import uvicorn

from paperlab.agentgym.agent import (
    Trajectory,
    agent_tokenizer,
    encode_conversation,
    expert_trajectory,
    parse_action,
    react_text,
    rollout,
)
from paperlab.agentgym.client import EnvError, HttpClient, LocalClient
from paperlab.agentgym.envs import ENVS, env_class, make_env
from paperlab.agentgym.server import BackgroundServer, create_app, free_port, load_test
from paperlab.agentgym.service import EnvService
from paperlab.llm import TinyLM
from paperlab.nn import GPT, GPTConfig
from paperlab.utils import cpu_threads


# --------------------------------------------------------------------------------------------------
# Environments
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ENVS))
def test_expert_succeeds_on_every_training_instruction(name):
    cls = ENVS[name]
    for i in cls.split("train"):
        trajectory = expert_trajectory(name, i)
        assert trajectory.success, (name, i, trajectory.prompt())
        assert len(trajectory.turns) <= cls.max_steps


@pytest.mark.parametrize("name", sorted(ENVS))
def test_splits_are_disjoint_and_instructions_distinct(name):
    cls = ENVS[name]
    first = [make_env(name).reset(options={"instruction_id": i})[0] for i in range(cls.n_train + cls.n_test)]
    train_texts, test_texts = set(first[: cls.n_train]), set(first[cls.n_train:])
    if name != "wordle":  # every wordle game opens alike; its words (the tasks) are distinct
        assert not train_texts & test_texts
    tasks = cls.tasks()
    assert len({repr(t) for t in tasks}) == len(tasks)


def _play(env, instruction_id, seed, actions):
    out = [env.reset(seed=seed, options={"instruction_id": instruction_id})[0]]
    for action in actions:
        observation, reward, terminated, truncated, _ = env.step(action)
        out.append((observation, reward, terminated, truncated))
        if terminated or truncated:
            break
    return out


@pytest.mark.parametrize("name", sorted(ENVS))
def test_reset_with_the_same_instruction_and_seed_reproduces_the_episode(name):
    rng = random.Random(0)
    words = agent_tokenizer().tokens[4:]
    env = make_env(name)
    for instruction_id in (0, 7, env.n_train + 3):
        env.reset(options={"instruction_id": instruction_id})
        expert = env.expert_action().action
        actions = [expert if rng.random() < 0.3 else " ".join(rng.sample(words, 2)) for _ in range(8)]
        first = _play(env, instruction_id, 5, actions)
        other = _play(make_env(name), 11, 1, actions)  # another episode in between, in another object
        assert _play(env, instruction_id, 5, actions) == first
        assert other == _play(make_env(name), 11, 1, actions)


def test_the_episode_seed_varies_what_it_should():
    craft = make_env("craft")
    orders = {craft.reset(seed=s, options={"instruction_id": 3})[0] for s in range(10)}
    assert len(orders) > 1  # the listed recipes come in another order
    shop = make_env("shop")
    pages = set()
    for s in range(10):
        shop.reset(seed=s, options={"instruction_id": 3})
        pages.add(shop.step("search red")[0])
    assert len(pages) > 1  # ties in the search results fall in another order


@pytest.mark.parametrize("name", sorted(ENVS))
def test_invalid_actions_are_answered_and_the_episode_goes_on_to_the_step_limit(name):
    env = make_env(name)
    env.reset(options={"instruction_id": 0})
    for step in range(1, env.max_steps + 1):
        observation, reward, terminated, truncated, info = env.step("dance wildly")
        assert observation and reward == 0.0 and not terminated
        assert truncated == (step == env.max_steps) and info["steps"] == step
    with pytest.raises(RuntimeError, match="over"):
        env.step("dance wildly")


def test_env_arguments_are_checked():
    with pytest.raises(ValueError, match="unknown environment 'chess'"):
        env_class("chess")
    env = make_env("grid")
    with pytest.raises(ValueError, match="instruction_id"):
        env.reset(options={"instruction_id": 10_000})
    with pytest.raises(ValueError, match="seed"):
        env.reset(seed=-1)
    with pytest.raises(RuntimeError, match="reset"):
        make_env("shop").step("buy 1")


def test_environment_rules():
    craft = make_env("craft")
    text, _ = craft.reset(options={"instruction_id": 3})
    assert text == "craft: make lamp. recipes: lamp = stone + brick; sign = reed; brick = gold."
    assert craft.step("craft brick")[0] == "missing gold."
    assert craft.step("get gold")[0] == "got gold."
    assert craft.step("get lamp")[0] == "lamp cannot be gathered."
    assert craft.step("get unicorn")[0] == "unknown item."
    assert craft.step("craft brick")[0] == "crafted brick."
    craft.step("get stone")
    assert craft.step("craft lamp")[:3] == ("crafted lamp. done.", 1.0, True)
    from paperlab.agentgym.wordle import feedback, known_letters

    assert feedback("speed", "abide") == "b b y b y"  # abide has one e: only the first e is yellow
    assert feedback("eerie", "there") == "y b y b g"  # the last e is green, one e is left for the first
    assert known_letters([("crane", "b g b b g")]) == "_ r _ _ e"
    shop = make_env("shop")
    shop.reset(options={"instruction_id": 3})
    assert shop.step("buy 1")[0] == "search first."
    page = shop.step("search black linen bag")[0]
    assert page.startswith("1: black linen bag") and page.count(";") == 2
    wrong = next(n for n in (1, 2) if shop.results[n - 1]["price"] >= shop.task["limit"])
    observation, reward, terminated, _, _ = shop.step(f"buy {wrong}")
    assert terminated and reward == 0.75  # right product, over the price limit


def test_agent_text_round_trips_through_the_tokenizer():
    tokenizer = agent_tokenizer()
    for name in ENVS:
        for i in (0, 1, 2):
            trajectory = expert_trajectory(name, i)
            text = trajectory.prompt()
            ids = tokenizer.encode(text)
            assert tokenizer.unk_id not in ids
            # the training segments are exactly the tokens the agent reads (up to the last observation)
            segments = encode_conversation(tokenizer, trajectory)
            flat = [t for ids_, _ in segments for t in ids_]
            last = trajectory.turns[-1].observation
            assert flat == tokenizer.encode(text[: -len(last)], add_bos=True)
            assert [is_agent for _, is_agent in segments] == [False] + [True, False] * (
                len(trajectory.turns) - 1) + [True]


def test_react_format():
    assert react_text("working on glass.", "get sand") == "Thought: working on glass. Action: get sand"
    assert parse_action("Thought: hmm. Action: get sand") == "get sand"
    assert parse_action("Thought: Action: x. Action: craft lamp") == "craft lamp"
    assert parse_action("get sand") == "get sand"


# --------------------------------------------------------------------------------------------------
# The service: ids, errors, step limits, idle reclamation
# --------------------------------------------------------------------------------------------------
class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_service_calls_errors_and_idle_reclamation():
    clock = FakeClock()
    service = EnvService("grid", idle_timeout=10, max_episodes=3, clock=clock)
    client = LocalClient(service=service)
    first = client.create(instruction_id=4, seed=2)
    assert first["id"] == 0 and first["observation"].startswith("grid:") and first["instruction_id"] == 4
    assert client.observation(0)["observation"] == first["observation"]
    reply = client.step(0, "sing")
    assert reply["observation"].startswith("invalid action") and not reply["done"] and reply["step"] == 1
    with pytest.raises(EnvError, match="404: unknown episode id 99"):
        client.step(99, "turn left")
    with pytest.raises(EnvError) as error:
        client.reset(0, instruction_id=10_000)
    assert error.value.status == 422
    for _ in range(5):
        client.step(0, "sing")
    assert client.observation(0)["done"]  # the step limit ended it
    with pytest.raises(EnvError, match="409"):
        client.step(0, "turn left")
    assert client.reset(0, instruction_id=4, seed=2)["observation"] == first["observation"]
    client.create()
    client.create()
    with pytest.raises(EnvError, match="503"):
        client.create()
    clock.now = 5
    client.step(2, "sing")  # episode 2 stays in use
    clock.now = 12  # episodes 0 and 1 were last used at 0: reclaimed
    assert client.info()["episodes"] == 1
    with pytest.raises(EnvError, match="reclaimed after 10 s idle"):
        client.step(1, "turn left")
    assert client.step(2, "sing")["step"] == 2
    assert client.close(2) == {"id": 2, "closed": True}
    with pytest.raises(EnvError, match="never created, or closed"):
        client.close(2)
    with pytest.raises(ValueError, match="idle_timeout"):
        EnvService("grid", idle_timeout=0)


# --------------------------------------------------------------------------------------------------
# The HTTP server (uvicorn in a thread, on 127.0.0.1)
# --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def serving(env: str, **options):
    """The app of ``env`` served by uvicorn in a thread of this process, on a free port of 127.0.0.1."""
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(create_app(env, **options), host="127.0.0.1", port=port,
                                       log_level="error"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(400):
        try:
            httpx.get(url + "/", timeout=0.5)
            break
        except httpx.TransportError:
            time.sleep(0.05)
    try:
        yield url
    finally:
        uv.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def server():
    with serving("craft", idle_timeout=600, max_episodes=256) as url:
        yield url


def test_http_errors_have_statuses_and_messages_and_never_stop_the_server(server):
    post = lambda path, **kw: httpx.post(server + path, timeout=5, **kw)  # noqa: E731
    created = post("/create", json={"instruction_id": 3}).json()
    assert created["observation"].startswith("craft: make lamp.")
    unknown = post("/step", json={"id": 10**6, "action": "get sand"})
    assert unknown.status_code == 404 and "unknown episode id 1000000" in unknown.json()["detail"]
    invalid = post("/step", json={"id": created["id"], "action": "fly to the moon"})
    assert invalid.status_code == 200 and invalid.json()["observation"].startswith("invalid action")
    assert not invalid.json()["done"]
    for bad in ({"id": "seven", "action": "get sand"}, {"id": created["id"]}, {"action": "get sand"},
                {"id": created["id"], "action": 3}, {"id": created["id"], "action": "x", "extra": 1},
                {"id": -1, "action": "get sand"}, {"id": created["id"], "action": "x" * 5000}, [1, 2]):
        assert post("/step", json=bad).status_code == 422, bad
    json_header = {"content-type": "application/json"}
    assert post("/step", content=b"{not json", headers=json_header).status_code == 422
    assert post("/reset", json={"id": created["id"], "instruction_id": 10**6}).status_code == 422
    assert httpx.get(server + "/observation", params={"id": "x"}).status_code == 422
    assert httpx.get(server + "/nowhere").status_code == 404
    # still serving, and the episode is still where it was
    again = httpx.get(server + "/observation", params={"id": created["id"]}).json()
    assert again["step"] == 1 and again["observation"].startswith("invalid action")


def test_http_episode_ends_at_the_step_limit_and_idle_episodes_are_reclaimed():
    with serving("craft", idle_timeout=0.5) as url, HttpClient(url) as client:
        episode = client.create(instruction_id=0)["id"]
        replies = [client.step(episode, "get sand") for _ in range(10)]
        assert [r["done"] for r in replies] == [False] * 9 + [True] and replies[-1]["truncated"]
        with pytest.raises(EnvError) as error:
            client.step(episode, "get sand")
        assert error.value.status == 409
        time.sleep(0.8)  # this server reclaims episodes idle for 0.5 s
        with pytest.raises(EnvError, match="reclaimed"):
            client.observation(episode)


def test_many_concurrent_clients_on_separate_episodes(server):
    n_clients = 12
    results, errors = {}, []

    def play(index: int) -> None:
        try:
            with HttpClient(server) as client:
                trajectory = rollout(_ExpertLLM(), {"craft": client}, [("craft", index, 0)])
                results[index] = trajectory[0]
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=play, args=(i,)) for i in range(n_clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert not any(thread.is_alive() for thread in threads) and sorted(results) == list(range(n_clients))
    for index, trajectory in results.items():
        assert trajectory.success
        assert trajectory.to_dict() == rollout(_ExpertLLM(), {"craft": LocalClient("craft")},
                                               [("craft", index, 0)])[0].to_dict()


def test_load_test_is_bounded(server):
    out = load_test(server, 3, steps_per_client=20, time_limit=20)
    assert out["steps"] == 60 and out["steps_per_second"] > 0
    # bounded in time too: far more steps than 0.5 s allows stop at the time limit
    out = load_test(server, 2, steps_per_client=10**9, time_limit=0.5)
    assert 0 < out["steps"] < 2 * 10**9 and out["seconds"] < 5


def test_cli_server_in_a_subprocess():
    with BackgroundServer("shop", idle_timeout=30) as background:
        assert background.running
        with HttpClient(background.url) as client:
            assert client.info()["env"] == "shop"
            episode = client.create(instruction_id=3)
            assert episode["observation"] == make_env("shop").reset(options={"instruction_id": 3})[0]
    assert not background.running
    with pytest.raises(ValueError, match="unknown environment"):
        BackgroundServer("chess")


# --------------------------------------------------------------------------------------------------
# The agent through either client: the same trajectories
# --------------------------------------------------------------------------------------------------
class _ExpertLLM:
    """A stand-in language model that replies with the expert's move for the episode it reads (it replays
    the episode on its own copy of the environment)."""

    def complete(self, prompts, n=1, *, temperature=0.0, max_tokens=16, stop=None):
        from paperlab.llm import Completion

        out = []
        for prompt in prompts:
            name = prompt.split(":", 1)[0]
            env = make_env(name)
            first = prompt.split(" Thought:", 1)[0]
            for i in range(env.n_train + env.n_test):  # find the instruction by its first observation
                if env.reset(options={"instruction_id": i})[0] == first:
                    break
            for action in [parse_action(turn.split(" <eos> ")[0]) for turn in prompt.split(" Thought:")[1:]]:
                env.step(action)
            move = env.expert_action()
            out.append([Completion(react_text(move.thought, move.action))])
        return out


def test_in_process_and_http_rollouts_agree_step_for_step():
    torch.manual_seed(0)
    tokenizer = agent_tokenizer()
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, context_length=192, d_model=32, n_layers=1,
                          n_heads=2)).eval()
    episodes = [(env, i, 0) for env in ("craft", "shop") for i in range(3)]
    agent = lambda: TinyLM(model, tokenizer, seed=3, use_cache=True)  # noqa: E731
    with cpu_threads(1), serving("craft") as craft, serving("shop") as shop:
        with HttpClient(craft) as c, HttpClient(shop) as s:
            over_http = rollout(agent(), {"craft": c, "shop": s}, episodes, temperature=1.0, max_tokens=8)
        local = {"craft": LocalClient("craft"), "shop": LocalClient("shop")}
        in_process = rollout(agent(), local, episodes, temperature=1.0, max_tokens=8)
    assert [t.to_dict() for t in over_http] == [t.to_dict() for t in in_process]
    assert sum(len(t.turns) for t in in_process) > len(episodes)  # the episodes went on past a turn


def test_rollout_ends_episodes_that_outgrow_the_context():
    torch.manual_seed(0)
    tokenizer = agent_tokenizer()
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, context_length=48, d_model=16, n_layers=1,
                          n_heads=2)).eval()
    out = rollout(TinyLM(model, tokenizer), {"craft": LocalClient("craft")}, [("craft", 0, 0)], max_tokens=16)
    assert out[0].ended == "context" and not out[0].success
    assert isinstance(Trajectory.from_dict(out[0].to_dict()), Trajectory)
    with pytest.raises(ValueError, match="no client"):
        rollout(TinyLM(model, tokenizer), {}, [("craft", 0, 0)])
