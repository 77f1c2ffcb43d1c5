"""The ``finetune`` command: ``validate``, ``train``, ``merge``, ``eval``, ``clip`` and ``caption`` sub-commands.

``register(subparsers)`` adds the command to a parent CLI (``llava-agent finetune ...``);
``main()`` runs it alone (``python -m finetune ...``). This layer only parses and prints:
library errors become one line on stderr (a traceback with ``--verbose``). ``--config`` (the
llava-agent config file: ``tools.clip_model`` and ``tools.caption_model`` are the default bases of
``clip`` and ``caption``) and ``--verbose`` are accepted after every command name, as elsewhere
in ``llava-agent``.

``clip`` and ``caption`` can have a captioning model write missing captions
(``--caption-missing``): fine-tuning does not use the tools, so the parent CLI passes
``register(..., captioner_factory=...)``, a function of the parsed arguments returning one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.core.errors import ConfigError, DatasetError, LlavaAgentError, ModelNotFoundError
from finetune.config import FORMAT_CHOICES, TrainConfig
from finetune.pair_config import CLIP_METHODS, PairTrainConfig

logger = logging.getLogger(__name__)

REQUIRED_TRAIN_OPTIONS = ("model", "data", "output_dir")


def _write(text: str) -> None:
    sys.stdout.write(text + "\n")


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    """One option per :class:`TrainConfig` field, its help text taken from the field's metadata."""
    for spec in dataclasses.fields(TrainConfig):
        flag = "--" + spec.name.replace("_", "-")
        kind = str(spec.type).replace(" ", "")
        default = None if spec.default is dataclasses.MISSING else spec.default
        help_text = spec.metadata.get("help", "")
        common: dict[str, Any] = {"dest": spec.name, "help": help_text}
        if spec.name in REQUIRED_TRAIN_OPTIONS:
            parser.add_argument(flag, required=True, **common)
        elif kind == "bool":
            parser.add_argument(flag, action="store_true", default=default, **common)
        elif kind == "bool|None":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, **common)
        elif kind.startswith("list[str]"):
            parser.add_argument(flag, nargs="+", default=default, metavar="NAME", **common)
        else:
            base = kind.split("|")[0]
            convert = {"int": int, "float": float}.get(base, str)
            extra: dict[str, Any] = {"choices": FORMAT_CHOICES} if spec.name == "format" else {}
            parser.add_argument(flag, type=convert, default=default, **extra, **common)


def _add_pair_options(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """One option per :class:`PairTrainConfig` field (``--pairs`` and ``--output`` required)."""
    for spec in dataclasses.fields(PairTrainConfig):
        if spec.name in skip:
            continue
        flag = "--" + spec.name.replace("_", "-")
        kind = str(spec.type).replace(" ", "")
        default = None if spec.default is dataclasses.MISSING else spec.default
        common: dict[str, Any] = {"dest": spec.name, "help": spec.metadata.get("help", "")}
        if spec.name in ("pairs", "output"):
            parser.add_argument(flag, required=True, **common)
        elif kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, **common)
        elif kind.startswith("list[int]"):
            parser.add_argument(flag, nargs="+", type=int, default=[1, 5], metavar="K", **common)
        else:
            convert = {"int": int, "float": float}.get(kind.split("|")[0], str)
            extra: dict[str, Any] = {"choices": CLIP_METHODS} if spec.name == "method" else {}
            parser.add_argument(flag, type=convert, default=default, **extra, **common)
    parser.add_argument("--caption-missing", action="store_true",
                        help="Let the captioning model (tools.caption_model) write the captions the data lacks")
    parser.add_argument("--json", action="store_true", help="Print the result as JSON")


def common_options(shown: bool = False) -> argparse.ArgumentParser:
    """The parent parser of every command: ``--config`` and ``--verbose`` after the command's name too.

    They default to nothing here, so that a value given before the command name is kept; the
    top-level parser sets their defaults. ``shown``: listed in the command's ``--help``.
    """
    common = argparse.ArgumentParser(add_help=False)
    config_help = "llava-agent TOML config file (default: the user config folder)" if shown else argparse.SUPPRESS
    verbose_help = "debug logging and full tracebacks" if shown else argparse.SUPPRESS
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help=config_help)
    common.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS, help=verbose_help)
    return common


