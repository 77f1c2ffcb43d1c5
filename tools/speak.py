"""``speak``: text-to-speech into a WAV file.

Three engines, chosen by ``tools.tts_engine``:

* ``espeak-ng`` (default): the offline speech synthesiser from the system's packages
  (``sudo apt-get install espeak-ng``, ``brew install espeak-ng``); fast on any CPU.
* ``vits``: a neural voice through transformers' ``VitsModel`` (``facebook/mms-tts-eng`` or any
  VITS checkpoint), loaded through the model manager.
* ``bark``: expressive speech through transformers' ``BarkModel`` (``suno/bark-small``,
  ``suno/bark``): voice presets (``v2/en_speaker_6``...) and non-speech cues written in the text
  (``[laughs]``, ``[sighs]``, ``[music]``, ``♪`` around sung words, ``...`` for hesitation) are
  passed to the model untouched; sentences are split so that a cue or a sung line is never cut.

Long text is split into sentences, each chunk synthesised, and the WAVs joined (same sample
rate) into one file written atomically into the artifacts folder.

The ``voice`` argument is an enum in the tool's schema, so a model calling the tool through
constrained decoding can only name a voice that exists: the voices of ``tools.speak_voices``
(a short list of widely used languages by default, ``"all"`` for every language espeak-ng
lists) that the installed espeak-ng really has, read from ``espeak-ng --voices`` when the tool
is built. The VITS engine has one voice, so its schema has no ``voice`` argument.
"""

from __future__ import annotations

import functools
import io
import logging
import re
import shutil
import subprocess
import tempfile
import time
import wave
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from agent.core.defaults import BARK_MODEL, BARK_VOICE, ESPEAK_VOICE, MAX_SPEECH_CHARS, VITS_MODEL
from agent.core.errors import ConfigError, InputError, ModelLoadError, ToolError
from agent.core.files import write_new_artifact
from agent.core.hub_access import hub_load_kwargs
from agent.core.model_manager import checkpoint_size_bytes
from agent.core.runtime import tool_dtype
from agent.core.weights_policy import weight_kwargs
from tools.base import LlavaTool, default_artifacts_dir
from tools.cancellation import raise_if_cancelled
from tools.shared_state import exclusive

if TYPE_CHECKING:
    from agent.core.config import AppConfig

logger = logging.getLogger(__name__)

ESPEAK_EXECUTABLE = "espeak-ng"
"""The speech engine's program: espeak-ng only (the older espeak takes other options)."""
ESPEAK_WORDS_PER_MINUTE = 175
MIN_SPEED, MAX_SPEED = 0.5, 2.0
VITS_SEED = 0
"""VITS samples noise while it speaks; a fixed seed makes the same text at the same speed sound the same."""
INSTALL_HINT = "install it with `sudo apt-get install espeak-ng` (Debian/Ubuntu) or `brew install espeak-ng` (macOS)"


# Widely used languages espeak-ng has had for years: the voices offered when tools.speak_voices is not set.
DEFAULT_VOICES = (
    "en", "en-us", "en-gb", "fr", "de", "es", "it", "pt", "pt-br", "nl", "pl", "ru", "uk", "sv", "tr", "ar",
    "hi", "cmn", "ja", "ko",
)  # fmt: skip
BARK_CHUNK_CHARS = 220
"""Bark speaks about 13 seconds per generation: longer text is split into chunks of about this size."""
BARK_PAUSE_S = 0.25
"""Silence put between two Bark chunks."""


def _text_field() -> Any:
    return (str, Field(min_length=1, description="The exact words to say aloud."))


def _speed_field() -> Any:
    description = f"Speaking speed, 1.0 is normal, from {MIN_SPEED} to {MAX_SPEED}."
    return (float, Field(1.0, ge=MIN_SPEED, le=MAX_SPEED, description=description))


