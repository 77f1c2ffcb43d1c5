"""`llava-agent serve` driven by real clients: the official ``openai`` package, LangChain's ``ChatOpenAI``, httpx.

One server process (the real CLI command, on loopback, two API keys) serves most of the module,
with the tiny random qwen2-family LLaVA; a second one serves a copy that never ends a reply, to
hold the model while the queue, batching and disconnects are tested. Assertions are on shapes, schemas, status codes and
invariants (stream == non-stream, server == the same model in process), never on what the random
model happens to say.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import jsonschema
import pytest
from PIL import Image

from tests.serve_process import free_port, start_server, wait_until_ready
from tests.tiny_models import endless_copy

pytestmark = [pytest.mark.integration, pytest.mark.slow]
openai = pytest.importorskip("openai")

KEY = "test-key-" + "a" * 24
OTHER_KEY = "test-key-" + "b" * 24
MODEL = "llava-tiny-qwen2"
AGENT = "llava-agent"
MAX_PIXELS = 100_000
MAX_BODY = 1_500_000
STORY = [{"role": "user", "content": "Tell me a long story about a red circle"}]
HOLD_TOKENS = 1100  # STORY runs this whole budget (the served copy never ends a reply): a long, sure hold


@dataclass
class Server:
    url: str
    data_dir: Path
    images_dir: Path
    log: Path

    def client(self, key: str | None = KEY, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=120, **kwargs)

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()


def png_data_url(size: tuple[int, int], colour=(200, 30, 30)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _serve(root: Path, model: Path, model_settings: str, sections: str):
    """A real ``llava-agent serve`` process with ``model`` and both API keys, stopped when the module ends."""
    data_dir, images_dir = root / "data", root / "images"
    images_dir.mkdir(parents=True)
    Image.new("RGB", (40, 30), (10, 200, 10)).save(images_dir / "green.png")
    config = root / "config.toml"
    config.write_text(
        f'data_dir = "{data_dir}"\n'
        f'[model]\nmodel = "{model}"\ndevice = "cpu"\ntemperature = 0.0\nmax_new_tokens = 96\n{model_settings}'
        f'[serve]\nmax_image_pixels = {MAX_PIXELS}\nmax_request_bytes = {MAX_BODY}\nmax_queue = 2\n'
        f'[tools]\ndevice = "cpu"\nallowed_dirs = ["{images_dir}", "{data_dir}"]\n{sections}'
    )
    port = free_port()
    log = root / "server.log"
    process = start_server(config, port, log, "--api-key", KEY, "--api-key", OTHER_KEY)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(process, url, log)
        yield Server(url, data_dir, images_dir, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_llava_qwen2) -> Server:
    yield from _serve(
        tmp_path_factory.mktemp("serve"), tiny_llava_qwen2,
        # plain greedy decoding, as the in-process copy compared with
        'repetition_penalty = 1.0\n'
        # a thread of one speak call and its result fits the tiny model's 2,048 positions, one of
        # several parallel calls may not: with the tokenizer's spelling of forced stretches the
        # random model writes a second call after the first here
        'jump_forward = false\n',
        'enabled = ["speak"]\nspeak_voices = ["en", "fr"]\n'
        '[agent]\nlong_term_memory = false\ntool_choice = "speak"\nrecursion_limit = 4\n',
    )  # fmt: skip


@pytest.fixture(scope="module")
def endless_model(tmp_path_factory, tiny_llava_qwen2) -> Path:
    """The tiny model, under its own name, as a copy that never ends a reply by itself.

    For holding the model: which prompts a random model ends early depends on the CPU's kernels.
    """
    return endless_copy(tiny_llava_qwen2, tmp_path_factory.mktemp("endless") / tiny_llava_qwen2.name)


@pytest.fixture(scope="module")
def holding_server(tmp_path_factory, endless_model) -> Server:
    """A server on which STORY runs its whole budget: for the queue, batching and disconnect tests.

    In float32 with the model's own output head, the path batched rows take (``generate``), a
    batched row is its solo reply exactly.
    """
    yield from _serve(
        tmp_path_factory.mktemp("serve-holding"), endless_model,
        'repetition_penalty = 1.0\nquantization = "none"\ndtype = "float32"\nlm_head = "model"\n',
        'enabled = []\n[agent]\nlong_term_memory = false\n',
    )  # fmt: skip


def _one_thread_model(path: Path):
    import torch

    from agent import ChatLlava

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield ChatLlava(model=str(path), device="cpu", temperature=0.0)
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def in_process_model(tiny_llava_qwen2):
    """The same checkpoint and settings as the server's, loaded here, to compare replies with."""
    yield from _one_thread_model(tiny_llava_qwen2)


