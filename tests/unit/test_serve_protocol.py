"""The server's wire format, keys and queue, as pure functions (no model, no network)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from agent.core.config import load_config
from agent.core.errors import (
    ConfigError,
    ContextLengthError,
    ImageError,
    InputError,
    ModelNotFoundError,
    PathNotAllowedError,
)
from agent.core.files import resolve_allowed_path
from agent.serve.protocol import (
    MAX_SEED,
    MIN_SEED,
    APIError,
    CompletionWriter,
    assistant_message,
    error_for,
    openai_tool_calls,
    parse_request,
    response_schema,
    sse,
)
from agent.serve.queue import FairQueue, QueueFull, QueueTimeout
from agent.serve.security import (
    LOCAL_CALLER,
    ApiKeys,
    bearer_token,
    caller_name,
    check_exposure,
    is_loopback,
    read_key_file,
)
from agent.serve.tool_text import FOLDER_PLACEHOLDER, MAX_SHOWN_CHARS, shown_tool_text

KEY_A = "a" * 24
KEY_B = "b-" + "x" * 30


def body(**fields) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}).encode()


# ----- requests ---------------------------------------------------------------------------------


def test_a_plain_request_parses_with_its_options():
    request = parse_request(body(max_tokens=5, temperature=0.5, stop="x", seed=3, user="u1", store=True))
    assert (request.token_limit, request.temperature, request.stop_sequences, request.seed) == (5, 0.5, ["x"], 3)
    assert parse_request(body(max_completion_tokens=7, max_tokens=5)).token_limit == 7


@pytest.mark.parametrize(
    ("raw", "param", "fragment"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"[1, 2]", None, "not an object"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), "model", "model"),
        (body(messages=[]), "messages", "messages"),
        (body(temperature=3), "temperature", "less than or equal to 2"),
        (body(top_p=0), "top_p", "greater than 0"),
        (body(max_tokens=0), "max_tokens", "greater than 0"),
        (body(n=2), "n", "n=2 is not supported"),
        (body(logprobs=True), "logprobs", "logprobs"),
        (body(presence_penalty=0.5), "presence_penalty", "presence_penalty"),
        (body(logit_bias={"1": 5}), "logit_bias", "logit_bias"),
        (body(stop=["a", "b", "c", "d", "e"]), "stop", "up to 4"),
        (body(tool_choice="required"), "tool_choice", "only allowed when tools"),
        (body(tools=[{"type": "function", "function": {"name": "bad name"}}]), "tools.0.function.name", "pattern"),
        (body(tools=[{"type": "function", "function": {"name": f"f{i}"}} for i in range(33)]), "tools", "limit of 32"),
        (
            body(response_format={"type": "json_schema", "json_schema": {"schema": {"enum": ["x" * 100] * 400}}}),
            "response_format",
            "over 32,000 bytes",
        ),
        (
            body(tools=[{"type": "function", "function": {"name": "f"}}], response_format={"type": "json_object"}),
            "response_format",
            "cannot be combined",
        ),
    ],
)
def test_bad_requests_are_400_naming_the_field(raw, param, fragment):
    with pytest.raises(APIError) as caught:
        parse_request(raw)
    assert caught.value.status == 400
    assert caught.value.param == param
    assert fragment in caught.value.message


def test_zero_penalties_and_n_1_are_accepted():
    parse_request(body(n=1, presence_penalty=0, frequency_penalty=0.0, logprobs=False))


def test_response_format_becomes_a_schema():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert response_schema(None) is None
    assert response_schema({"type": "text"}) is None
    json_mode = response_schema({"type": "json_object"})
    assert json_mode["type"] == "object" and json_mode["additionalProperties"]["type"] == ["string", "number", "boolean", "null"]
    assert response_schema({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}) == schema
    for bad in ({"type": "json_schema", "json_schema": {"name": "x"}}, {"type": "xml"}):
        with pytest.raises(APIError) as caught:
            response_schema(bad)
        assert caught.value.status == 400 and caught.value.param.startswith("response_format")


# ----- responses --------------------------------------------------------------------------------


def test_an_event_stays_one_event_whatever_the_text_holds():
    writer = CompletionWriter("m")
    event = sse(writer.chunk({"content": "line one\n\ndata: [DONE]\r\nline two"}))
    assert event.endswith(b"\n\n") and event.count(b"\n") == 2 and event.startswith(b"data: {")
    assert json.loads(event[len(b"data: ") :])["choices"][0]["delta"]["content"].startswith("line one\n\ndata")


def test_chunks_share_id_and_usage_chunk_has_no_choices():
    writer = CompletionWriter("m")
    first, last = writer.chunk({"content": "a"}), writer.chunk(None, usage={"prompt_tokens": 1})
    assert first["id"] == last["id"] and first["id"].startswith("chatcmpl-")
    assert last["choices"] == [] and last["usage"] == {"prompt_tokens": 1}
    assert first["object"] == "chat.completion.chunk" and "usage" not in first


def test_tool_calls_in_openai_shape():
    calls = openai_tool_calls([{"name": "f", "args": {"x": "é"}, "id": "call_1"}, {"name": "g", "args": {}}])
    assert calls[0] == {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x": "é"}'}}
    assert calls[1]["id"].startswith("call_") and calls[1]["function"]["arguments"] == "{}"
    message = assistant_message("", calls)
    assert message["content"] is None and "index" not in message["tool_calls"][0]
    assert assistant_message("hi") == {"role": "assistant", "content": "hi"}


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (ContextLengthError("too long"), 400, "context_length_exceeded"),
        (ImageError("bad image"), 400, "invalid_image"),
        (InputError("bad"), 400, None),
        (ModelNotFoundError("gone"), 503, "model_unavailable"),
        (RuntimeError("secret detail /home/x"), 500, None),
    ],
)
def test_library_errors_map_to_status_codes(exc, status, code):
    error = error_for(exc, "req_1")
    assert (error.status, error.code) == (status, code)
    assert set(error.body()["error"]) == {"message", "type", "param", "code"}
    if status == 500:
        assert "secret" not in error.message and "req_1" in error.message


# ----- what remote callers are told: tool errors, internal errors, seeds ------------------------


REMOTE_CALLER = caller_name("remote-key-" + "r" * 20)


@pytest.fixture
def folders(tmp_path) -> dict[str, Path]:
    images, data, outside = tmp_path / "images", tmp_path / "data", tmp_path / "outside (private)"
    for folder in (images, data, outside):
        folder.mkdir()
    (outside / "secret.png").write_bytes(b"png")
    (images / "escape.png").symlink_to(outside / "secret.png")
    return {"images": images, "data": data, "outside": outside}


def _refusal(path: Path, allowed: list[Path]) -> str:
    with pytest.raises(PathNotAllowedError) as caught:
        resolve_allowed_path(path, allowed)
    return str(caught.value)


def test_tool_errors_shown_to_a_remote_caller_name_no_server_folder(folders):
    config = load_config({"data_dir": str(folders["data"]), "tools": {"allowed_dirs": [str(folders["images"])]}},
                         environ={})  # fmt: skip
    refusal = _refusal(folders["images"] / "escape.png", config.allowed_dirs)
    error = (f"Error running caption_image with arguments {{}}: {refusal} Please try again or use another tool. "
             f"(could not write into {config.artifacts_dir})")  # fmt: skip
    assert shown_tool_text(error, is_error=True, caller=LOCAL_CALLER, config=config) == error
    shown = shown_tool_text(error, is_error=True, caller=REMOTE_CALLER, config=config)
    for private in (folders["images"], folders["data"], folders["outside"], config.artifacts_dir):
        assert str(private) not in shown
    assert "resolves to" not in shown and f"into {FOLDER_PLACEHOLDER})" in shown
    assert "outside the allowed folders" in shown and "Please try again" in shown  # still says what to do
    found = f"1 hit: {folders['images'] / 'ok.png'}"  # a tool's own result is not an error: shown as it is
    assert shown_tool_text(found, is_error=False, caller=REMOTE_CALLER, config=config) == found
    # cut after the folders are taken out: a cut never leaves the start of a folder's name behind
    long = "x" * (MAX_SHOWN_CHARS - 10) + str(folders["data"])
    cut = shown_tool_text(long, is_error=True, caller=REMOTE_CALLER, config=config)
    assert len(cut) == MAX_SHOWN_CHARS and cut.endswith(FOLDER_PLACEHOLDER[:10])
    assert len(shown_tool_text("y" * 9000, is_error=True, caller=REMOTE_CALLER, config=config)) == MAX_SHOWN_CHARS


@pytest.mark.parametrize("seed", [MIN_SEED - 1, MAX_SEED + 1, 2**200])
def test_a_seed_the_generator_cannot_take_is_a_400_naming_its_range(seed):
    with pytest.raises(APIError) as caught:
        parse_request(f'{{"model": "m", "messages": [{{"role": "user", "content": "hi"}}], "seed": {seed}}}'.encode())
    assert (caught.value.status, caught.value.param, caught.value.code) == (400, "seed", "invalid_value")
    assert str(MIN_SEED) in caught.value.message and str(MAX_SEED) in caught.value.message


@pytest.mark.parametrize("seed", [MIN_SEED, -1, 0, MAX_SEED])
def test_every_seed_the_generator_takes_is_accepted(seed):
    import torch

    body = f'{{"model": "m", "messages": [{{"role": "user", "content": "hi"}}], "seed": {seed}}}'.encode()
    assert parse_request(body).seed == seed
    torch.Generator().manual_seed(seed)  # the bounds are the generator's own


def test_the_chat_model_takes_only_seeds_the_generator_takes():
    from pydantic import ValidationError

    from agent.llava.chat_model import ChatLlava

    assert ChatLlava(seed=MAX_SEED).seed == MAX_SEED and ChatLlava(seed=MIN_SEED).seed == MIN_SEED
    for seed in (MAX_SEED + 1, MIN_SEED - 1):  # the chat model's own option, for the Python API
        with pytest.raises(ValidationError, match="seed"):
            ChatLlava(seed=seed)


def test_an_internal_error_tells_clients_not_to_retry():
    from langchain_core.exceptions import OutputParserException

    for exc in (RuntimeError("boom"), OutputParserException("bad")):
        error = error_for(exc, "req_7")
        assert error.status == 500 and error.headers == {"x-should-retry": "false"} and "req_7" in error.message


def test_a_path_refusal_answered_by_the_api_names_no_folder(folders):
    refusal = PathNotAllowedError(_refusal(folders["images"] / "escape.png", [folders["images"]]))
    error = error_for(refusal, "req_8")
    assert error.code == "path_not_allowed" and str(folders["images"]) in error.message.split(" is outside")[0]
    assert str(folders["outside"]) not in error.message and "resolves to" not in error.message
    assert error.message.endswith("use a path under one of the allowed folders")


# ----- keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True), ("::1", True), ("[::1]", True),
     ("0.0.0.0", False), ("::", False), ("192.168.1.4", False), ("example.com", False)],
)  # fmt: skip
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_every_key_is_a_caller_and_others_are_refused():
    keys = ApiKeys([(KEY_A, "test"), (KEY_B, "test"), (KEY_A, "again")])
    assert len(keys) == 2 and keys.required
    assert keys.caller(KEY_A) == caller_name(KEY_A) != keys.caller(KEY_B)
    assert KEY_A not in caller_name(KEY_A)
    for wrong in (None, "", KEY_A + "x", KEY_A[:-1], "é" * 30):
        assert keys.caller(wrong) is None
    assert ApiKeys().caller(None) == LOCAL_CALLER and not ApiKeys().required


def test_keys_are_all_compared_in_constant_time(monkeypatch):
    import hmac

    calls = []
    real = hmac.compare_digest

    def counting(a, b):
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr("agent.serve.security.hmac.compare_digest", counting)
    keys = ApiKeys([(KEY_A, "t"), (KEY_B, "t"), ("c" * 20, "t")])
    assert keys.caller(KEY_A) is not None
    assert len(calls) == 3  # no early exit on the first (matching) key


@pytest.mark.parametrize(("key", "fragment"), [("short", "minimum"), ("has a space in it ok", "spaces")])
def test_weak_or_malformed_keys_are_refused(key, fragment):
    with pytest.raises(ConfigError, match=fragment):
        ApiKeys([(key, "--api-key")])


def test_key_file_and_exposure_rule(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"# team keys\n{KEY_A}\n\n  {KEY_B}  \n")
    assert read_key_file(path) == [KEY_A, KEY_B]
    keys = ApiKeys.gather(["c" * 20], [], path)
    assert len(keys) == 3
    check_exposure("0.0.0.0", keys)
    check_exposure("127.0.0.1", ApiKeys())
    with pytest.raises(ConfigError, match="API keys are required"):
        check_exposure("0.0.0.0", ApiKeys())
    with pytest.raises(ConfigError, match="does not exist"):
        read_key_file(tmp_path / "missing")


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer", None), (None, None), ("", None)],
)
def test_bearer_token(header, token):
    assert bearer_token(header) == token


def test_serve_section_reads_keys_from_the_environment():
    from agent.core.config import load_config

    config = load_config({}, environ={"LLAVA_AGENT_SERVE__API_KEYS": f"{KEY_A}, {KEY_B}", "LLAVA_AGENT_SERVE__PORT": "9"})
    assert config.serve.api_keys == [KEY_A, KEY_B] and config.serve.port == 9
    with pytest.raises(ConfigError, match="serve.max_queue"):
        load_config({"serve": {"max_queue": -1}}, environ={})


# ----- the fair queue ---------------------------------------------------------------------------


def run(coroutine):
    return asyncio.run(coroutine)


def test_callers_take_turns_round_robin():
    async def scenario() -> list[str]:
        queue = FairQueue(max_waiting=10)
        first = await queue.acquire("busy", None)
        order: list[str] = []

        async def client(name: str) -> None:
            group = await queue.acquire(name.split("-")[0], None)
            order.append(name)
            await asyncio.sleep(0)
            group.ticket.release()

        tasks = [asyncio.create_task(client(n)) for n in ("busy-1", "busy-2", "busy-3", "quiet-1", "other-1")]
        await asyncio.sleep(0.01)
        assert queue.waiting == 5 and queue.active == 1
        first.ticket.release()
        await asyncio.gather(*tasks)
        assert queue.waiting == 0 and queue.active == 0
        return order

    # arrival order was busy x3, quiet, other: round robin serves one of each before busy's second
    assert run(scenario()) == ["busy-1", "quiet-1", "other-1", "busy-2", "busy-3"]


def test_a_full_queue_refuses_at_once_and_a_deadline_ends_waiting():
    async def scenario() -> None:
        queue = FairQueue(max_waiting=1)
        group = await queue.acquire("a", None)
        waiter = asyncio.create_task(queue.acquire("b", None))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):
            await queue.acquire("c", None)
        waiter.cancel()  # a client that leaves frees its place
        await asyncio.gather(waiter, return_exceptions=True)
        assert queue.waiting == 0
        with pytest.raises(QueueTimeout):
            await queue.acquire("c", 0.05)
        assert queue.waiting == 0
        group.ticket.release()
        group.ticket.release()  # idempotent
        assert queue.active == 0
        again = await queue.acquire("d", 0.05)
        assert queue.active == 1
        again.ticket.release()

    run(scenario())


def test_waiting_requests_with_one_key_run_as_a_batch_in_turn_order():
    async def scenario() -> None:
        started: list[list[str]] = []
        queue = FairQueue(max_waiting=20, max_batch=3, start=lambda group: started.append(list(group.payloads)))
        running = await queue.acquire("x", None, payload="x-0")  # starts alone: nothing waits
        tasks = [
            asyncio.create_task(queue.acquire(caller, None, batch_key=key, payload=name))
            for caller, key, name in [("a", "plain", "a-1"), ("a", "plain", "a-2"), ("b", None, "b-1"),
                                      ("c", "plain", "c-1"), ("d", "plain", "d-1"), ("e", "other", "e-1")]
        ]  # fmt: skip
        await asyncio.sleep(0.01)
        assert started == [["x-0"]]
        running.ticket.release()
        await asyncio.sleep(0.01)
        # a-1 comes first; the batch fills round robin: c and d come before a's second request
        assert started[1] == ["a-1", "c-1", "d-1"]
        groups = {name: task for name, task in zip(["a-1", "a-2", "b-1", "c-1", "d-1", "e-1"], tasks, strict=True)}
        batch = groups["a-1"].result()
        assert batch is groups["c-1"].result() and batch.callers == ["a", "c", "d"]
        batch.ticket.release()
        await asyncio.sleep(0.01)
        assert started[2] == ["b-1"]  # no key: alone
        groups["b-1"].result().ticket.release()
        await asyncio.sleep(0.01)
        assert started[3] == ["e-1"]  # the round goes on: e before a's second request
        groups["e-1"].result().ticket.release()
        await asyncio.sleep(0.01)
        assert started[4] == ["a-2"]
        groups["a-2"].result().ticket.release()
        assert queue.active == 0 and queue.waiting == 0 and queue.batched_requests == 3

    run(scenario())


# ----- jobs: a group in a worker thread -----------------------------------------------------------


def test_a_job_hands_its_pieces_over_and_a_batch_fans_out():
    import threading

    from agent.serve.completions import Final, TextPiece
    from agent.serve.jobs import Job, job_pieces, start_group

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        final = Final("stop", 1, 2, "ab")
        single = Job(loop, float("inf"), produce=lambda left: iter([TextPiece("a"), TextPiece("b"), final]))
        start_group([single], run_batch=None, on_done=done.set)
        assert [p async for p in job_pieces(single)] == [TextPiece("a"), TextPiece("b"), final]
        await asyncio.wait_for(done.wait(), 5)
        assert single.completion_tokens == 2

        def batch(jobs):
            yield 1, TextPiece("one")
            yield 0, ValueError("row 0 cannot run")
            yield 1, Final("length", 3, 4, "one")

        jobs = [Job(loop, float("inf"), produce=None) for _ in range(2)]
        done.clear()
        start_group(jobs, run_batch=batch, on_done=done.set)
        with pytest.raises(ValueError, match="row 0"):
            [p async for p in job_pieces(jobs[0])]
        assert [p.text for p in [p async for p in job_pieces(jobs[1])]] == ["one", "one"]
        await asyncio.wait_for(done.wait(), 5)

        def broken(jobs):
            yield 0, TextPiece("x")
            raise RuntimeError("the batch failed")

        jobs = [Job(loop, float("inf"), produce=None) for _ in range(2)]
        start_group(jobs, run_batch=broken, on_done=lambda: None)
        for job in jobs:  # every job still waiting for its reply hears of the failure
            with pytest.raises(RuntimeError, match="the batch failed"):
                [p async for p in job_pieces(job)]
        assert threading.active_count() >= 1

    run(scenario())


def test_leaving_early_cancels_and_the_turn_ends_when_the_worker_has():
    import time as clock

    from agent.serve.completions import TextPiece
    from agent.serve.jobs import Job, job_pieces, start_group

    produced: list[int] = []

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def generation(left: float):
            for token in range(1000):  # honours cancel at the next token, like ChatLlava's cancel_event
                if job.cancel.is_set():
                    return
                produced.append(token)
                clock.sleep(0.005)  # uncancelled, the whole run takes 5 s
                yield TextPiece(str(token))

        job = Job(loop, float("inf"), produce=generation)
        start_group([job], run_batch=None, on_done=done.set)
        stream = job_pieces(job)
        async for piece in stream:
            if piece.text == "3":
                break
        await stream.aclose()
        assert job.cancel.is_set() and job.left
        started = clock.perf_counter()
        await asyncio.wait_for(done.wait(), 5)
        return clock.perf_counter() - started

    waited = run(scenario())
    assert len(produced) < 1000 and waited < 2
