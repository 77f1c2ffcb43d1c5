"""``ChatLlava``: a LangChain chat model running a local LLaVA-family checkpoint.

>>> from agent import ChatLlava
>>> llm = ChatLlava(model="llava-hf/llava-interleave-qwen-0.5b-hf", max_new_tokens=64)
>>> llm.invoke("Say hello").content  # doctest: +SKIP

The model loads on first use and is shared by every ``ChatLlava`` (and every ``bind_tools``
binding) with the same (model, quantization, dtype, device, adapter) in the process.
``_stream`` is the single generation path: ``generate()`` runs in a background thread and
tokens are yielded as they are produced; ``invoke`` sums the streamed chunks.

With tools bound, decoding is constrained (:mod:`agent.decoding.constraint`) so every tool call the
model writes is valid JSON for its tool's schema; free text still streams token by token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from langchain_core.language_models.chat_models import BaseChatModel, generate_from_stream
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field, PrivateAttr

from agent.core import defaults
from agent.core.config import (
    Decoder,
    DType,
    HeadPrecision,
    KVCacheMode,
    MaxImagePixels,
    MaxImages,
    MaxNewTokens,
    ModelSection,
    NoRepeatNgramSize,
    PrefixCacheEntries,
    PrefixCacheMiB,
    PromptLookupMode,
    Quantization,
    RepetitionPenalty,
    Temperature,
    TopP,
)
from agent.core.errors import ContextLengthError, InputError
from agent.decoding.tool_protocol import normalise_tool_choice
from agent.llava.decode_setup import DecodeSettings
from agent.llava.loading import LoadedModel, ModelSpec, load_model, resolve_spec, use_model
from agent.llava.messages import messages_to_turns, tool_schemas
from agent.llava.prompting import image_capacity, render_prompt
from agent.llava.reply_chunk import final_chunk
from agent.llava.reply_constraint import reply_constraint
from agent.llava.streaming import stream_generate

if TYPE_CHECKING:  # pragma: no cover
    from langchain_core.callbacks import CallbackManagerForLLMRun
    from langchain_core.language_models import LanguageModelInput
    from langchain_core.messages import AIMessage
    from langchain_core.runnables import Runnable

logger = logging.getLogger(__name__)


class ChatLlava(BaseChatModel):
    """A LangChain chat model for local LLaVA-family checkpoints (llava-1.5, next, interleave, onevision).

    Images in messages (standard ``image`` blocks, OpenAI ``image_url`` blocks, PIL images) are
    decoded and shown to the model following its image capability. Tool calling, structured
    output, streaming, async and stop sequences are supported.

    When ``timeout`` runs out, generation stops and the text produced so far is returned with
    ``response_metadata["finish_reason"] == "timeout"``; if it ran out inside a tool call,
    :class:`GenerationTimeoutError` is raised instead, since half a call is not a call.

    A ``threading.Event`` passed as the call option ``cancel_event`` (``llm.stream(msgs,
    cancel_event=event)``) ends generation at the next token once set, from any thread, also
    while a tool call or JSON reply is being written (nothing is streamed then); the reply ends
    with ``finish_reason == "cancelled"`` and carries no tool calls.

    The call option ``logits_processor`` (a list of ``transformers``-style processors,
    ``(input_ids, scores) -> scores``, as ``model.generate`` takes them) runs at every step of
    either decoder, before the tool-call or JSON constraint; ``input_ids`` holds the prompt and
    every token so far.

    The call option ``tool_prior`` (``{tool name or "(none)": probability}``, or
    ``{"probabilities": {...}, "weight": w}``) is another judge's view of the reply's first
    decision -- answer in words, or call which tool -- combined with the model's own as a
    product of experts (:mod:`agent.decoding.decision_prior`); semantic routing passes it in
    ``hybrid`` mode when it is not sure enough to decide alone.
    """

    accepts_tool_prior: ClassVar[bool] = True
    """Takes the ``tool_prior`` call option (other chat models would send it on to their API)."""

    model_config = ConfigDict(populate_by_name=True, protected_namespaces=())

    model: str | None = Field(
        default=None,
        alias="model_name",
        description="Hub id or local folder of the checkpoint. None: llava-1.5-7b on CUDA, "
        "llava-interleave-qwen-0.5b elsewhere.",
    )
    quantization: Quantization = Field(
        default="auto",
        description="auto: 4-bit NF4 on CUDA; on CPU the fastest decode measured on this CPU among NF4, int8 weights "
        "and full precision (none on MPS). 4bit/8bit use bitsandbytes; int8-weights is CPU only.",
    )
    dtype: DType = Field(
        default="auto",
        description="Weights/compute dtype. auto: bf16 on CUDA and on CPUs with bf16, else fp16 (GPU) or fp32.",
    )
    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:N or mps.")
    max_new_tokens: MaxNewTokens = Field(default=defaults.MAX_NEW_TOKENS, alias="max_tokens")
    temperature: Temperature = defaults.TEMPERATURE
    top_p: TopP = defaults.TOP_P
    seed: int | None = Field(
        default=None,
        ge=-(2**63),
        le=2**64 - 1,
        description="Seed set before each generation for reproducible sampling (a signed or unsigned 64-bit number).",
    )
    repetition_penalty: RepetitionPenalty = defaults.REPETITION_PENALTY
    no_repeat_ngram_size: NoRepeatNgramSize = defaults.NO_REPEAT_NGRAM_SIZE
    adapter: str | None = Field(default=None, description="Folder of a LoRA adapter applied at load time.")
    stop: list[str] | None = Field(
        default=None, description="Stop sequences; the reply ends before the first one."
    )
    timeout: float | None = Field(default=None, gt=0, description="Seconds one generation may run.")
    max_retries: int = Field(
        default=0, ge=0, description="Kept for API compatibility; local calls are not retried."
    )
    max_images: MaxImages = None
    allow_remote_images: bool = Field(
        default=False, description="Fetch http(s) image URLs found in messages."
    )
    max_image_pixels: MaxImagePixels = defaults.MAX_IMAGE_PIXELS
    trust_remote_code: bool = Field(
        default=False, description="Run code shipped with a checkpoint (off by default)."
    )
    streaming: bool = Field(default=False, description="Stream by default when invoked.")
    decoder: Decoder = Field(
        default="auto",
        description="auto: the decode loop (prefix reuse, jump-forward, cheaper steps; falls back to "
        "model.generate for what it does not drive); transformers: always model.generate.",
    )
    prefix_cache: bool = Field(
        default=True, description="Reuse the keys/values of the prompt prefix shared with earlier calls."
    )
    prefix_cache_entries: PrefixCacheEntries = defaults.PREFIX_CACHE_ENTRIES
    prefix_cache_mib: PrefixCacheMiB = defaults.PREFIX_CACHE_MIB
    jump_forward: bool = Field(
        default=True,
        description="Inside tool calls, append what the grammar forces in one pass, and compute logits "
        "only for the allowed tokens when they are few.",
    )
    few_row_logits: bool = Field(
        default=True, description="When the constraint allows few tokens, compute the logits of those only."
    )
    kv_cache: KVCacheMode = Field(
        default="auto", description="static (auto): preallocated and written in place; dynamic: concatenated."
    )
    lm_head: HeadPrecision = Field(
        default="auto",
        description="auto: on CPU whichever of an int4 copy, an int8 copy and the model's own head measured fastest here; the model's own elsewhere."
    )
    fast_attention: bool = Field(
        default=True,
        description="On CPU, decode steps compute attention as grouped float32 matmuls instead of bf16 SDPA.",
    )
    cuda_graphs: bool = Field(default=True, description="Replay single-token steps as CUDA graphs on CUDA.")
    prompt_lookup: PromptLookupMode = Field(
        default=defaults.PROMPT_LOOKUP,
        description="Draft the bytes a reply copies from the prompt (a path, the words to speak) and keep "
        "what the model agrees with, several tokens per pass: calls (inside tool calls), always, off.",
    )
    allow_pickle_weights: bool = Field(
        default=False, description="Load a LoRA adapter stored as .bin (pickle files can run code)."
    )

    _spec: ModelSpec | None = PrivateAttr(default=None)

    @classmethod
    def from_config(cls, section: ModelSection, **overrides: Any) -> ChatLlava:
        """Build from the ``[model]`` section of the application configuration."""
        values = section.model_dump()
        values.update(overrides)
        return cls(**values)

    # ----- LangChain plumbing -----------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "chat-llava"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "quantization": self.quantization,
            "dtype": self.dtype,
            "device": self.device,
            "adapter": self.adapter,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "repetition_penalty": self.repetition_penalty,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        model = kwargs.get("model")
        params: dict[str, Any] = {
            "ls_provider": "llava",
            "ls_model_name": model if isinstance(model, str) else (self.model or "default"),
            "ls_model_type": "chat",
            "ls_temperature": kwargs.get("temperature", self.temperature),
            "ls_max_tokens": kwargs.get("max_new_tokens", self.max_new_tokens),
        }
        stops = stop or self.stop
        if stops:
            params["ls_stop"] = list(stops)
        return params

    # ----- model access -----------------------------------------------------------------------

    @property
    def spec(self) -> ModelSpec:
        """The concrete (model, quantization, dtype, device, adapter) this object uses."""
        if self._spec is None:
            self._spec = resolve_spec(
                self.model,
                quantization=self.quantization,
                dtype=self.dtype,
                device=self.device,
                adapter=self.adapter,
                trust_remote_code=self.trust_remote_code,
                allow_pickle_weights=self.allow_pickle_weights,
            )
        return self._spec

    @property
    def loaded(self) -> LoadedModel:
        """The loaded model and processor (loaded on first access, shared per process through the model manager)."""
        return load_model(self.spec)

    def prepare(self) -> LoadedModel:
        """Load the model and build what its replies will use (on CPU the head copy, whose speed
        is measured once per machine), so the first reply does not wait for them."""
        loaded = self.loaded
        settings = self._decode_settings({})
        if settings is not None:
            from agent.llava.decode_setup import prepare_decoding

            try:
                prepare_decoding(loaded, settings)
            except Exception as exc:  # noqa: BLE001 - an optional speed-up: the first reply tries again
                logger.warning("could not prepare the decode loop now (%s); the first reply will", exc)
        return loaded

    def image_capacity(self) -> int:
        """How many images one prompt keeps as pixels (``max_images`` or the model's capability)."""
        return self.max_images if self.max_images is not None else image_capacity(self.loaded.config)

    def get_token_ids(self, text: str) -> list[int]:
        """The model's own token ids for ``text`` (LangChain's ``get_num_tokens`` counts with these)."""
        return list(self.loaded.tokenizer.encode(text, add_special_tokens=False))

    # ----- tools ------------------------------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[Any],
        *,
        tool_choice: str | bool | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (LangChain tools, pydantic models, functions, OpenAI dicts) to the model.

        ``tool_choice``: None/"auto" (the model chooses), "any"/"required"/True (at least one
        call), "none" (no calls), a tool name or ``{"type": "function", "function": {"name": ...}}``
        (that tool). Calls are constrained to be valid for their tool's schema.
        """
        schemas: list[dict[str, Any]] = []
        for tool in tools:
            (schema,) = tool_schemas([tool])
            same_name = [s for s in schemas if s["function"]["name"] == schema["function"]["name"]]
            if same_name and _without_titles(same_name[0]) != _without_titles(schema):
                raise InputError(
                    f"two different tools are named {schema['function']['name']!r}; tool names must be unique"
                )
            if not same_name:  # the same tool given twice (e.g. a model and its JSON schema) is bound once
                schemas.append(schema)
        choice = normalise_tool_choice(tool_choice, [s["function"]["name"] for s in schemas])
        return self.bind(tools=schemas, tool_choice=choice, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        method: Literal["function_calling", "json_schema", "json_mode"] = "function_calling",
        include_raw: bool = False,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | Any]:
        """A runnable whose output is an instance of ``schema`` (a pydantic model) or a dict (a JSON schema).

        ``method="function_calling"`` (default): the schema is bound as a forced tool and the call's
        arguments are the output. ``method="json_schema"``: the whole reply is constrained to be
        JSON valid for the schema, with no tool-call wrapper (as ChatOllama does); ``"json_mode"`` is
        the same here (the JSON is constrained by the schema, not only asked for). Either way the
        output is valid by construction.
        """
        if method == "function_calling":
            return super().with_structured_output(schema, include_raw=include_raw, **kwargs)
        if method not in ("json_schema", "json_mode"):
            raise InputError(
                f"method {method!r} is not supported; use 'function_calling', 'json_schema' or 'json_mode'"
            )
        kwargs.pop("strict", None)  # the output is valid by construction, strict or not
        if kwargs:
            raise InputError(
                f"unexpected arguments {sorted(kwargs)}; with_structured_output takes schema, method, include_raw "
                "and strict"
            )
        from operator import itemgetter

        from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
        from langchain_core.runnables import RunnableMap, RunnablePassthrough
        from langchain_core.utils.function_calling import convert_to_json_schema
        from pydantic import BaseModel

        if isinstance(schema, type) and issubclass(schema, BaseModel):
            json_schema = schema.model_json_schema()
            parser: Any = PydanticOutputParser(pydantic_object=schema)
        else:
            json_schema = convert_to_json_schema(schema)
            parser = JsonOutputParser()
        llm = self.bind(
            response_format=json_schema,
            ls_structured_output_format={"kwargs": {"method": method}, "schema": json_schema},
        )
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
        unparsed = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks([unparsed], exception_key="parsing_error")

    # ----- generation -------------------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return generate_from_stream(self._stream(messages, stop=stop, run_manager=run_manager, **kwargs))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        call_started = time.perf_counter()
        tools = kwargs.pop("tools", None) or None
        tool_choice = kwargs.pop("tool_choice", None)
        response_format = kwargs.pop("response_format", None)
        cancel_event = kwargs.pop("cancel_event", None)  # a threading.Event: set it to end generation early
        logits_processor = list(kwargs.pop("logits_processor", None) or ())
        tool_prior = kwargs.pop("tool_prior", None)  # see agent.decoding.decision_prior
        if response_format is not None and tools:
            raise InputError("response_format and tools cannot be combined in one call; use one or the other")
        decode_settings = self._decode_settings(kwargs)
        options = self._call_options(kwargs)
        stops = [s for s in (stop if stop is not None else self.stop) or [] if s]
        if tools:
            tool_choice = normalise_tool_choice(tool_choice, [s["function"]["name"] for s in tools])
        use_tools = bool(tools) and tool_choice != "none"

        turns = messages_to_turns(
            messages, allow_remote_images=self.allow_remote_images, max_image_pixels=self.max_image_pixels
        )
        with use_model(self.spec) as loaded:  # held: never evicted while it generates
            rendered = render_prompt(
                loaded.processor,
                turns,
                tools=tools if use_tools else None,
                max_images=self.max_images,
                config=loaded.config,
            )
            inputs = rendered.encode(loaded.processor)
            prompt_tokens = int(inputs["input_ids"].shape[1])
            limit = loaded.context_length
            if limit is not None and prompt_tokens + options["max_new_tokens"] > limit:
                raise ContextLengthError.counted(prompt_tokens, options["max_new_tokens"], limit)
            shaped = reply_constraint(
                loaded,
                tools=tools if use_tools else None,
                tool_choice=tool_choice,
                response_format=response_format,
                tool_prior=tool_prior,
                prompt_tokens=prompt_tokens,
                max_new_tokens=options["max_new_tokens"],
                stops=stops,
            )

            emitted: list[str] = []
            result = None
            for event in stream_generate(
                loaded,
                inputs,
                options=options,
                stops=shaped.stops,
                timeout=self.timeout,
                constraint_processor=shaped.processor,
                hold_back=shaped.hold_back,
                decode_settings=decode_settings,
                cancel=cancel_event,
                logits_processor=[*logits_processor, *shaped.logits_processors],
                drop_leading=shaped.drop_leading,
            ):
                if isinstance(event, str):
                    emitted.append(event)
                    chunk = ChatGenerationChunk(message=AIMessageChunk(content=event))
                    if run_manager:
                        run_manager.on_llm_new_token(event, chunk=chunk)
                    yield chunk
                else:
                    result = event
            assert result is not None
            yield self._final_chunk(
                result,
                "".join(emitted),
                prompt_tokens,
                run_manager,
                structured=response_format is not None,
                time_to_first_token=None
                if result.first_token_at is None
                else result.first_token_at - call_started,
            )

    def _final_chunk(
        self,
        result: Any,
        emitted: str,
        prompt_tokens: int,
        run_manager: CallbackManagerForLLMRun | None,
        *,
        structured: bool = False,
        time_to_first_token: float | None = None,
    ) -> ChatGenerationChunk:
        chunk = final_chunk(
            result,
            emitted,
            prompt_tokens,
            model_name=self.spec.model,
            timeout=self.timeout,
            structured=structured,
            time_to_first_token=time_to_first_token,
        )
        if run_manager and chunk.message.content:
            run_manager.on_llm_new_token(chunk.message.content, chunk=chunk)
        return chunk

    def _decode_settings(self, kwargs: dict[str, Any]) -> DecodeSettings | None:
        """The decode loop's switches: the fields, overridden by invoke()/bind() kwargs (popped from them)."""
        names = (*_DECODE_FIELDS, "decoder")
        values = {name: kwargs.pop(name) if name in kwargs else getattr(self, name) for name in names}
        decoder = values.pop("decoder")
        if decoder not in ("auto", "transformers"):
            raise InputError(f"decoder must be 'auto' or 'transformers', got {decoder!r}")
        return None if decoder == "transformers" else DecodeSettings(**values)

    def _call_options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Per-call generation settings: the fields, overridden by invoke()/bind() kwargs."""
        options = {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "repetition_penalty": self.repetition_penalty,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
        }
        aliases = {"max_tokens": "max_new_tokens"}
        for key, value in kwargs.items():
            name = aliases.get(key, key)
            if name in options:
                options[name] = value
            elif key not in ("ls_structured_output_format", "stream"):
                logger.debug("Ignoring unsupported generation option %r", key)
        if not isinstance(options["max_new_tokens"], int) or options["max_new_tokens"] <= 0:
            raise InputError(f"max_new_tokens must be a positive integer, got {options['max_new_tokens']!r}")
        return options


_DECODE_FIELDS = (
    "prefix_cache",
    "prefix_cache_entries",
    "prefix_cache_mib",
    "jump_forward",
    "few_row_logits",
    "kv_cache",
    "lm_head",
    "fast_attention",
    "cuda_graphs",
    "prompt_lookup",
)


def _without_titles(schema: Any) -> Any:
    """A schema without its "title" annotations, to tell one tool given twice from two different tools."""
    if isinstance(schema, dict):
        return {k: _without_titles(v) for k, v in schema.items() if k != "title"}
    if isinstance(schema, list):
        return [_without_titles(v) for v in schema]
    return schema
