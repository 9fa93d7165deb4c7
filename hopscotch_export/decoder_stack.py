"""Run a causal LM's decoder one layer at a time: embed, layer ``i``, head.

The search scores a candidate by restarting the forward pass at the candidate's layer from
a cached hidden state (nothing before it changes), so it needs the decoder as separate
steps: embed, layer ``i``, head. This mirrors ``LlamaModel.forward`` / ``Qwen2Model.forward``
without a KV cache (and ``GraniteModel.forward``'s constants on the embedding and the logits,
from the family); the plan's skips and scales still come from ``torch_plan.scaled_model``,
whose hooks sit on the same layer modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from .families import family_for


@dataclass
class Positions:
    """What every layer of one batch shares: positions, rotary tables and attention masks."""

    position_ids: torch.Tensor
    rotary: tuple[torch.Tensor, torch.Tensor]
    masks: dict[str, Any]


class Stack:
    """Embedding, decoder layers and head of a causal LM of a registered family, callable piecewise."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.body = model.model  # type: ignore[union-attr]
        self.layers: nn.ModuleList = self.body.layers
        self.config = model.config  # type: ignore[union-attr]
        self.device = module_device(self.body.embed_tokens)
        #: where ``lm_head`` runs (another GPU than the embedding under a device map)
        self.head_device = module_device(model.lm_head)  # type: ignore[union-attr]
        self.layer_types: list[str] = list(
            getattr(self.config, "layer_types", None) or ["full_attention"] * len(self.layers)
        )
        # the constants the model's own forward applies around its layers (Granite's multipliers):
        # read here only, and applied by embed() and logits(), and by verify's layer-by-layer parity
        folded = family_for(type(model).__name__).folded_scales(self.config.to_dict())
        self.embed_scale, self.head_scale = folded.get("token_embd", 1.0), folded.get("output", 1.0)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def embed(self, ids: torch.Tensor) -> tuple[torch.Tensor, Positions]:
        """Token embeddings of ``ids`` (no padding: every row is a full packed sequence)."""
        h = self.body.embed_tokens(ids.to(self.device))
        h = h if self.embed_scale == 1.0 else h * self.embed_scale
        return h, self.positions(h)

    def positions(self, h: torch.Tensor) -> Positions:
        """Positions, rotary tables and masks for hidden states ``h`` (batch, tokens, hidden).

        Separate from :meth:`embed` so that a caller that embeds by itself (verify's
        layer-by-layer parity reads only the embedding rows it needs) runs the same layers.
        """
        pos = torch.arange(h.shape[1], device=h.device).unsqueeze(0)
        kwargs = dict(config=self.config, inputs_embeds=h, attention_mask=None, cache=None, position_ids=pos)
        masks: dict[str, Any] = {"full_attention": create_causal_mask(**kwargs)}
        if "sliding_attention" in self.layer_types:
            masks["sliding_attention"] = create_sliding_window_causal_mask(**kwargs)
        return Positions(pos, self.body.rotary_emb(h, pos), masks)

    def run(self, h: torch.Tensor, at: Positions, start: int, stop: int | None = None) -> torch.Tensor:
        """Layers ``start`` .. ``stop - 1`` applied to ``h``, the input of layer ``start``."""
        for i in range(start, self.n_layers if stop is None else stop):
            h = self.layers[i](
                h,
                attention_mask=at.masks[self.layer_types[i]],
                position_ids=at.position_ids,
                position_embeddings=at.rotary,
            )
        return h

    def layer_inputs(self, ids: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, Positions]:
        """The input of every layer and the last layer's output, for one batch."""
        h, at = self.embed(ids)
        inputs = []
        for i in range(self.n_layers):
            inputs.append(h)
            h = self.run(h, at, i, i + 1)
        return inputs, h, at

    def final_hidden(self, h: torch.Tensor) -> torch.Tensor:
        """The normalised last hidden state: what ``lm_head`` reads."""
        return self.body.norm(h)

    def logits(self, final_hidden: torch.Tensor) -> torch.Tensor:
        logits = self.model.lm_head(final_hidden)  # type: ignore[union-attr]
        return logits if self.head_scale == 1.0 else logits * self.head_scale  # type: ignore[no-any-return]

    def forward_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """The whole model on ``ids``: what ``model(ids).logits`` returns."""
        h, at = self.embed(ids)
        return self.logits(self.final_hidden(self.run(h, at, 0)))


def module_device(module: nn.Module) -> torch.device:
    """Where ``module`` computes: accelerate's execution device when it dispatched the
    module (offloaded weights rest on ``meta``), else where its weights are."""
    hook = getattr(module, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    if device is not None:
        return torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
    return next(module.parameters()).device
