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

A removed block is skipped (outputs nothing) or, with ``--replace linear|auto``, replaced
by a linear map of its normalised input (``linear.py``). A candidate is then tried as
each kind the step allows: a linear trial is screened and rescored with its closed-form
map, and its brief training trains the maps with the scales. Each kind has its own
finalists and shortlist, because an untrained skip is not comparable with a fitted map
(the map's fit is done, the skip's repair by its scales is not): with ``auto`` the best
of each kind are trained, and the lowest trained loss wins, a skip on ties (it saves
more). ``--max-linear`` bounds the linear steps; after it only skips are tried.

With ``auto`` the trained trials are compared on training sequences they were not fitted
or trained on: every step of an ``auto`` search fits, scores and trains on the first three
quarters of the training sequences and compares on the last quarter (as the ridge choice
holds out the last quarter of what it is given). A map has ``n_embd^2`` parameters that
fit a few hundred tokens far better than they generalise: on SmolLM2 with 384 training
tokens the trained loss of the best map was a fifth of the best skip's, yet its held-out
KL was higher, and an ``auto`` that compared training losses picked maps at every step
and ended worse than ``skip`` (docs/search-benchmark.md). The step's recorded loss is then
the last quarter's.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..errors import HopscotchError
from ..stack import Stack, module_device
from ..torch_plan import BranchScales, scaled_model
from . import distributed
from .calibration import Calibration
from .linear import Fit, fit_batches, fit_maps, split_rows
from .objective import Teacher, batches, loss_sum
from .options import SearchOptions
from .train import check_finite, mean_loss, train_scales

#: candidates per shortlisted one that the screen passes on to scoring on all training data
RESCORE = 4
#: Scoring needs no gradients, so it runs up to 4x the training batch, capped at this many
#: tokens per batch to bound the logits' memory (4 rows of 48 tokens -> 8: 25% faster on CPU).
SCORE_TOKENS = 2048

SKIP, LINEAR, AUTO = "skip", "linear", "auto"
#: a candidate layer tried as one kind of replacement
Trial = tuple[int, str]


class Progress(Protocol):
    """Where a step reports its work (a rich progress bar, or nothing)."""

    def begin(self, label: str, total: int) -> None: ...

    def advance(self) -> None: ...


@dataclass
class Losses:
    """What the candidates scored in one step as one kind of replacement, by layer."""

    #: training-free score on the screening sequences (empty for the exhaustive procedure)
    scores: dict[int, float] = field(default_factory=dict)
    #: training-free score on all training sequences, for the candidates the screen kept
    rescored: dict[int, float] = field(default_factory=dict)
    #: loss after brief training, for the candidates that were trained
    trained: dict[int, float] = field(default_factory=dict)


