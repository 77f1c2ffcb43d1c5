"""Shared-prefix training: encode the prompt start every sample of a batch shares once per step.

Agent data repeats one long prompt start in every sample -- the system prompt and the tool list,
about 1,400 tokens with the built-in tools -- ahead of a short request and reply. Training on
whole samples spends nearly all of its time on that repeated prefix (measured on a 2-core CPU
with SmolLM2-135M, bf16 LoRA: 8.7 s forward+backward for one 1,500-token sample, against about
0.5 s for its 100-token suffix).

With ``shared_prefix=True`` each batch is split where its rows first differ (and before any
image token or labelled token): the prefix is encoded once, for one row, **without gradients**
and with the current adapter, its key/value cache is repeated over the batch, and only the
suffixes run forward and backward against it. Replies, labels and what the model sees at
inference are unchanged; the one approximation is that no gradient flows through the prefix's
keys and values (the adapter still shapes them in the forward pass). Batches whose rows share
fewer than :data:`MIN_SHARED_TOKENS` tokens are trained whole.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
MIN_SHARED_TOKENS = 64


def shared_prefix_length(
    input_ids: torch.Tensor, labels: torch.Tensor | None, image_token_id: int | None = None
) -> int:
    """How many leading tokens every row shares, stopping before images and learned tokens.

    The suffix must start at least one token before the first labelled token, so that the
    prediction of that token is made (and trained) in the suffix.
    """
    import torch

    same = (input_ids == input_ids[:1]).all(dim=0)
    differing = torch.nonzero(~same)
    limit = int(differing[0]) if len(differing) else input_ids.shape[1]
    if labels is not None:
        learned = torch.nonzero((labels != IGNORE_INDEX).any(dim=0))
        if len(learned):
            limit = min(limit, int(learned[0]) - 1)
    if image_token_id is not None:
        images = torch.nonzero((input_ids == image_token_id).any(dim=0))
        if len(images):
            limit = min(limit, int(images[0]))
    return max(0, min(limit, input_ids.shape[1] - 1))


def split_batch(model: Any, inputs: dict[str, Any], image_token_id: int | None = None) -> dict[str, Any] | None:
    """The batch with its shared prefix replaced by a key/value cache, or None to train it whole."""
    import torch

    input_ids = inputs["input_ids"]
    prefix = shared_prefix_length(input_ids, inputs.get("labels"), image_token_id)
    if prefix < MIN_SHARED_TOKENS:
        return None
    was_training = model.training
    model.eval()  # no dropout while encoding the prefix: it stands for what inference computes
    try:
        with torch.no_grad():
            encoded = model(
                input_ids=input_ids[:1, :prefix],
                attention_mask=inputs["attention_mask"][:1, :prefix],
                use_cache=True,
                logits_to_keep=1,  # only the cache is used: the vocabulary projection of 1,000s of tokens is not
            )
    finally:
        model.train(was_training)
    # transformers 5 names the key/value cache ``cache`` (output and argument); earlier versions ``past_key_values``
    name = "cache" if getattr(encoded, "cache", None) is not None else "past_key_values"
    cache = getattr(encoded, name, None)
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        logger.debug("shared prefix not used: the model returned no repeatable cache")
        return None
    if input_ids.shape[0] > 1:
        cache.batch_repeat_interleave(input_ids.shape[0])
    split = {key: value for key, value in inputs.items() if key not in ("input_ids", "labels")}
    split["input_ids"] = input_ids[:, prefix:]
    if inputs.get("labels") is not None:
        split["labels"] = inputs["labels"][:, prefix:]
    split[name] = cache  # attention_mask stays whole: it covers the cached prefix too
    split["use_cache"] = True
    return split


def shared_prefix_trainer_class() -> type:
    """A ``transformers.Trainer`` whose loss runs each batch through :func:`split_batch`."""
    from transformers import Trainer

    class SharedPrefixTrainer(Trainer):
        image_token_id: int | None = None

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            split = split_batch(model, inputs, self.image_token_id)
            return super().compute_loss(model, split if split is not None else inputs, return_outputs, num_items_in_batch)

    return SharedPrefixTrainer