@pytest.fixture(scope="module")
def endless_in_process_model(endless_model):
    """The copy that never ends a reply, loaded here: a long reply for the time-limit test."""
    yield from _one_thread_model(endless_model)


# ----- the chat model through the official client ---------------------------------------------


def test_health_models_and_request_ids(server):
    health = server.health()
    assert health["status"] == "ready" and health["model_loaded"] is True and health["model"] == MODEL
    assert health["queue"] == {"waiting": 0, "active": 0, "limit": 2, "max_batch": 4, "batched_requests": 0}
    models = server.client().models.list()
    assert [m.id for m in models.data] == [MODEL, AGENT]
    response = httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}",
                                                             "X-Request-Id": "my-request-1"})  # fmt: skip
    assert response.headers["x-request-id"] == "my-request-1"
    assert response.headers["x-content-type-options"] == "nosniff" and "server" not in response.headers
    deadline = time.monotonic() + 10  # the server writes the request's log line as (or just after) it answers
    while "[my-request-1]" not in server.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "[my-request-1]" in server.log.read_text()  # every log line of a request names it


def test_plain_and_streamed_replies_are_the_model_s_reply(server, in_process_model):
    client = server.client()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-") and reply.model == MODEL
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert 0 < reply.usage.completion_tokens <= 8 and reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    expected = in_process_model.invoke([("system", "Be brief."), ("human", "Say hello")], max_tokens=8)
    assert choice.message.content == expected.content
    assert reply.usage.prompt_tokens == expected.usage_metadata["input_tokens"]

    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0,
                                                 stream=True))  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and chunks[0].id != reply.id
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == choice.message.content
    assert chunks[-1].choices[0].finish_reason == choice.finish_reason
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])

    with_usage = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, stream=True,
                                                     stream_options={"include_usage": True}))  # fmt: skip
    assert with_usage[-1].choices == [] and with_usage[-1].usage.total_tokens == reply.usage.total_tokens
    assert with_usage[-2].usage is None and with_usage[-2].choices[0].finish_reason == choice.finish_reason


def test_stop_seed_and_sampling_options(server):
    client = server.client()
    full = client.chat.completions.create(model=MODEL, messages=STORY, max_tokens=24, temperature=0)
    text = full.choices[0].message.content
    assert len(text) >= 6
    stop = text[3:5]
    cut = client.chat.completions.create(model=MODEL, messages=STORY, max_tokens=24, temperature=0, stop=[stop])
    assert cut.choices[0].message.content == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"
    sampled = [client.chat.completions.create(model=MODEL, messages=STORY, max_tokens=12, temperature=1.0,
                                              top_p=0.9, seed=7).choices[0].message.content for _ in range(2)]  # fmt: skip
    assert sampled[0] == sampled[1]  # the seed makes sampling reproducible


def test_images_as_data_urls_and_allowed_paths(server):
    client = server.client()
    text_only = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "What is it?"}],
                                               max_tokens=2)  # fmt: skip
    content = [{"type": "text", "text": "What is it?"},
               {"type": "image_url", "image_url": {"url": png_data_url((64, 48))}},
               {"type": "image_url", "image_url": {"url": str(server.images_dir / "green.png")}}]  # fmt: skip
    with_images = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}],
                                                 max_tokens=2)  # fmt: skip
    # each image takes the tiny model's image_seq_length (16) tokens in the prompt
    assert with_images.usage.prompt_tokens >= text_only.usage.prompt_tokens + 2 * 16