def register(
    subparsers: Any, captioner_factory: Any = None, extra_commands: Sequence[Any] = ()
) -> argparse.ArgumentParser:
    """Add the ``finetune`` command (with its sub-commands) to a parent CLI's sub-parsers.

    The parent parser defines ``--config`` and ``--verbose``; ``finetune`` and each sub-command
    accept them too (:func:`common_options`).
    ``captioner_factory(args)`` returns a function from images to captions for ``--caption-missing``.
    ``extra_commands`` are functions ``add(commands, common)`` that add sub-commands of their own to
    ``finetune``'s (``common``: the parent parser of :func:`common_options`); the parent CLI adds
    those that need more than fine-tuning may import (``tools``: the agent's tools and its routing
    benchmark).
    """
    common = common_options()
    parser = subparsers.add_parser(
        "finetune",
        parents=[common_options(shown=True)],
        help="Fine-tune LoRA/QLoRA adapters on your own data",
        description="Validate data, train an adapter, merge it into its base, evaluate it.",
    )
    commands = parser.add_subparsers(dest="finetune_command", metavar="{validate,train,merge,eval,clip,caption}")
    commands.required = True

    check = commands.add_parser("validate", parents=[common], help="Report every bad sample of a dataset")
    check.add_argument("data", help="A .json/.jsonl file or a datasets folder")
    check.add_argument("--image-folder", help="Folder image paths are relative to")
    check.add_argument("--format", default="auto", choices=FORMAT_CHOICES)
    check.add_argument("--model", help="Base model; adds the token-length check (image tokens included)")
    check.add_argument("--max-length", type=int, default=2048, help="Longest sample in tokens (with --model)")
    check.add_argument("--skip-invalid", action="store_true", help="Report bad samples without failing")
    check.add_argument("--json", action="store_true", help="Print the data summary as JSON")
    check.set_defaults(func=run_validate)

    fit = commands.add_parser("train", parents=[common], help="Train a LoRA/QLoRA adapter")
    _add_train_options(fit)
    fit.set_defaults(func=run_train)

    fold = commands.add_parser("merge", parents=[common], help="Merge an adapter into a full-precision copy of its base")
    fold.add_argument("--adapter", required=True, help="Adapter folder written by train")
    fold.add_argument("--output-dir", required=True, help="Folder of the standalone merged model")
    fold.add_argument("--base", help="Full-precision base model (default: the one the adapter names)")
    fold.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    fold.add_argument("--overwrite", action="store_true", help="Replace an existing output folder")
    fold.set_defaults(func=run_merge)

    score = commands.add_parser("eval", parents=[common], help="Loss and exact-match accuracy on a held-out file")
    score.add_argument("data", help="Held-out .json/.jsonl file or datasets folder")
    score.add_argument("--model", required=True, help="Base model (or a merged model folder)")
    score.add_argument("--adapter", help="Adapter folder applied to the model")
    score.add_argument("--image-folder", help="Folder image paths are relative to")
    score.add_argument("--format", default="auto", choices=FORMAT_CHOICES)
    score.add_argument("--max-new-tokens", type=int, default=32, help="Tokens generated per answer")
    score.add_argument("--ignore-case", action="store_true", help="Compare answers without case")
    score.add_argument("--device", default="auto", help="auto, cpu, cuda")
    score.add_argument("--quantization", default="none", choices=("auto", "4bit", "8bit", "none"))
    score.add_argument("--skip-invalid", action="store_true", help="Leave out invalid samples")
    score.add_argument("--json", action="store_true", help="Print the result (and every prediction) as JSON")
    score.set_defaults(func=run_eval)

    clip = commands.add_parser("clip", parents=[common], help="Fine-tune the CLIP model of the image search on image-caption pairs")
    _add_pair_options(clip, skip=("max_new_tokens", "merge"))
    clip.set_defaults(func=run_pairs, pair_task="clip", captioner_factory=captioner_factory)

    caption = commands.add_parser("caption", parents=[common], help="Fine-tune the captioning model (LoRA) on image-caption pairs")
    _add_pair_options(caption, skip=("method", "last_layers", "recall_k"))
    caption.set_defaults(func=run_pairs, pair_task="caption", captioner_factory=captioner_factory)
    for add_command in extra_commands:
        add_command(commands, common)
    commands.metavar = "{" + ",".join(commands.choices) + "}"
    return parser


def _model_config(model: str) -> Any:
    """The base model's config, or one line saying the model cannot be found and what to do."""
    from agent.core.hub_access import download_hint, hub_load_kwargs

    hub = hub_load_kwargs(model, what="base model")  # fails at once, in one line, offline or with no hub
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model, **hub)
    except (OSError, ValueError) as exc:  # the library's own words go to the debug log (--verbose)
        logger.debug("loading the config of %r failed: %s", model, exc)
        if Path(model).expanduser().exists():
            raise ModelNotFoundError(
                f"base model folder {model!r} holds no model config (a config.json naming its model_type); pass "
                "--model the folder save_pretrained() wrote, or a hub id"
            ) from None
        raise ModelNotFoundError(
            f"base model {model!r} is neither a local folder nor a model on the hub; pass --model an existing "
            f"folder or hub id (download one for offline use with `{download_hint(model)}`)"
        ) from None


