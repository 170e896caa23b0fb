"""Encoding many texts without gradients: batched in order of length, under bf16 autocast where the device
computes bf16 natively.

The classifier's head imprinting (`classifier.pooled_vectors`) and retrieval's embeddings
(`retrieval.embed`) both encode thousands of vocabulary names; they differ only in how a batch's
vectors are pooled.

bf16 is only fast where the hardware has it (`native_bf16`): a GPU that supports it, or a CPU with
AVX512-BF16 or AMX, where it halves the time of fp32. A CPU without them (AVX2 only) emulates it, and bf16 is
then several times *slower* than fp32, so there the encoding stays in fp32. The same choice for training is
Accelerate's (the Makefile adds `--mixed_precision no` on such a CPU).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware: a GPU that supports it, or a CPU with AVX512-BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def encode(tokenizer: PreTrainedTokenizerBase, queries: list[str], max_length: int) -> dict[str, torch.Tensor]:
    return tokenizer(queries, padding=True, truncation=True, max_length=max_length, return_tensors="pt")


def encode_by_length(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    pool: Callable[[PreTrainedModel, dict], torch.Tensor],
    max_length: int,
    batch_size: int,
) -> torch.Tensor:
    """(len(texts), hidden) float32 rows pool(model, batch) for each text, in eval mode (the model's mode is
    restored afterwards) and without gradients.

    Texts are batched in order of length, so a batch pads only to its own longest text, and encoded under
    bf16 autocast where the device has bf16 in hardware (`native_bf16`): that halves the time and leaves the
    nearest name unchanged in practice. Elsewhere they are encoded in fp32, which is faster there.
    """
    was_training = model.training
    if was_training:  # walking the modules costs a few ms a call: only when there is a mode to change
        model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    vectors = torch.empty(len(texts), model.config.hidden_size)
    with torch.inference_mode(), torch.autocast(model.device.type, torch.bfloat16, native_bf16(model.device)):
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = encode(tokenizer, [texts[i] for i in chunk], max_length).to(model.device)
            vectors[chunk] = pool(model, batch).float().cpu()
    if was_training:
        model.train()
    return vectors.clone()  # a normal tensor, not an inference-mode one