def test_tool_calls_are_valid_for_their_schema(server):
    client = server.client()
    weather = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                "days": {"type": "integer", "minimum": 1, "maximum": 7}},
               "required": ["city", "days"]}  # fmt: skip
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": weather}},
             {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Weather in Oslo?"}],
                                           tools=tools, tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                           max_tokens=80)  # fmt: skip
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    jsonschema.validate(json.loads(call.function.arguments), weather)

    chunks = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Time?"}],
                                                 tools=tools, tool_choice="required", max_tokens=80, stream=True))  # fmt: skip
    streamed = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert streamed and streamed[0].function.name in ("get_weather", "get_time")
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    schema = weather if streamed[0].function.name == "get_weather" else tools[1]["function"]["parameters"]
    jsonschema.validate(json.loads(streamed[0].function.arguments), schema)

    # the conversation goes on with the tool's answer
    follow = client.chat.completions.create(model=MODEL, max_tokens=4, tools=tools, tool_choice="none", messages=[
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ])  # fmt: skip
    assert follow.choices[0].message.tool_calls is None and follow.choices[0].finish_reason in ("stop", "length")


def test_json_schema_response_format(server):
    from pydantic import BaseModel, Field

    class Person(BaseModel):
        name: str = Field(max_length=12)
        age: int = Field(ge=0, le=120)

    client = server.client()
    parsed = client.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": "Alice is 30."}],
                                           response_format=Person, max_tokens=60)  # fmt: skip
    person = parsed.choices[0].message.parsed
    assert isinstance(person, Person) and 0 <= person.age <= 120
    loose = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "JSON please"}],
                                           response_format={"type": "json_object"}, max_tokens=40)  # fmt: skip
    value = json.loads(loose.choices[0].message.content)  # the budget is kept to close the JSON
    assert isinstance(value, dict) and all(isinstance(v, (str, int, float, bool, type(None))) for v in value.values())


# ----- LangChain's ChatOpenAI ------------------------------------------------------------------


def test_langchain_chat_openai(server):
    from langchain_core.messages import AIMessage, HumanMessage
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    llm = ChatOpenAI(base_url=server.url + "/v1", api_key=KEY, model=MODEL, max_tokens=8, temperature=0,
                     max_retries=0, stream_usage=True)  # fmt: skip
    reply = llm.invoke("Say hello")
    assert isinstance(reply, AIMessage) and isinstance(reply.content, str)
    assert reply.usage_metadata["output_tokens"] <= 8
    streamed = list(llm.stream("Say hello"))
    assert "".join(c.content for c in streamed) == reply.content
    assert sum(c.usage_metadata["output_tokens"] for c in streamed if c.usage_metadata) == reply.usage_metadata[
        "output_tokens"]
    seeing = llm.invoke([HumanMessage(content=[{"type": "text", "text": "What colour?"},
                                               {"type": "image_url", "image_url": {"url": png_data_url((32, 32))}}])])
    assert seeing.usage_metadata["input_tokens"] >= reply.usage_metadata["input_tokens"] + 16

    class GetWeather(BaseModel):
        """Get the weather for a city."""

        city: str = Field(max_length=16)

    called = ChatOpenAI(base_url=server.url + "/v1", api_key=KEY, model=MODEL, max_tokens=60, temperature=0,
                        max_retries=0).bind_tools([GetWeather], tool_choice="GetWeather").invoke("Weather in Oslo?")  # fmt: skip
    assert called.tool_calls and called.tool_calls[0]["name"] == "GetWeather"
    assert isinstance(GetWeather(**called.tool_calls[0]["args"]), GetWeather)

    class Person(BaseModel):
        name: str = Field(max_length=12)
        age: int = Field(ge=0, le=120)

    structured = ChatOpenAI(base_url=server.url + "/v1", api_key=KEY, model=MODEL, max_tokens=60, temperature=0,
                            max_retries=0).with_structured_output(Person, method="json_schema")  # fmt: skip
    assert isinstance(structured.invoke("Bob is 4."), Person)


