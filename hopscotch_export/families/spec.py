"""``ModelSpec``: a source model's hyper-parameters, as both torch and llama.cpp need them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import SourceError
from . import family_for
from .base import Family, rope_scaling_of


@dataclass(frozen=True)
class ModelSpec:
    """Hyper-parameters of a source model, read through its family."""

    family: type[Family]
    n_layers: int
    hidden_size: int
    intermediate_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_eps: float
    rope_theta: float
    #: the context the exported file declares (a sliding window may limit it: ``notice``)
    context_length: int
    tie_embeddings: bool
    attention_bias: bool = False
    mlp_bias: bool = False
    #: Hugging Face ``rope_scaling`` dict (Llama 3 style), or None.
    rope_scaling: dict[str, Any] | None = None
    #: what the user should know about how this model is held (e.g. a limited context)
    notice: str | None = None
    #: constants the converter folds into tensor rows (:meth:`Family.folded_scales`)
    folded: dict[str, float] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return self.family.name()

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any], where: str = "config.json") -> ModelSpec:
        """Read a Hugging Face ``config.json`` dict."""
        archs = cfg.get("architectures") or [cfg.get("model_type", "unknown")]
        family = family_for(archs[0], where)
        family.check_config(cfg, where)
        try:
            n_heads = cfg["num_attention_heads"]
            hidden = cfg["hidden_size"]
            rope_theta = cfg.get("rope_theta")
            if rope_theta is None:  # transformers 5 moves it into rope_parameters
                rope_theta = (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)
            context, notice = family.context_length(cfg, where)
            spec = cls(
                family=family,
                n_layers=cfg["num_hidden_layers"],
                hidden_size=hidden,
                intermediate_size=cfg["intermediate_size"],
                n_heads=n_heads,
                n_kv_heads=cfg.get("num_key_value_heads") or n_heads,
                head_dim=cfg.get("head_dim") or hidden // n_heads,
                vocab_size=cfg["vocab_size"],
                rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                rope_theta=float(rope_theta),
                context_length=context,
                tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                attention_bias=family.qkv_bias or bool(cfg.get("attention_bias", False)),
                mlp_bias=bool(cfg.get("mlp_bias", False)),
                rope_scaling=rope_scaling_of(cfg),
                notice=notice,
                folded=family.folded_scales(cfg),
            )
        except KeyError as e:
            raise SourceError(f"config.json lacks {e}; add it or re-download the complete model folder") from None
        family.check_spec(spec, where)
        return spec
