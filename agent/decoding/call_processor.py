"""One reply under a :class:`agent.decoding.constraint.ToolCallConstraint`: the per-token mask.

:meth:`ToolCallConstraint.logits_processor` returns a fresh, stateful :class:`ToolCallLogitsProcessor`
for one ``generate()`` call (or one reply of :mod:`agent.llava.decode_loop`, which drives it token
by token: ``begin``, ``accept``, ``apply``, ``allowed_ids``, ``forced_run``). It follows where the
reply stands -- free text (its current line, fenced blocks, how much of an opener it holds) or a
call (the grammar's state, the calls written so far) -- and masks the logits accordingly.

**Modes.** With ``tool_choice="any"``/``"required"`` or a tool name the reply is constrained from
its first token (``mode == "tool_call"``). With ``"auto"`` the model writes freely
(``mode == "undecided"``, then ``"text"`` once the reply is more than whitespace and a prefix
of ``<tool_call>``); nothing is masked, so answers stream untouched, except tokens that would
*complete* a call opener in a way the grammar rejects or that the remaining budget cannot
finish. A call opener is ``<tool_call>`` at the start of a line (column 0; at the start of the
reply after any whitespace) outside a fenced code block: the rule of
:func:`agent.decoding.tool_protocol.call_opener_positions`. The moment the reply contains one -- at its
start or after some text ("Let me look.\\n<tool_call>...") -- the mode becomes ``"tool_call"`` and
every later token is masked by the grammar, so a reply is always plain text, or text followed by
valid calls. ``<tool_call>`` anywhere else (quoting a file name mid-sentence, inside a fenced
block) is ordinary text and starts nothing.

**End.** EOS is allowed only in final states, i.e. right after a ``</tool_call>``; there the
grammar also allows ``\\n<tool_call>`` for another call -- unless the call just closed repeats an
earlier call of the reply byte for byte: then EOS is the only token left (a small model forced
into a call otherwise writes the same call again until its budget ends). (The index holds one copy of ``CALL``:
from a final state, tokens starting with ``\\n`` continue from the start state -- half the
states of indexing ``CALL (\\n CALL)*`` literally, hence half the build time.)

**Budget.** For every DFA state the index is walked backwards from the final states over the
distinct (state -> next state) edges of its *real* token transitions, giving the exact minimum
number of tokens that still completes the reply (a breadth-first search over a graph of a few
hundred nodes; single-character walks would overestimate by the average token length). At each
step with ``r`` tokens left, if some allowed token leads to a state that cannot finish in
``r - 1`` tokens, the mask keeps only tokens whose next state can (one vectorised comparison
over that state's transition arrays). A call is therefore never cut by ``max_new_tokens``.
``processor.required_new_tokens`` says how many tokens the shortest reply needs; when it is
larger than ``max_new_tokens`` the caller must raise the budget (the processor then follows the
shortest path and logs a warning, and the reply will be cut).

**Masks.** Each DFA state's mask is an additive tensor (0 for allowed tokens, -inf otherwise)
built once, kept in a bounded cache and applied with one ``add_`` -- cheaper per step than
rewriting outlines' packed bitmask and unpacking it (``masked_fill_`` with a boolean mask
measured ~50x slower at a 151k vocabulary), and it needs no ``torch.compile`` (which costs
seconds on the first CPU call). Tight-budget steps block the few extra tokens on top of it.

Put the processor last in the processor list; temperature, top-k and top-p may follow it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from agent.decoding.jump_forward import Spell, forced_tokens
from agent.decoding.token_index import bias_from_allowed
from agent.decoding.tool_protocol import TOOL_CALL_OPEN

if TYPE_CHECKING:
    import numpy as np
    import torch

    from agent.decoding.constraint import ToolCallConstraint

logger = logging.getLogger(__name__)

OPENER = TOOL_CALL_OPEN.encode()
# Where free text stands, as an index into the opener tables (see
# :func:`agent.decoding.constraint._opener_moves`): 0..len(<tool_call>)-1: the current line so far is
# that many bytes of "<tool_call>" (0: at a line start);
MID_LINE = len(OPENER)  # the current line holds other text: only a token holding "\n<tool_call>" opens
BLANK = len(OPENER) + 1  # nothing but whitespace since the reply started: leading whitespace is allowed
FENCED = len(OPENER) + 2  # inside a ``` fenced block: quoted, nothing opens a call
LINE_OPENER = b"\n" + OPENER
_FENCES = (b"```", b"~~~")
_LINE_PREFIX_BYTES = 16


@dataclass
class _Row:
    """The decoding state of one sequence of the batch."""

    mode: str
    state: int
    head: bytes = b""  # free text so far, while undecided
    line: bytes = b""  # the first bytes of the current line of free text
    line_bytes: int = 0  # the length of the current line
    blank: bool = True  # nothing but whitespace since the reply started
    fenced: bool = False  # inside a ``` fenced code block
    partial: int = BLANK  # where free text stands (an index into the opener tables)
    done: bool = False
    call: bytes = b""  # the bytes of the call being written (from its opener)
    calls: set[bytes] = field(default_factory=set)  # the calls written so far, byte for byte
    repeated: bool = False  # the last call written repeats an earlier one: the reply ends here

    def note_call_end(self) -> None:
        """A call just closed: remember what it says, and whether an earlier call said the same."""
        start = self.call.find(OPENER)
        if start >= 0:
            written = self.call[start + len(OPENER) :]
        else:  # opened from free text: the token that finished the opener starts the bytes kept
            written = self.call[self.call.find(b">") + 1 :]
        self.call = b""
        self.repeated = written in self.calls
        self.calls.add(written)

    def feed(self, data: bytes) -> None:
        """Follow free text: lines, fences, and how much of an opener the current line holds."""
        for byte in data:
            if byte == 0x0A:
                content = self.line.lstrip(b" ")
                if content[:3] in _FENCES and len(self.line) - len(content) <= 3:
                    self.fenced = not self.fenced
                self.line, self.line_bytes = b"", 0
                continue
            if self.blank and byte in b" \t\r":
                continue
            self.blank = False
            if self.line_bytes < _LINE_PREFIX_BYTES:
                self.line += bytes((byte,))
            self.line_bytes += 1
        if self.fenced:
            self.partial = FENCED
        elif self.blank:
            self.partial = BLANK
        elif self.line_bytes < len(OPENER) and OPENER.startswith(self.line):
            self.partial = self.line_bytes
        else:
            self.partial = MID_LINE


class _ToolCallLogitsProcessorLogic:
    """See :class:`ToolCallLogitsProcessor`."""

    def __init__(self, constraint: ToolCallConstraint, max_new_tokens: int) -> None:
        self.constraint = constraint
        self.max_new_tokens = max_new_tokens
        self.required_new_tokens = constraint.required_new_tokens
        self._rows: list[_Row] | None = None
        self._prompt_length = 0
        self._warned = False
        if self.required_new_tokens > max_new_tokens:
            logger.warning(
                "max_new_tokens=%d is too small for a complete tool call (needs %d); raise it",
                max_new_tokens,
                self.required_new_tokens,
            )

    @property
    def fits_budget(self) -> bool:
        return self.required_new_tokens <= self.max_new_tokens

    def _initial_mode(self) -> str:
        return "undecided" if self.constraint.free_start else "tool_call"

    @property
    def modes(self) -> list[str]:
        """The mode of every sequence of the batch."""
        return [row.mode for row in self._rows] if self._rows else [self._initial_mode()]

    @property
    def mode(self) -> str:
        """``"undecided"``, ``"text"`` or ``"tool_call"`` (of the first sequence)."""
        return self.modes[0]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._rows is None:
            self._prompt_length = input_ids.shape[1]
            self._rows = [
                _Row(self._initial_mode(), self.constraint.automaton.initial)
                for _ in range(input_ids.shape[0])
            ]
        else:
            last = input_ids[:, -1].tolist()
            for row, token_id in zip(self._rows, last, strict=True):
                self._advance(row, int(token_id))
        remaining = self.max_new_tokens - (input_ids.shape[1] - self._prompt_length)
        for index, row in enumerate(self._rows):
            if not row.done:
                self._mask(row, scores[index], remaining)
        return scores

    # --- one sequence, driven token by token by a decode loop (agent.llava.decode_loop) -------

    def begin(self) -> None:
        """Start a single-sequence reply (instead of being called by ``generate()``)."""
        self._rows = [_Row(self._initial_mode(), self.constraint.automaton.initial)]
        self._prompt_length = 0

    def accept(self, token_ids: list[int]) -> None:
        """Advance over tokens appended to the reply (sampled or forced)."""
        assert self._rows is not None, "call begin() first"
        for token_id in token_ids:
            self._advance(self._rows[0], int(token_id))

    def apply(self, scores: torch.FloatTensor, remaining: int) -> torch.FloatTensor:
        """Mask a (1, vocabulary) row of logits in place, ``remaining`` tokens left (this one included)."""
        assert self._rows is not None, "call begin() first"
        if not self._rows[0].done:
            self._mask(self._rows[0], scores[0], remaining)
        return scores

    def allowed_ids(self, remaining: int, vocab_size: int) -> np.ndarray | None:
        """The sorted token ids the next token may be, inside a call; None in free text (all but a few).

        Exactly the tokens :meth:`apply` leaves finite, so logits can be computed for these alone.
        """
        import numpy as np

        assert self._rows is not None, "call begin() first"
        row = self._rows[0]
        if row.mode != "tool_call" or row.done:
            return None
        automaton = self.constraint.automaton
        state = row.state
        eos = np.asarray(self.constraint.vocabulary.eos_token_ids, dtype=np.int64)
        if row.repeated and state in automaton.finals:
            return np.sort(eos[eos < vocab_size])
        tokens = automaton.tokens[state]
        if automaton.max_next_dist[state] > remaining - 1:  # tight budget: as _mask does
            next_dist = automaton.next_dist[state]
            fits = next_dist <= remaining - 1
            if not fits.any() and state not in automaton.finals:
                fits = next_dist == next_dist.min()
            tokens = tokens[fits]
        if state in automaton.finals:
            tokens = np.concatenate([tokens, eos])
        tokens = tokens[tokens < vocab_size]
        return np.sort(tokens)

    def valid_prefix(self, token_ids: list[int]) -> int:
        """How many of ``token_ids``, in a row from here, the grammar of a call allows (all, outside a call)."""
        assert self._rows is not None, "call begin() first"
        row = self._rows[0]
        if row.mode != "tool_call" or row.done:
            return len(token_ids)
        automaton = self.constraint.automaton
        state = row.state
        for count, token_id in enumerate(token_ids):
            if token_id in self.constraint.vocabulary.eos_token_ids:
                return count + 1 if state in automaton.finals and not row.repeated else count
            state = automaton.next_state(state, int(token_id))
            if state is None:
                return count
        return len(token_ids)

    def forced_run(self, remaining: int, spell: Spell | None = None) -> list[int]:
        """Tokens the grammar alone decides from here (see :mod:`agent.decoding.jump_forward`); [] if none."""
        assert self._rows is not None, "call begin() first"
        row = self._rows[0]
        if row.mode != "tool_call" or row.done:
            return []
        constraint = self.constraint
        if row.repeated and row.state in constraint.automaton.finals:
            return [constraint.vocabulary.eos_token_ids[0]]  # a repeated call ends the reply
        return forced_tokens(constraint.automaton, row.state, constraint.vocabulary, remaining, spell)

    def _advance(self, row: _Row, token_id: int) -> None:
        constraint = self.constraint
        if row.done:
            return
        if token_id in constraint.vocabulary.eos_token_ids:
            row.done = True
            return
        data = constraint.vocabulary.token_bytes[token_id] if token_id < constraint.vocabulary.size else b""
        if row.mode == "tool_call":
            state = constraint.automaton.next_state(row.state, token_id)
            if state is None:
                raise RuntimeError(
                    f"token {token_id} is outside the tool-call grammar in state {row.state}; another logits "
                    "processor or warper must not run after the tool-call constraint"
                )
            row.state = state
            if constraint.calls:
                row.call += data
                if state in constraint.automaton.finals:
                    row.note_call_end()
            return
        moves = constraint.opener_moves[row.partial][2]
        if token_id in moves:
            if moves[token_id] < 0:
                raise RuntimeError(f"token {token_id} opens an invalid tool call; it should have been masked")
            row.mode, row.state, row.call = "tool_call", moves[token_id], data
            return
        if row.mode == "undecided":
            row.head += data
            if not OPENER.startswith(row.head.lstrip()):
                row.mode = "text"
        row.feed(data)

    def _mask(self, row: _Row, logits: torch.Tensor, remaining: int) -> None:
        import torch

        constraint = self.constraint
        automaton = constraint.automaton
        eos = constraint.vocabulary.eos_token_ids
        if row.mode != "tool_call":
            ids, cost, _ = constraint.opener_moves[row.partial]
            blocked = ids[cost > remaining - 1]
            blocked = blocked[blocked < logits.shape[-1]]
            if blocked.size:
                logits[torch.from_numpy(blocked).to(logits.device)] = -float("inf")
            return
        state = row.state
        if row.repeated and state in automaton.finals:  # a repeated call ends the reply
            logits.add_(bias_from_allowed([i for i in eos if i < logits.shape[-1]], logits))
            return
        if automaton.max_next_dist[state] <= remaining - 1:
            logits.add_(automaton.bias(state, logits, eos))
            return
        # the budget is tight: only tokens whose next state can still finish in time
        next_dist = automaton.next_dist[state]
        fits = next_dist <= remaining - 1
        tokens = automaton.tokens[state]
        if not fits.any() and state not in automaton.finals:
            fits = next_dist == next_dist.min()
            if not self._warned:
                self._warned = True
                logger.warning("the token budget cannot finish this tool call; following the shortest path")
        blocked = tokens[~fits]
        if blocked.size * 2 < tokens.size:  # few blocked: the cached mask, then block them
            logits.add_(automaton.bias(state, logits, eos))
            blocked = blocked[blocked < logits.shape[-1]]
            logits[torch.from_numpy(blocked).to(logits.device)] = -float("inf")
            return
        allowed = tokens[fits]
        allowed = allowed[allowed < logits.shape[-1]].tolist()
        if state in automaton.finals:
            allowed += [i for i in eos if i < logits.shape[-1]]
        logits.add_(bias_from_allowed(allowed, logits))


@lru_cache(maxsize=1)
def processor_class() -> type:
    """:class:`ToolCallLogitsProcessor`, made on first use (``transformers`` is imported only then)."""
    from transformers import LogitsProcessor

    class ToolCallLogitsProcessor(_ToolCallLogitsProcessorLogic, LogitsProcessor):
        """Masks one ``generate()`` call so that every tool call is valid and finishes within the budget.

        Attributes: ``mode`` (``"undecided"``, ``"text"`` or ``"tool_call"``), ``modes`` (per sequence),
        ``max_new_tokens``, ``required_new_tokens`` and ``fits_budget``. Put it last in the
        processor list: it must see the final logits (temperature and top-p may follow).
        """

    ToolCallLogitsProcessor.__module__ = __name__
    return ToolCallLogitsProcessor


def __getattr__(name: str) -> Any:
    if name == "ToolCallLogitsProcessor":
        return processor_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from transformers import LogitsProcessor

    class ToolCallLogitsProcessor(_ToolCallLogitsProcessorLogic, LogitsProcessor): ...


__all__ = ["BLANK", "FENCED", "LINE_OPENER", "MID_LINE", "OPENER", "ToolCallLogitsProcessor"]
