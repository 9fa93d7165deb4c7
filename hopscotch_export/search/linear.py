"""Closed-form linear maps that stand in for removed attention blocks (ridge least squares).

llama.cpp's ``deci`` can replace a layer's attention by ``x + W · RMSNorm(x)``: one
``n_embd x n_embd`` matrix and no KV cache. The map of candidate layer ``c`` is fitted to
what the block it replaces did, under the plan as it stands: its inputs are layer ``c``'s
``input_layernorm``-ed hidden states as the modified model produces them (a map sees the
inputs the earlier replacements produce), its targets the original attention block's
outputs on those same inputs. The attention scale applies to the map's output as it did to
the block's, so the target is the block's unscaled output.

The normal equations are accumulated in float64 (``n_embd^2`` numbers a layer, however
many tokens) and solved with a ridge ``λ · mean(diag(XᵀX))``. On SmolLM2 a stronger ridge
did better than a weak one (the fit is data-limited), so λ is chosen among
:data:`RIDGES` by the error on the last quarter of the training sequences, with the map
fitted on the rest, and the map is then refitted on all of them. The final report's
held-out sequences are never used.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..decoder_stack import Positions, Stack, module_device
from ..errors import HopscotchError
from ..torch_plan import BranchScales, scaled_model
from .calibration import Calibration
from .objective import batches

#: ridge strengths, relative to the mean diagonal of XᵀX, that the held-out fit error
#: chooses from: SmolLM2 on 2k tokens mostly chose 1e-1; more data (or a block that really is
#: linear) wants less, down to a bias a float32 model cannot see
RIDGES = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
#: the ridge when there are too few training sequences to hold any out (under 4)
FALLBACK_RIDGE = 1e-1
#: float64 normal equations held at once; candidates beyond it are fitted in another pass
#: over the data (SmolLM2: all 29 in 0.3 GB; an 8B model: 4 layers a pass)
FIT_BYTES = 2 * 2**30


@dataclass
class Fit:
    """One layer's closed-form map, the ridge it was fitted with, and how well it fits."""

    #: float32 ``(hidden, hidden)`` in (out, in) order, on the layer's device
    weight: torch.Tensor
    ridge: float
    #: ``|XM - Y|^2 / |Y|^2`` on the last quarter of the training sequences, ``M`` fitted on
    #: the rest with ``ridge``: how linear the block is (the NBL baseline ranks blocks by it);
    #: None with too few sequences to hold any out
    error: float | None = None


class Moments:
    """Sums over tokens of ``xᵀx`` and ``xᵀy`` (float64), and of ``|y|^2``."""

    def __init__(self, hidden: int, device: torch.device) -> None:
        if device.type == "mps":  # no float64 there
            device = torch.device("cpu")
        self.xx = torch.zeros(hidden, hidden, dtype=torch.float64, device=device)
        self.xy = torch.zeros(hidden, hidden, dtype=torch.float64, device=device)
        self.yy = 0.0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.to(self.xx.device, torch.float64), y.to(self.xx.device, torch.float64)
        self.xx += x.T @ x
        self.xy += x.T @ y
        self.yy += float((y * y).sum())

    def solve(self, ridge: float, more: Moments | None = None) -> torch.Tensor:
        """``(XᵀX + λ mean(diag) I)⁻¹ XᵀY`` (in, out), over these sums plus ``more``'s."""
        xx = self.xx if more is None else self.xx + more.xx
        xy = self.xy if more is None else self.xy + more.xy
        eye = torch.eye(xx.shape[0], dtype=xx.dtype, device=xx.device)
        return torch.linalg.solve(xx + ridge * float(xx.diagonal().mean()) * eye, xy)

    def error(self, m: torch.Tensor) -> float:
        """``|XM - Y|^2`` over these tokens, from the sums alone."""
        return float((m * (self.xx @ m)).sum() - 2 * (m * self.xy).sum()) + self.yy


