"""Train a LoRA/QLoRA adapter for a LLaVA-family model. Reads top to bottom:

1. settings: a :class:`TrainConfig`, ``auto`` values resolved for the device;
2. data: the base model's processor, then validation of every sample (stops on bad data);
3. model: the base (4-bit NF4 on CUDA by default), LoRA on every language-model linear layer,
   the projector optionally trained in full, the vision tower frozen;
4. loop: transformers' ``Trainer`` (progress bars, evaluation loss, checkpoints every N steps,
   DDP under ``accelerate launch``), resumed from the last *complete* checkpoint on ``resume``;
5. save: the adapter, its training config, a data summary and a loss-curve PNG, written to a
   temporary folder and moved into place with one ``os.replace``, so a crash never leaves a
   half-written adapter where one is expected.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.core.errors import ConfigError, StoreError
from agent.core.runtime import quiet_library_notices, resolve_training_precision
from finetune.checkpoints import (
    CHECKPOINT_PREFIX,
    COMPLETE_MARKER,
    RUN_IDENTITY,
    finish_checkpoint,
    run_differences,
    write_run_identity,
)
from finetune.collator import ConversationEncoder, TrainingCollator
from finetune.config import TrainConfig
from finetune.folders import publish_folder, staging_folder
from finetune.loss_curve import draw_loss_curve
from finetune.modeling import (
    load_base_model,
    load_processor,
    lora_target_pattern,
    projector_name,
)
from finetune.ownership import (
    MARKER_NAME,
    check_checkpoints_deletable,
    check_not_an_input,
    check_replaceable,
    write_marker,
)
from finetune.validate import validate

logger = logging.getLogger(__name__)

TRAINING_CONFIG_NAME = "training_config.json"
DATA_SUMMARY_NAME = "data_summary.json"
LOSS_CURVE_NAME = "loss_curve.png"
LOG_HISTORY_NAME = "log_history.json"
SAVE_DELAY_ENV = "LLAVA_AGENT_FINETUNE_SAVE_DELAY"
"""Seconds to wait between writing the temporary adapter folder and moving it into place.

Only for testing crash safety: a process killed during that wait must leave no adapter behind.
"""


@dataclass
class TrainResult:
    """What a finished run produced."""

    adapter_dir: Path
    global_step: int
    train_loss: float | None
    eval_loss: float | None
    samples: int
    seconds: float
    data_summary: dict[str, Any] = field(default_factory=dict)


def checkpoint_dir_for(output_dir: str | Path) -> Path:
    """Checkpoints live next to the adapter folder, so the adapter folder can be replaced whole."""
    output_dir = Path(output_dir).expanduser()
    return output_dir.with_name(output_dir.name + "-checkpoints")


def last_complete_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The highest-step checkpoint whose save finished (a process killed mid-save leaves none)."""
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return None
    complete = [
        path
        for path in folder.glob(f"{CHECKPOINT_PREFIX}*")
        if path.name[len(CHECKPOINT_PREFIX) :].isdigit() and (path / COMPLETE_MARKER).is_file()
    ]
    return max(complete, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]), default=None)


