"""IBM Granite 3.x (``GraniteForCausalLM``): a Llama with four constant multipliers.

transformers scales the embeddings by ``embedding_multiplier``, each branch (attention,
MLP) by ``residual_multiplier`` before it joins the residual, takes ``attention_multiplier``
as the softmax scale instead of 1/sqrt(head_dim), and divides the logits by
``logits_scaling``. ``deci`` has none of them, so each is folded into the rows of the tensor
whose output it scales (rope turns pairs of channels within a head, so one factor on every
q row commutes with it). Granite ties its embeddings; the converter then writes the head as
its own ``output.weight``, since the embedding and the head fold different factors.

llama.cpp's own ``granite`` GGUFs keep the weights as they are and store the four as
``granite.embedding_scale``, ``granite.residual_scale``, ``granite.attention.scale`` and
``granite.logit_scale``; we read Granite from its Hugging Face folder only, and refuse
such a GGUF saying so (:attr:`Family.gguf_unread`).
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import SourceError
from .base import Family

_MULTIPLIERS = ("embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling")


class Granite(Family):
    hf_architectures = ("GraniteForCausalLM",)
    model_type = "granite"
    gguf_unread = {
        "granite": "llama.cpp's granite GGUFs keep Granite's four multipliers as keys (granite.embedding_scale, "
        "...), which this tool does not read; convert the model's Hugging Face folder or hub id instead"
    }

    @classmethod
    def check_config(cls, cfg: dict[str, Any], where: str) -> None:
        super().check_config(cfg, where)
        for key in _MULTIPLIERS:
            value = cfg.get(key, 1.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not value:
                raise SourceError(
                    f'{where}: "{key}" is {value!r}, expected a finite non-zero number; '
                    "correct it or re-download the model folder"
                )

    @classmethod
    def folded_scales(cls, cfg: dict[str, Any]) -> dict[str, float]:
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        residual = float(cfg.get("residual_multiplier", 1.0))
        return {
            "token_embd": float(cfg.get("embedding_multiplier", 1.0)),
            # deci's softmax scale is 1/sqrt(head_dim); Granite's is attention_multiplier
            "attn_q": float(cfg.get("attention_multiplier", 1.0)) * math.sqrt(head_dim),
            "attn_output": residual,
            "ffn_down": residual,
            "output": 1.0 / float(cfg.get("logits_scaling", 1.0)),
        }
