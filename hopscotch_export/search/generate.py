"""Calibration data written by the model itself, so a search needs no data set.

The paper calibrates on the model's own answers (self-distillation); without ``--data`` we
do the same on a small, varied prompt set shipped with the package (``prompts.txt``). A
base model has no chat template to ask it questions with: it continues built-in text
openings instead (``openings.txt``), and calibrates on that plain text. Text is sampled
with a fixed seed, so the same seed gives the same data on one device.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from importlib import resources
from typing import Any

import torch

from ..text_sources import Record

TEMPERATURE = 0.7
TOP_P = 0.9
PROMPTS = "hopscotch_export/search/prompts.txt"
OPENINGS = "hopscotch_export/search/openings.txt"
BASE_MODEL_NOTICE = (
    "this model's tokenizer has no chat template (a base model): it continues built-in text "
    "openings as plain-text calibration data; pass --data for your own"
)


def builtin_prompts() -> list[str]:
    """The shipped chat prompts, one per non-empty line."""
    return _lines("prompts.txt")


def builtin_openings() -> list[str]:
    """The shipped plain-text openings for base models, one per non-empty line."""
    return _lines("openings.txt")


def _lines(name: str) -> list[str]:
    text = resources.files("hopscotch_export.search").joinpath(name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the model can be asked questions as a chat (base models cannot)."""
    return getattr(tokenizer, "chat_template", None) is not None


def describe_generation(tokenizer: Any, seed: int) -> dict[str, Any]:
    """The provenance of :func:`generated_records` for this tokenizer: chats or plain text."""
    if has_chat_template(tokenizer):
        return {"kind": "generated", "prompts": PROMPTS, "seed": seed}
    return {"kind": "generated-text", "openings": OPENINGS, "seed": seed}


def generated_records(
    model: Any, tokenizer: Any, *, seed: int, max_new_tokens: int, batch_size: int, device: torch.device
) -> Iterator[Record]:
    """Endless records written by ``model``: ``[user, assistant]`` chats answering the
    prompts, or, without a chat template, plain texts continuing the openings. The prompts
    come in a seeded order, cycled; batches are generated only as the consumer asks for more."""
    chat = has_chat_template(tokenizer)
    starts = builtin_prompts() if chat else builtin_openings()
    random.Random(seed).shuffle(starts)
    tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
    if tokenizer.pad_token is None:  # base Llama tokenizers have none; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    start = 0
    while True:
        batch = [starts[(start + j) % len(starts)] for j in range(batch_size)]
        if chat:
            texts = [
                tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                for p in batch
            ]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        else:  # the tokenizer's own BOS, as the model saw text in pretraining
            enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=True).to(device)
        torch.manual_seed(seed * 1_000_003 + start)
        with torch.no_grad():
            out = model.generate(
                **enc,
                do_sample=True,
                temperature=TEMPERATURE,
                top_p=TOP_P,
                top_k=0,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
            )
        for j, prompt in enumerate(batch):
            if chat:
                answer = tokenizer.decode(out[j, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()
                yield [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
            else:  # the opening and its continuation, as one text
                yield tokenizer.decode(out[j], skip_special_tokens=True).strip()
        start += batch_size
