"""Semantic routing's pure parts: the decision rule, the read-out fit, request text, lexicon split."""

from __future__ import annotations

import numpy as np
import pytest

from agent.app.routing import (
    NO_TOOL,
    SemanticRouter,
    fit_softmax,
    lexical_features,
    request_text,
)
from agent.app.routing_calibration import split_examples, split_lexicons
from agent.app.tool_data import default_lexicons


class _NoEmbedder:
    model_id = "none"

    def embed(self, texts):  # pragma: no cover - the decision rule needs no embeddings
        raise AssertionError("not used")


@pytest.fixture
def router():
    return SemanticRouter([], _NoEmbedder(), threshold=0.5, margin=0.1)


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        ({"speak": 0.8, "remember": 0.1, NO_TOOL: 0.1}, "speak"),
        ({"speak": 0.45, "remember": 0.05, NO_TOOL: 0.5}, None),  # no tool is likelier
        ({"speak": 0.55, "remember": 0.0, NO_TOOL: 0.48}, None),  # clears the threshold, not the margin
        ({"speak": 0.48, "remember": 0.02, NO_TOOL: 0.3}, None),  # below the threshold
        ({"speak": 0.5, "remember": 0.45, NO_TOOL: 0.05}, None),  # two tools too close
    ],
)
def test_decision_rule(router, scores, expected):
    assert router.decide(scores)[0] == expected


def test_only_bound_tools_are_routed_to(router):
    scores = {"speak": 0.9, "remember": 0.05, NO_TOOL: 0.05}
    assert router.decide(scores, allowed=["remember"])[0] is None
    tool, score, lead = router.decide(scores)
    assert tool == "speak" and score == 0.9 and lead == pytest.approx(0.85)


def test_bad_settings_are_refused():
    from agent.core.errors import InputError

    with pytest.raises(InputError, match="threshold, margin and no-tool threshold"):
        SemanticRouter([], _NoEmbedder(), threshold=1.5)
    with pytest.raises(InputError, match="no-tool threshold"):
        SemanticRouter([], _NoEmbedder(), no_tool_threshold=-0.1)


def test_fit_softmax_separates_labelled_directions():
    rng = np.random.default_rng(0)
    centres = np.eye(4, 16)
    features = np.concatenate([centre + 0.1 * rng.standard_normal((30, 16)) for centre in centres])
    labels = [name for name in ["a", "b", "c", NO_TOOL] for _ in range(30)]
    weights, bias, names = fit_softmax(features, labels)
    predicted = [names[i] for i in np.argmax(features @ weights + bias, axis=1)]
    assert names == sorted(set(labels)) and predicted == labels


def test_request_text_drops_attachment_lines():
    text = "Describe this\n[attached image: /data/attachments/1a-cat.png]"
    assert request_text(text) == "Describe this"


def test_split_lexicons_share_no_values():
    first, second = split_lexicons(default_lexicons())
    for key in ("subject", "sentence", "fact", "plain", "traps"):
        assert first[key] and second[key]
        assert not {str(v) for v in first[key]} & {str(v) for v in second[key]}
    assert first["prefix"] == second["prefix"]  # phrasing material is shared, values are not


def test_split_examples_share_no_phrasing_and_leave_the_tools_alone(tmp_path):
    from agent.app.routing_eval import agent_tools
    from agent.core.config import load_config
    from tools.examples import tool_examples

    tools = agent_tools(load_config({"data_dir": str(tmp_path)}, environ={}))
    first, second = split_examples(tools)
    for tool, a, b in zip(tools, first, second, strict=True):
        assert a.name == b.name == tool.name
        ra, rb = {e.request for e in tool_examples(a)}, {e.request for e in tool_examples(b)}
        assert ra and rb and not ra & rb and ra | rb == {e.request for e in tool_examples(tool)}
    assert [len(tool_examples(t)) for t in tools] == [len(tool_examples(t)) for t in agent_tools(
        load_config({"data_dir": str(tmp_path)}, environ={}))]  # the agent's own tools keep all theirs


def test_lexical_features_count_words_and_pairs_stably():
    rows = lexical_features(["Read this aloud", "read THIS aloud!", "draw a cat"])
    assert rows.shape == (3, 1024) and rows.dtype == np.float32
    assert np.allclose(rows[0], rows[1])  # case and punctuation do not matter
    assert np.isclose(np.linalg.norm(rows[0]), 1.0)
    assert np.count_nonzero(rows[0]) == 5  # read, this, aloud, "read this", "this aloud" (no collision here)
    assert float(rows[0] @ rows[2]) == 0.0
    assert np.allclose(lexical_features(["x"], weight=2.0), 2 * lexical_features(["x"]))


def test_the_built_in_tools_ship_their_fitted_readout(tmp_path):
    # A default agent routes from its first turn: the read-out for the built-in tools ships with
    # the package. Changing a tool's description or examples, or the lexicons, changes the
    # fingerprint: refit and ship with `python bench/bench_routing.py --package`.
    from agent.app import routing
    from agent.app.routing_eval import agent_tools
    from agent.core.config import load_config

    config = load_config({"data_dir": str(tmp_path)}, environ={})
    embedder = _NoEmbedder()
    embedder.model_id = config.memory.text_embedder
    router = SemanticRouter(agent_tools(config), embedder)
    shipped = sorted(p.name for p in routing.PACKAGED_READOUTS.glob("router-*.npz"))
    assert shipped == [f"router-{router.fingerprint()}.npz"], "refit: python bench/bench_routing.py --package"
    weights, bias, labels = routing.load_readout(routing.PACKAGED_READOUTS / shipped[0])
    assert labels == sorted([t.name for t in router.tools] + [NO_TOOL])
    assert weights.shape == (2 * 384 + routing.LEXICAL_DIMS, len(labels)) and bias.shape == (len(labels),)
    routing._FITTED.clear()
    assert router.readout[2] == labels  # read from the package, no embedding needed