class BarkSpeakInput(BaseModel):
    """The Bark engine's arguments: its voice presets are known only once its processor is loaded (an
    unknown one is refused with the list), and it speaks at its own pace."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    text: str = Field(
        min_length=1,
        description="The exact words to say. May hold sounds in brackets such as [laughs], [sighs], [gasps], "
        "[music], ... for a pause, and ♪ around words to sing them.",
    )
    voice: str | None = Field(None, description="Voice preset such as 'v2/en_speaker_6'; empty for the default.")
    speed: float = Field(1.0, ge=1.0, le=1.0, description="Must be 1.0: Bark speaks at its own pace.")


@functools.lru_cache(maxsize=16)
def speak_arguments(voices: tuple[str, ...] | None, default_voice: str = "en") -> type[BaseModel]:
    """The argument schema of ``speak``: ``voice`` is an enum of ``voices``; None: no voice argument (VITS)."""
    config = ConfigDict(extra="forbid", allow_inf_nan=False)  # an unknown argument is refused, not dropped
    if voices is None:
        return create_model("SpeakVitsInput", __config__=config, text=_text_field(), speed=_speed_field())
    if not voices:
        raise ConfigError("the speak tool needs at least one voice; set tools.speak_voices")
    voice_type = Optional[Literal.__getitem__(tuple(voices))]  # noqa: UP007 - a Literal built at run time
    description = f"Voice (language) to speak in; leave empty for the default ({default_voice})."
    return create_model(
        "SpeakInput", __config__=config, text=_text_field(), voice=(voice_type, Field(None, description=description)),
        speed=_speed_field(),
    )


SpeakInput = speak_arguments(DEFAULT_VOICES)
"""The espeak-ng argument schema with the default voices (a tool's own may differ: ``tool.args_schema``)."""


def split_bark_text(text: str, max_chars: int = BARK_CHUNK_CHARS) -> list[str]:
    """Split text for Bark at sentence ends, never inside a ``[cue]`` or between two ``♪`` marks.

    Sentences are packed into chunks of at most ``max_chars`` where possible; a longer sentence is
    cut at a space outside cues and songs (or, for one unbroken word, where it must).
    """
    sentences: list[str] = []
    current: list[str] = []
    depth, singing = 0, False
    for index, char in enumerate(text):
        current.append(char)
        if char == "[":
            depth += 1
        elif char == "]":
            depth = max(0, depth - 1)
        elif char == "♪":
            singing = not singing
        following = text[index + 1] if index + 1 < len(text) else " "
        if char in ".!?" and following.isspace() and not depth and not singing:
            sentences.append("".join(current).strip())
            current = []
    sentences.append("".join(current).strip())
    chunks: list[str] = []
    for sentence in (s for s in sentences if s):
        for piece in _cut_outside_cues(sentence, max_chars):
            if chunks and len(chunks[-1]) + 1 + len(piece) <= max_chars:
                chunks[-1] = f"{chunks[-1]} {piece}"
            else:
                chunks.append(piece)
    return chunks


def _cut_outside_cues(sentence: str, max_chars: int) -> list[str]:
    pieces: list[str] = []
    while len(sentence) > max_chars:
        spaces, depth, singing = [], 0, False
        for index, char in enumerate(sentence):
            if char == "[":
                depth += 1
            elif char == "]":
                depth = max(0, depth - 1)
            elif char == "♪":
                singing = not singing
            elif char == " " and not depth and not singing:
                spaces.append(index)
        cut = max((i for i in spaces if i <= max_chars), default=None)
        if cut is None:  # no allowed space early enough: the first allowed one, else a hard cut
            cut = min(spaces, default=max_chars) or max_chars
        pieces.append(sentence[:cut].strip())
        sentence = sentence[cut:].strip()
    if sentence:
        pieces.append(sentence)
    return pieces


def pcm_wav(waveform: Any, rate: int) -> bytes:
    """A mono 16-bit WAV of a float waveform in [-1, 1]."""
    import numpy as np

    pcm = (np.clip(np.asarray(waveform, dtype=np.float32), -1.0, 1.0) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(pcm.tobytes())
    return buffer.getvalue()


def split_sentences(text: str, max_chars: int = 400) -> list[str]:
    """Split text into sentence chunks of at most ``max_chars`` (a very long sentence is cut at spaces)."""
    sentences = [s.strip() for s in re.split(r"(?<=[.!?;:])\s+|\n\s*\n", text) if s and s.strip()]
    chunks: list[str] = []
    for sentence in sentences:
        while len(sentence) > max_chars:
            cut = sentence.rfind(" ", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            chunks.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        if chunks and len(chunks[-1]) + 1 + len(sentence) <= max_chars:
            chunks[-1] = f"{chunks[-1]} {sentence}"
        elif sentence:
            chunks.append(sentence)
    return chunks


def join_wavs(parts: list[bytes]) -> tuple[bytes, int, float]:
    """Concatenate WAV files that share one format; returns the WAV bytes, sample rate and duration."""
    params = None
    frames = []
    for part in parts:
        with wave.open(io.BytesIO(part)) as reader:
            current = (reader.getnchannels(), reader.getsampwidth(), reader.getframerate())
            if params is not None and current != params:
                raise ToolError(f"speech chunks came out in different formats {params} and {current}")
            params = current
            frames.append(reader.readframes(reader.getnframes()))
    if params is None:
        raise ToolError("no audio was produced")
    channels, width, rate = params
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(width)
        writer.setframerate(rate)
        writer.writeframes(b"".join(frames))
    total_frames = sum(len(f) for f in frames) // (channels * width)
    return buffer.getvalue(), rate, total_frames / rate


@functools.lru_cache(maxsize=4)
def espeak_languages(executable: str = "espeak-ng") -> tuple[str, ...]:
    """The language codes ``espeak-ng --voices`` lists (``af``, ``en-gb``, ``en-us``, ``fr-fr``...)."""
    output = subprocess.run([executable, "--voices"], capture_output=True, text=True, check=True, timeout=30).stdout
    return tuple(dict.fromkeys(line.split()[1] for line in output.splitlines()[1:] if len(line.split()) >= 5))


def offered_voices(requested: Sequence[str] | str, executable: str = "espeak-ng") -> tuple[str, ...]:
    """The voices the ``voice`` enum lists: ``requested`` (or every language for ``"all"``) that espeak-ng has.

    Without a working espeak-ng the requested list is offered as it is (the default one when
    ``"all"``): calls then fail with the install hint, whatever voice they name.
    """
    try:
        available = espeak_voices(executable)
        languages = espeak_languages(executable)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.debug("espeak-ng voices unavailable (%s); offering the configured list", exc)
        return DEFAULT_VOICES if requested == "all" else tuple(dict.fromkeys(requested))
    if requested == "all":
        return languages
    by_lower = {v.lower(): v for v in available}
    missing = [v for v in requested if v.lower() not in by_lower]
    if missing:
        logger.warning(
            "espeak-ng has no voice %s; left out of the speak tool (`espeak-ng --voices` lists the voices)",
            ", ".join(repr(v) for v in missing),
        )
    offered = tuple(dict.fromkeys(v for v in requested if v.lower() in by_lower))
    if not offered:
        raise ConfigError(
            f"none of the voices in tools.speak_voices ({', '.join(requested)}) is installed in espeak-ng; "
            "choose some from `espeak-ng --voices`, or set it to \"all\""
        )
    return offered


@functools.lru_cache(maxsize=4)
def espeak_voices(executable: str = "espeak-ng") -> tuple[str, ...]:
    """Voice names espeak-ng accepts (language codes like ``en-us`` and voice files like ``gmw/en-US``)."""
    output = subprocess.run([executable, "--voices"], capture_output=True, text=True, check=True, timeout=30).stdout
    names: list[str] = []
    for line in output.splitlines()[1:]:
        columns = line.split()
        if len(columns) >= 5:
            names.extend([columns[1], columns[4], columns[4].rsplit("/", 1)[-1]])
    return tuple(dict.fromkeys(names))


class SpeakTool(LlavaTool):
    """Say a text aloud into a WAV file."""

    name: str = "speak"
    description: str = (
        "Read a text aloud: turns the words into speech and saves a WAV audio file. Use it when the user "
        "asks to say, read out, pronounce or voice something."
    )
    args_schema: type[BaseModel] = SpeakInput
    engine: Literal["espeak-ng", "vits", "bark"] = "espeak-ng"
    default_voice: str = Field(ESPEAK_VOICE, description="espeak-ng voice used when the call names none.")
    vits_model: str = Field(VITS_MODEL, description="VITS checkpoint for engine='vits'.")
    bark_model: str = Field(BARK_MODEL, description="Bark checkpoint for engine='bark'.")
    bark_voice: str | None = Field(BARK_VOICE, description="Bark voice preset used when the call names none.")
    espeak_executable: str = ESPEAK_EXECUTABLE
    artifacts_dir: Path | None = Field(None, description="Where WAVs are written; None = config's.")
    max_chars: int = Field(MAX_SPEECH_CHARS, gt=0, description="Longest text accepted.")
    voices: list[str] | Literal["all"] | None = Field(
        None,
        description="Voices the model may choose (the enum of the voice argument), kept to those espeak-ng has; "
        "'all' for every language espeak-ng lists; None for DEFAULT_VOICES.",
    )

    def model_post_init(self, context: Any) -> None:
        super().model_post_init(context)
        # the voice enum lists the voices this engine really has, read when the tool is built
        if self.engine == "vits":
            self.args_schema = speak_arguments(None)
        elif self.engine == "bark":
            self.args_schema = BarkSpeakInput
        else:
            offered = offered_voices(DEFAULT_VOICES if self.voices is None else self.voices, self.espeak_executable)
            self.args_schema = speak_arguments(offered, self.default_voice)

    @classmethod
    def from_config(cls, config: AppConfig, manager: Any = None) -> SpeakTool:
        voices = config.tools.speak_voices
        if config.tools.tts_engine == "espeak-ng":  # checked here so a bad setting is a ConfigError
            voices = list(offered_voices(DEFAULT_VOICES if voices is None else voices))
        return cls(
            engine=config.tools.tts_engine, default_voice=config.tools.espeak_voice,
            vits_model=config.tools.vits_model, bark_model=config.tools.bark_model, bark_voice=config.tools.bark_voice,
            device=config.tools.device, artifacts_dir=config.artifacts_dir, max_chars=config.tools.max_speech_chars,
            voices=voices, manager=manager, allow_pickle_weights=config.tools.allow_pickle_weights,
        )

    @model_validator(mode="after")
    def _bark_arguments(self) -> SpeakTool:
        """With Bark the model reads what the text may hold (cues, songs) and which voices exist."""
        if self.engine == "bark" and self.args_schema is SpeakInput:
            self.args_schema = BarkSpeakInput
        return self

    # -- espeak-ng -------------------------------------------------------------------------------
    def _espeak_path(self) -> str:
        found = shutil.which(self.espeak_executable)
        if found is None:
            raise ToolError(f"the speech engine {self.espeak_executable!r} is not installed; {INSTALL_HINT}")
        return found

    def _check_voice(self, executable: str, voice: str) -> str:
        voices = espeak_voices(executable)
        by_lower = {v.lower(): v for v in voices}
        if voice.lower() not in by_lower:
            examples = [v for v in ("en", "en-us", "en-gb", "fr", "de", "es", "it", "pt", "ja", "zh") if v in by_lower]
            raise InputError(
                f"voice {voice!r} is not supported by espeak-ng; use one of {', '.join(examples or voices[:10])} "
                f"(`espeak-ng --voices` lists all {len(voices)})"
            )
        return by_lower[voice.lower()]

    def _espeak_chunk(self, executable: str, text: str, voice: str, speed: float) -> bytes:
        with tempfile.TemporaryDirectory(prefix="llava-agent-speech-") as folder:
            out = Path(folder) / "chunk.wav"
            words_per_minute = str(round(ESPEAK_WORDS_PER_MINUTE * speed))
            process = subprocess.run(
                [executable, "-w", str(out), "-v", voice, "-s", words_per_minute, "--stdin"],
                input=text, capture_output=True, text=True, timeout=300,
            )
            if process.returncode != 0 or not out.exists():
                raise ToolError(f"espeak-ng failed (exit {process.returncode}): {process.stderr.strip()[:300]}")
            return out.read_bytes()

    # -- VITS ------------------------------------------------------------------------------------
    def _load_vits(self) -> tuple[Any, Any]:
        from transformers import AutoTokenizer, VitsModel


        hub = hub_load_kwargs(self.vits_model, what="VITS voice")
        model = VitsModel.from_pretrained(self.vits_model, **weight_kwargs(self.allow_pickle_weights), **hub)
        model = model.to(self.resolved_device()).eval()
        return model, AutoTokenizer.from_pretrained(self.vits_model, **hub)

    def _vits_chunks(self, chunks: list[str], speed: float) -> list[bytes]:
        import torch

        device = self.resolved_device()
        parts = []
        with self.get_manager().use(
            ("vits", self.vits_model, device), self._load_vits, device=device,
            size_bytes=checkpoint_size_bytes(self.vits_model),
        ) as (model, tokenizer), torch.inference_mode():
            rate = int(model.config.sampling_rate)
            rng_devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
            for chunk in chunks:
                raise_if_cancelled()  # a call past its time limit stops between chunks
                inputs = tokenizer(chunk, return_tensors="pt").to(device)
                if inputs["input_ids"].shape[-1] == 0:
                    raise InputError(f"the text {chunk[:40]!r} has no characters this VITS voice can say")
                # speaking_rate is read, and noise drawn from the global RNG, inside forward: one call at a
                # time, with a fixed seed, so the same text at the same speed always sounds the same
                with exclusive(model), torch.random.fork_rng(devices=rng_devices):
                    torch.manual_seed(VITS_SEED)
                    model.speaking_rate = speed
                    waveform = model(**inputs).waveform[0].float().cpu().numpy()
                parts.append(pcm_wav(waveform, rate))
        return parts

    # -- Bark ------------------------------------------------------------------------------------
    def _load_bark(self) -> tuple[Any, Any]:
        from transformers import AutoProcessor, BarkModel

        device = self.resolved_device()
        hub = hub_load_kwargs(self.bark_model, what="Bark voice")
        model = BarkModel.from_pretrained(self.bark_model, dtype=tool_dtype(device), **hub).to(device).eval()
        return model, AutoProcessor.from_pretrained(self.bark_model, **hub)

    def _bark_preset(self, processor: Any, voice: str | None) -> str | None:
        if voice is None:
            return None
        presets = list(getattr(processor, "available_voice_presets", None) or [])
        for candidate in (voice, f"v2/{voice}"):
            if candidate in presets:
                return candidate
        shown = ", ".join(presets[:8]) + (f" ... ({len(presets)} in all)" if len(presets) > 8 else "")
        raise InputError(
            f"voice {voice!r} is not a voice preset of the Bark model {self.bark_model!r} (it has "
            f"{shown or 'none'}); use one of them, or leave voice empty (tools.bark_voice is the default)"
        )

    def _bark_chunks(self, chunks: list[str], voice: str | None) -> list[bytes]:
        import numpy as np
        import torch

        device = self.resolved_device()
        parts = []
        with self.get_manager().use(
            ("bark", self.bark_model, device), self._load_bark, device=device,
            size_bytes=checkpoint_size_bytes(self.bark_model),
        ) as (model, processor), torch.inference_mode():
            preset = self._bark_preset(processor, voice)
            rate = int(getattr(model.generation_config, "sample_rate", 0) or model.codec_model.config.sampling_rate)
            pause = pcm_wav(np.zeros(int(BARK_PAUSE_S * rate), dtype=np.float32), rate)
            for number, chunk in enumerate(chunks):
                raise_if_cancelled()  # a call past its time limit stops between chunks
                inputs = processor(chunk, voice_preset=preset, return_tensors="pt").to(device)
                with exclusive(model):
                    waveform = model.generate(**inputs)[0].float().cpu().numpy()
                if number:
                    parts.append(pause)
                parts.append(pcm_wav(waveform, rate))
        return parts

    # -- the tool --------------------------------------------------------------------------------
    def synthesize(self, text: str, voice: str | None = None, speed: float = 1.0) -> tuple[bytes, int, float]:
        """Speech for ``text`` as WAV bytes; returns ``(wav, sample_rate, seconds)``."""
        if not isinstance(text, str) or not text.strip():
            raise InputError("the text to speak is empty; give the words to say")
        if len(text) > self.max_chars:
            raise InputError(
                f"the text has {len(text)} characters, over the limit of {self.max_chars}; "
                "shorten it or raise tools.max_speech_chars"
            )
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise InputError(f"speed = {speed} must be from {MIN_SPEED} to {MAX_SPEED} (1.0 is normal)")
        if self.engine == "espeak-ng":
            executable = self._espeak_path()
            chosen = self._check_voice(executable, voice or self.default_voice)
            parts = []
            for chunk in split_sentences(text, 1000):
                raise_if_cancelled()  # a call past its time limit stops between chunks
                parts.append(self._espeak_chunk(executable, chunk, chosen, speed))
        elif self.engine == "bark":
            if speed != 1.0:
                raise InputError(f"speed = {speed} cannot be changed with the Bark engine; leave it at 1.0")
            try:
                parts = self._bark_chunks(split_bark_text(text), voice or self.bark_voice)
            except ImportError as exc:
                raise ModelLoadError(f"the Bark engine needs transformers and torch: {exc}") from None
        else:
            if voice:
                raise InputError(f"voice {voice!r} cannot be chosen with the VITS engine; leave voice empty")
            try:
                parts = self._vits_chunks(split_sentences(text, 300), speed)
            except ImportError as exc:
                raise ModelLoadError(f"the VITS engine needs transformers and torch: {exc}") from None
        return join_wavs(parts)

    def _execute(self, text: str, voice: str | None = None, speed: float = 1.0) -> tuple[str, dict[str, Any]]:
        started = time.perf_counter()
        audio, rate, duration = self.synthesize(text, voice, speed)
        folder = self.artifacts_dir or default_artifacts_dir()
        path = write_new_artifact(folder, "speech-" + text[:30], ".wav", lambda handle: handle.write(audio))
        artifact = {
            "path": str(path), "duration_s": round(duration, 3), "sample_rate": rate, "engine": self.engine,
            "voice": voice or {"espeak-ng": self.default_voice, "bark": self.bark_voice}.get(self.engine), "speed": speed,
            "seconds": round(time.perf_counter() - started, 3),
        }
        return f"Saved {duration:.1f} s of speech to {path}.", artifact
