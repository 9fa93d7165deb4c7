"""The source model under a plan, in float32, holding one decoder layer's weights at a time.

The parity check needs torch's logits for a few windows, and loading the whole model in
float32 for that would take 32 GB for an 8B model. Instead (the sequential scheme of
llm-compressor) the transformers model is built as a skeleton with no weights, and every
window's hidden state goes through layer 0, then layer 1, ..., each layer's weights read
from the source just before and dropped just after. The embedding is read only at the
window tokens' rows and the head in chunks of :data:`HEAD_ROWS` rows, so neither is ever
whole in float32. The plan is applied by :func:`torch_plan.scaled_model`, the function
the search trains through: a skipped attention block is not computed, and its weights are
not even read; a linear layer's map comes from the plan, its source attention weights
are not read either; a layer that keeps only some KV groups has the other groups' query
heads zeroed before ``o_proj``, as in the whole model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..decoder_stack import Positions, Stack
from ..errors import HopscotchError
from ..plan import Plan
from ..sources import ModelSource, SourceTensor
from ..torch_plan import BranchScales, LinearAttention, plan_maps, scaled_model

#: Rows of the output head multiplied at once: 8192 x 4096 float32 is 128 MiB for an 8B model.
HEAD_ROWS = 8192

_EMBED, _HEAD = "model.embed_tokens.weight", "lm_head.weight"


def planned_logits(
    source: ModelSource, plan: Plan, windows: Sequence[Sequence[int]], n_vocab: int,
    advance: Callable[[], None] = lambda: None,
) -> Iterator[np.ndarray]:
    """float32 logits (tokens x ``n_vocab``) of each window, one window at a time, as
    ``apply_plan(model, plan)`` would give them; ``advance`` is called after each layer."""
    final, head_scale = _final_hidden(source, plan, windows, advance)
    head = source.hf_tensor(_EMBED if source.spec.tie_embeddings else _HEAD)
    if head.shape[0] < n_vocab:
        raise HopscotchError(
            f"the source has a vocabulary of {head.shape[0]}, the GGUF {n_vocab}: not the same model; "
            "pass the --source the GGUF was converted from"
        )
    for h in final:
        yield _logits(h, head, n_vocab) * head_scale  # Granite's logits scaling


def _final_hidden(
    source: ModelSource, plan: Plan, windows: Sequence[Sequence[int]], advance: Callable[[], None]
) -> tuple[list[torch.Tensor], float]:
    """The normalised last hidden state of every window (what the head reads), and the
    constant the model's forward applies to the logits (Granite's logits scaling)."""
    stack = Stack(source.skeleton(torch.float32).eval())
    # one batch per window length (they share positions and masks); usually a single batch
    lengths = sorted({len(w) for w in windows})
    batches = [torch.tensor([list(w) for w in windows if len(w) == n]) for n in lengths]
    embedded = [h * stack.embed_scale for h in _embed_rows(source, batches)]  # Granite's embedding multiplier
    state: list[tuple[torch.Tensor, Positions]] = [(h, stack.positions(h)) for h in embedded]
    scales = BranchScales.from_plan(plan).requires_grad_(False)
    with scaled_model(stack.model, scales, plan.skip, plan_maps(plan), plan.kv_groups), torch.no_grad():
        for i in range(stack.n_layers):
            with _weights(stack.layers[i], source, f"model.layers.{i}."):
                state = [(stack.run(h, at, i, i + 1), at) for h, at in state]
            advance()
        with _weights(stack.body.norm, source, "model.norm."):
            finals = [stack.final_hidden(h) for h, _ in state]
    by_length = {n: iter(f) for n, f in zip(lengths, finals)}
    return [next(by_length[len(w)]) for w in windows], stack.head_scale


@contextlib.contextmanager
def _weights(module: nn.Module, source: ModelSource, prefix: str) -> Iterator[None]:
    """Within the block ``module`` holds its float32 weights from ``source``; back to ``meta`` after.

    Only the source parameters ``module`` has now are read: under ``scaled_model`` a
    skipped layer's attention is a parameter-free stand-in, so its weights stay on disk,
    and a linear layer's map belongs to the plan (it is neither read nor dropped).
    """
    names = _source_parameters(module)
    state = source.hf_state([prefix + n for n in names])
    module.load_state_dict({n[len(prefix):]: t for n, t in state.items()}, strict=False, assign=True)
    try:
        yield
    finally:
        for name in names:  # drops the weights
            owner, _, leaf = name.rpartition(".")
            sub = module.get_submodule(owner)
            loaded = getattr(sub, leaf)
            setattr(sub, leaf, nn.Parameter(loaded.to("meta"), requires_grad=loaded.requires_grad))


def _source_parameters(module: nn.Module) -> list[str]:
    """Names of ``module``'s parameters that come from the source: all but the plan's maps."""
    plan_owned = [name + "." for name, m in module.named_modules() if isinstance(m, LinearAttention)]
    return [n for n, _ in module.named_parameters() if not any(n.startswith(p) for p in plan_owned)]


def _embed_rows(source: ModelSource, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """Token embeddings of each batch, reading only the embedding rows of tokens that occur."""
    table = source.hf_tensor(_EMBED)
    used = np.unique(np.concatenate([b.numpy().ravel() for b in batches]))
    if used[-1] >= table.shape[0]:
        raise HopscotchError(f"token id {used[-1]} is outside the source's vocabulary of {table.shape[0]}")
    runs = np.split(used, np.flatnonzero(np.diff(used) != 1) + 1)  # consecutive ids: one read
    rows = torch.from_numpy(np.concatenate([table.rows(int(r[0]), int(r[-1]) + 1) for r in runs]))
    return [rows[torch.from_numpy(np.searchsorted(used, b.numpy()))] for b in batches]


def _logits(h: torch.Tensor, head: SourceTensor, n_vocab: int) -> np.ndarray:
    """``h @ head[:n_vocab].T`` with the head read :data:`HEAD_ROWS` rows at a time."""
    out = np.empty((h.shape[0], n_vocab), dtype=np.float32)
    for start in range(0, n_vocab, HEAD_ROWS):
        stop = min(start + HEAD_ROWS, n_vocab)
        rows = torch.from_numpy(np.require(head.rows(start, stop), np.float32, "C"))
        out[:, start:stop] = (h @ rows.T).numpy()
    return out