def train(config: TrainConfig | None = None, **options: Any) -> TrainResult:
    """Fine-tune an adapter; ``options`` are :class:`TrainConfig` fields (they override ``config``).

    Example::

        finetune.train(model="llava-hf/llava-interleave-qwen-0.5b-hf", data="data.jsonl",
                       image_folder="images", output_dir="adapters/colours", max_steps=200)
    """
    # ---- 1. settings -----------------------------------------------------------------
    config = replace(config, **options) if config is not None else TrainConfig(**options)
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed


    started = time.monotonic()
    placement = resolve_training_precision(config.device, config.dtype, config.quantization)
    output_dir = Path(config.output_dir).expanduser()
    checkpoint_dir = checkpoint_dir_for(output_dir)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    is_main = int(os.environ.get("RANK", "0")) == 0
    _check_output_dir(config, output_dir, checkpoint_dir, is_main)
    logger.info("Training on %s (%s, quantization %s), %d process(es)", *vars(placement).values(), world_size)

    # ---- 2. data ---------------------------------------------------------------------
    from transformers import AutoConfig

    processor = load_processor(config.model)
    model_config = AutoConfig.from_pretrained(config.model)
    encoder = ConversationEncoder(
        processor, model_config=model_config, max_length=config.max_length, image_folder=config.image_folder,
        max_image_pixels=config.max_image_pixels,
    )
    report = validate(
        config.data,
        image_folder=config.image_folder,
        format=config.format,
        encoder=encoder,
        skip_invalid=config.skip_invalid,
    )
    train_samples, eval_samples = list(report.samples), []
    if config.eval_data:
        eval_samples = validate(
            config.eval_data,
            image_folder=config.image_folder,
            format=config.format,
            encoder=encoder,
            skip_invalid=config.skip_invalid,
        ).samples
    elif config.eval_split:
        random.Random(config.seed).shuffle(train_samples)
        held_out = max(1, round(len(train_samples) * config.eval_split))
        if held_out >= len(train_samples):
            raise ConfigError(f"eval_split {config.eval_split} leaves no training samples out of {len(train_samples)}")
        eval_samples, train_samples = train_samples[:held_out], train_samples[held_out:]

    _prepare_checkpoint_dir(config, checkpoint_dir, is_main)

    # ---- 3. model --------------------------------------------------------------------
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    set_seed(config.seed)
    model = load_base_model(config.model, placement)
    model.config.use_cache = False
    checkpointing = config.gradient_checkpointing
    if checkpointing is None:
        checkpointing = placement.quantization == "4bit"
    if placement.quantization == "4bit":
        with quiet_library_notices():  # peft enables checkpointing under its deprecated name
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=checkpointing, gradient_checkpointing_kwargs={"use_reentrant": False}
            )
    elif checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers' name for it from 5.x on
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=lora_target_pattern(model, config.target_modules, config.lora_layers),
        modules_to_save=[projector_name(model)] if config.train_projector else None,
        bias="none",
        task_type="CAUSAL_LM",
    )
    with quiet_library_notices():
        model = get_peft_model(model, lora)
    trainable, total = model.get_nb_trainable_parameters()
    logger.info("Trainable parameters: %d of %d (%.2f%%)", trainable, total, 100 * trainable / max(total, 1))

    # ---- 4. loop ---------------------------------------------------------------------
    optimizer = config.optimizer or (
        "paged_adamw_8bit" if placement.quantization == "4bit" and placement.device == "cuda" else "adamw_torch"
    )
    evaluate_during = bool(eval_samples)
    args = TrainingArguments(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        optim=optimizer,
        bf16=placement.device == "cuda" and placement.dtype == "bfloat16",
        fp16=placement.device == "cuda" and placement.dtype == "float16",
        use_cpu=placement.device == "cpu",
        ddp_backend="gloo" if placement.device == "cpu" and world_size > 1 else None,
        ddp_find_unused_parameters=config.train_projector if world_size > 1 else None,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=None,  # rotation happens after a checkpoint is marked complete: finetune.checkpoints
        eval_strategy="steps" if evaluate_during else "no",
        eval_steps=(config.eval_steps or config.save_steps) if evaluate_during else None,
        seed=config.seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        report_to="none",
        disable_tqdm=False,
    )

    class MarkCompleteCheckpoints(TrainerCallback):
        """Mark a checkpoint complete once everything in it is written (resume trusts only those)."""

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:  # mark complete first, rotate after: a complete one always survives

                finish_checkpoint(Path(args.output_dir), state.global_step, config.save_total_limit)

    trainer_class: Any = Trainer
    if config.shared_prefix:
        from finetune.shared_prefix import shared_prefix_trainer_class

        trainer_class = shared_prefix_trainer_class()
        trainer_class.image_token_id = encoder.image_token_id
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train_samples,
        eval_dataset=eval_samples or None,
        data_collator=TrainingCollator(encoder),
        callbacks=[MarkCompleteCheckpoints()],
    )
    resume_from = last_complete_checkpoint(checkpoint_dir) if config.resume else None
    finished = _finished_state(resume_from) if resume_from is not None else None
    if config.resume and resume_from is None:
        logger.warning("No complete checkpoint in %s; starting from step 0", checkpoint_dir)
    elif finished is not None:  # the run had ended: its adapter is saved again, not trained further
        logger.info("The run in %s ended at step %d; saving its adapter", checkpoint_dir, finished.global_step)
        _load_checkpoint_adapter(model, resume_from)
        trainer.state = finished
    else:
        logger.info("Resuming from %s", resume_from)
    if finished is None:
        training_loss = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None).training_loss
    else:
        training_loss = next((h["train_loss"] for h in reversed(finished.log_history) if "train_loss" in h), None)
    eval_loss = trainer.evaluate()["eval_loss"] if eval_samples else None

    # ---- 5. save ---------------------------------------------------------------------
    history = trainer.state.log_history
    summary = report.summary() | {
        "train_samples": len(train_samples),
        "eval_samples": len(eval_samples),
        "eval_loss": eval_loss,
        "global_step": trainer.state.global_step,
        "world_size": world_size,
        "device": placement.device,
        "dtype": placement.dtype,
        "quantization": placement.quantization,
        "torch": torch.__version__,
    }
    if trainer.is_world_process_zero():
        try:
            save_adapter(model, output_dir, config, summary, history)
        except OSError as exc:  # a full disk: one line; the staging folder is removed by the next run

            raise StoreError(
                f"cannot write the adapter to {output_dir} ({exc.strerror or exc}); free some disk space and run "
                f"again with --resume (checkpoints are in {checkpoint_dir}); any previous adapter there is untouched"
            ) from exc
    trainer.accelerator.wait_for_everyone()
    result = TrainResult(
        adapter_dir=output_dir,
        global_step=trainer.state.global_step,
        train_loss=training_loss,
        eval_loss=eval_loss,
        samples=len(train_samples),
        seconds=time.monotonic() - started,
        data_summary=summary,
    )
    if is_main:
        logger.info("Adapter saved to %s after %d steps", output_dir, result.global_step)
    return result


