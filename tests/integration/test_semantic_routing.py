"""Semantic pre-routing with the real MiniLM embedder, and its middleware inside the agent."""

from __future__ import annotations

from typing import ClassVar

import pytest
from langchain_core.messages import AIMessage

import agent.app.routing as routing
from agent import MultimodalAgent
from agent.app.routing import NO_TOOL, SemanticRouter, SemanticRoutingMiddleware
from agent.app.routing_eval import agent_tools, stand_in_tools
from agent.core.config import load_config
from tests.scripted_chat_model import ScriptedChatModel, tool_call

pytestmark = pytest.mark.integration

FIT_REQUESTS = routing.TRAINING_REQUESTS  # the product's fit: with seven tools a smaller one is not sure enough to route


class CountingEmbedder:
    """The real embedder, counting how many texts it embeds."""

    def __init__(self, embedder):
        self.inner = embedder
        self.model_id = embedder.model_id
        self.texts = 0

    def embed(self, texts):
        self.texts += len(texts)
        return self.inner.embed(texts)


@pytest.fixture(scope="module")
def embedder():
    from memory.embedders import TextEmbedder

    return CountingEmbedder(TextEmbedder(device="cpu"))


@pytest.fixture(scope="module")
def tools(tmp_path_factory):
    return stand_in_tools(agent_tools(load_config({"data_dir": str(tmp_path_factory.mktemp("d"))}, environ={})))


@pytest.fixture(scope="module")
def router(tools, embedder, tmp_path_factory):
    router = SemanticRouter(tools, embedder, cache_dir=tmp_path_factory.mktemp("routing"), requests=FIT_REQUESTS)
    router.readout  # noqa: B018
    return router


def test_unsure_requests_are_left_to_the_model_never_routed_wrong(router):
    # the router is precise rather than complete: a request it is unsure of goes to the model
    for request_text, expected in [("draw me a pirate ship in a storm", "generate_image"),
                                   ("what happens in clips/party.mp4?", "describe_video")]:
        assert router.route(request_text).tool in (expected, None)


@pytest.mark.parametrize(
    ("request_text", "expected"),
    [
        ("please read this out loud: the kettle has boiled", "speak"),
        ("don't forget that my niece is called Lily", "remember"),
        ("What is the capital of Peru?", None),
        ("hello, how are you?", None),
    ],
)
def test_clear_requests_route_and_questions_do_not(router, request_text, expected):
    decision = router.route(request_text)
    assert decision.tool == expected, decision
    assert set(decision.scores) == {*(t.name for t in router.tools), NO_TOOL}
    assert sum(decision.scores.values()) == pytest.approx(1.0, abs=1e-4)
    assert decision.seconds > 0 and decision.cpu_seconds >= 0


def test_the_fitted_readout_is_cached(tools, embedder, tmp_path, monkeypatch):
    monkeypatch.setattr(routing, "_FITTED", {})  # the file cache alone
    monkeypatch.setattr(routing, "PACKAGED_READOUTS", tmp_path / "shipped")
    first = SemanticRouter(tools, embedder, cache_dir=tmp_path, requests=FIT_REQUESTS)
    first.readout  # noqa: B018  (fitted and written)
    assert [p.name for p in tmp_path.glob("router-*.npz")] == [f"router-{first.fingerprint()}.npz"]
    monkeypatch.setattr(routing, "_FITTED", {})
    before = embedder.texts
    again = SemanticRouter(tools, embedder, cache_dir=tmp_path, requests=FIT_REQUESTS)
    assert again.readout[2] == first.readout[2]
    assert embedder.texts == before  # read from the cache: no request embedded
    changed = SemanticRouter(tools[:3], embedder, cache_dir=tmp_path, requests=FIT_REQUESTS)
    assert changed.fingerprint() != first.fingerprint()


def _agent(tmp_path, mode, router, reply):
    config = load_config({"data_dir": str(tmp_path), "agent": {"routing": "model"}}, environ={})
    model = ScriptedChatModel(replies=[reply])
    middleware = SemanticRoutingMiddleware(router, mode)
    return MultimodalAgent(model, router.tools, config=config, middleware=[middleware]), model, middleware


def test_hybrid_forces_a_routed_tool_and_leaves_the_rest_to_the_model(tmp_path, router):
    call = AIMessage(content="", tool_calls=[tool_call("speak", {"text": "the kettle has boiled"})])
    agent, model, middleware = _agent(tmp_path, "hybrid", router, lambda messages: call if len(messages) == 2 else "Done.")
    agent.chat("please read this out loud: the kettle has boiled")
    assert model.bound[0]["tool_choice"] == "speak"  # the first call of the turn
    assert model.bound[1]["tool_choice"] in (None, "auto")  # after the tool result the model answers freely
    assert middleware.decisions[-1].tool == "speak"
    first = len(model.bound)
    agent.chat("What is the capital of Peru?")  # the router is sure no tool fits: a plain answer
    assert middleware.decisions[-1].no_tool and model.bound[first]["tool_choice"] == "none"


def test_hybrid_leaves_a_question_to_the_model_when_the_router_is_not_sure(tmp_path, router):
    unsure = SemanticRouter(router.tools, router.embedder, cache_dir=router.cache_dir, requests=FIT_REQUESTS,
                            no_tool_threshold=1.0)
    agent, model, middleware = _agent(tmp_path, "hybrid", unsure, "Lima.")
    agent.chat("What is the capital of Peru?")
    assert middleware.decisions[-1].tool is None and not middleware.decisions[-1].no_tool
    assert model.bound[-1]["tool_choice"] in (None, "auto")


class _PriorTakingModel(ScriptedChatModel):
    accepts_tool_prior: ClassVar[bool] = True