# ----- the agent as a model --------------------------------------------------------------------


def test_agent_model_runs_a_tool_and_serves_its_file_to_its_caller_only(server):
    from agent.serve.ownership import OwnershipStore
    from agent.serve.security import caller_name

    client = server.client()
    reply = client.chat.completions.create(model=AGENT, messages=[{"role": "user", "content": "Read this aloud."}],
                                           extra_headers={"X-Thread-Id": "story-1"})  # fmt: skip
    extra = reply.model_extra["llava_agent"]
    assert extra["thread"] == "story-1"
    assert extra["tool_calls"][0]["name"] == "speak" and extra["tool_calls"][0]["status"] == "success"
    assert isinstance(extra["tool_calls"][0]["arguments"]["text"], str)
    wav = extra["files"][0]
    assert wav["mime_type"].startswith("audio/") and wav["url"].startswith(server.url + "/v1/files/file-")
    assert str(server.data_dir) not in wav["url"]
    assert reply.choices[0].finish_reason in ("stop", "length") and isinstance(reply.choices[0].message.content, str)
    assert reply.usage.completion_tokens > 0

    owner = httpx.get(wav["url"], headers={"Authorization": f"Bearer {KEY}"})
    assert owner.status_code == 200 and owner.content[:4] == b"RIFF" and len(owner.content) == wav["bytes"]
    assert client.files.retrieve(wav["id"]).bytes == wav["bytes"]
    assert client.files.content(wav["id"]).read()[:4] == b"RIFF"
    stranger = httpx.get(wav["url"], headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert stranger.status_code == 404 and stranger.json()["error"]["code"] == "file_not_found"
    assert httpx.get(wav["url"]).status_code == 401

    # the same thread key from another caller is another conversation
    other = server.client(OTHER_KEY).chat.completions.create(
        model=AGENT, messages=[{"role": "user", "content": "Hello"}], user="story-1")
    assert other.model_extra["llava_agent"]["thread"] == "story-1"
    store = OwnershipStore(server.data_dir / "serve.sqlite")
    mine, theirs = store.thread_for(caller_name(KEY), "story-1"), store.thread_for(caller_name(OTHER_KEY), "story-1")
    store.close()
    assert mine and theirs and mine != theirs


def test_agent_model_streams_tokens_and_tool_events(server):
    client = server.client()
    stream = client.chat.completions.create(model=AGENT, stream=True, user="streamer",
                                            messages=[{"role": "user", "content": [
                                                {"type": "text", "text": "Describe and read aloud."},
                                                {"type": "image_url", "image_url": {"url": png_data_url((40, 40))}}]}])  # fmt: skip
    chunks = list(stream)
    events = [c.model_extra["llava_agent"]["event"] for c in chunks if "event" in (c.model_extra or {}).get(
        "llava_agent", {})]
    kinds = [e["type"] for e in events]
    # the random model may call speak more than once in one reply (parallel calls: the calls'
    # events, then each result as its tool finishes); how many depends on the prompt, which holds
    # temporary paths
    calls = [e for e in events if e["type"] == "tool_call"]
    results = [e for e in events if e["type"] == "tool_result"]
    assert kinds[0] == "tool_call" and calls and results
    assert all(call["name"] == "speak" for call in calls)
    position = {(e["type"], e["id"]): index for index, e in enumerate(events)}
    assert all(position[("tool_call", r["id"])] < position[("tool_result", r["id"])] for r in results)
    assert {r["id"] for r in results} == {c["id"] for c in calls}  # every call got its result
    assert not any(r["is_error"] for r in results)
    assert results[0]["files"] and results[0]["files"][0]["url"].endswith("/content")
    last = chunks[-1]
    assert last.choices[0].finish_reason in ("stop", "length")
    assert last.model_extra["llava_agent"]["thread"] == "streamer"
    assert last.model_extra["llava_agent"]["files"] == [f for e in events if e["type"] == "tool_result"
                                                         for f in e["files"]]  # fmt: skip
    again = client.chat.completions.with_raw_response.create(model=AGENT, user="streamer",
                                                             messages=[{"role": "user", "content": "And again?"}])
    assert again.headers["x-thread-id"] == "streamer"
    with pytest.raises(openai.BadRequestError, match="runs its own tools"):
        client.chat.completions.create(model=AGENT, messages=[{"role": "user", "content": "x"}],
                                       tools=[{"type": "function", "function": {"name": "f"}}])  # fmt: skip


# ----- refusals --------------------------------------------------------------------------------


def test_bad_and_missing_keys_are_401(server):
    with pytest.raises(openai.AuthenticationError) as caught:
        server.client("wrong-key-" + "c" * 20).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    assert "not valid" in caught.value.message
    bare = httpx.post(server.url + "/v1/chat/completions", json={"model": MODEL, "messages": []})
    assert bare.status_code == 401 and bare.headers["www-authenticate"] == "Bearer"
    assert bare.json()["error"]["code"] == "invalid_api_key" and "Authorization: Bearer" in bare.json()["error"]["message"]
    assert server.health()["requests"]["unauthorized"] >= 2


def test_oversized_images_and_bodies_are_refused(server):
    client = server.client()
    big = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_url((400, 300))}}]}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=big)
    assert caught.value.code == "invalid_image" and f"{MAX_PIXELS:,}" in caught.value.message
    huge = "data:image/png;base64," + base64.b64encode(os.urandom(MAX_BODY)).decode()  # refused before reading it
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": huge}}]}])  # fmt: skip
    assert caught.value.status_code == 413 and caught.value.code == "request_too_large"