@dataclass
class Step:
    """One greedy step: what was tried, what it scored, what was kept."""

    chosen: int
    #: objective with the chosen block removed, after brief training, on all training
    #: sequences (``auto``: on their last quarter, which the step did not fit or train on)
    loss: float
    seconds: float
    #: how the chosen block was removed: ``skip`` or ``linear``
    kind: str = SKIP
    #: the candidates' losses by kind tried
    losses: dict[str, Losses] = field(default_factory=dict)
    #: the ridge of the chosen map's closed-form fit (``linear`` only)
    ridge: float | None = None

    @property
    def scores(self) -> dict[int, float]:
        """The chosen kind's screening scores."""
        return self.losses[self.kind].scores

    @property
    def rescored(self) -> dict[int, float]:
        return self.losses[self.kind].rescored

    @property
    def trained(self) -> dict[int, float]:
        return self.losses[self.kind].trained

    def to_json(self) -> dict[str, Any]:
        candidates = []
        for kind, ls in self.losses.items():
            for i in sorted(set(ls.scores) | set(ls.trained)):
                candidates.append({"layer": i, "kind": kind, "score": ls.scores.get(i),
                                   "rescored": ls.rescored.get(i), "trained": ls.trained.get(i)})  # fmt: skip
        return {
            "chosen": self.chosen,
            "kind": self.kind,
            "loss": self.loss,
            "seconds": round(self.seconds, 3),
            **({"ridge": self.ridge} if self.ridge is not None else {}),
            "candidates": candidates,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Step:
        """A recorded step; entries without a kind are skips (plans from before linear maps)."""
        losses: dict[str, Losses] = {}
        for c in data["candidates"]:
            ls = losses.setdefault(c.get("kind", SKIP), Losses())
            for key, values in (("score", ls.scores), ("rescored", ls.rescored), ("trained", ls.trained)):
                if c.get(key) is not None:
                    values[int(c["layer"])] = float(c[key])
        ridge = data.get("ridge")
        return cls(
            int(data["chosen"]), float(data["loss"]), float(data["seconds"]), data.get("kind", SKIP),
            losses, None if ridge is None else float(ridge),
        )  # fmt: skip


@dataclass
class SearchState:
    """Everything a search needs to continue: the steps so far, the current scales and maps."""

    scales: BranchScales
    steps: list[Step] = field(default_factory=list)
    #: the linear layers' maps: float32 (out, in), each on its layer's device
    maps: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def order(self) -> list[int]:
        """Every removed block, in the order the steps chose them."""
        return [s.chosen for s in self.steps]

    @property
    def skip(self) -> list[int]:
        """The skipped blocks (removed and not replaced), in step order."""
        return [s.chosen for s in self.steps if s.kind == SKIP]

    def with_trial(self, trial: Trial, fits: dict[int, Fit]) -> tuple[list[int], dict[int, torch.Tensor]]:
        """The plan's skips and maps with ``trial`` added (the maps are this state's tensors)."""
        c, kind = trial
        if kind == SKIP:
            return self.skip + [c], dict(self.maps)
        return self.skip, {**self.maps, c: fits[c].weight}


class Selector:
    """Runs greedy steps on one model, calibration set and teacher."""

    def __init__(
        self, stack: Stack, calib: Calibration, teacher: Teacher, options: SearchOptions,
        candidates: list[int], progress: Progress,
    ) -> None:  # fmt: skip
        self.stack, self.o = stack, options
        self.candidates = candidates
        self.progress = progress
        #: the sequences each step fits, scores and trains on, and those its trained trials
        #: are compared on: all training sequences, or with ``auto`` three quarters and the rest
        self.calib, self.teacher = calib, teacher
        self.judge = calib, teacher
        n_fit = len(split_rows(options.samples)[0])
        if options.replace == AUTO:  # options refuse auto with no held-out quarter
            self.calib, self.teacher = _part(calib, teacher, slice(0, n_fit))
            self.judge = _part(calib, teacher, slice(n_fit, None))
        self.n_rows = int(self.calib.train_ids.shape[0])
        self.n_score = min(options.scoring_samples, self.n_rows)
        #: training rows that screen every candidate, and the rest, that rescore the finalists
        self.screen = torch.arange(self.n_score)
        self.rest = torch.arange(self.n_score, self.n_rows)
        self.score_batch = max(
            options.batch_size, min(4 * options.batch_size, SCORE_TOKENS // options.seq_len)
        )

    def run(self, state: SearchState, on_step: Callable[[SearchState], None]) -> None:
        """Add steps to ``state`` until it removes ``options.skips`` blocks."""
        while len(state.steps) < self.o.skips:
            state.steps.append(self.step(state))
            on_step(state)

    def kinds(self, state: SearchState) -> list[str]:
        """The kinds of replacement this step tries: ``--replace``'s, within ``--max-linear``."""
        o = self.o
        room = o.max_linear is None or sum(s.kind == LINEAR for s in state.steps) < o.max_linear
        if o.replace == SKIP or not room:
            return [SKIP]
        return [LINEAR] if o.replace == LINEAR else [SKIP, LINEAR]

    def step(self, state: SearchState) -> Step:
        """One greedy step. Under torchrun each process fits, scores and trains its share of
        the candidates; all of them then hold the same results and pick the same winner."""
        t0 = time.perf_counter()
        o = self.o
        k = len(state.steps) + 1
        remaining = [c for c in self.candidates if c not in state.order]
        kinds = self.kinds(state)
        exhaustive = o.shortlist is None or o.shortlist >= len(remaining)
        n_judge = int(self.judge[0].train_ids.shape[0])
        n_train = o.epochs * len(batches(self.n_rows, o.batch_size)) + len(batches(n_judge, o.batch_size))
        n_short = len(remaining) if exhaustive else int(o.shortlist)  # type: ignore[arg-type]
        n_finalists = min(len(remaining), RESCORE * n_short) if len(self.rest) else 0
        mine, n_kinds = distributed.share_size, len(kinds)  # the progress bar counts this process's work
        n_fit = 0
        if LINEAR in kinds:
            n_fit = fit_batches(mine(len(remaining)), self.stack.config.hidden_size, self.n_rows, self.score_batch)
        n_scoring = 0 if exhaustive else (
            mine(n_kinds * len(remaining)) * len(self._batches(self.screen))
            + mine(n_kinds * n_finalists) * len(self._batches(self.rest))
        )  # fmt: skip
        self.progress.begin(f"step {k}/{o.skips}", n_fit + n_scoring + mine(n_kinds * n_short) * n_train)
        fits = self._fit(state, remaining, k) if LINEAR in kinds else {}
        losses = {kind: Losses() for kind in kinds}
        shortlist = [(c, kind) for kind in kinds for c in remaining]
        if not exhaustive:
            shortlist = self._shortlist(state, fits, shortlist, n_finalists, n_short, losses, k)
        trials: dict[Trial, tuple[BranchScales, dict[int, torch.Tensor]]] = {}

        def train_share() -> dict[Trial, float]:
            trained: dict[Trial, float] = {}
            for trial in distributed.share(shortlist):
                c, kind = trial
                scales = copy.deepcopy(state.scales)
                skip, maps = state.with_trial(trial, fits)
                maps = {i: m.clone() for i, m in maps.items()}
                what = "the scales" if kind == SKIP else "the scales and maps"
                where = f"at step {k} training {what} for {_removing(c, kind)}"
                train_scales(
                    self.stack, scales, skip, self.calib, self.teacher, o.objective,
                    lr=o.lr, epochs=o.epochs, batch_size=o.batch_size, seed=o.seed * 1_000_003 + k,
                    where=where, on_batch=self.progress.advance, maps=maps, map_lr=o.map_lr,
                )  # fmt: skip
                trials[trial] = scales, maps
                trained[trial] = self._loss(scales, skip, maps, where)
            return trained

        trained = distributed.merged(train_share)
        for (c, kind), value in trained.items():
            losses[kind].trained[c] = value
        chosen = min(shortlist, key=trained.__getitem__)  # of equal losses the first (skips first), everywhere
        scales, maps = distributed.shared(  # the scales and maps, from the process that trained them
            lambda: (
                {name: t.cpu() for name, t in trials[chosen][0].state_dict().items()},
                {i: m.cpu() for i, m in trials[chosen][1].items()},
            ),
            src=distributed.owner(shortlist.index(chosen)),
        )
        state.scales.load_state_dict(scales)
        state.maps = {i: m.to(module_device(self.stack.layers[i])) for i, m in maps.items()}
        c, kind = chosen
        if kind == SKIP:
            with torch.no_grad():  # a skipped block's scale has no effect; 1 keeps the plan readable
                state.scales.attn[c] = 1.0
        ridge = fits[c].ridge if kind == LINEAR else None
        return Step(c, trained[chosen], time.perf_counter() - t0, kind, losses, ridge)

    def _fit(self, state: SearchState, remaining: list[int], k: int) -> dict[int, Fit]:
        """The closed-form map of every remaining candidate under the current plan, each
        process fitting its share (sent on the CPU)."""

        def fit_share() -> dict[int, Fit]:
            fits = fit_maps(
                self.stack, state.scales, state.skip, state.maps, distributed.share(remaining), self.calib,
                self.score_batch, f"at step {k}", self.progress.advance,
            )  # fmt: skip
            return {c: dataclasses.replace(f, weight=f.weight.cpu()) for c, f in fits.items()}

        fits = distributed.merged(fit_share)
        devices = {c: module_device(self.stack.layers[c]) for c in fits}
        return {c: dataclasses.replace(f, weight=f.weight.to(devices[c])) for c, f in fits.items()}

    def _loss(self, scales: BranchScales, skip: list[int], maps: dict[int, torch.Tensor], where: str) -> float:
        """The objective on the judging sequences: what the trained shortlist is compared on."""
        calib, teacher = self.judge
        n_rows = int(calib.train_ids.shape[0])
        value = mean_loss(
            self.stack, scales, skip, calib, teacher, self.o.objective,
            n_rows=n_rows, batch_size=self.o.batch_size, where=where, maps=maps,
        )  # fmt: skip
        for _ in batches(n_rows, self.o.batch_size):
            self.progress.advance()
        return value

    def _shortlist(
        self, state: SearchState, fits: dict[int, Fit], trials: list[Trial], n_finalists: int, n_short: int,
        losses: dict[str, Losses], k: int,
    ) -> list[Trial]:  # fmt: skip
        """Training-free scores: every trial on the screening sequences, then the
        ``n_finalists`` best of each kind on all training sequences; the ``n_short`` best
        of each kind make the shortlist. Records the scores in ``losses``."""
        screen = distributed.merged(lambda: self._score_sums(state, fits, distributed.share(trials), self.screen))
        if any(count == 0 for _, count in screen.values()):
            raise HopscotchError(
                f"the first {self.n_score} calibration sequences have no target tokens; raise --score-samples"
            )
        scores = self._means(screen, k)
        for (c, kind), value in scores.items():
            losses[kind].scores[c] = value
        if not n_finalists:
            return _best(scores, losses, n_short)
        finalists = _best(scores, losses, n_finalists)
        rest = distributed.merged(lambda: self._score_sums(state, fits, distributed.share(finalists), self.rest))
        both = {t: (screen[t][0] + rest[t][0], screen[t][1] + rest[t][1]) for t in finalists}
        rescored = self._means(both, k)
        for (c, kind), value in rescored.items():
            losses[kind].rescored[c] = value
        return _best(rescored, losses, n_short)

    @torch.no_grad()
    def _score_sums(
        self, state: SearchState, fits: dict[int, Fit], trials: list[Trial], rows: torch.Tensor
    ) -> dict[Trial, tuple[float, int]]:
        """Summed objective of each trial added to the current plan, untrained (a linear
        trial with its closed-form map), on the training sequences ``rows``, with the token
        count; each trial's forward starts at its own layer."""
        st, calib, objective = self.stack, self.calib, self.o.objective
        sums = dict.fromkeys(trials, 0.0)
        count = 0
        for batch in self._batches(rows) if trials else []:
            ids, targets = calib.train_ids[batch], calib.train_targets[batch]
            with scaled_model(st.model, state.scales, state.skip, state.maps):
                inputs, _, at = st.layer_inputs(ids)
            for trial in trials:
                c = trial[0]
                skip, maps = state.with_trial(trial, fits)
                with scaled_model(st.model, state.scales, skip, maps):
                    h = st.run(inputs[c], at, c)
                    s, n = loss_sum(objective, st.logits(st.final_hidden(h)), ids, targets, self.teacher, batch)
                sums[trial] += float(s)
                self.progress.advance()
            count += n
        return {t: (sums[t], count) for t in trials}

    def _batches(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """``rows`` in scoring batches."""
        return batches(len(rows), self.score_batch, rows)

    @staticmethod
    def _means(sums: dict[Trial, tuple[float, int]], k: int) -> dict[Trial, float]:
        scores = {t: total / count for t, (total, count) in sums.items()}
        for (c, kind), v in scores.items():
            check_finite(v, f"at step {k} scoring layer {c}" + ("" if kind == SKIP else " as a linear map"))
        return scores


def _part(calib: Calibration, teacher: Teacher, rows: slice) -> tuple[Calibration, Teacher]:
    """The training sequences ``rows`` as a calibration set of their own (views, not copies)."""
    part = dataclasses.replace(calib, train_ids=calib.train_ids[rows], train_targets=calib.train_targets[rows])
    topk = [None if t is None else t[rows] for t in (teacher.topk_ids, teacher.topk_logp)]
    return part, Teacher(topk[0], topk[1], teacher.held_hidden)


def _best(ranking: dict[Trial, float], kinds: dict[str, Losses], n: int) -> list[Trial]:
    """The ``n`` best-ranked trials of each kind (lowest loss, then lowest layer), kind by kind."""
    best: list[Trial] = []
    for kind in kinds:
        mine = [t for t in ranking if t[1] == kind]
        best += sorted(mine, key=lambda t: (ranking[t], t[0]))[:n]
    return best


def _removing(layer: int, kind: str) -> str:
    """``skipping layer 5`` / ``replacing layer 5 by a linear map``, for messages."""
    return f"skipping layer {layer}" if kind == SKIP else f"replacing layer {layer} by a linear map"