def _check_output_dir(config: TrainConfig, output_dir: Path, checkpoint_dir: Path, is_main: bool) -> None:
    inputs = {"base model": config.model, "training data": config.data, "image folder": config.image_folder,
              "evaluation data": config.eval_data}
    check_not_an_input(output_dir, inputs)
    check_not_an_input(checkpoint_dir, inputs, option="checkpoint folder")
    if output_dir.exists() and not (config.overwrite or config.resume):
        raise ConfigError(
            f"output_dir {output_dir} already exists; pass --overwrite to replace it or choose another folder"
        )
    check_replaceable(output_dir)  # --overwrite (or a resumed run's save) replaces only our own adapter folders
    check_checkpoints_deletable(checkpoint_dir)
    resumable = last_complete_checkpoint(checkpoint_dir)
    has_checkpoints = resumable is not None or (
        checkpoint_dir.is_dir() and any(p.name not in (MARKER_NAME, RUN_IDENTITY) for p in checkpoint_dir.iterdir())
    )
    if config.resume and resumable is not None:
        differences = run_differences(checkpoint_dir, config.to_dict())
        if differences:
            listed = "; ".join(f"{name}: {was!r} there, {now!r} now" for name, was, now in differences)
            raise ConfigError(
                f"the checkpoints in {checkpoint_dir} belong to a run with other settings ({listed}); resume with "
                "the same settings, or pass --overwrite (without --resume) to start a new run"
            )
        if differences is None:
            logger.warning("The checkpoints in %s do not record their run's settings; resuming as told", checkpoint_dir)
    if has_checkpoints and not config.resume and not config.overwrite:
        raise ConfigError(
            f"checkpoints of an earlier run are in {checkpoint_dir}; pass --resume to continue that run "
            "or --overwrite to start over"
        )


def _prepare_checkpoint_dir(config: TrainConfig, checkpoint_dir: Path, is_main: bool) -> None:
    """Once the data is known good: an earlier run's checkpoints go (--overwrite), the folder is made and marked."""
    if not is_main:
        return
    resumable = last_complete_checkpoint(checkpoint_dir)
    if not config.resume and checkpoint_dir.exists():  # checked by _check_output_dir: ours, and --overwrite given
        shutil.rmtree(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    write_marker(checkpoint_dir, "checkpoints")
    if not (config.resume and resumable is not None):  # a run starts here: what a resume must match
        write_run_identity(checkpoint_dir, config.to_dict())


def _finished_state(checkpoint: Path) -> Any:
    """The Trainer state saved in ``checkpoint`` when its run had reached its last step, else None."""
    from transformers import TrainerState

    try:
        state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    except (OSError, ValueError):
        return None
    return state if state.max_steps and state.global_step >= state.max_steps else None


def _load_checkpoint_adapter(model: Any, checkpoint: Path) -> None:
    """Put the adapter weights (and a trained projector) saved in ``checkpoint`` into ``model``."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(checkpoint / "adapter_model.safetensors")))


def loss_points(history: list[dict[str, Any]]) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Training and evaluation ``(step, loss)`` points from a Trainer log history."""
    train = [(entry["step"], entry["loss"]) for entry in history if "loss" in entry and "step" in entry]
    evaluation = [(entry["step"], entry["eval_loss"]) for entry in history if "eval_loss" in entry]
    return train, evaluation


def save_adapter(
    model: Any,
    output_dir: Path,
    config: TrainConfig,
    summary: dict[str, Any],
    history: list[dict[str, Any]],
) -> Path:
    """Write the adapter folder atomically: a temporary sibling folder, then one ``os.replace``."""

    staging = staging_folder(output_dir)
    logger.info("Writing adapter to %s", output_dir)
    model.save_pretrained(staging, safe_serialization=True)
    write_marker(staging, "adapter")
    config.save(staging / TRAINING_CONFIG_NAME)
    (staging / DATA_SUMMARY_NAME).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (staging / LOG_HISTORY_NAME).write_text(json.dumps(history, indent=2) + "\n")
    train_points, eval_points = loss_points(history)
    draw_loss_curve(train_points, eval_points, staging / LOSS_CURVE_NAME, title=f"loss: {Path(config.data).name}")
    delay = float(os.environ.get(SAVE_DELAY_ENV, "0") or 0)
    if delay > 0:
        logger.info("Adapter staged in %s; moving it into place in %.1f s", staging, delay)
        time.sleep(delay)
    check_replaceable(output_dir)  # checked again: what is there now is what gets replaced
    return publish_folder(staging, output_dir)