@pytest.mark.parametrize(
    ("request_fields", "error", "code"),
    [
        ({"model": "gpt-4o"}, "NotFoundError", "model_not_found"),
        ({"n": 3}, "BadRequestError", "unsupported_value"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "/etc/hostname"}}]}]},
         "BadRequestError", "path_not_allowed"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
            "url": "https://example.com/cat.png"}}]}]}, "BadRequestError", "remote_images_disabled"),
        ({"messages": [{"role": "user", "content": "x" * 9000}]}, "BadRequestError", "context_length_exceeded"),
    ],
)  # fmt: skip
def test_refused_requests_get_openai_errors(server, request_fields, error, code):
    fields = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **request_fields}
    with pytest.raises(getattr(openai, error)) as caught:
        server.client().chat.completions.create(**fields)
    assert caught.value.code == code and caught.value.body["message"]


def test_cors_is_off_unless_configured(server):
    preflight = httpx.options(server.url + "/v1/chat/completions", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})  # fmt: skip
    assert "access-control-allow-origin" not in preflight.headers


# ----- many clients, one model -----------------------------------------------------------------


def test_a_client_that_disconnects_mid_stream_stops_its_generation(holding_server):
    client = holding_server.client()
    before = holding_server.health()
    with client.chat.completions.create(model=MODEL, messages=STORY, max_tokens=HOLD_TOKENS, temperature=0,
                                        stream=True) as stream:  # fmt: skip
        for index, _ in enumerate(stream):
            if index == 3:
                break  # leaving the block closes the connection mid-stream
    deadline = time.monotonic() + 60
    while (health := holding_server.health())["requests"]["cancelled"] == before["requests"]["cancelled"]:
        assert time.monotonic() < deadline, health
        time.sleep(0.1)
    assert health["queue"]["active"] == 0
    generated = health["completion_tokens"] - before["completion_tokens"]
    assert 0 < generated < HOLD_TOKENS, generated  # stopped early: uncancelled, it would have made them all
    nxt = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert nxt.choices[0].finish_reason in ("stop", "length")


