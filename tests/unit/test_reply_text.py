"""How the streamed reply text is cut: stop sequences, held-back tails, an echoed opening marker."""

from __future__ import annotations

import pytest

from agent.decoding.tool_protocol import TOOL_RESPONSE_CLOSE, TOOL_RESPONSE_OPEN
from agent.llava.streaming import find_stop, safe_length, without_leading

OPENERS = (TOOL_RESPONSE_OPEN,)


def test_find_stop_and_safe_length():
    stops = ["</s>", TOOL_RESPONSE_OPEN]
    assert find_stop("Hello</s> there", stops) == 5
    assert find_stop("Hello there", stops) is None
    assert find_stop("a</s>b</s>", stops, start=3) == 6
    assert safe_length("Hello <tool_re", stops) == len("Hello ")  # may become a stop: held
    assert safe_length("Hello <b", stops) == len("Hello <b")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<tool_response>\nThe picture is ready.", "The picture is ready."),
        ("  \n<tool_response> Saved it.", "Saved it."),
        ("<tool_response>\n<tool_response>\nTwice.", "Twice."),
        ("Here it is: <tool_response>", "Here it is: <tool_response>"),  # only an opening is dropped
        ("\nHello", "\nHello"),  # no marker: the text as written
        ("<tool_call>\n{", "<tool_call>\n{"),
        ("<toolbox is here", "<toolbox is here"),
        ("<tool_resp", ""),  # may still become the marker: nothing yet
        ("<tool_response>\n  ", ""),
        ("   ", ""),
    ],
)
def test_without_leading_drops_an_opening_marker(text, expected):
    assert without_leading(text, OPENERS) == expected
    assert without_leading(text, ()) == text


def test_without_leading_only_grows_as_the_text_grows():
    """What has been shown of a growing reply is never taken back."""
    for reply in (
        f"{TOOL_RESPONSE_OPEN}\nSaved 0.9 s of speech.{TOOL_RESPONSE_CLOSE}",
        "\n\n<tool_res is not a marker",
        "<tool_call>\n{\"name\": \"speak\"}",
        "Plain words.",
    ):
        shown = ""
        for end in range(len(reply) + 1):
            now = without_leading(reply[:end], OPENERS)
            assert now.startswith(shown), (reply[:end], shown, now)
            shown = now
