"""One-shot block choices that Hopscotch is compared with (tests and bench/search.py).

- LLM-Drop ("What Matters in Transformers? Not All Attention Is Needed", He et al. 2024):
  skip the attention blocks whose output ``h = x + Attn(Norm(x))`` is most similar (mean
  token cosine) to their input ``x``.
- ShortGPT (Men et al. 2024): Block Influence ``BI = 1 - cos(in, out)``. Measured on the
  attention block it ranks blocks exactly as LLM-Drop does, so we measure it as ShortGPT
  does, on the whole decoder layer, and skip the attention of the lowest-BI layers.
- Random: a seeded uniform choice among the candidates.
- NBL (Neural Block Linearization, LIONS-EPFL): replace by a linear map the attention
  blocks that a linear map fits best. NBL ranks blocks by a bound from the canonical
  correlations of the block's input and output; we rank them by what that bound stands
  for, the relative error of the ridge fit (``linear.Fit.error``, on training sequences
  the map was not fitted on), and keep the closed-form maps, each fitted on the unmodified
  model's inputs as NBL does.

All four look at the unmodified model once; none trains anything.
"""

from __future__ import annotations

import random
from typing import Any

import torch
import torch.nn.functional as F

from ..decoder_stack import Stack
from ..errors import HopscotchError
from ..torch_plan import BranchScales
from .calibration import Calibration
from .linear import Fit, fit_maps
from .objective import batches


@torch.no_grad()
def similarities(stack: Stack, calib: Calibration, batch_size: int) -> tuple[list[float], list[float]]:
    """Per layer, mean token cosine of (input, after attention) and (input, layer output)."""
    n = stack.n_layers
    attn_cos, layer_cos = [0.0] * n, [0.0] * n
    after_attn: dict[int, torch.Tensor] = {}

    def grab(i: int) -> Any:
        def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            after_attn[i] = args[0]  # post_attention_layernorm reads h = x + Attn(Norm(x))

        return hook

    handles = [
        layer.post_attention_layernorm.register_forward_pre_hook(grab(i)) for i, layer in enumerate(stack.layers)
    ]
    tokens = 0
    try:
        for rows in batches(calib.train_ids.shape[0], batch_size):
            inputs, out, _ = stack.layer_inputs(calib.train_ids[rows])
            outputs = inputs[1:] + [out]
            for i in range(n):
                x = inputs[i].float()
                attn_cos[i] += float(F.cosine_similarity(x, after_attn[i].float(), dim=-1).sum())
                layer_cos[i] += float(F.cosine_similarity(x, outputs[i].float().to(x.device), dim=-1).sum())
            tokens += inputs[0].shape[0] * inputs[0].shape[1]
    finally:
        for h in handles:
            h.remove()
    return [c / tokens for c in attn_cos], [c / tokens for c in layer_cos]


def llm_drop(stack: Stack, calib: Calibration, candidates: list[int], n: int, batch_size: int) -> list[int]:
    """The ``n`` candidate attention blocks that change the hidden state least (LLM-Drop)."""
    attn_cos, _ = similarities(stack, calib, batch_size)
    return sorted(sorted(candidates, key=lambda i: (-attn_cos[i], i))[:n])


def shortgpt(stack: Stack, calib: Calibration, candidates: list[int], n: int, batch_size: int) -> list[int]:
    """The attention blocks of the ``n`` candidate layers with the lowest Block Influence."""
    _, layer_cos = similarities(stack, calib, batch_size)
    return sorted(sorted(candidates, key=lambda i: (1 - layer_cos[i], i))[:n])


def random_choice(candidates: list[int], n: int, seed: int) -> list[int]:
    return sorted(random.Random(seed).sample(candidates, n))


def linear_fits(stack: Stack, calib: Calibration, candidates: list[int], batch_size: int) -> dict[int, Fit]:
    """Each candidate's closed-form map on the unmodified model, with its held-out fit error."""
    ones = BranchScales(stack.n_layers).to(stack.device)
    fits = fit_maps(stack, ones, [], {}, candidates, calib, batch_size, "for the NBL baseline")
    if any(f.error is None for f in fits.values()):
        raise HopscotchError("the NBL baseline ranks fits on held-out sequences; use at least 4 --samples")
    return fits


def nbl(fits: dict[int, Fit], n: int) -> dict[int, torch.Tensor]:
    """The maps of the ``n`` layers of ``fits`` (from :func:`linear_fits`) that a linear map fits best."""
    chosen = sorted(fits, key=lambda c: (fits[c].error, c))[:n]
    return {c: fits[c].weight for c in sorted(chosen)}