def test_a_full_queue_answers_429_and_every_reply_goes_to_its_request(holding_server):
    """max_queue = 2: with one request running and two waiting, more are refused at once."""
    client = holding_server.client()
    prompts = [f"Tell me about the number {n}" for n in range(4)]
    results: dict[str, object] = {}

    def ask(prompt: str, max_tokens: int = 12) -> None:
        try:
            reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                                   max_tokens=max_tokens, temperature=0)  # fmt: skip
            results[prompt] = reply.choices[0].message.content
        except openai.RateLimitError as exc:
            results[prompt] = exc

    long = threading.Thread(target=ask, args=(STORY[0]["content"], HOLD_TOKENS))
    long.start()
    _wait_for_queue(holding_server, active=1, waiting=0)
    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts[:2]]
    for waiting, thread in enumerate(threads, start=1):  # in order: these two wait ...
        thread.start()
        _wait_for_queue(holding_server, active=1, waiting=waiting)
    for prompt in prompts[2:]:  # ... and these two find the queue full, and are answered at once
        ask(prompt)
    assert holding_server.health()["queue"]["active"] == 1, "the holder ended before the queue was tested"
    for thread in [long, *threads]:
        thread.join(timeout=180)
    refused = [p for p in prompts if isinstance(results[p], openai.RateLimitError)]
    assert refused == prompts[2:]
    assert all(results[p].code == "queue_full" and results[p].response.headers["retry-after"] for p in refused)
    for prompt in prompts[:2]:  # served while others waited: each reply is its own prompt's reply
        alone = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                               max_tokens=12, temperature=0)  # fmt: skip
        assert results[prompt] == alone.choices[0].message.content
    queue = holding_server.health()["queue"]
    assert (queue["waiting"], queue["active"]) == (0, 0)
    assert queue["batched_requests"] >= 2  # the two that waited ran together


# ----- time limits (the app in process, with the same tiny model) ------------------------------


async def test_time_limits_cut_generation_and_queue_waits(tmp_path, endless_in_process_model):
    in_process_model = endless_in_process_model
    from agent.core.config import load_config
    from agent.serve.app import create_app

    config = load_config({"data_dir": str(tmp_path), "serve": {"request_timeout_s": 1.5, "agent_model": None}},
                         environ={})  # fmt: skip
    app = create_app(config, llm=in_process_model, load_on_start=False)
    transport = httpx.ASGITransport(app=app)
    # a model step of at least 10 ms: 1,100 tokens take 11 s or more on any machine, far over the 1.5 s limit
    # (the language model runs once per step under generate() and under the decode loop alike)
    language_model = in_process_model.loaded.model.model.language_model
    slow = language_model.register_forward_pre_hook(lambda *_: time.sleep(0.01))
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
        started = time.monotonic()
        try:
            response = await client.post("/v1/chat/completions", json={
                "model": MODEL, "messages": STORY, "max_tokens": HOLD_TOKENS, "temperature": 0})  # fmt: skip
        finally:
            slow.remove()
        elapsed = time.monotonic() - started
        reply = response.json()
        assert response.status_code == 200 and reply["choices"][0]["finish_reason"] == "length"
        assert 0 < reply["usage"]["completion_tokens"] < 300 and elapsed < 10  # cut by the limit, with its text
        queue = app.state.server.queue
        start, queue.start = queue.start, None  # take a turn by hand: the model is busy
        held = await queue.acquire("someone-else", None)
        queue.start = start
        try:
            waited = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": STORY})
        finally:
            held.ticket.release()
        assert waited.status_code == 503 and waited.json()["error"]["code"] == "queue_timeout"
        assert waited.headers["retry-after"]