def fit_maps(
    stack: Stack, scales: BranchScales, skip: list[int], maps: Mapping[int, torch.Tensor], layers: list[int],
    calib: Calibration, batch_size: int, where: str, on_batch: Callable[[], None] | None = None,
    kv_groups: Mapping[int, Sequence[int]] | None = None,
) -> dict[int, Fit]:  # fmt: skip
    """The closed-form map of each of ``layers`` (kept layers), each added alone to the plan
    ``skip`` / ``maps`` / ``kv_groups`` (KV groups kept) / ``scales``, fitted to its whole
    original block: one pass over the training data per :func:`groups`."""
    plan = (skip, maps, kv_groups or {})
    fits: dict[int, Fit] = {}
    fit_rows, val_rows = fit_and_ridge_rows(calib.train_ids.shape[0])
    for group in groups(layers, stack.config.hidden_size):
        moments = _moments(stack, scales, plan, group, calib, fit_rows, batch_size, on_batch)
        held: dict[int, Moments] = {}
        if len(val_rows):
            held = _moments(stack, scales, plan, group, calib, val_rows, batch_size, on_batch)
        for c in group:
            ridge, error = _ridge(moments[c], held.get(c))
            m = moments[c].solve(ridge, held.get(c))
            if not bool(torch.isfinite(m).all()):
                raise HopscotchError(
                    f"the linear map of layer {c} {where} is not finite; "
                    "run on --device cpu (float32) or use --replace skip"
                )
            fits[c] = Fit(m.T.to(module_device(stack.layers[c]), torch.float32).contiguous(), ridge, error)
    return fits


def fit_batches(n_layers: int, hidden: int, n_rows: int, batch_size: int) -> int:
    """Batches :func:`fit_maps` runs for ``n_layers`` layers (what a progress bar counts)."""
    fit_rows, val_rows = fit_and_ridge_rows(n_rows)
    per_pass = len(batches(len(fit_rows), batch_size)) + len(batches(len(val_rows), batch_size))
    return per_pass * len(groups(list(range(n_layers)), hidden))


def fit_and_ridge_rows(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Training rows that fit the maps, and the last quarter that chooses the ridge."""
    n_val = n // 4
    return torch.arange(n - n_val), torch.arange(n - n_val, n)


def groups(layers: list[int], hidden: int) -> list[list[int]]:
    """``layers`` in groups whose normal equations (fit and held-out sums) fit in :data:`FIT_BYTES`."""
    size = max(1, FIT_BYTES // (4 * 8 * hidden * hidden))
    return [layers[i : i + size] for i in range(0, len(layers), size)]


def _ridge(fit: Moments, held: Moments | None) -> tuple[float, float | None]:
    """The ridge of :data:`RIDGES` whose map, fitted on ``fit``, errs least on ``held``, and
    that error relative to ``held``'s ``|Y|^2``."""
    if held is None:
        return FALLBACK_RIDGE, None
    errors = [held.error(fit.solve(r)) for r in RIDGES]
    best = min(range(len(RIDGES)), key=errors.__getitem__)
    return RIDGES[best], errors[best] / max(held.yy, 1e-30)


@torch.no_grad()
def _moments(
    stack: Stack, scales: BranchScales, plan: tuple[list[int], Mapping[int, torch.Tensor], Mapping[int, Sequence[int]]],
    group: list[int],
    calib: Calibration, rows: torch.Tensor, batch_size: int, on_batch: Callable[[], None] | None,
) -> dict[int, Moments]:  # fmt: skip
    """Normal equations of each layer of ``group`` over the training sequences ``rows``,
    under ``plan`` (skips, maps, KV groups kept)."""
    hidden = stack.config.hidden_size
    sums = {c: Moments(hidden, module_device(stack.layers[c])) for c in group}
    last = max(group)
    for batch in batches(len(rows), batch_size, rows):
        inputs: dict[int, torch.Tensor] = {}
        with scaled_model(stack.model, scales, *plan):  # the plan as it stands
            h, at = stack.embed(calib.train_ids[batch])
            for i in range(last + 1):
                if i in sums:
                    inputs[i] = h
                if i < last:
                    h = stack.run(h, at, i, i + 1)
        for c in group:  # outside the plan: the original block, unscaled
            x, y = attention_io(stack, c, inputs[c], at)
            sums[c].add(x.flatten(0, -2), y.flatten(0, -2))
        if on_batch is not None:
            on_batch()
    return sums


def attention_io(stack: Stack, layer: int, h: torch.Tensor, at: Positions) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalised input and the output of ``layer``'s attention block, for the layer's
    input ``h``. Runs the whole layer, so that accelerate's hooks (on the layer) bring
    offloaded weights in."""
    seen: dict[str, torch.Tensor] = {}

    def grab(module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        seen["x"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        seen["y"] = output[0] if isinstance(output, tuple) else output

    handle = stack.layers[layer].self_attn.register_forward_hook(grab, with_kwargs=True)
    try:
        stack.run(h, at, layer, layer + 1)
    finally:
        handle.remove()
    return seen["x"], seen["y"]
