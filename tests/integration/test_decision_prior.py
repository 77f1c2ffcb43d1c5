"""The router's prior on a reply's first decision (agent.decoding.decision_prior), on the tiny tokenizers.

The processor is driven with flat logits, so what greedy decoding picks is the prior's doing; then
the same option goes through ``ChatLlava`` on a tiny random checkpoint.
"""

from __future__ import annotations

import math

import pytest

from agent.core.errors import InputError
from agent.decoding.constraint import ToolCallConstraint
from agent.decoding.decision_prior import NAME_HEAD, NO_CALL, DecisionPrior, decision_prior, opener_start_ids
from agent.decoding.token_index import token_vocabulary
from agent.decoding.tool_protocol import parse_tool_calls
from agent.llava.messages import tool_schemas

pytestmark = pytest.mark.integration


def remember(fact: str) -> str:
    """Save a fact about the user."""
    return fact


def recall(query: str) -> str:
    """Look up saved facts."""
    return query


def speak(text: str) -> str:
    """Say a text aloud."""
    return text


SCHEMAS = tool_schemas([remember, recall, speak])
NAMES = ["remember", "recall", "speak"]


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def tokenizer(request, tiny_llava_paths):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llava_paths[request.param])


def greedy(tokenizer, prior, tool_choice="auto", weight=1.0, budget=60, steps=None) -> str:
    """Decode from flat logits: the prior processor, then the constraint, then the argmax."""
    import torch

    vocabulary = token_vocabulary(tokenizer)
    prompt = torch.zeros((1, 3), dtype=torch.long)
    processors = []
    made = decision_prior(vocabulary, NAMES, {"probabilities": prior, "weight": weight}, 3, tool_choice)
    if made is not None:
        processors.append(made)
    constraint = ToolCallConstraint.build(tokenizer, SCHEMAS, tool_choice)
    processors.append(constraint.logits_processor(budget))
    ids = prompt
    for _ in range(steps or budget):
        scores = torch.zeros((1, len(tokenizer)))
        for processor in processors:
            scores = processor(ids, scores)
        token = int(torch.argmax(scores[0]))
        if token in vocabulary.eos_token_ids:
            break
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return tokenizer.decode(ids[0, 3:].tolist())


def test_the_call_or_words_bias_is_the_priors_log_odds(tokenizer):
    vocabulary = token_vocabulary(tokenizer)
    prior = DecisionPrior(vocabulary, NAMES, {"remember": 0.3, "recall": 0.1, "speak": 0.1, NO_CALL: 0.5}, 3, weight=2.0)
    biases = prior.biases([])
    starts = opener_start_ids(vocabulary)
    assert starts and set(biases) == set(starts)
    assert all(vocabulary.token_bytes[t].lstrip().startswith(b"<") for t in starts)
    assert all(b == pytest.approx(2.0 * math.log(0.5 / 0.5)) for b in biases.values())
    leaning = DecisionPrior(vocabulary, NAMES, {"speak": 0.8, NO_CALL: 0.2}, 3)
    assert all(b == pytest.approx(math.log(4.0), rel=1e-2) for b in leaning.biases([]).values())  # floors take a little
    words = tokenizer.encode("Hello there", add_special_tokens=False)
    assert leaning.biases(words) == {}  # a reply in words is left alone


def test_the_name_shares_follow_the_prior_within_what_is_written(tokenizer):
    vocabulary = token_vocabulary(tokenizer)
    prior = DecisionPrior(vocabulary, NAMES, {"remember": 0.6, "recall": 0.2, "speak": 0.1, NO_CALL: 0.1}, 0)
    head = tokenizer.encode(NAME_HEAD.decode(), add_special_tokens=False)
    biases = prior.biases(head)
    by_text = {vocabulary.token_bytes[t]: b for t, b in biases.items()}
    assert by_text[b"s"] == pytest.approx(math.log(0.1 / 0.9), rel=1e-2)
    if b"re" in by_text:  # both memory tools start with "re": their shares add up
        assert by_text[b"re"] == pytest.approx(math.log(0.8 / 0.9), rel=1e-2)
    written = tokenizer.encode(NAME_HEAD.decode() + "speak", add_special_tokens=False)
    assert prior.biases(written) == {}  # the name is decided


@pytest.mark.parametrize("favoured", NAMES)
def test_greedy_decoding_follows_the_prior_where_the_model_has_no_view(tokenizer, favoured):
    prior = {name: 0.9 if name == favoured else 0.02 for name in NAMES} | {NO_CALL: 0.06}
    assert greedy(tokenizer, prior, steps=1) == "<"  # flat logits: the first token is the prior's call or words
    text = greedy(tokenizer, prior, tool_choice="any")  # the constraint writes the opener, the prior picks the name
    _, calls = parse_tool_calls(text)
    assert text.startswith(NAME_HEAD.decode() + favoured) and calls[0]["name"] == favoured, text


def test_a_prior_for_words_keeps_the_reply_in_words(tokenizer):
    first = tokenizer.encode(greedy(tokenizer, {"speak": 0.01, NO_CALL: 0.99}, steps=1), add_special_tokens=False)
    assert len(first) == 1 and first[0] not in opener_start_ids(token_vocabulary(tokenizer))
    assert greedy(tokenizer, {"speak": 0.99, NO_CALL: 0.01}, steps=1) == "<"


def test_bad_priors_are_refused_naming_the_option(tokenizer):
    vocabulary = token_vocabulary(tokenizer)
    with pytest.raises(InputError, match=r"tool_prior\['speak'\] must be a probability"):
        decision_prior(vocabulary, NAMES, {"speak": -1}, 0, "auto")
    with pytest.raises(InputError, match="not bound: draw"):
        decision_prior(vocabulary, NAMES, {"draw": 0.5}, 0, "auto")
    with pytest.raises(InputError, match="probabilities, weight and floor"):
        decision_prior(vocabulary, NAMES, {"probabilities": {}, "temperature": 1}, 0, "auto")
    assert decision_prior(vocabulary, NAMES, {"speak": 0.9}, 0, "speak") is None  # one tool forced: nothing to decide
    assert decision_prior(vocabulary, NAMES, {"probabilities": {"speak": 0.9}, "weight": 0}, 0, "auto") is None


def test_chat_llava_takes_the_prior_as_a_call_option(tiny_llava_qwen2):
    from agent.llava.chat_model import ChatLlava

    llm = ChatLlava(model=str(tiny_llava_qwen2), quantization="none", max_new_tokens=48, temperature=0.0)
    strong = {"weight": 4.0}  # the tiny random model's logits are small: the prior decides
    forced = llm.bind_tools([remember, recall, speak], tool_choice="any")  # the constraint writes the opener
    for name in ("recall", "speak"):
        called = forced.invoke("hello", tool_prior={"probabilities": {name: 0.98, NO_CALL: 0.01}, **strong})
        assert [c["name"] for c in called.tool_calls][:1] == [name]
    free = llm.bind_tools([remember, recall, speak])  # call or words: the first token (a random model writes no opener)

    def first_token(probabilities):
        seen = []
        free.invoke("hello", tool_prior={"probabilities": probabilities, **strong}, max_new_tokens=48,
                    logits_processor=[lambda ids, scores: seen.append(ids[0].tolist()) or scores])
        prompt = len(seen[0])
        return llm.loaded.tokenizer.decode(next(ids for ids in seen if len(ids) > prompt)[prompt])

    assert first_token({"speak": 0.98, NO_CALL: 0.01}).strip() == "<"
    assert not first_token({NO_CALL: 0.99}).strip().startswith("<")
