"""Tokenised calibration data: fixed-length packed sequences and their CE targets.

Records are tokenised and packed back to back into ``seq_len`` chunks, so no batch needs
padding. Held-out chunks start at a fresh record, after the training chunks, so no
held-out token is seen in training. ``targets`` marks the tokens the ``ce`` objective
predicts: every token of plain text, only the assistant turns (content and end-of-turn
marker) of a chat.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import HopscotchError
from ..text_sources import Message, Record


@dataclass
class Calibration:
    """Training and held-out token chunks, each ``[n, seq_len]``."""

    train_ids: torch.Tensor
    train_targets: torch.Tensor
    held_ids: torch.Tensor
    held_targets: torch.Tensor
    #: the records the chunks came from, in order (saved when the model wrote them)
    records: list[Record] = field(repr=False)

    @property
    def hash(self) -> str:
        """Changes whenever any token or target changes: a resumed search checks it."""
        h = hashlib.sha256()
        for t in (self.train_ids, self.train_targets, self.held_ids, self.held_targets):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        return {
            "records": len(self.records),
            "samples": int(self.train_ids.shape[0]),
            "heldout": int(self.held_ids.shape[0]),
            "seq_len": int(self.train_ids.shape[1]),
            "train_target_tokens": int(self.train_targets.sum()),
            "heldout_target_tokens": int(self.held_targets.sum()),
            "hash": self.hash,
        }


def build_calibration(
    records: Iterable[Record], tokenizer: Any, samples: int, heldout: int, seq_len: int,
    on_chunk: Callable[[], None] = lambda: None,
) -> Calibration:
    """Pack ``samples`` training and ``heldout`` held-out chunks; raise if the data runs out.
    ``on_chunk`` is called as each chunk is filled (records may be written by the model as
    they are asked for, which is the slow part)."""
    used: list[Record] = []

    def documents() -> Iterator[tuple[list[int], list[bool]]]:
        for record in records:
            used.append(record)
            yield tokenize_record(tokenizer, record)

    docs = documents()
    train = _fill(docs, samples, seq_len, on_chunk)
    held = _fill(docs, heldout, seq_len, on_chunk)
    if len(train) < samples or len(held) < heldout:
        total = len(train) + len(held)
        raise HopscotchError(
            f"the calibration data gives only {total} chunks of {seq_len} tokens, "
            f"--samples {samples} + --heldout {heldout} are needed; lower them or --seq-len, or add data"
        )
    train_ids, train_targets = _stack(train)
    held_ids, held_targets = _stack(held)
    if not train_targets[:, 1:].any():
        raise HopscotchError("the calibration data has no tokens to predict (no assistant turns in the chats)")
    return Calibration(train_ids, train_targets, held_ids, held_targets, used)


def tokenize_record(tokenizer: Any, record: Record) -> tuple[list[int], list[bool]]:
    """Token ids and CE targets of one record (plain text ends with EOS)."""
    if isinstance(record, str):
        ids = list(tokenizer(record, add_special_tokens=True)["input_ids"])
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        return ids, [True] * len(ids)
    text, spans = render_chat(tokenizer, record)
    if not tokenizer.is_fast:
        raise HopscotchError("chat data needs a fast tokenizer (tokenizer.json) to locate assistant turns")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    targets = [any(a <= start < b for a, b in spans) for start, _ in enc["offset_mapping"]]
    return list(enc["input_ids"]), targets


def render_chat(tokenizer: Any, messages: list[Message]) -> tuple[str, list[tuple[int, int]]]:
    """The chat as the model's template writes it, and the character spans of its answers.

    An answer's span runs from the end of the prompt that asks for it (generation header
    included) to the end of the rendering that includes it, so it covers the end-of-turn
    marker: the model must learn where to stop, too.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise HopscotchError("chat data needs a tokenizer with a chat template; this model has none, use plain text")
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (text.startswith(upto) and upto.startswith(before)):
            raise HopscotchError(
                "this model's chat template rewrites earlier turns, so assistant turns cannot be located; "
                "use --objective kl"
            )
        spans.append((len(before), len(upto)))
    return text, spans


def save_records(records: list[Record], path: Path, force: bool) -> None:
    """Write records as JSON lines (a valid ``--data`` file: ``messages`` or ``text``)."""
    from ..files import write_text_atomic

    lines = [json.dumps({"messages": r} if isinstance(r, list) else {"text": r}, ensure_ascii=False) for r in records]
    write_text_atomic(path, "\n".join(lines) + "\n", force=force)


def _fill(
    docs: Iterator[tuple[list[int], list[bool]]], n: int, seq_len: int, on_chunk: Callable[[], None]
) -> list[tuple[list[int], list[bool]]]:
    """Up to ``n`` chunks from the next documents; the rest of the last document is dropped."""
    chunks: list[tuple[list[int], list[bool]]] = []
    ids: list[int] = []
    targets: list[bool] = []
    while len(chunks) < n:
        try:
            more_ids, more_targets = next(docs)
        except StopIteration:
            break
        ids += more_ids
        targets += more_targets
        while len(ids) >= seq_len and len(chunks) < n:
            chunks.append((ids[:seq_len], targets[:seq_len]))
            on_chunk()
            ids, targets = ids[seq_len:], targets[seq_len:]
    return chunks


def _stack(chunks: list[tuple[list[int], list[bool]]]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor(np.array([c[0] for c in chunks], dtype=np.int64))
    targets = torch.tensor(np.array([c[1] for c in chunks], dtype=bool))
    return ids, targets
