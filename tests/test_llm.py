"""paperlab.llm: the interface's argument checks and usage, the tiny backend, the OpenAI-compatible client
against a fake server on 127.0.0.1, the switch PAPERLAB_LLM, and the Hugging Face backend (skipped without
transformers)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from paperlab import llm
from paperlab.nn import GPT, GPTConfig, sequence_logprob
from paperlab.tokenizers import CharTokenizer


# --------------------------------------------------------------------------------------------------
# The tiny backend
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    tokenizer = CharTokenizer.fit(["0123456789+=ab"])
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, context_length=16, d_model=16, n_layers=1,
                          n_heads=2)).eval()
    return llm.TinyLM(model, tokenizer, seed=0)


def test_complete_shapes_logprobs_and_usage(tiny):
    before = tiny.usage.copy()
    out = tiny.complete(["1+2=", "12+3="], n=3, temperature=1.0, max_tokens=4)
    assert len(out) == 2 and all(len(group) == 3 for group in out)
    spent = tiny.usage - before
    assert spent.calls == 1
    assert spent.prompt_tokens == 5 + 6  # <bos> + characters, once per prompt
    n_generated = 0
    for group in out:
        for completion in group:
            assert completion.finish_reason in ("stop", "length")
            # one log-prob per generated token (the <eos>, when emitted, is a generated token too); an
            # untrained model may emit special tokens, which decode to no text
            assert 1 <= len(completion.logprobs) <= 4
            assert (completion.finish_reason == "length") == (len(completion.logprobs) == 4 and
                                                              completion.finish_reason != "stop")
            assert all(lp <= 0 for lp in completion.logprobs)
            n_generated += len(completion.logprobs)
    assert spent.generated_tokens == n_generated
    assert spent.seconds > 0


def test_token_logprobs_agree_with_sequence_logprob(tiny):
    completion = tiny.complete(["1+2="], n=1, temperature=1.0, max_tokens=6)[0][0]
    prompt = tiny.encode_prompt("1+2=")
    assert len(completion.tokens) == len(completion.logprobs)
    assert tiny.tokenizer.decode(completion.tokens) == completion.text
    with torch.no_grad():
        reference = sequence_logprob(tiny.model, [prompt], [list(completion.tokens)]).item()
    assert completion.logprob == pytest.approx(reference, abs=1e-4)


def test_cached_decoding_and_no_logprobs_give_the_same_samples(tiny):
    fast = llm.TinyLM(tiny.model, tiny.tokenizer, seed=3, logprobs=False, use_cache=True)
    tiny.reseed(3)
    plain = tiny.complete(["1+2=", "12+3="], n=4, temperature=1.0, max_tokens=6)
    quick = fast.complete(["1+2=", "12+3="], n=4, temperature=1.0, max_tokens=6)
    assert [[c.tokens for c in g] for g in quick] == [[c.tokens for c in g] for g in plain]
    assert all(c.logprobs is None and c.logprob is None for g in quick for c in g)
    tiny.reseed(0)


def test_greedy_is_deterministic_and_sampling_reproducible(tiny):
    greedy = tiny.complete(["3+4="], n=4, temperature=0, max_tokens=5)[0]
    assert len({c.text for c in greedy}) == 1
    tiny.reseed(7)
    first = [c.text for c in tiny.complete(["3+4="], n=8, max_tokens=5)[0]]
    tiny.reseed(7)
    second = [c.text for c in tiny.complete(["3+4="], n=8, max_tokens=5)[0]]
    assert first == second


def test_stop_strings_cut_the_text(tiny):
    tiny.reseed(0)
    out = tiny.complete(["1+1="] * 20, n=1, temperature=2.0, max_tokens=8, stop=["a", "b"])
    for (completion,) in out:
        assert "a" not in completion.text and "b" not in completion.text
        assert tiny.tokenizer.decode(completion.tokens) == completion.text
        assert len(completion.logprobs) == len(completion.tokens)


def test_stop_strings_are_checked_and_cut_at_the_earliest():
    assert llm._check_stop(None) == () and llm._check_stop("ab") == ("ab",)
    assert llm._check_stop(["a", "b"]) == ("a", "b")
    assert llm._cut_at_stop("12a34b", ("b", "a")) == ("12", True)
    assert llm._cut_at_stop("1234", ("b",)) == ("1234", False)


def test_a_prompt_may_fill_the_context_but_not_exceed_it(tiny):
    # "1+2=" is 5 tokens with <bos>; the context holds 16, and the last generated token is not fed back
    assert len(tiny.complete(["1+2="], max_tokens=12)) == 1
    with pytest.raises(ValueError, match="exceeds the tiny"):
        tiny.complete(["1+2="], max_tokens=13)


def test_logprob_matches_sequence_logprob(tiny):
    values = tiny.logprob(["1+2=", "9+9="], ["3", "18"])
    with torch.no_grad():
        expected = sequence_logprob(tiny.model, [tiny.encode_prompt("1+2="), tiny.encode_prompt("9+9=")],
                                    [tiny.tokenizer.encode("3"), tiny.tokenizer.encode("18")])
    assert values == pytest.approx(expected.tolist(), abs=1e-5)
    assert tiny.logprob(["1+2="], [""]) == [0.0]


@pytest.mark.parametrize("kwargs, message", [
    ({"prompts": []}, "prompts is empty"),
    ({"prompts": "1+2="}, "wrap a single prompt"),
    ({"n": 0}, "n must be an integer >= 1"),
    ({"temperature": -0.1}, "temperature must be a finite number >= 0"),
    ({"temperature": float("nan")}, "temperature must be a finite number >= 0"),
    ({"max_tokens": 0}, "max_tokens must be an integer >= 1"),
    ({"stop": [""]}, "stop must be"),
    ({"prompts": ["1+2=x"]}, "does not know: ['x']"),
    ({"max_tokens": 16}, "exceeds the tiny model's context"),
])
def test_bad_arguments_are_named(tiny, kwargs, message):
    arguments = {"prompts": ["1+2="], "n": 1, "temperature": 1.0, "max_tokens": 3} | kwargs
    calls = tiny.usage.calls
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("+", r"\+")):
        tiny.complete(arguments.pop("prompts"), **arguments)
    assert tiny.usage.calls == calls  # nothing was spent


def test_logprob_bad_arguments(tiny):
    with pytest.raises(ValueError, match="differ in length"):
        tiny.logprob(["1+2="], ["3", "4"])
    with pytest.raises(ValueError, match="continuations is empty"):
        tiny.logprob(["1+2="], [])


# --------------------------------------------------------------------------------------------------
# The switch
# --------------------------------------------------------------------------------------------------
def test_parse_spec_forms():
    assert llm.parse_spec("tiny") == ("tiny", {})
    assert llm.parse_spec("openai:http://127.0.0.1:8080/v1/qwen2.5:0.5b") == (
        "openai", {"base_url": "http://127.0.0.1:8080/v1", "model": "qwen2.5:0.5b", "endpoint": "chat"})
    assert llm.parse_spec("openai-completions:http://h:1/v1/org/model") == (
        "openai", {"base_url": "http://h:1/v1", "model": "org/model", "endpoint": "completions"})
    assert llm.parse_spec("hf:/models/tiny") == ("hf", {"path": "/models/tiny"})


@pytest.mark.parametrize("spec", ["gpt4", "openai:http://127.0.0.1:8080/my-model", "openai:http://h/v1/",
                                  "vllm:http://h/v1/m", ""])
def test_unknown_spec_lists_the_valid_forms(spec):
    with pytest.raises(ValueError, match="Valid forms") as info:
        llm.parse_spec(spec)
    assert "hf:<path" in str(info.value) and "tiny" in str(info.value)


def test_from_env_builds_tiny_only_when_chosen(monkeypatch, tiny):
    built = []
    monkeypatch.delenv(llm.ENV_VAR, raising=False)
    assert llm.from_env(tiny=lambda: built.append(1) or tiny) is tiny and built == [1]
    monkeypatch.setenv(llm.ENV_VAR, "openai:http://127.0.0.1:9/v1/m")
    client = llm.from_env(tiny=lambda: built.append(2) or tiny)
    assert isinstance(client, llm.OpenAIClient) and built == [1]
    assert client.model == "m" and client.base_url == "http://127.0.0.1:9/v1"
    monkeypatch.setenv(llm.ENV_VAR, "nonsense")
    with pytest.raises(ValueError, match="Valid forms"):
        llm.from_env(tiny=tiny)
    monkeypatch.setenv(llm.ENV_VAR, "hf:/no/such/folder")
    with pytest.raises(ValueError, match="not a folder"):  # checked before transformers is imported
        llm.from_env(tiny=tiny)


# --------------------------------------------------------------------------------------------------
# The OpenAI-compatible client, against a fake server
# --------------------------------------------------------------------------------------------------
def _fake_app():
    app = FastAPI()
    state = {"flaky": 0, "ratelimit": 0, "requests": []}
    models = ["ok", "flaky", "ratelimit", "slow", "broken", "malformed", "notjson", "one-choice",
              "nologprobs"]

    def completion_reply(model, texts, chat, prompt_tokens=3):
        choices = []
        for i, text in enumerate(texts):
            if chat:
                choices.append({"index": i, "message": {"role": "assistant", "content": text},
                                "finish_reason": "stop",
                                "logprobs": {"content": [{"token": ch, "logprob": -0.5} for ch in text]}})
            else:
                choices.append({"index": i, "text": text, "finish_reason": "length",
                                "logprobs": {"tokens": list(text), "token_logprobs": [-0.25] * len(text),
                                             "text_offset": list(range(len(text)))}})
        return {"id": "x", "object": "chat.completion" if chat else "text_completion", "model": model,
                "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": sum(len(t) for t in texts)}}

    async def handle(request: Request, chat: bool):
        body = await request.json()
        state["requests"].append(body)
        model = body.get("model")
        if model not in models:
            error = {"message": f"The model `{model}` does not exist."}
            return JSONResponse({"error": error}, status_code=404)
        if model == "flaky":
            state["flaky"] += 1
            if state["flaky"] <= 2:
                return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
        if model == "ratelimit":
            state["ratelimit"] += 1
            if state["ratelimit"] <= 1:
                return JSONResponse({"error": "slow down"}, status_code=429, headers={"Retry-After": "0"})
        if model == "broken":
            return JSONResponse({"error": {"message": "internal"}}, status_code=500)
        if model == "slow":
            await asyncio.sleep(2.0)
        if model == "malformed":
            return JSONResponse({"id": "x", "result": "no choices here"})
        if model == "notjson":
            return PlainTextResponse("<html>proxy error</html>")
        n = int(body.get("n", 1))
        if model == "one-choice":
            n = 1  # a server that ignores n
        if not chat and body.get("echo"):
            text = body["prompt"]
            reply = completion_reply(model, [text + "!"], chat=False, prompt_tokens=len(text))
            if model == "nologprobs":
                del reply["choices"][0]["logprobs"]
            else:  # per-character log-probs -0.1 * (offset + 1); the first token has none
                reply["choices"][0]["logprobs"]["token_logprobs"] = [None] + [
                    -0.1 * (i + 1) for i in range(1, len(text) + 1)]
            return JSONResponse(reply)
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        texts = [f"{prompt[::-1]}{i}" for i in range(n)]
        return JSONResponse(completion_reply(model, texts, chat))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await handle(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await handle(request, chat=False)

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [{"id": m, "object": "model"} for m in models]}

    return app, state


@pytest.fixture(scope="module")
def server(serve_app):
    """The fake server on 127.0.0.1 (a free port, in a thread): its base URL and its state."""
    app, state = _fake_app()
    with serve_app(app) as url:
        yield f"{url}/v1", state


def client(server, model, **kwargs):
    base_url, _ = server
    kwargs = {"timeout": 5.0, "max_retries": 3, "backoff": 0.01} | kwargs
    return llm.OpenAIClient(base_url, model, **kwargs)


def test_chat_reply_parsed_with_logprobs_and_usage(server):
    model = client(server, "ok", logprobs=True)
    out = model.complete(["abc", "xy"], n=2, temperature=0.7, max_tokens=5, stop=["\n"])
    assert [[c.text for c in group] for group in out] == [["cba0", "cba1"], ["yx0", "yx1"]]
    assert out[0][0].logprobs == (-0.5,) * 4 and out[0][0].finish_reason == "stop"
    assert model.usage.calls == 1 and model.usage.prompt_tokens == 6
    assert model.usage.generated_tokens == 8 + 6 and not model.usage.estimated
    request = server[1]["requests"][-1]
    assert request["n"] == 2 and request["temperature"] == 0.7 and request["max_tokens"] == 5
    assert request["stop"] == ["\n"] and request["logprobs"] is True
    assert request["messages"] == [{"role": "user", "content": "xy"}]


def test_completions_endpoint(server):
    model = client(server, "ok", endpoint="completions")
    (group,) = model.complete(["hello"], n=1, max_tokens=3)
    assert group[0].text == "olleh0" and group[0].finish_reason == "length"
    assert group[0].logprobs is None or len(group[0].logprobs) == 6


def test_server_that_ignores_n_is_asked_again(server):
    model = client(server, "one-choice")
    (group,) = model.complete(["q"], n=3)
    assert len(group) == 3


def test_retries_on_5xx_and_429_then_succeeds(server):
    started = time.monotonic()
    assert client(server, "flaky").complete(["ab"])[0][0].text == "ba0"
    assert client(server, "ratelimit").complete(["ab"])[0][0].text == "ba0"
    assert time.monotonic() - started < 5


def test_persistent_5xx_raises_after_bounded_retries(server):
    before = len(server[1]["requests"])
    with pytest.raises(llm.LLMError, match="500: internal"):
        client(server, "broken", max_retries=2).complete(["ab"])
    assert len(server[1]["requests"]) - before == 3  # the first attempt and 2 retries


def test_slow_reply_times_out(server):
    started = time.monotonic()
    with pytest.raises(llm.LLMTimeoutError, match="no reply .* within 0.3 s"):
        client(server, "slow", timeout=0.3, max_retries=1).complete(["ab"])
    assert time.monotonic() - started < 1.8  # two short waits, not the server's 2 s


def test_missing_model_names_the_available_ones(server):
    with pytest.raises(llm.LLMError, match="404.*does not exist.*the server has: .*flaky"):
        client(server, "gpt-17").complete(["ab"])


def test_malformed_replies_are_clear_errors(server):
    with pytest.raises(llm.LLMResponseError, match="no 'choices' list"):
        client(server, "malformed").complete(["ab"])
    with pytest.raises(llm.LLMResponseError, match="not a JSON object"):
        client(server, "notjson").complete(["ab"])


def test_unreachable_server_is_a_clear_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    model = llm.OpenAIClient(f"http://127.0.0.1:{port}/v1", "m", max_retries=1, backoff=0.01, timeout=1)
    with pytest.raises(llm.LLMError, match="cannot reach .* is the server running"):
        model.complete(["ab"])


def test_logprob_sums_the_continuation_tokens(server):
    model = client(server, "ok", endpoint="completions")
    # prompt "ab" + continuation "cd": echoed character i carries -0.1 * (i + 1); "c", "d" are i = 2, 3
    assert model.logprob(["ab"], ["cd"]) == [pytest.approx(-0.3 - 0.4)]
    with pytest.raises(llm.LLMResponseError, match="echo"):
        client(server, "nologprobs", endpoint="completions").logprob(["ab"], ["cd"])


def test_client_arguments_checked(monkeypatch):
    monkeypatch.delenv("PAPERLAB_LLM_BASE_URL", raising=False)
    monkeypatch.delenv("PAPERLAB_LLM_MODEL", raising=False)
    with pytest.raises(ValueError, match="needs base_url"):
        llm.OpenAIClient(model="m")
    with pytest.raises(ValueError, match="needs model"):
        llm.OpenAIClient("http://127.0.0.1:1/v1")
    with pytest.raises(ValueError, match="endpoint must be"):
        llm.OpenAIClient("http://127.0.0.1:1/v1", "m", endpoint="embeddings")
    for kwargs, message in (({"timeout": 0}, "timeout must be"), ({"max_retries": -1}, "max_retries must be"),
                            ({"backoff": -1}, "backoff must be")):
        with pytest.raises(ValueError, match=message):
            llm.OpenAIClient("http://127.0.0.1:1/v1", "m", **kwargs)
    with pytest.raises(ValueError, match="must start with http"):
        llm.OpenAIClient("127.0.0.1:1/v1", "m")
    with pytest.raises(ValueError, match="must start with http"):
        llm.OpenAIClient(5, "m")
    with pytest.raises(ValueError, match="needs model"):
        llm.OpenAIClient("http://127.0.0.1:1/v1", 5)
    monkeypatch.setenv("PAPERLAB_LLM_BASE_URL", "http://127.0.0.1:1/v1")
    monkeypatch.setenv("PAPERLAB_LLM_MODEL", "env-model")
    assert llm.OpenAIClient().model == "env-model"


def test_retries_back_off_exponentially_and_honour_retry_after_up_to_30_s(monkeypatch):
    slept = []
    monkeypatch.setattr(llm.time, "sleep", slept.append)
    client = llm.OpenAIClient("http://127.0.0.1:1/v1", "m", backoff=0.5)
    for attempt in range(3):
        client._wait(attempt, None)
    for retry_after in ("3", "100", "soon"):
        client._wait(0, retry_after)
    assert slept == [0.5, 1.0, 2.0, 3.0, 30.0, 0.5]


# --------------------------------------------------------------------------------------------------
# The Hugging Face backend (only where transformers is installed)
# --------------------------------------------------------------------------------------------------
def _tiny_hf_folder(path):
    """A random one-layer GPT-2 with a character tokenizer over digits, '+' and '=', saved in ``path``;
    returns (model, tokenizer)."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    vocabulary = {ch: i for i, ch in enumerate(["<unk>", "<eos>"] + list("0123456789+="))}
    core = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocabulary, unk_token="<unk>"))
    core.pre_tokenizer = tokenizers.pre_tokenizers.Split("", "isolated")
    core.decoder = tokenizers.decoders.Fuse()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>",
                                                     eos_token="<eos>", pad_token="<eos>")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=len(vocabulary), n_positions=32, n_embd=16, n_layer=1, n_head=2,
        eos_token_id=1, bos_token_id=1, pad_token_id=1)).eval()  # eval: no dropout
    tokenizer.save_pretrained(path)
    model.save_pretrained(path)
    return model, tokenizer


