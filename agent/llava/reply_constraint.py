"""What shapes one reply of :class:`agent.llava.chat_model.ChatLlava` before it is decoded.

:func:`reply_constraint` turns a call's options into the decode loop's inputs:

* ``response_format``: the whole reply is JSON valid for the schema (:func:`json_output_constraint`);
* bound tools: every tool call is valid for its tool's schema (:class:`ToolCallConstraint`), the
  router's probabilities, where given, weigh the reply's first decision
  (:mod:`agent.decoding.decision_prior`), a call opener is held back until it is complete, and the
  reply ends where a small model starts echoing a tool result's framing;
* neither: the reply is free text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.core.errors import InputError
from agent.decoding.constraint import ToolCallConstraint, json_output_constraint
from agent.decoding.decision_prior import decision_prior
from agent.decoding.token_index import token_vocabulary
from agent.decoding.tool_protocol import TOOL_CALL_OPEN, TOOL_RESPONSE_CLOSE, TOOL_RESPONSE_OPEN

if TYPE_CHECKING:
    from agent.llava.loading import LoadedModel


@dataclass
class ReplyConstraint:
    """The decode loop's inputs that depend on the call's tools or response format."""

    processor: Any | None = None
    """The constraint's logits processor (None: free text)."""
    logits_processors: list[Any] = field(default_factory=list)
    """Further processors that weigh, not restrict, the reply (the router's prior)."""
    hold_back: list[str] = field(default_factory=list)
    """Text streamed only once it is known not to begin one of these."""
    stops: list[str] = field(default_factory=list)
    """Where the reply ends (the caller's stops first)."""
    drop_leading: tuple[str, ...] = ()
    """Text dropped where the reply begins with it."""


def reply_constraint(
    loaded: LoadedModel,
    *,
    tools: Sequence[Mapping[str, Any]] | None,
    tool_choice: Any,
    response_format: Any,
    tool_prior: Any,
    prompt_tokens: int,
    max_new_tokens: int,
    stops: Sequence[str],
) -> ReplyConstraint:
    """The constraint for one reply; ``tools`` are OpenAI-style schemas already bound for this call
    (None or empty: no tools, or ``tool_choice`` "none"), ``tool_choice`` already normalised."""
    eos = loaded.model.generation_config.eos_token_id
    if response_format is not None:
        constraint = json_output_constraint(loaded.tokenizer, response_format, eos_token_ids=eos)
        return ReplyConstraint(constraint.logits_processor(max_new_tokens), stops=list(stops))
    if not tools:
        return ReplyConstraint(stops=list(stops))

    constraint = ToolCallConstraint.build(loaded.tokenizer, tools, tool_choice or "auto", eos_token_ids=eos)
    if constraint.required_new_tokens > max_new_tokens:
        raise InputError(
            f"a call of the bound tools needs at least {constraint.required_new_tokens} new tokens but "
            f"max_new_tokens is {max_new_tokens}; raise max_new_tokens"
        )
    prior = decision_prior(token_vocabulary(loaded.tokenizer), [s["function"]["name"] for s in tools],
                           tool_prior, prompt_tokens, tool_choice)
    return ReplyConstraint(
        constraint.logits_processor(max_new_tokens),
        logits_processors=[prior] if prior is not None else [],
        hold_back=[TOOL_CALL_OPEN],
        # A small model may echo the framing of the tool result it just read: an opening
        # "<tool_response>" is dropped, and the reply ends where it would start another one.
        stops=[*stops, *(s for s in (TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE) if s not in stops)],
        drop_leading=(TOOL_RESPONSE_OPEN,),
    )


__all__ = ["ReplyConstraint", "reply_constraint"]
