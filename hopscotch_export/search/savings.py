"""What each removed attention block (or KV group) saves at inference, and what it cost in loss.

Recorded per block in the plan's provenance, so that a user weighing ``skip`` against
``linear`` sees both sides: a skipped block and a linear one free the same KV cache (the
``deci`` linear layer has no KV heads), the linear one keeps an ``n_embd^2`` matrix
product a token.
"""

from __future__ import annotations

from typing import Any

from .greedy import Step
from .units import GROUP, LINEAR, kv_heads, replay

#: bytes of one cached K or V number (llama.cpp's default f16 cache)
KV_BYTES = 2


def block_savings(config: Any, kind: str, freed: int | None = None) -> dict[str, int]:
    """Per token, for a step that frees ``freed`` KV groups (default: a whole block's):
    KV cache bytes, FLOPs of the projections of those groups' heads (2 per multiply-add; a
    linear block's map subtracted), and FLOPs per token of context of their attention.
    A KV group is 1/n_kv of its block: its KV head and the query heads that share it."""
    hidden, heads = config.hidden_size, config.num_attention_heads
    kv = kv_heads(config)
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    freed = kv if freed is None else freed
    per_group = heads // kv
    projections = 2 * hidden * head_dim * (2 * per_group + 2) * freed  # q, o and k, v
    return {
        "kv_bytes_per_token": 2 * freed * head_dim * KV_BYTES,
        "flops_per_token": projections - (2 * hidden * hidden if kind == LINEAR else 0),
        "attention_flops_per_context_token": 4 * per_group * freed * head_dim,  # q·k and the weighted sum of v
    }


def blocks(steps: list[Step], config: Any, original_loss: float) -> list[dict[str, Any]]:
    """What each step removed, in step order: its kind (and KV group), what it saves, the
    training loss with it removed and how much that added to the previous step's (the
    first: to the original model's). A block step on a partly cut layer saves the rest."""
    rows, before = [], original_loss
    freed = replay(steps, kv_heads(config)).freed
    for s, f in zip(steps, freed):
        group = {"group": s.group} if s.kind == GROUP else {}
        rows.append({"layer": s.chosen, "kind": s.kind, **group, **block_savings(config, s.kind, f),
                     "loss": s.loss, "loss_added": s.loss - before})  # fmt: skip
        before = s.loss
    return rows


def model_flops_per_token(config: Any) -> int:
    """FLOPs per token of the whole model at short context (projections, MLPs and the
    head; the attention over the context grows with it and is left out), the whole that
    the blocks' ``flops_per_token`` are shares of."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    attention = block_savings(config, "skip")["flops_per_token"]
    mlp = 2 * 3 * hidden * config.intermediate_size  # gate, up, down
    return layers * (attention + mlp) + 2 * hidden * config.vocab_size
