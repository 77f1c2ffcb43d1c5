"""``speak``: text-to-speech into a WAV file.

Two engines, chosen by ``tools.tts_engine``:

* ``espeak-ng`` (default): the offline speech synthesiser from the system's packages
  (``sudo apt-get install espeak-ng``, ``brew install espeak-ng``); fast on any CPU.
* ``vits``: a neural voice through transformers' ``VitsModel`` (``facebook/mms-tts-eng`` or any
  VITS checkpoint), loaded through the model manager.

Long text is split into sentences, each chunk synthesised, and the WAVs joined (same sample
rate) into one file written atomically into the artifacts folder.
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
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from agent.errors import InputError, ModelLoadError, ToolError
from tools.base import LlavaTool, default_artifacts_dir, ranged
from tools.paths import write_new_artifact

if TYPE_CHECKING:
    from agent.config import AppConfig

logger = logging.getLogger(__name__)

ESPEAK_WORDS_PER_MINUTE = 175
MIN_SPEED, MAX_SPEED = 0.5, 2.0
Speed = ranged(float, MIN_SPEED, MAX_SPEED)
INSTALL_HINT = "install it with `sudo apt-get install espeak-ng` (Debian/Ubuntu) or `brew install espeak-ng` (macOS)"


class SpeakInput(BaseModel):
    text: str = Field(description="The exact words to say aloud.")
    voice: str | None = Field(None, description="Voice or language code such as 'en', 'en-us', 'fr'; empty for the default.")
    speed: Speed = Field(1.0, description=f"Speaking speed, 1.0 is normal, from {MIN_SPEED} to {MAX_SPEED}.")


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
    engine: Literal["espeak-ng", "vits"] = "espeak-ng"
    default_voice: str = Field("en", description="espeak-ng voice used when the call names none.")
    vits_model: str = Field("facebook/mms-tts-eng", description="VITS checkpoint for engine='vits'.")
    espeak_executable: str = "espeak-ng"
    artifacts_dir: Path | None = Field(None, description="Where WAVs are written; None = config's.")
    max_chars: int = Field(5000, gt=0, description="Longest text accepted.")

    @classmethod
    def from_config(cls, config: AppConfig, manager: Any = None) -> SpeakTool:
        return cls(
            engine=config.tools.tts_engine, default_voice=config.tools.espeak_voice,
            vits_model=config.tools.vits_model, device=config.tools.device, artifacts_dir=config.artifacts_dir,
            max_chars=config.tools.max_speech_chars, manager=manager,
        )

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

        model = VitsModel.from_pretrained(self.vits_model).to(self.resolved_device()).eval()
        return model, AutoTokenizer.from_pretrained(self.vits_model)

    def _vits_chunks(self, chunks: list[str], speed: float) -> list[bytes]:
        import numpy as np
        import torch

        from tools.model_manager import checkpoint_size_bytes

        device = self.resolved_device()
        parts = []
        with self.get_manager().use(
            ("vits", self.vits_model, device), self._load_vits, device=device,
            size_bytes=checkpoint_size_bytes(self.vits_model),
        ) as (model, tokenizer), torch.inference_mode():
            rate = int(model.config.sampling_rate)
            for chunk in chunks:
                inputs = tokenizer(chunk, return_tensors="pt").to(device)
                if inputs["input_ids"].shape[-1] == 0:
                    raise InputError(f"the text {chunk[:40]!r} has no characters this VITS voice can say")
                model.speaking_rate = speed
                waveform = model(**inputs).waveform[0].float().cpu().numpy()
                pcm = (np.clip(waveform, -1.0, 1.0) * 32767).astype("<i2")
                buffer = io.BytesIO()
                with wave.open(buffer, "wb") as writer:
                    writer.setnchannels(1)
                    writer.setsampwidth(2)
                    writer.setframerate(rate)
                    writer.writeframes(pcm.tobytes())
                parts.append(buffer.getvalue())
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
            parts = [self._espeak_chunk(executable, chunk, chosen, speed) for chunk in split_sentences(text, 1000)]
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
        path = write_new_artifact(folder, "speech-" + text[:30], ".wav", lambda tmp: tmp.write_bytes(audio))
        artifact = {
            "path": str(path), "duration_s": round(duration, 3), "sample_rate": rate, "engine": self.engine,
            "voice": voice or (self.default_voice if self.engine == "espeak-ng" else None), "speed": speed,
            "seconds": round(time.perf_counter() - started, 3),
        }
        return f"Saved {duration:.1f} s of speech to {path}.", artifact