def _wait_for_queue(server: Server, *, active: int, waiting: int) -> None:
    deadline = time.monotonic() + 60
    while ((queue := server.health()["queue"])["active"], queue["waiting"]) != (active, waiting):
        assert time.monotonic() < deadline, queue
        time.sleep(0.01)


def _hold_the_model(server: Server) -> threading.Thread:
    """A long greedy request (it runs its whole budget), running when this returns."""
    client = server.client()
    long = threading.Thread(target=lambda: client.chat.completions.create(
        model=MODEL, messages=STORY, max_tokens=HOLD_TOKENS, temperature=0))  # fmt: skip
    long.start()
    _wait_for_queue(server, active=1, waiting=0)
    return long


def test_waiting_plain_requests_run_as_one_batch_with_their_own_limits(holding_server):
    client = holding_server.client()
    short = {"messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 6}
    story = client.chat.completions.create(model=MODEL, messages=STORY, max_tokens=30, temperature=0)
    stop = story.choices[0].message.content[8:10]
    cut = {"messages": STORY, "max_tokens": 30, "stop": [stop]}
    alone = [client.chat.completions.create(model=MODEL, temperature=0, **fields) for fields in (short, cut)]
    assert alone[1].choices[0].finish_reason == "stop"
    before = holding_server.health()["queue"]["batched_requests"]

    results: dict[int, object] = {}

    def ask(index: int, fields: dict) -> None:
        chunks = list(client.chat.completions.create(model=MODEL, temperature=0, stream=True, **fields))
        results[index] = ("".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
                          chunks[-1].choices[0].finish_reason, chunks[-1].usage.completion_tokens)  # fmt: skip

    long = _hold_the_model(holding_server)
    threads = [threading.Thread(target=ask, args=(i, f)) for i, f in enumerate((short, cut))]
    for waiting, thread in enumerate(threads, start=1):
        thread.start()
        _wait_for_queue(holding_server, active=1, waiting=waiting)
    for thread in [long, *threads]:
        thread.join(timeout=180)
    assert holding_server.health()["queue"]["batched_requests"] == before + 2
    for index, single in enumerate(alone):  # each row: the same reply and finish reason as alone
        choice = single.choices[0]
        assert results[index][:2] == (choice.message.content, choice.finish_reason)
        if choice.finish_reason == "length":  # (after a stop sequence, one more token may have been made alone)
            assert results[index][2] == single.usage.completion_tokens


def test_a_client_leaving_a_batch_stops_only_its_row(holding_server):
    client = holding_server.client()
    short = {"messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 6}
    alone = client.chat.completions.create(model=MODEL, temperature=0, **short)
    before = holding_server.health()
    kept: dict[str, object] = {}

    def leave() -> None:
        with client.chat.completions.create(model=MODEL, messages=STORY, max_tokens=400, temperature=0,
                                            stream=True) as stream:  # fmt: skip
            for index, _ in enumerate(stream):
                if index == 2:
                    break

    def stay() -> None:
        kept["reply"] = client.chat.completions.create(model=MODEL, temperature=0, **short)

    long = _hold_the_model(holding_server)
    threads = [threading.Thread(target=leave), threading.Thread(target=stay)]
    for waiting, thread in enumerate(threads, start=1):
        thread.start()
        _wait_for_queue(holding_server, active=1, waiting=waiting)
    for thread in [long, *threads]:
        thread.join(timeout=180)
    deadline = time.monotonic() + 60
    while (health := holding_server.health())["requests"]["cancelled"] == before["requests"]["cancelled"]:
        assert time.monotonic() < deadline, health
        time.sleep(0.1)
    assert health["queue"]["batched_requests"] == before["queue"]["batched_requests"] + 2
    assert kept["reply"].choices[0].message.content == alone.choices[0].message.content
    generated = health["completion_tokens"] - before["completion_tokens"]
    assert generated < HOLD_TOKENS + 400 + 6  # the holder's budget, the stayer's few, a part of the leaver's 400
