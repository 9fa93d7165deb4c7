"""Calibration chats written by the model itself, so a search needs no data set.

The paper calibrates on the model's own answers (self-distillation); without ``--data`` we
do the same on a small, varied prompt set shipped with the package (``prompts.txt``).
Answers are sampled with a fixed seed, so the same seed gives the same data on one device.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from importlib import resources
from typing import Any

import torch

from .data import Record

TEMPERATURE = 0.7
TOP_P = 0.9


def builtin_prompts() -> list[str]:
    """The shipped prompts, one per non-empty line."""
    text = resources.files("hopscotch_export.search").joinpath("prompts.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def generated_chats(
    model: Any, tokenizer: Any, *, seed: int, max_new_tokens: int, batch_size: int, device: torch.device
) -> Iterator[Record]:
    """Endless ``[user, assistant]`` chats: the prompts in a seeded order, cycled, answered
    by ``model``; batches are generated only as the consumer asks for more."""
    prompts = builtin_prompts()
    random.Random(seed).shuffle(prompts)
    tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    start = 0
    while True:
        batch = [prompts[(start + j) % len(prompts)] for j in range(batch_size)]
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in batch
        ]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
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
            answer = tokenizer.decode(out[j, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()
            yield [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        start += batch_size
