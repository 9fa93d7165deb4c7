"""Greedy, iterative block selection (paper section 3), with a training-free shortlist.

At each step the paper skips every remaining candidate in turn, trains all scales briefly
and keeps the candidate with the lowest loss: ``L - k`` training runs per step. We first
score every candidate without training, which costs one partial forward each: candidate
``c`` only changes layers ``c`` onwards, so its forward starts from the cached input of
layer ``c`` under the current plan. Scoring runs in two stages: every candidate on the
first ``score_samples`` sequences (a screen), then the ``RESCORE * shortlist`` best of them
on all training sequences, because a screen on a quarter of the data misranks candidates
whose losses differ by a few percent (measured on SmolLM2: docs/search-benchmark.md).
Only the ``shortlist`` best-scoring candidates get the paper's brief training, and the
best trained loss wins. ``shortlist=None`` trains every candidate: the paper's exhaustive
procedure, for comparison. Under torchrun every process scores and trains its share of a
step's candidates (``distributed.py``); the plan is the one a single process finds.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..errors import HopscotchError
from ..torch_plan import BranchScales, scaled_model
from . import distributed
from .calibration import Calibration
from .objective import Teacher, batches, loss_sum
from .options import SearchOptions
from ..stack import Stack
from .train import check_finite, mean_loss, train_scales

#: candidates per shortlisted one that the screen passes on to scoring on all training data
RESCORE = 4
#: Scoring needs no gradients, so it runs up to 4x the training batch, capped at this many
#: tokens per batch to bound the logits' memory (4 rows of 48 tokens -> 8: 25% faster on CPU).
SCORE_TOKENS = 2048


class Progress(Protocol):
    """Where a step reports its work (a rich progress bar, or nothing)."""

    def begin(self, label: str, total: int) -> None: ...

    def advance(self) -> None: ...


@dataclass
class Step:
    """One greedy step: what was tried, what it scored, what was kept."""

    chosen: int
    #: objective on all training sequences with the chosen block skipped, after brief training
    loss: float
    seconds: float
    #: training-free score of every remaining candidate on the screening sequences (empty
    #: for the exhaustive procedure)
    scores: dict[int, float] = field(default_factory=dict)
    #: training-free score on all training sequences, for the candidates the screen kept
    rescored: dict[int, float] = field(default_factory=dict)
    #: loss after brief training, for the candidates that were trained
    trained: dict[int, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        layers = sorted(set(self.scores) | set(self.trained))
        return {
            "chosen": self.chosen,
            "loss": self.loss,
            "seconds": round(self.seconds, 3),
            "candidates": [
                {"layer": i, "score": self.scores.get(i), "rescored": self.rescored.get(i),
                 "trained": self.trained.get(i)}
                for i in layers
            ],
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Step:
        cands = data["candidates"]

        def values(key: str) -> dict[int, float]:
            return {int(c["layer"]): float(c[key]) for c in cands if c.get(key) is not None}

        return cls(
            int(data["chosen"]), float(data["loss"]), float(data["seconds"]),
            values("score"), values("rescored"), values("trained"),
        )  # fmt: skip


@dataclass
class SearchState:
    """Everything a search needs to continue: the steps so far and the current scales."""

    scales: BranchScales
    steps: list[Step] = field(default_factory=list)

    @property
    def order(self) -> list[int]:
        return [s.chosen for s in self.steps]


class Selector:
    """Runs greedy steps on one model, calibration set and teacher."""

    def __init__(
        self, stack: Stack, calib: Calibration, teacher: Teacher, options: SearchOptions,
        candidates: list[int], progress: Progress,
    ) -> None:  # fmt: skip
        self.stack, self.calib, self.teacher, self.o = stack, calib, teacher, options
        self.candidates = candidates
        self.progress = progress
        self.n_score = options.scoring_samples
        #: training rows that screen every candidate, and the rest, that rescore the finalists
        self.screen = torch.arange(self.n_score)
        self.rest = torch.arange(self.n_score, options.samples)
        self.score_batch = max(
            options.batch_size, min(4 * options.batch_size, SCORE_TOKENS // options.seq_len)
        )

    def run(self, state: SearchState, on_step: Callable[[SearchState], None]) -> None:
        """Add steps to ``state`` until it skips ``options.skips`` blocks."""
        while len(state.steps) < self.o.skips:
            state.steps.append(self.step(state))
            on_step(state)

    def step(self, state: SearchState) -> Step:
        """One greedy step. Under torchrun each process scores and trains its share of the
        candidates; all of them then hold the same results and pick the same winner."""
        t0 = time.perf_counter()
        o, skip = self.o, state.order
        k = len(skip) + 1
        remaining = [c for c in self.candidates if c not in skip]
        exhaustive = o.shortlist is None or o.shortlist >= len(remaining)
        n_train = (o.epochs + 1) * len(batches(o.samples, o.batch_size))  # brief training, then its loss
        n_short = len(remaining) if exhaustive else int(o.shortlist)  # type: ignore[arg-type]
        n_finalists = min(len(remaining), RESCORE * n_short) if len(self.rest) else 0
        mine = distributed.share_size  # the progress bar counts this process's work
        n_scoring = 0 if exhaustive else (
            mine(len(remaining)) * len(self._batches(self.screen)) + mine(n_finalists) * len(self._batches(self.rest))
        )  # fmt: skip
        self.progress.begin(f"step {k}/{o.skips}", n_scoring + mine(n_short) * n_train)
        scores: dict[int, float] = {}
        rescored: dict[int, float] = {}
        shortlist = remaining
        if not exhaustive:
            scores, rescored = self._score(state.scales, skip, remaining, n_finalists, k)
            ranking = rescored or scores
            shortlist = sorted(ranking, key=lambda c: (ranking[c], c))[:n_short]
        trials: dict[int, BranchScales] = {}

        def train_share() -> dict[int, float]:
            losses: dict[int, float] = {}
            for c in distributed.share(shortlist):
                trials[c] = trial = copy.deepcopy(state.scales)
                where = f"at step {k} training the scales for skipping layer {c}"
                train_scales(
                    self.stack, trial, skip + [c], self.calib, self.teacher, o.objective,
                    lr=o.lr, epochs=o.epochs, batch_size=o.batch_size, seed=o.seed * 1_000_003 + k,
                    where=where, on_batch=self.progress.advance,
                )  # fmt: skip
                losses[c] = self._loss(trial, skip + [c], where)
            return losses

        trained = distributed.merged(train_share)
        chosen = min(shortlist, key=trained.__getitem__)  # of equal losses the first, on every process
        winner = distributed.shared(  # the scales, from the process that trained them
            lambda: {name: t.cpu() for name, t in trials[chosen].state_dict().items()},
            src=distributed.owner(shortlist.index(chosen)),
        )
        state.scales.load_state_dict(winner)
        with torch.no_grad():  # a skipped block's scale has no effect; 1 keeps the plan readable
            state.scales.attn[chosen] = 1.0
        return Step(chosen, trained[chosen], time.perf_counter() - t0, scores, rescored, trained)

    def _loss(self, scales: BranchScales, skip: list[int], where: str) -> float:
        """The objective on all training sequences: what the trained shortlist is compared on."""
        value = mean_loss(
            self.stack, scales, skip, self.calib, self.teacher, self.o.objective,
            n_rows=self.o.samples, batch_size=self.o.batch_size, where=where,
        )  # fmt: skip
        for _ in batches(self.o.samples, self.o.batch_size):
            self.progress.advance()
        return value

    def _score(
        self, scales: BranchScales, skip: list[int], remaining: list[int], n_finalists: int, k: int
    ) -> tuple[dict[int, float], dict[int, float]]:
        """Training-free scores: every candidate on the screening sequences, then the
        ``n_finalists`` best of them on all training sequences."""
        screen = distributed.merged(lambda: self._score_sums(scales, skip, distributed.share(remaining), self.screen))
        if any(count == 0 for _, count in screen.values()):
            raise HopscotchError(
                f"the first {self.n_score} calibration sequences have no target tokens; raise --score-samples"
            )
        scores = self._means(screen, k)
        if not n_finalists:
            return scores, {}
        finalists = sorted(remaining, key=lambda c: (scores[c], c))[:n_finalists]
        rest = distributed.merged(lambda: self._score_sums(scales, skip, distributed.share(finalists), self.rest))
        both = {c: (screen[c][0] + rest[c][0], screen[c][1] + rest[c][1]) for c in finalists}
        return scores, self._means(both, k)

    @torch.no_grad()
    def _score_sums(
        self, scales: BranchScales, skip: list[int], candidates: list[int], rows: torch.Tensor
    ) -> dict[int, tuple[float, int]]:
        """Summed objective of each candidate added to the current plan, untrained, on the
        training sequences ``rows``, with the token count; each candidate's forward starts
        at its own layer."""
        st, calib, objective = self.stack, self.calib, self.o.objective
        sums = dict.fromkeys(candidates, 0.0)
        count = 0
        for batch in self._batches(rows) if candidates else []:
            ids, targets = calib.train_ids[batch], calib.train_targets[batch]
            with scaled_model(st.model, scales, skip):
                inputs, _, at = st.layer_inputs(ids)
            for c in candidates:
                with scaled_model(st.model, scales, skip + [c]):
                    h = st.run(inputs[c], at, c)
                    s, n = loss_sum(objective, st.logits(st.final_hidden(h)), ids, targets, self.teacher, batch)
                sums[c] += float(s)
                self.progress.advance()
            count += n
        return {c: (sums[c], count) for c in candidates}

    def _batches(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """``rows`` in scoring batches."""
        return batches(len(rows), self.score_batch, rows)

    @staticmethod
    def _means(sums: dict[int, tuple[float, int]], k: int) -> dict[int, float]:
        scores = {c: total / count for c, (total, count) in sums.items()}
        for c, v in scores.items():
            check_finite(v, f"at step {k} scoring layer {c}")
        return scores

