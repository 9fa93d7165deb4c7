"""What the search minimises, and the held-out report.

``kl``: KL(teacher || student) per token, where the teacher is the unmodified model. The
teacher is run once. For training tokens we keep its top-``TOPK`` log-probabilities and
score the student on those ``TOPK`` tokens plus one "everything else" bucket: the exact KL
between the two distributions coarsened to ``TOPK + 1`` outcomes. That costs no extra
``lm_head`` per loss (SmolLM2's 49k-word head is a fifth of its forward pass) and little
memory (a full-vocabulary cache of 65k tokens would take 6 GB in bf16). For held-out
tokens, which are scored only a few times, we keep the teacher's final hidden state
(``hidden_size`` numbers a token) and recompute its logits, so the reported KL is exact.

``ce``: cross-entropy of the data's next token, on the tokens ``Calibration`` marks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..decoder_stack import Stack
from ..errors import HopscotchError
from .calibration import Calibration

TOPK = 64


@dataclass
class Teacher:
    """The unmodified model's outputs on the calibration data."""

    #: ``[samples, seq_len, TOPK]`` token ids and log-probabilities (``kl`` objective only)
    topk_ids: torch.Tensor | None
    topk_logp: torch.Tensor | None
    #: ``[heldout, seq_len, hidden]`` final normalised hidden states
    held_hidden: torch.Tensor


@torch.no_grad()
def teacher_topk(
    stack: Stack, calib: Calibration, batch_size: int, cache: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The unmodified model's top-``TOPK`` token ids and log-probabilities on the training
    sequences: what the ``kl`` objective compares against. Kept on ``cache`` (default:
    where the logits are), the CPU when it is too large for a GPU."""
    ids, logps = [], []
    for rows in batches(calib.train_ids.shape[0], batch_size):
        logp = stack.forward_logits(calib.train_ids[rows]).float().log_softmax(-1)
        top = logp.topk(TOPK, dim=-1)
        ids.append(top.indices.to(cache or top.indices.device))
        logps.append(top.values.to(cache or top.values.device))
    _check_finite(logps)
    return torch.cat(ids), torch.cat(logps)


@torch.no_grad()
def teacher_heldout(
    stack: Stack, calib: Calibration, batch_size: int, cache: torch.device | None = None
) -> torch.Tensor:
    """The unmodified model's final hidden states on the held-out sequences (for the report)."""
    hidden = []
    for rows in batches(calib.held_ids.shape[0], batch_size):
        h, at = stack.embed(calib.held_ids[rows])
        final = stack.final_hidden(stack.run(h, at, 0))
        hidden.append(final.to(cache or final.device))
    _check_finite(hidden)
    return torch.cat(hidden)


def _check_finite(outputs: list[torch.Tensor]) -> None:
    if not all(bool(torch.isfinite(t).all()) for t in outputs):
        raise HopscotchError(
            "the original model gives non-finite outputs on the calibration data; "
            "if it ran in bf16, try --device cpu (float32)"
        )


def batches(n: int, size: int, order: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Row indices ``0..n-1`` (or ``order``) in slices of ``size``."""
    rows = torch.arange(n) if order is None else order
    return list(rows.split(size))


def loss_sum(
    objective: str, logits: torch.Tensor, ids: torch.Tensor, targets: torch.Tensor,
    teacher: Teacher, rows: torch.Tensor,
) -> tuple[torch.Tensor, int]:  # fmt: skip
    """Summed loss over a batch of training rows and the number of tokens it covers."""
    if objective == "kl":
        assert teacher.topk_ids is not None and teacher.topk_logp is not None
        dev = logits.device
        kl = topk_kl(logits, teacher.topk_ids[rows].to(dev), teacher.topk_logp[rows].to(dev))
        return kl.sum(), kl.numel()
    return ce_sum(logits, ids.to(logits.device), targets.to(logits.device))


def topk_kl(logits: torch.Tensor, t_ids: torch.Tensor, t_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(teacher || student) over the teacher's top-k tokens plus the rest."""
    s_logp = logits.float().log_softmax(-1).gather(-1, t_ids)
    t_p = t_logp.exp()
    t_rest = (1 - t_p.sum(-1)).clamp_min(1e-12)
    s_rest = (1 - s_logp.exp().sum(-1)).clamp_min(1e-12)
    return (t_p * (t_logp - s_logp)).sum(-1) + t_rest * (t_rest.log() - s_rest.log())


def ce_sum(logits: torch.Tensor, ids: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy on the positions whose next token is a target."""
    mask = targets[:, 1:]
    ce = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
    return (ce * mask.flatten()).sum(), int(mask.sum())


@torch.no_grad()
def heldout_metrics(stack: Stack, calib: Calibration, teacher: Teacher, batch_size: int) -> dict[str, float]:
    """Exact KL to the unmodified model, cross-entropy and perplexity on held-out tokens,
    for the model as the caller has set it up (e.g. inside ``scaled_model``)."""
    kl_sum = ce_total = 0.0
    kl_n = ce_n = 0
    for rows in batches(calib.held_ids.shape[0], batch_size):
        logits = stack.forward_logits(calib.held_ids[rows]).float()
        t_hidden = teacher.held_hidden[rows].to(stack.head_device)
        t_logp = stack.logits(t_hidden).float().log_softmax(-1).to(logits.device)
        s_logp = logits.log_softmax(-1)
        kl_sum += float((t_logp.exp() * (t_logp - s_logp)).sum())
        kl_n += logits.shape[0] * logits.shape[1]
        s, n = ce_sum(logits, calib.held_ids[rows].to(logits.device), calib.held_targets[rows].to(logits.device))
        ce_total += float(s)
        ce_n += n
    ce = ce_total / max(ce_n, 1)
    return {"kl": kl_sum / kl_n, "ce": ce, "ppl": float(torch.tensor(ce).exp())}
