"""Apply a plan to a transformers model exactly as the converter folds it.

Each kept layer's attention output is multiplied by ``w_att[l]``, each MLP output by
``w_mlp[l]``; a skipped attention block is not computed at all (it outputs zeros, as a
``deci`` layer with head_count 0 does); a linear layer's attention block is replaced by
its map ``W`` applied to the normed input (as a ``deci`` layer with head_count_kv 0
does), scaled by ``w_att[l]`` like a kept block; a layer that keeps only some KV groups
has the query heads of the others zeroed before ``o_proj`` (as a ``deci`` layer whose
``head_count``/``head_count_kv`` name only the kept heads, whose rows alone are written).
The search trains these scales and maps;
the converter's tests use the same function for the torch reference, so both sides agree
by construction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .plan import Plan


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a causal LM of a registered family."""
    return model.model.layers  # type: ignore[union-attr,return-value]


class SkippedAttention(nn.Module):
    """Stands in for a removed attention block: contributes nothing, computes nothing."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        return torch.zeros_like(hidden_states), None


class LinearAttention(nn.Module):
    """Stands in for an attention block replaced by a map: ``normed_x @ W.T``, no KV cache.

    ``weight`` is the tensor given, not a copy, so a search that trains it sees the
    gradients; it is a registered parameter when given as one. It is cast to the input's
    device and dtype on the fly (a differentiable step), like the branch scales.
    """

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        return hidden_states @ self.weight.to(hidden_states.device, hidden_states.dtype).T, None


class BranchScales(nn.Module):
    """Trainable branch scales: shape (n_layers,) for layer, (n_layers, hidden) for channel."""

    def __init__(self, n_layers: int, hidden: int | None = None) -> None:
        super().__init__()
        shape = (n_layers,) if hidden is None else (n_layers, hidden)
        self.attn = nn.Parameter(torch.ones(shape))
        self.mlp = nn.Parameter(torch.ones(shape))

    @classmethod
    def from_plan(cls, plan: Plan) -> BranchScales:
        n, hidden = plan.model.n_layers, plan.model.hidden_size
        scales = cls(n, hidden if plan.granularity == "channel" else None)
        with torch.no_grad():
            for i in range(n):
                scales.attn[i] = torch.as_tensor(plan.attn[i], dtype=torch.float32)
                scales.mlp[i] = torch.as_tensor(plan.mlp[i], dtype=torch.float32)
        return scales

    @property
    def granularity(self) -> str:
        return "channel" if self.attn.dim() == 2 else "layer"

    def as_lists(self) -> tuple[list[Any], list[Any]]:
        """Per-layer entries for the plan file (float, or list of floats)."""
        return self.attn.detach().cpu().tolist(), self.mlp.detach().cpu().tolist()


@contextlib.contextmanager
def scaled_model(
    model: nn.Module,
    scales: BranchScales,
    skip: Iterable[int],
    linear: Mapping[int, torch.Tensor] | None = None,
    groups: Mapping[int, Sequence[int]] | None = None,
) -> Iterator[nn.Module]:
    """Within the block, ``model`` runs with ``skip`` removed, the attention of each layer
    of ``linear`` replaced by its map (a :class:`LinearAttention` holding that very tensor,
    (out, in) order), each layer of ``groups`` keeping only the KV groups it names, and
    ``scales`` applied (to linear layers as to kept ones).

    Gradients flow into ``scales`` and into maps that require them; the model's weights
    are untouched and its attention blocks restored on exit.
    """
    layers = decoder_layers(model)
    skip = set(skip)
    linear = dict(linear or {})
    groups = dict(groups or {})
    if skip & set(linear):
        raise ValueError(f"layers {sorted(skip & set(linear))} are both skipped and linear")
    if set(groups) & (skip | set(linear)):
        raise ValueError(f"layers {sorted(set(groups) & (skip | set(linear)))} cut KV groups but are not kept")
    originals = {i: layers[i].self_attn for i in skip | set(linear)}
    handles = []
    try:
        for i in skip:
            layers[i].self_attn = SkippedAttention()
        for i, weight in linear.items():
            layers[i].self_attn = LinearAttention(weight)
        for i, kept in groups.items():
            o_proj = layers[i].self_attn.o_proj
            handles.append(o_proj.register_forward_pre_hook(_keep_heads(head_mask(model.config, kept))))
        for i, layer in enumerate(layers):
            if i not in skip:
                handles.append(layer.self_attn.register_forward_hook(_scale_attn(scales, i)))
            handles.append(layer.mlp.register_forward_hook(_scale_mlp(scales, i)))
        yield model
    finally:
        for h in handles:
            h.remove()
        for i, attn in originals.items():
            layers[i].self_attn = attn


def apply_plan(model: nn.Module, plan: Plan) -> contextlib.AbstractContextManager[nn.Module]:
    """``with apply_plan(model, plan):`` runs the model as the converted GGUF would."""
    scales = BranchScales.from_plan(plan)
    param = next(model.parameters())
    scales.to(device=param.device)
    scales.requires_grad_(False)
    return scaled_model(model, scales, plan.skip, plan_maps(plan, param.device), plan.kv_groups)


def plan_maps(plan: Plan, device: torch.device | str = "cpu") -> dict[int, torch.Tensor]:
    """The plan's linear maps as float32 tensors on ``device``, for :func:`scaled_model`."""
    return {i: torch.tensor(plan.maps[i], device=device) for i in plan.linear}


def head_mask(config: Any, kept: Sequence[int]) -> torch.Tensor:
    """1 on the ``o_proj`` input channels of the query heads of the KV groups ``kept``, 0
    elsewhere: query head ``h`` reads KV head ``h // (n_heads / n_kv_heads)``."""
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    per_group = heads // kv
    mask = torch.zeros(heads, head_dim)
    for g in kept:
        mask[g * per_group : (g + 1) * per_group] = 1.0
    return mask.reshape(-1)


def _keep_heads(mask: torch.Tensor) -> Any:
    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = args[0]
        return (x * mask.to(x.device, x.dtype), *args[1:])

    return hook


def _scale_attn(scales: BranchScales, i: int) -> Any:
    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        out = output[0] if isinstance(output, tuple) else output
        scaled = out * scales.attn[i].to(out.device, out.dtype)  # layers may sit on other GPUs
        return (scaled, *output[1:]) if isinstance(output, tuple) else scaled

    return hook


def _scale_mlp(scales: BranchScales, i: int) -> Any:
    def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        return output * scales.mlp[i].to(output.device, output.dtype)

    return hook
