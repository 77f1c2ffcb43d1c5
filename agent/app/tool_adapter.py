"""The tool-use adapter recipe: synthesise data from the tools, train a LoRA, benchmark before and after.

``llava-agent finetune tools --model M --output DIR`` (:mod:`agent.cli.routing`) or :func:`train_tool_adapter`:

1. **data**: :func:`agent.app.tool_data.synthesize_tool_data` writes ``DIR-data/train.jsonl`` (and
   the pictures its image rows attach) from the configured agent's tools and system prompt; an
   existing ``train.jsonl`` is replaced only with ``overwrite`` (``--data-only`` stops here);
2. **before**: the routing benchmark (:mod:`agent.app.routing_eval`) on the held-out set, without
   the adapter;
3. **train**: :func:`finetune.train` on that data with shared-prefix batches
   (:mod:`finetune.shared_prefix`: the system prompt and tool list are encoded once per step);
4. **after**: the same benchmark with the adapter; both reports are saved in the adapter folder
   (``routing_before.json``, ``routing_after.json``).

Use the adapter with ``llava-agent chat --adapter DIR`` or ``adapter = "DIR"`` under ``[model]``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.core import defaults

if TYPE_CHECKING:
    from agent.app.routing_eval import RoutingReport
    from agent.app.tool_data import ToolDataset
    from agent.core.config import AppConfig
    from finetune.train import TrainResult

logger = logging.getLogger(__name__)

TRAIN_DEFAULTS: dict[str, Any] = dict(defaults.TOOL_ADAPTER_TRAINING)
"""Training settings of the recipe (any :class:`finetune.TrainConfig` field can override them)."""
DEFAULT_ROWS = defaults.TOOL_ADAPTER_ROWS


@dataclass
class ToolAdapterResult:
    """What the recipe produced: the data, the adapter, and the benchmark before and after."""

    data: ToolDataset
    adapter_dir: Path | None
    train: TrainResult | None
    before: RoutingReport | None
    after: RoutingReport | None


def data_dir_for(output_dir: str | Path) -> Path:
    """The training data lives next to the adapter folder (which is replaced whole when training ends)."""
    output_dir = Path(output_dir).expanduser()
    return output_dir.with_name(output_dir.name + "-data")


def train_tool_adapter(
    model: str,
    output_dir: str | Path,
    *,
    config: AppConfig | str | Path | Mapping[str, Any] | None = None,
    count: int = DEFAULT_ROWS,
    seed: int = 0,
    eval_set: str | Path | None = None,
    eval_limit: int | None = None,
    evaluate: bool = True,
    train: bool = True,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
    **train_options: Any,
) -> ToolAdapterResult:
    """Run the recipe; ``train_options`` are :class:`finetune.TrainConfig` fields (they override :data:`TRAIN_DEFAULTS`).

    With ``train=False`` only the data is written: no model is loaded, nothing is benchmarked.
    ``overwrite`` replaces an existing ``DIR-data/train.jsonl`` and adapter folder.
    """
    from agent.app.routing_eval import agent_tools, evaluate_routing
    from agent.app.system_prompt import build_system_prompt
    from agent.app.tool_data import synthesize_tool_data
    from agent.core.config import load_config
    from agent.core.files import atomic_write_text

    say = progress or logger.info
    app_config = load_config(config)
    output_dir = Path(output_dir).expanduser()
    tools = agent_tools(app_config)
    data = synthesize_tool_data(
        tools, data_dir_for(output_dir), system_prompt=build_system_prompt(tools, app_config.agent.system_prompt),
        count=count, seed=seed, overwrite=overwrite,
    )
    say(f"wrote {len(data.rows)} training rows to {data.path} ({json.dumps(data.summary['kinds'])})")
    if not train:
        return ToolAdapterResult(data, None, None, None, None)
    benchmark = {"cases": eval_set, "config": app_config, "limit": eval_limit, "routing": "model"}
    before = evaluate_routing(model, **benchmark) if evaluate else None
    if before is not None:
        say("before: " + _headline(before))

    from finetune.train import train as run_training

    options = {**TRAIN_DEFAULTS, **train_options}
    result = run_training(
        model=model, data=str(data.path), image_folder=str(data.image_folder), output_dir=str(output_dir),
        format="messages", shared_prefix=True, seed=seed, overwrite=overwrite, **options,
    )
    say(f"adapter saved to {result.adapter_dir} ({result.global_step} steps, {result.seconds:.0f} s)")
    after = evaluate_routing(model, adapter=str(output_dir), **benchmark) if evaluate else None
    if after is not None:
        say("after:  " + _headline(after))
    for name, report in (("routing_before.json", before), ("routing_after.json", after)):
        if report is not None:
            atomic_write_text(output_dir / name, json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return ToolAdapterResult(data, output_dir, result, before, after)


def _headline(report: RoutingReport) -> str:
    return (
        f"routing {report.routing_accuracy:.3f}, arguments {report.argument_accuracy:.3f}, "
        f"false calls {report.false_call_rate:.3f}, median latency {report.median_latency_s:.2f} s "
        f"({len(report.results)} requests)"
    )


def comparison(before: RoutingReport | None, after: RoutingReport | None) -> str:
    """Before/after table of the benchmark's headline numbers."""
    rows = [("routing accuracy", "routing_accuracy"), ("argument accuracy", "argument_accuracy"),
            ("call accuracy", "call_accuracy"), ("false-call rate", "false_call_rate"),
            ("median latency (s)", "median_latency_s")]
    lines = [f"{'':<20}{'before':>10}{'after':>10}"]
    for label, key in rows:
        values = [f"{getattr(r, key):>10.3f}" if r is not None else f"{'-':>10}" for r in (before, after)]
        lines.append(f"{label:<20}" + "".join(values))
    return "\n".join(lines)
