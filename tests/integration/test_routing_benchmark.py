"""The routing benchmark drives the real agent's first model call (scripted model; tiny LLaVA for the CLI)."""

from __future__ import annotations

import json
import re

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from agent.app.routing_eval import RoutingCase, evaluate_routing
from agent.cli.main import main
from agent.core.errors import InputError
from tests.scripted_chat_model import ScriptedChatModel, tool_call

pytestmark = pytest.mark.integration

CASES = [
    RoutingCase("draw", "draw a lighthouse at dusk", "generate_image", {"prompt": ["lighthouse", "dusk"]}),
    RoutingCase("see", "caption this", "caption_image", {"image": "{attached}"}, ("garden.png",)),
    RoutingCase("say", "read this aloud: dinner is ready", "speak", {"text": "dinner is ready"}),
    RoutingCase("japan", "What is the capital of Japan?", None),
    RoutingCase("trap", "I remember when phones had buttons", None),
]


def _decide(messages):
    """Right for draw/see/japan, wrong for say (no call) and trap (remember)."""
    request = messages[-1]
    text = request.text
    if text.startswith("draw"):
        return AIMessage(content="", tool_calls=[tool_call("generate_image", {"prompt": "a lighthouse at dusk"})])
    if text.startswith("caption"):
        path = re.search(r"\[attached image: (.+?)\]", text).group(1)
        return AIMessage(content="", tool_calls=[tool_call("caption_image", {"image": path})])
    if text.startswith("I remember"):
        return AIMessage(content="", tool_calls=[tool_call("remember", {"fact": "phones had buttons"})])
    return "Tokyo is the capital of Japan, a long answer that is stopped at its first token."


def test_benchmark_scores_the_agents_first_decision(tmp_path):
    model = ScriptedChatModel(replies=[_decide])
    report = evaluate_routing(model, cases=CASES, config={"data_dir": str(tmp_path)})
    assert len(model.calls) == len(CASES)  # one model call per request: tools never run, no second call
    first = model.calls[0]
    assert isinstance(first[0], SystemMessage) and "Tools:" in first[0].text
    assert isinstance(first[-1], HumanMessage)
    assert model.bound[-1]["tools"] == ["caption_image", "generate_image", "search_images", "speak", "describe_video", "remember", "recall"]
    by_id = {r.id: r for r in report.results}
    assert by_id["draw"].routed_right and by_id["draw"].args_right
    assert by_id["see"].routed_right and by_id["see"].args_right  # the attachment's saved path
    assert by_id["say"].called is None and not by_id["say"].routed_right
    assert by_id["japan"].routed_right and by_id["japan"].text.startswith("Tokyo") and "stopped" not in by_id["japan"].text
    assert by_id["trap"].called == "remember"
    assert report.routing_accuracy == pytest.approx(3 / 5)
    assert report.false_call_rate == pytest.approx(1 / 2)
    assert report.argument_accuracy == 1.0 and report.call_accuracy == pytest.approx(2 / 3)
    assert all(r.latency_s >= 0 for r in report.results)


def test_answers_run_to_the_end_when_asked(tmp_path):
    model = ScriptedChatModel(replies=[_decide])
    report = evaluate_routing(model, cases=CASES[3:4], config={"data_dir": str(tmp_path)}, answers=True)
    assert report.results[0].text.endswith("stopped at its first token.")


def test_a_set_asking_for_tools_that_are_not_enabled_is_refused(tmp_path):
    config = {"data_dir": str(tmp_path), "tools": {"enabled": ["speak"]}, "agent": {"long_term_memory": False}}
    with pytest.raises(InputError, match="not enabled: caption_image, generate_image"):
        evaluate_routing(ScriptedChatModel(), cases=CASES, config=config)


@pytest.mark.slow
def test_cli_runs_the_benchmark_on_a_checkpoint(tmp_path, tiny_llava_qwen2, capsys):
    config = tmp_path / "config.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n[tools]\nenabled = ["speak"]\n[agent]\nlong_term_memory = false\n'
                      '[model]\nquantization = "none"\n')
    cases = tmp_path / "set.jsonl"
    cases.write_text(
        '{"id": "say", "request": "say hello", "tool": "speak", "args": {"text": "hello"}}\n'
        '{"id": "hi", "request": "hi", "tool": null}\n'
    )
    args = ["--config", str(config), "eval", "routing", "--model", str(tiny_llava_qwen2), "--set", str(cases),
            "--max-new-tokens", "48"]
    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["requests"] == 2 and set(data["per_tool"]) <= {"speak", "(none)"}
    assert 0.0 <= data["routing_accuracy"] <= 1.0 and data["median_latency_s"] > 0
    assert main(args) == 0
    assert "routing accuracy" in capsys.readouterr().out
    assert main([*args, "--set", str(tmp_path / "missing.jsonl")]) == 1
    assert "does not exist" in capsys.readouterr().err