def run_validate(args: argparse.Namespace) -> int:
    from finetune.validate import validate

    encoder = None
    if args.model:
        model_config = _model_config(args.model)
        from finetune.collator import ConversationEncoder
        from finetune.modeling import load_processor

        encoder = ConversationEncoder(
            load_processor(args.model),
            model_config=model_config,
            max_length=args.max_length,
            image_folder=args.image_folder,
        )
    try:
        report = validate(
            args.data, image_folder=args.image_folder, format=args.format, encoder=encoder,
            skip_invalid=args.skip_invalid,
        )
    except DatasetError as exc:
        report_text = str(exc)
        if "\n" not in report_text:
            raise
        # the report as written (its count line, then one bad sample a line): an error is shown as one line
        sys.stderr.write(report_text + "\n")
        if args.skip_invalid:
            raise DatasetError(f"dataset {args.data} has no valid sample (each one is listed above); fix them") from None
        raise DatasetError(
            f"dataset {args.data} has invalid samples (each one is listed above); fix them, or pass --skip-invalid "
            "to leave them out"
        ) from None
    _write(json.dumps(report.summary(), indent=2, default=str) if args.json else report.render())
    return 0


def run_train(args: argparse.Namespace) -> int:
    from finetune.train import train

    options = {spec.name: getattr(args, spec.name) for spec in dataclasses.fields(TrainConfig)}
    result = train(TrainConfig(**options))
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under DDP, the main process reports
    loss = "n/a" if result.train_loss is None else f"{result.train_loss:.4f}"
    line = f"adapter saved to {result.adapter_dir} ({result.global_step} steps, train loss {loss}"
    if result.eval_loss is not None:
        line += f", eval loss {result.eval_loss:.4f}"
    _write(line + f", {result.seconds:.1f} s)")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from finetune.merge import merge

    folder = merge(args.adapter, args.output_dir, base=args.base, dtype=args.dtype, overwrite=args.overwrite)
    _write(f"merged model saved to {folder}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from finetune.evaluate import evaluate

    result = evaluate(
        args.data,
        model=args.model,
        adapter=args.adapter,
        image_folder=args.image_folder,
        format=args.format,
        max_new_tokens=args.max_new_tokens,
        case_sensitive=not args.ignore_case,
        device=args.device,
        quantization=args.quantization,
        skip_invalid=args.skip_invalid,
    )
    if args.json:
        _write(json.dumps(result.to_dict() | {"predictions": result.predictions}, indent=2))
    else:
        _write(f"loss {result.loss:.4f}, exact match {100 * result.accuracy:.1f}% of {result.samples} samples")
    return 0


def run_pairs(args: argparse.Namespace) -> int:
    options = {spec.name: getattr(args, spec.name) for spec in dataclasses.fields(PairTrainConfig)
               if hasattr(args, spec.name)}
    config = PairTrainConfig(**{name: value for name, value in options.items() if value is not None})
    captioner = None
    if args.caption_missing:
        if args.captioner_factory is None:
            raise ConfigError("--caption-missing needs the captioning model; run it as `llava-agent finetune ...`")
        captioner = args.captioner_factory(args)
    if args.pair_task == "clip":
        from finetune.clip import train_clip

        result = train_clip(config, captioner=captioner, app_config=args.config)
        scores = ", ".join(f"{k} {result.before[k]:.3f} -> {result.after[k]:.3f}" for k in result.after if k in result.before
                           and not k.startswith("chance"))
        line = f"CLIP saved to {result.output} ({result.method}, {result.steps} steps); held-out {scores}"
        hint = f"; set tools.clip_model = \"{result.output}\" and run `llava-agent index --reindex`"
    else:
        from finetune.caption import MERGED_FOLDER, train_caption

        result = train_caption(config, captioner=captioner, app_config=args.config)
        scores = ", ".join(f"{k} {result.before[k]:.3f} -> {result.after[k]:.3f}" for k in ("exact_match", "bleu"))
        line = f"caption adapter saved to {result.output} ({result.steps} steps); held-out {scores}"
        hint = f"; set tools.caption_adapter = \"{result.output}\""
        if config.merge:
            hint += f" (or tools.caption_model = \"{result.output / MERGED_FOLDER}\")"
    _write(json.dumps(result.to_dict(), indent=2, default=str) if args.json else line + hint)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m finetune``: the ``finetune`` command on its own."""
    parser = argparse.ArgumentParser(prog="python -m", description="LoRA/QLoRA fine-tuning")
    parser.set_defaults(config=None, verbose=False)  # given after `finetune` or a sub-command (common_options)
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["finetune", *(sys.argv[1:] if argv is None else argv)])
    verbose = args.verbose
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from agent.core.terminal_safe import terminal_safe_streams

    with terminal_safe_streams():  # paths and data from the dataset are shown, never obeyed by the terminal
        try:
            return args.func(args)
        except LlavaAgentError as exc:
            if verbose:
                raise
            sys.stderr.write(f"error: {exc}\n")
            return 2