def test_hf_backend_on_a_tiny_random_model(tmp_path):
    model, tokenizer = _tiny_hf_folder(tmp_path)
    hf = llm.HFCausalLM(tmp_path, device="cpu", seed=0)
    out = hf.complete(["1+2=", "3+4="], n=2, temperature=1.0, max_tokens=4)
    assert len(out) == 2 and all(len(g) == 2 for g in out)
    for group in out:
        for completion in group:
            assert len(completion.logprobs) >= len(completion.text)
            assert all(lp <= 0 for lp in completion.logprobs)
    greedy = hf.complete(["1+2="], n=2, temperature=0, max_tokens=4)[0]
    assert greedy[0].text == greedy[1].text
    (value,) = hf.logprob(["1+2="], ["3"])
    ids = torch.tensor([tokenizer("1+2=3")["input_ids"]])
    with torch.no_grad():
        expected = torch.log_softmax(model(ids).logits[0, -2], -1)[ids[0, -1]].item()
    assert value == pytest.approx(expected, abs=1e-4)
    assert hf.usage.calls == 3


def test_hf_backend_samples_each_prompt_from_its_own_stream(tmp_path):
    """The same prompt twice in one call draws different samples (one seed per call gave both the same);
    a fresh backend with the same seed repeats them; the caller's global random state is untouched."""
    _tiny_hf_folder(tmp_path)
    hf = llm.HFCausalLM(tmp_path, device="cpu", seed=0)
    state = torch.get_rng_state()
    texts = [[c.text for c in group] for group in hf.complete(["1+2=", "1+2="], n=3, temperature=1.0,
                                                              max_tokens=8)]
    assert torch.equal(torch.get_rng_state(), state)
    assert texts[0] != texts[1]
    again = llm.HFCausalLM(tmp_path, device="cpu", seed=0)
    assert [[c.text for c in g] for g in again.complete(["1+2=", "1+2="], n=3, temperature=1.0,
                                                        max_tokens=8)] == texts


def test_hf_backend_names_a_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):  # checked before transformers is imported
        llm.HFCausalLM(tmp_path / "missing")
