"""Real-time factor of ``speak``: espeak-ng, and VITS at the mms-tts-eng size (random weights).

RTF = synthesis seconds / audio seconds (below 1 is faster than real time). Each engine reads
the same paragraph through ``SpeakTool.synthesize`` (sentence splitting and WAV joining
included); the VITS checkpoint is built on the spot with transformers' default VITS sizes
(those of facebook/mms-tts-eng) and random weights, so its audio is noise of a model-chosen
length — the RTF is measured on whatever length it produces.

    python bench/bench_tts.py --repeats 3
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
from tests.tool_models import build_vits  # noqa: E402
from tools.speak import SpeakTool  # noqa: E402

PARAGRAPH = (
    "The little harbour town woke slowly. Fishing boats came back with the tide, and gulls circled "
    "over the market stalls. By noon the square was full of voices, the smell of bread, and music "
    "from an open window. Nobody hurried; there was time for everything here."
)


def real_time_factor(tool: SpeakTool, repeats: int) -> dict:
    tool.synthesize("Warm up.")
    synth, audio = 0.0, 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        _, rate, seconds = tool.synthesize(PARAGRAPH)
        synth += time.perf_counter() - started
        audio += seconds
    return {"engine": tool.engine, "sample_rate": rate, "audio_s": audio / repeats,
            "synthesis_s": synth / repeats, "rtf": synth / audio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="espeak-ng runs")
    parser.add_argument("--vits-repeats", type=int, default=1, help="VITS runs (slow on a CPU)")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="bench-tts-"))
    results = [real_time_factor(SpeakTool(artifacts_dir=work), args.repeats)]
    vits = SpeakTool(engine="vits", vits_model=str(build_vits(work / "vits-mms", size="mms")), device="cpu",
                     artifacts_dir=work)
    row = real_time_factor(vits, args.vits_repeats)
    manager = vits.get_manager()
    key = ("vits", vits.vits_model, "cpu")
    with manager.use(key, vits._load_vits, device="cpu") as model:
        row["parameters_mb"] = round(model_size_bytes(model) / 2**20, 1)
    results.append(row)
    for row in results:
        print(json.dumps(row))
        print(f"{row['engine']}: {row['audio_s']:.2f} s of audio in {row['synthesis_s']:.3f} s -> RTF {row['rtf']:.4f}")
    if args.output:
        args.output.write_text(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
