"""The routing benchmark's labelled set, argument matching and scores (pure functions)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from agent.app.routing_eval import (
    NO_TOOL,
    CaseResult,
    RoutingCase,
    RoutingReport,
    argument_matches,
    arguments_match,
    load_routing_set,
    normalise_text,
    score_case,
)
from agent.core.errors import DatasetError

BUILT_IN = {"caption_image", "generate_image", "search_images", "speak", "remember", "recall"}


def test_the_shipped_held_out_set_is_large_varied_and_valid():
    cases = load_routing_set()
    counts = Counter(case.tool for case in cases)
    assert len(cases) >= 150
    assert counts[None] / len(cases) >= 0.25
    assert set(counts) - {None} == BUILT_IN
    assert all(counts[tool] >= 10 for tool in BUILT_IN)
    requests = [case.request for case in cases]
    assert len(set(requests)) == len(requests)
    paths = " ".join(str(v) for case in cases for v in case.args.values())
    for style in ("~/", "C:\\", "./", "/home/", "{attached}"):  # path styles the set covers
        assert style in paths
    assert any(case.images for case in cases if case.tool is None)


def test_the_second_shipped_set_is_valid_varied_and_apart_from_the_first():
    first = load_routing_set("held-out")
    second = load_routing_set("held-out-2")
    counts = Counter(case.tool for case in second)
    assert len(second) >= 80
    assert counts[None] / len(second) >= 0.25
    assert set(counts) - {None} == BUILT_IN
    assert not {c.id for c in first} & {c.id for c in second}
    assert not {normalise_text(c.request) for c in first} & {normalise_text(c.request) for c in second}


def test_a_set_is_found_by_name_or_path(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"id": "a", "request": "hello", "tool": null}\n')
    assert [c.id for c in load_routing_set(str(path))] == ["a"]
    assert load_routing_set("held-out") == load_routing_set()
    with pytest.raises(DatasetError, match="does not exist"):
        load_routing_set(tmp_path / "held-out-3")


def test_no_held_out_request_is_a_training_request():
    """The training data is synthesised from examples and lexicons: none of it may be a benchmark request."""
    from agent.app.routing import request_text, training_requests
    from agent.app.routing_eval import agent_tools
    from agent.app.tool_data import default_lexicons
    from agent.core.config import load_config

    tools = agent_tools(load_config({"data_dir": "/nonexistent-llava-agent"}, environ={}))
    lexicon = default_lexicons()
    texts, _, _ = training_requests(tools, lexicon, 3000, seed=0)
    synthesised = {normalise_text(request_text(t)) for t in texts}
    questions = {normalise_text(row[0]) for key in ("plain", "traps", "unsupported") for row in lexicon[key]}
    for case in [*load_routing_set("held-out"), *load_routing_set("held-out-2")]:
        assert normalise_text(case.request) not in synthesised, case.id
        assert normalise_text(case.request) not in questions, case.id


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not valid JSON"),
        ('["a"]', "must be an object"),
        ('{"id": "a", "request": "x"}', "'tool' must be"),
        ('{"id": "a", "request": "", "tool": null}', "no 'request'"),
        ('{"id": "a", "request": "x", "tool": null, "args": {"a": 1}}', "only with a tool"),
        ('{"id": "a", "request": "x", "tool": "t", "args": {"a": []}}', "non-empty list of words"),
        ('{"id": "a", "request": "x", "tool": "t", "args": {"a": "{attached}"}}', "attaches no image"),
        ('{"id": "a", "request": "x", "tool": null, "colour": 1}', "unknown keys"),
    ],
)
def test_bad_lines_are_refused_with_their_line_number(tmp_path, line, message):
    path = tmp_path / "set.jsonl"
    path.write_text('{"id": "ok", "request": "hello", "tool": null}\n' + line + "\n")
    with pytest.raises(DatasetError, match=message) as error:
        load_routing_set(path)
    assert "line 2" in str(error.value)


def test_duplicate_ids_and_empty_sets_are_refused(tmp_path):
    path = tmp_path / "set.jsonl"
    path.write_text('{"id": "a", "request": "x", "tool": null}\n{"id": "a", "request": "y", "tool": null}\n')
    with pytest.raises(DatasetError, match="used twice"):
        load_routing_set(path)
    path.write_text("\n")
    with pytest.raises(DatasetError, match="no requests"):
        load_routing_set(path)
    with pytest.raises(DatasetError, match="does not exist"):
        load_routing_set(tmp_path / "missing.jsonl")


@pytest.mark.parametrize(
    ("expected", "actual", "right"),
    [
        ("photos/cat.png", "photos/cat.png", True),
        ("photos/cat.png", " 'photos/cat.png' ", True),
        ("photos/cat.png", "photos/cat.png.", True),
        ("photos/cat.png", "cat.png", False),
        ("C:\\Users\\Tom\\dog.jpg", "C:\\Users\\Tom\\dog.jpg", True),
        ("C:\\Users\\Tom\\dog.jpg", "C:/Users/Tom/dog.jpg", False),
        ("dinner is ready", "Dinner is ready!", True),
        ("good morning, everyone", "good morning everyone", True),
        ("dinner is ready", "read this aloud: dinner is ready", False),
        (["lighthouse", "dusk"], "A lighthouse at dusk, oil painting", True),
        (["lighthouse", "dusk"], "a lighthouse", False),
        (["cats|cat", "chess"], "A cat playing chess", True),
        (3, 3, True),
        (3, "3", True),
        (3, 5, False),
        ("fr", None, False),
    ],
)
def test_argument_matching(expected, actual, right):
    assert argument_matches(expected, actual) is right


def test_attached_stands_for_the_attached_path():
    attached = ["/data/attachments/1a2b-garden.png"]
    assert argument_matches("{attached}", "/data/attachments/1a2b-garden.png", attached)
    assert not argument_matches("{attached}", "garden.png", attached)
    assert not argument_matches("{attached}", "garden.png", [])


def test_every_checked_argument_must_be_present():
    assert arguments_match({"image": "a.png"}, {"image": "a.png", "detail": "short"})
    assert not arguments_match({"image": "a.png", "detail": "detailed"}, {"image": "a.png"})
    assert arguments_match({}, {"anything": 1})


def test_normalise_text():
    assert normalise_text("  Good   MORNING, everyone! ") == "good morning everyone"


def _report() -> RoutingReport:
    cases = [
        (RoutingCase("1", "draw a cat", "generate_image", {"prompt": ["cat"]}), "generate_image", {"prompt": "a cat"}),
        (RoutingCase("2", "draw a dog", "generate_image", {"prompt": ["dog"]}), "generate_image", {"prompt": "a cat"}),
        (RoutingCase("3", "say hi", "speak", {"text": "hi"}), None, {}),
        (RoutingCase("4", "capital of Japan?", None), "speak", {"text": "Tokyo"}),
        (RoutingCase("5", "hello", None), None, {}),
        (RoutingCase("6", "find dogs", "search_images", {"query": ["dog"]}), "generate_image", {"prompt": "dog"}),
    ]
    results = [score_case(case, called, args, [], latency_s=float(i)) for i, (case, called, args) in enumerate(cases)]
    return RoutingReport(results, ["generate_image", "search_images", "speak"], {"routing": "model"})


def test_scores_of_a_known_run():
    report = _report()
    assert report.routing_accuracy == pytest.approx(3 / 6)
    assert report.false_call_rate == pytest.approx(1 / 2)
    assert report.argument_accuracy == pytest.approx(1 / 2)  # two calls to the right tool, one right
    assert report.call_accuracy == pytest.approx(1 / 4)  # four requests need a tool
    assert report.median_latency_s == pytest.approx(2.5)
    per_tool = report.per_tool()
    assert per_tool["generate_image"] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "support": 2}
    assert per_tool["speak"]["precision"] == 0.0 and per_tool["speak"]["recall"] == 0.0
    assert per_tool[NO_TOOL]["recall"] == pytest.approx(1 / 2)
    confusion = report.confusion()
    assert confusion["search_images"]["generate_image"] == 1 and confusion[NO_TOOL]["speak"] == 1
    assert sum(sum(row.values()) for row in confusion.values()) == 6
    assert report.labels()[-1] == NO_TOOL


def test_report_renders_and_serialises():
    report = _report()
    text = report.render(show_errors=True)
    assert "routing accuracy   0.500" in text and "false-call rate    0.500" in text
    assert "6: expected search_images, called generate_image" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["requests"] == 6 and len(data["results"]) == 6 and data["settings"]["routing"] == "model"


def test_a_wrong_tool_is_not_scored_for_arguments():
    result = score_case(RoutingCase("x", "draw", "generate_image", {"prompt": ["cat"]}), "speak", {"text": "cat"}, [], 0.1)
    assert isinstance(result, CaseResult) and result.args_right is None and not result.routed_right


def test_cli_has_the_routing_commands_with_the_recipe_defaults():
    from agent.app.tool_adapter import TRAIN_DEFAULTS
    from agent.cli.main import build_parser
    from agent.core.defaults import TOOL_ADAPTER_ROWS

    parser = build_parser()
    args = parser.parse_args(["eval", "routing", "--model", "m", "--routing", "hybrid", "--limit", "3"])
    assert (args.model, args.routing, args.limit) == ("m", "hybrid", 3)
    args = parser.parse_args(["finetune", "tools", "--model", "m", "--output", "out", "--lora-layers", "15"])
    assert (args.model, args.output_dir, args.lora_layers, args.epochs) == ("m", "out", 15, TRAIN_DEFAULTS["epochs"])
    assert (args.count, args.learning_rate) == (TOOL_ADAPTER_ROWS, TRAIN_DEFAULTS["learning_rate"])
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "routing", "--routing", "always"])