def test_hybrid_gives_an_unsure_turn_the_routers_view_as_a_prior(tmp_path, router):
    unsure = SemanticRouter(router.tools, router.embedder, cache_dir=router.cache_dir, requests=FIT_REQUESTS,
                            threshold=1.0, no_tool_threshold=1.0)
    config = load_config({"data_dir": str(tmp_path), "agent": {"routing": "model"}}, environ={})
    model = _PriorTakingModel(replies=["ok"])
    middleware = SemanticRoutingMiddleware(unsure, "hybrid", prior_weight=0.5)
    agent = MultimodalAgent(model, unsure.tools, config=config, middleware=[middleware])
    agent.chat("please read this out loud: the kettle has boiled")
    prior = model.bound[0]["tool_prior"]
    assert model.bound[0]["tool_choice"] in (None, "auto") and prior["weight"] == 0.5
    assert prior["probabilities"] == middleware.decisions[-1].scores  # every bound tool and (none)
    assert max(prior["probabilities"], key=prior["probabilities"].get) == "speak"
    # a chat model that does not take the option never gets it (it would reach a remote API)
    agent, plain, plain_routing = _agent(tmp_path / "plain", "hybrid", unsure, "ok")
    plain_routing.prior_weight = 0.5
    agent.chat("please read this out loud: the kettle has boiled")
    assert plain.bound[0]["tool_prior"] is None
    # weight 0: the model alone
    model = _PriorTakingModel(replies=["ok"])
    agent = MultimodalAgent(model, unsure.tools, config=config,
                            middleware=[SemanticRoutingMiddleware(unsure, "hybrid", prior_weight=0.0)])
    agent.chat("please read this out loud: the kettle has boiled")
    assert model.bound[0]["tool_prior"] is None


def test_a_routed_request_runs_its_tool_once_when_the_model_repeats_the_call(tmp_path, router):
    repeated = AIMessage(content="", tool_calls=[tool_call("speak", {"text": "the kettle has boiled"}, f"c{n}")
                                                 for n in range(3)])
    agent, model, _ = _agent(tmp_path, "hybrid", router, lambda messages: repeated if len(messages) == 2 else "Done.")
    reply = agent.chat("please read this out loud: the kettle has boiled")
    assert model.bound[0]["tool_choice"] == "speak"
    assert [c["name"] for c in reply.tool_calls] == ["speak"]  # one call kept, the tool ran once
    calls = [tool_call("speak", {"text": t}, f"e{n}") for n, t in enumerate(["the kettle has boiled", "tea's up", "tea's up"])]
    agent, model, _ = _agent(tmp_path / "two", "hybrid", router,
                             lambda messages: AIMessage("", tool_calls=calls) if len(messages) == 2 else "Done.")
    reply = agent.chat("please read this out loud: the kettle has boiled")
    assert [c["args"]["text"] for c in reply.tool_calls] == ["the kettle has boiled", "tea's up"]  # distinct calls stay
    unrouted = AIMessage(content="", tool_calls=[tool_call("speak", {"text": "a"}, "d1"), tool_call("speak", {"text": "b"}, "d2")])
    agent, model, _ = _agent(tmp_path / "free", "hybrid", router, lambda messages: unrouted if len(messages) == 2 else "Done.")
    reply = agent.chat("hello, how are you?")  # the model chose freely: its calls are its own
    assert len(reply.tool_calls) == 2


def test_semantic_mode_answers_unrouted_requests_in_words(tmp_path, router):
    agent, model, _ = _agent(tmp_path, "semantic", router, "Lima.")
    agent.chat("What is the capital of Peru?")
    assert model.bound[-1]["tool_choice"] == "none"


def test_config_routing_builds_the_middleware(tmp_path, tools, monkeypatch):
    monkeypatch.setattr(routing, "TRAINING_REQUESTS", FIT_REQUESTS)
    config = load_config({"data_dir": str(tmp_path), "agent": {"long_term_memory": False}}, environ={})
    assert config.agent.routing == "hybrid"  # the default
    agent = MultimodalAgent(ScriptedChatModel(replies=["hi"]), tools, config=config)
    assert isinstance(agent.routing, SemanticRoutingMiddleware) and agent.routing.mode == "hybrid"
    assert agent.routing.router.threshold == config.agent.routing_threshold
    assert agent.routing.router.no_tool_threshold == config.agent.routing_no_tool_threshold
    off = MultimodalAgent(ScriptedChatModel(), tools, config=load_config(
        {"data_dir": str(tmp_path), "agent": {"routing": "model"}}, environ={}))
    assert off.routing is None


def test_prepare_loads_routing_before_the_first_turn(tmp_path, tools, monkeypatch):
    monkeypatch.setattr(routing, "TRAINING_REQUESTS", FIT_REQUESTS)
    config = load_config({"data_dir": str(tmp_path), "agent": {"long_term_memory": False}}, environ={})
    agent = MultimodalAgent(ScriptedChatModel(replies=["hi"]), tools, config=config)
    assert agent.routing.router.embedder.backend is None  # nothing loaded by building the agent
    agent.prepare()
    assert agent.routing.router.embedder.backend in ("onnx", "torch") and agent.routing.unavailable is None
    assert agent.routing.decisions == []  # loaded, not a turn

    missing = tmp_path / "no-such-embedder"
    broken = MultimodalAgent(ScriptedChatModel(replies=["Lima."]), tools, config=load_config(
        {"data_dir": str(tmp_path / "b"), "agent": {"long_term_memory": False},
         "memory": {"text_embedder": str(missing)}}, environ={}))
    broken.prepare()  # routing is a help: an embedder that cannot load switches it off, with the reason
    assert broken.routing.unavailable and "no-such-embedder" in broken.routing.unavailable
    assert broken.chat("What is the capital of Peru?").text == "Lima."
