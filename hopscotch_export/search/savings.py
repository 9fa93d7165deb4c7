"""What each removed attention block saves at inference, and what it cost in loss.

Recorded per block in the plan's provenance, so that a user weighing ``skip`` against
``linear`` sees both sides: a skipped block and a linear one free the same KV cache (the
``deci`` linear layer has no KV heads), the linear one keeps an ``n_embd^2`` matrix
product a token.
"""

from __future__ import annotations

from typing import Any

from .greedy import LINEAR, Step

#: bytes of one cached K or V number (llama.cpp's default f16 cache)
KV_BYTES = 2


def block_savings(config: Any, kind: str) -> dict[str, int]:
    """Per token: KV cache bytes, FLOPs of the projections (2 per multiply-add; a linear
    block's map subtracted), and FLOPs per token of context of the attention itself."""
    hidden, heads = config.hidden_size, config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    projections = 2 * hidden * head_dim * (2 * heads + 2 * kv_heads)  # q, o and k, v
    return {
        "kv_bytes_per_token": 2 * kv_heads * head_dim * KV_BYTES,
        "flops_per_token": projections - (2 * hidden * hidden if kind == LINEAR else 0),
        "attention_flops_per_context_token": 4 * heads * head_dim,  # q·k and the weighted sum of v
    }


def blocks(steps: list[Step], config: Any, original_loss: float) -> list[dict[str, Any]]:
    """Each removed block, in step order: its kind, what it saves, the training loss with it
    removed and how much that added to the previous step's (the first: to the original model's)."""
    rows, before = [], original_loss
    for s in steps:
        rows.append({"layer": s.chosen, "kind": s.kind, **block_savings(config, s.kind),
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
