"""Real-time factor of ``speak``: espeak-ng, VITS at the mms-tts-eng size and Bark at suno/bark-small
(or suno/bark) size, random weights.

RTF = synthesis seconds / audio seconds (below 1 is faster than real time). Each engine reads
the same paragraph through ``SpeakTool.synthesize`` (sentence splitting and WAV joining
included); the VITS and Bark checkpoints are built on the spot at the real models' sizes with
random weights, so their audio is noise of a model-chosen length — the RTF is measured on
whatever length it produces (random Bark weights rarely stop before the 768 semantic tokens,
about 15 s of audio per chunk, which is what the real model produces for long chunks too).

    python bench/bench_tts.py --repeats 3
    python bench/bench_tts.py --engines bark --bark-size large --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from agent.core.model_manager import model_size_bytes  # noqa: E402
from tests.tool_models import build_bark, build_vits  # noqa: E402
from tools.speak import SpeakTool  # noqa: E402

PARAGRAPH = (
    "The little harbour town woke slowly. Fishing boats came back with the tide, and gulls circled "
    "over the market stalls. By noon the square was full of voices, the smell of bread, and music "
    "from an open window. Nobody hurried; there was time for everything here."
)


def real_time_factor(tool: SpeakTool, repeats: int, text: str = PARAGRAPH, warm_up: bool = True) -> dict:
    if warm_up:  # Bark's chunks take long enough that a warm-up only doubles the run
        tool.synthesize("Warm up.")
    synth, audio = 0.0, 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        _, rate, seconds = tool.synthesize(text)
        synth += time.perf_counter() - started
        audio += seconds
    return {"engine": tool.engine, "sample_rate": rate, "audio_s": audio / repeats,
            "synthesis_s": synth / repeats, "rtf": synth / audio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", nargs="+", default=["espeak-ng", "vits", "bark"],
                        choices=["espeak-ng", "vits", "bark"])
    parser.add_argument("--repeats", type=int, default=5, help="espeak-ng runs")
    parser.add_argument("--vits-repeats", type=int, default=1, help="VITS runs (slow on a CPU)")
    parser.add_argument("--bark-repeats", type=int, default=1, help="Bark runs (slow on a CPU)")
    parser.add_argument("--bark-size", default="small", choices=["small", "large"],
                        help="suno/bark-small (default) or suno/bark dimensions")
    parser.add_argument("--bark-text", choices=["paragraph", "sentence"], default="paragraph",
                        help="what Bark reads (one sentence is one Bark chunk)")
    parser.add_argument("--bark-semantic-tokens", type=int, default=None,
                        help="cap Bark's semantic tokens per chunk (768 by default, ~15 s of audio; random "
                             "weights always reach the cap) to measure the rate on shorter audio")
    parser.add_argument("--device", default="cpu", help="device for VITS and Bark")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="bench-tts-"))
    results = []
    if "espeak-ng" in args.engines:
        results.append(real_time_factor(SpeakTool(artifacts_dir=work), args.repeats))
    if "vits" in args.engines:
        vits = SpeakTool(engine="vits", vits_model=str(build_vits(work / "vits-mms", size="mms")), device=args.device,
                         artifacts_dir=work)
        row = real_time_factor(vits, args.vits_repeats)
        row["parameters_mb"] = _loaded_mb(vits, ("vits", vits.vits_model, vits.resolved_device()), vits._load_vits)
        results.append(row)
    if "bark" in args.engines:
        folder = build_bark(work / f"bark-{args.bark_size}", size=args.bark_size,
                            semantic_max_new_tokens=args.bark_semantic_tokens)
        bark = SpeakTool(engine="bark", bark_model=str(folder), bark_voice="v2/en_speaker_0", device=args.device,
                         artifacts_dir=work)
        text = PARAGRAPH if args.bark_text == "paragraph" else PARAGRAPH.split(". ")[0] + "."
        row = real_time_factor(bark, args.bark_repeats, text=text, warm_up=False)
        row.update(size=args.bark_size, semantic_tokens=args.bark_semantic_tokens or 768, device=bark.resolved_device(), characters=len(text),
                   parameters_mb=_loaded_mb(bark, ("bark", bark.bark_model, bark.resolved_device()), bark._load_bark))
        results.append(row)
    for row in results:
        print(json.dumps(row))
        print(f"{row['engine']}: {row['audio_s']:.2f} s of audio in {row['synthesis_s']:.3f} s -> RTF {row['rtf']:.4f}")
    if args.output:
        args.output.write_text(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)


def _loaded_mb(tool: SpeakTool, key: tuple, loader) -> float:
    with tool.get_manager().use(key, loader, device=key[-1]) as loaded:
        return round(model_size_bytes(loaded) / 2**20, 1)


if __name__ == "__main__":
    main()
