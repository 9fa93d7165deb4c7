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

With ``--unit group`` a trial removes one KV group of a kept layer (``units.py``): it is
screened from the same cached layer input as a block, every remaining group of every
candidate layer, and has its own finalists and shortlist, like each block kind. With
``--unit auto`` block and group trials compete, but not within one step: a block frees the
groups its layer still has, a group one, so their trained losses belong to different
savings. Every trained trial of a step becomes a state, and the search keeps the best
state of each KV saving (``levels.py``). A trial that would free more than the budget has
left is not tried.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import torch

from ..decoder_stack import Stack, module_device
from ..errors import HopscotchError
from ..torch_plan import BranchScales, scaled_model
from . import distributed
from .calibration import Calibration
from .levels import Child, best_by_level
from .linear import Fit, fit_and_ridge_rows, fit_batches, fit_maps
from .objective import Teacher, batches, loss_sum
from .options import SearchOptions
from .train import check_finite, mean_loss, train_scales
from .units import AUTO as AUTO_UNIT
from .units import BLOCK, GROUP, LINEAR, SKIP, Removed, kv_heads, replay

#: candidates per shortlisted one that the screen passes on to scoring on all training data
RESCORE = 4
#: Scoring needs no gradients, so it runs up to 4x the training batch, capped at this many
#: tokens per batch to bound the logits' memory (4 rows of 48 tokens -> 8: 25% faster on CPU).
SCORE_TOKENS = 2048

AUTO = "auto"
#: what a trial's losses are recorded under: its layer, or (layer, group) for a KV group
Key = Any


class Trial(NamedTuple):
    """A candidate layer tried as one kind of removal; ``group`` for a KV-group trial."""

    layer: int
    kind: str
    group: int | None = None

    @property
    def key(self) -> Key:
        return self.layer if self.group is None else (self.layer, self.group)


class Progress(Protocol):
    """Where a step reports its work (a rich progress bar, or nothing)."""

    def begin(self, label: str, total: int) -> None: ...

    def advance(self) -> None: ...


@dataclass
class Losses:
    """What the candidates scored in one step as one kind of removal, by layer (by
    (layer, group) for KV groups)."""

    #: training-free score on the screening sequences (empty for the exhaustive procedure)
    scores: dict[Key, float] = field(default_factory=dict)
    #: training-free score on all training sequences, for the candidates the screen kept
    rescored: dict[Key, float] = field(default_factory=dict)
    #: loss after brief training, for the candidates that were trained
    trained: dict[Key, float] = field(default_factory=dict)


@dataclass
class Step:
    """One greedy step: what was tried, what it scored, what was kept."""

    chosen: int
    #: objective with the chosen block removed, after brief training, on all training
    #: sequences (``auto``: on their last quarter, which the step did not fit or train on)
    loss: float
    seconds: float
    #: how the chosen block was removed: ``skip`` or ``linear``; ``group``: one KV group of it
    kind: str = SKIP
    #: the candidates' losses by kind tried
    losses: dict[str, Losses] = field(default_factory=dict)
    #: the ridge of the chosen map's closed-form fit (``linear`` only)
    ridge: float | None = None
    #: the KV group removed (``group`` only)
    group: int | None = None
    #: ``--unit auto``: the loss of the state this step started from (the original model's at first)
    before: float | None = None

    @property
    def scores(self) -> dict[Key, float]:
        """The chosen kind's screening scores."""
        return self.losses[self.kind].scores

    @property
    def rescored(self) -> dict[Key, float]:
        return self.losses[self.kind].rescored

    @property
    def trained(self) -> dict[Key, float]:
        return self.losses[self.kind].trained

    def to_json(self) -> dict[str, Any]:
        candidates = []
        for kind, ls in self.losses.items():
            for key in sorted(set(ls.scores) | set(ls.trained)):
                at = {"layer": key[0], "group": key[1]} if kind == GROUP else {"layer": key}
                candidates.append({**at, "kind": kind, "score": ls.scores.get(key),
                                   "rescored": ls.rescored.get(key), "trained": ls.trained.get(key)})  # fmt: skip
        optional = {"ridge": self.ridge, "group": self.group, "before": self.before}
        return {
            "chosen": self.chosen,
            "kind": self.kind,
            "loss": self.loss,
            "seconds": round(self.seconds, 3),
            **{k: v for k, v in optional.items() if v is not None},
            "candidates": candidates,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Step:
        """A recorded step; entries without a kind are skips (plans from before linear maps)."""
        losses: dict[str, Losses] = {}
        for c in data["candidates"]:
            kind = c.get("kind", SKIP)
            ls = losses.setdefault(kind, Losses())
            at = (int(c["layer"]), int(c["group"])) if kind == GROUP else int(c["layer"])
            for name, values in (("score", ls.scores), ("rescored", ls.rescored), ("trained", ls.trained)):
                if c.get(name) is not None:
                    values[at] = float(c[name])
        ridge, group, before = (data.get(k) for k in ("ridge", "group", "before"))
        return cls(
            int(data["chosen"]), float(data["loss"]), float(data["seconds"]), data.get("kind", SKIP),
            losses, None if ridge is None else float(ridge), None if group is None else int(group),
            None if before is None else float(before),
        )  # fmt: skip


@dataclass
class SearchState:
    """Everything a search needs to continue: the steps so far, the current scales and maps."""

    scales: BranchScales
    steps: list[Step] = field(default_factory=list)
    #: the linear layers' maps: float32 (out, in), each on its layer's device
    maps: dict[int, torch.Tensor] = field(default_factory=dict)
    #: the model's KV heads per layer (the :class:`Selector` sets it; 1 is right for blocks alone)
    n_kv: int = 1

    @property
    def order(self) -> list[int]:
        """The layer of every step, in the order the steps chose them."""
        return [s.chosen for s in self.steps]

    @property
    def removed(self) -> Removed:
        return replay(self.steps, self.n_kv)

    @property
    def skip(self) -> list[int]:
        """The skipped blocks (removed and not replaced, or left without KV groups), in step order."""
        return self.removed.skip

    @property
    def kv_groups(self) -> dict[int, tuple[int, ...]]:
        """Partly cut layers -> the KV groups they keep."""
        return self.removed.kv_groups

    def with_trial(
        self, trial: Trial, fits: dict[int, Fit]
    ) -> tuple[list[int], dict[int, torch.Tensor], dict[int, tuple[int, ...]]]:
        """The plan's skips, maps and kept KV groups with ``trial`` added (the maps are this
        state's tensors)."""
        c = trial.layer
        removed = self.removed
        groups = {i: g for i, g in removed.kv_groups.items() if i != c}
        if trial.kind == LINEAR:
            return removed.skip, {**self.maps, c: fits[c].weight}, groups
        now = removed.kv_groups.get(c, range(self.n_kv))
        kept = () if trial.kind == SKIP else tuple(g for g in now if g != trial.group)
        if not kept:
            return removed.skip + [c], dict(self.maps), groups
        return removed.skip, dict(self.maps), {**groups, c: kept}


@dataclass
class Expansion:
    """What one step tried from one state: the shortlist, each trained trial's loss (on
    the judging sequences) and, on the process that trained it, its scales and maps."""

    shortlist: list[Trial]
    trained: dict[Trial, float]
    losses: dict[str, Losses]
    fits: dict[int, Fit]
    results: dict[Trial, tuple[BranchScales, dict[int, torch.Tensor]]]
    #: ``--unit auto``: the loss of the state the step started from
    before: float | None
    seconds: float


class Selector:
    """Runs greedy steps on one model, calibration set and teacher."""

    def __init__(
        self, stack: Stack, calib: Calibration, teacher: Teacher, options: SearchOptions,
        candidates: list[int], progress: Progress,
    ) -> None:  # fmt: skip
        self.stack, self.options = stack, options
        self.candidates = candidates
        self.progress = progress
        #: the sequences each step fits, scores and trains on, and those its trained trials
        #: are compared on: all training sequences, or with ``auto`` three quarters and the rest
        self.calib, self.teacher = calib, teacher
        self.judge = calib, teacher
        n_fit = len(fit_and_ridge_rows(options.samples)[0])
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
        self.n_kv = kv_heads(stack.config)
        #: the KV groups the search frees in all (``--skips N``: N blocks' worth)
        self.target = options.kv_target(stack.n_layers, self.n_kv)
        #: the time of every step run (``auto`` runs steps off the plan's path too)
        self.seconds = 0.0

    def run(self, state: SearchState, on_step: Callable[[SearchState], None]) -> None:
        """Add steps to ``state`` until it frees the budget's KV groups (``--skips N``
        with blocks: until it removes N blocks). ``on_step`` is given every state the
        search keeps, in order of KV groups freed: each greedy step, or with ``--unit
        auto`` the best state of each KV saving (``levels.py``), once it is final."""
        state.n_kv = self.n_kv
        if self.options.unit == AUTO_UNIT:

            def kept(s: SearchState) -> None:  # ``state`` is what an interrupted run saves and reports
                _adopt(state, s)
                on_step(state)

            final = best_by_level(state, self.target, lambda s: s.removed.saved, lambda s: s.steps[-1].loss,
                                  self.children, kept)  # fmt: skip
            _adopt(state, final)
            return
        while state.removed.saved < self.target:
            state.steps.append(self.step(state))
            on_step(state)

    def children(self, state: SearchState) -> list[Child]:
        """``state`` with each trained trial of one step added: its saving and loss, and
        how to build it (every process builds the same ones, in the same order)."""
        tried = self.expand(state)
        removed = state.removed
        return [
            Child(removed.saved + (1 if t.kind == GROUP else removed.left(t.layer)), tried.trained[t],
                  lambda t=t: self.child(state, t, tried))  # fmt: skip
            for t in tried.shortlist
        ]

    def kinds(self, state: SearchState) -> list[str]:
        """The kinds of removal this step tries: ``--replace``'s within ``--max-linear``
        (``--unit block``), single KV groups (``group``), or both (``auto``)."""
        options = self.options
        if options.unit == GROUP:
            return [GROUP]
        room = options.max_linear is None or sum(s.kind == LINEAR for s in state.steps) < options.max_linear
        if options.replace == SKIP or not room:
            blocks = [SKIP]
        else:
            blocks = [LINEAR] if options.replace == LINEAR else [SKIP, LINEAR]
        return blocks + [GROUP] if options.unit == AUTO_UNIT else blocks

    def trials(self, state: SearchState) -> dict[str, list[Trial]]:
        """This step's trials by kind: every candidate layer still there as each block kind,
        and every KV group it still has; none that frees more than the budget has left
        (a kind left without trials is dropped)."""
        removed = state.removed
        room = self.target - removed.saved
        kinds = self.kinds(state)
        layers = [c for c in self.candidates if removed.left(c) > 0]
        by_kind: dict[str, list[Trial]] = {}
        for kind in kinds:
            if kind != GROUP:
                found = [Trial(c, kind) for c in layers if removed.left(c) <= room]
            else:  # a layer's last group is its skip trial when skips are tried, and stays under keep_last_group
                last_stays = SKIP in kinds or self.options.keep_last_group
                found = [
                    Trial(c, GROUP, g) for c in layers if not (last_stays and removed.left(c) == 1)
                    for g in range(self.n_kv) if g not in removed.cut.get(c, ())
                ]  # fmt: skip
            if found:
                by_kind[kind] = found
        return by_kind

    def step(self, state: SearchState) -> Step:
        """One greedy step: the trained trial with the lowest loss (every trial of a block
        or group search frees as much) is added to ``state``."""
        tried = self.expand(state)
        chosen = min(tried.shortlist, key=tried.trained.__getitem__)  # of equal losses the first (skips first)
        child = self.child(state, chosen, tried)
        state.scales.load_state_dict(child.scales.state_dict())
        state.maps = child.maps
        return child.steps[-1]

    def expand(self, state: SearchState) -> Expansion:
        """Every trial this step allows from ``state``, screened, and its shortlist trained.
        Under torchrun each process fits, scores and trains its share of the candidates;
        all of them then hold the same losses."""
        t0 = time.perf_counter()
        options = self.options
        state.n_kv = self.n_kv
        k = len(state.steps) + 1
        by_kind = self.trials(state)
        kinds = list(by_kind)
        most = max(len(v) for v in by_kind.values())
        exhaustive = options.shortlist is None or options.shortlist >= most
        n_judge = int(self.judge[0].train_ids.shape[0])
        n_train = options.epochs * len(batches(self.n_rows, options.batch_size))
        n_train += len(batches(n_judge, options.batch_size))
        n_short = most if exhaustive else int(options.shortlist)  # type: ignore[arg-type]
        n_finalists = RESCORE * n_short if len(self.rest) else 0
        mine = distributed.share_size  # the progress bar counts this process's work

        def per_kind(n: int) -> int:
            return sum(min(len(v), n) for v in by_kind.values())

        linear = [t.layer for t in by_kind.get(LINEAR, [])]
        hidden = self.stack.config.hidden_size
        n_fit = fit_batches(mine(len(linear)), hidden, self.n_rows, self.score_batch) if linear else 0
        n_scoring = 0 if exhaustive else (
            mine(per_kind(most)) * len(self._batches(self.screen))
            + mine(per_kind(n_finalists)) * len(self._batches(self.rest))
        )  # fmt: skip
        label = f"step {k}/{options.skips}"
        if options.unit != BLOCK:
            label = f"step {k} ({state.removed.saved}/{self.target} KV groups)"
        self.progress.begin(label, n_fit + n_scoring + mine(per_kind(n_short)) * n_train)
        fits = self._fit(state, linear, k) if linear else {}
        losses = {kind: Losses() for kind in kinds}
        shortlist = [t for kind in kinds for t in by_kind[kind]]
        if not exhaustive:
            shortlist = self._shortlist(state, fits, shortlist, n_finalists, n_short, losses, k)
        results: dict[Trial, tuple[BranchScales, dict[int, torch.Tensor]]] = {}

        def train_share() -> dict[Trial, float]:
            trained: dict[Trial, float] = {}
            for trial in distributed.share(shortlist):
                scales = copy.deepcopy(state.scales)
                skip, maps, groups = state.with_trial(trial, fits)
                maps = {i: m.clone() for i, m in maps.items()}
                what = "the scales and maps" if trial.kind == LINEAR else "the scales"
                where = f"at step {k} training {what} for {_removing(trial)}"
                train_scales(
                    self.stack, scales, skip, self.calib, self.teacher, options.objective,
                    lr=options.lr, epochs=options.epochs, batch_size=options.batch_size,
                    seed=options.seed * 1_000_003 + k, where=where, on_batch=self.progress.advance, maps=maps,
                    map_lr=options.map_lr, kv_groups=groups,
                )  # fmt: skip
                results[trial] = scales, maps
                trained[trial] = self._loss(scales, skip, maps, groups, where)
            return trained

        trained = distributed.merged(train_share)
        for trial, value in trained.items():
            losses[trial.kind].trained[trial.key] = value
        before = None
        if options.unit == AUTO_UNIT:
            before = state.steps[-1].loss if state.steps else self._original_loss(state)
        seconds = time.perf_counter() - t0
        self.seconds += seconds
        return Expansion(shortlist, trained, losses, fits, results, before, seconds)

    def child(self, state: SearchState, trial: Trial, tried: Expansion) -> SearchState:
        """``state`` with ``trial`` added: its trained scales and maps (sent from the process
        that trained them), and a step recording what the expansion tried."""
        scales, maps = distributed.shared(
            lambda: (
                {name: t.cpu() for name, t in tried.results[trial][0].state_dict().items()},
                {i: m.cpu() for i, m in tried.results[trial][1].items()},
            ),
            src=distributed.owner(tried.shortlist.index(trial)),
        )
        new = copy.deepcopy(state.scales)
        new.load_state_dict(scales)
        c = trial.layer
        if c in state.with_trial(trial, tried.fits)[0]:
            with torch.no_grad():  # a skipped block's scale has no effect; 1 keeps the plan readable
                new.attn[c] = 1.0
        ridge = tried.fits[c].ridge if trial.kind == LINEAR else None
        step = Step(c, tried.trained[trial], tried.seconds, trial.kind, tried.losses, ridge, trial.group, tried.before)
        placed = {i: m.to(module_device(self.stack.layers[i])) for i, m in maps.items()}
        return SearchState(new, state.steps + [step], placed, self.n_kv)

    def _fit(self, state: SearchState, remaining: list[int], k: int) -> dict[int, Fit]:
        """The closed-form map of every remaining candidate under the current plan, each
        process fitting its share (sent on the CPU)."""

        def fit_share() -> dict[int, Fit]:
            fits = fit_maps(
                self.stack, state.scales, state.skip, state.maps, distributed.share(remaining), self.calib,
                self.score_batch, f"at step {k}", self.progress.advance, kv_groups=state.kv_groups,
            )  # fmt: skip
            return {c: dataclasses.replace(f, weight=f.weight.cpu()) for c, f in fits.items()}

        fits = distributed.merged(fit_share)
        devices = {c: module_device(self.stack.layers[c]) for c in fits}
        return {c: dataclasses.replace(f, weight=f.weight.to(devices[c])) for c, f in fits.items()}

    def _loss(
        self, scales: BranchScales, skip: list[int], maps: dict[int, torch.Tensor],
        groups: dict[int, tuple[int, ...]], where: str, advance: bool = True,
    ) -> float:  # fmt: skip
        """The objective on the judging sequences: what the trained shortlist is compared on."""
        calib, teacher = self.judge
        n_rows = int(calib.train_ids.shape[0])
        value = mean_loss(
            self.stack, scales, skip, calib, teacher, self.options.objective,
            n_rows=n_rows, batch_size=self.options.batch_size, where=where, maps=maps, kv_groups=groups,
        )  # fmt: skip
        for _ in batches(n_rows, self.options.batch_size) if advance else []:
            self.progress.advance()
        return value

    def _original_loss(self, state: SearchState) -> float:
        """The unmodified model's objective on the judging sequences (what ``auto``'s first
        step records as its start; ~0 for ``kl``)."""
        ones = BranchScales(*state.scales.attn.shape).to(state.scales.attn.device)
        return self._loss(ones, [], {}, {}, "of the original model", advance=False)

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
        for t, value in scores.items():
            losses[t.kind].scores[t.key] = value
        if not n_finalists:
            return _best(scores, losses, n_short)
        finalists = _best(scores, losses, n_finalists)
        rest = distributed.merged(lambda: self._score_sums(state, fits, distributed.share(finalists), self.rest))
        both = {t: (screen[t][0] + rest[t][0], screen[t][1] + rest[t][1]) for t in finalists}
        rescored = self._means(both, k)
        for t, value in rescored.items():
            losses[t.kind].rescored[t.key] = value
        return _best(rescored, losses, n_short)

    @torch.no_grad()
    def _score_sums(
        self, state: SearchState, fits: dict[int, Fit], trials: list[Trial], rows: torch.Tensor
    ) -> dict[Trial, tuple[float, int]]:
        """Summed objective of each trial added to the current plan, untrained (a linear
        trial with its closed-form map), on the training sequences ``rows``, with the token
        count; each trial's forward starts at its own layer."""
        st, calib, objective = self.stack, self.calib, self.options.objective
        sums = dict.fromkeys(trials, 0.0)
        count = 0
        for batch in self._batches(rows) if trials else []:
            ids, targets = calib.train_ids[batch], calib.train_targets[batch]
            with scaled_model(st.model, state.scales, state.skip, state.maps, state.kv_groups):
                inputs, _, at = st.layer_inputs(ids)
            for trial in trials:
                c = trial.layer
                skip, maps, groups = state.with_trial(trial, fits)
                with scaled_model(st.model, state.scales, skip, maps, groups):
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
        for t, v in scores.items():
            check_finite(v, f"at step {k} scoring {_removing(t)}")
        return scores


def _adopt(state: SearchState, other: SearchState) -> None:
    """``state`` made ``other``, in place (its scales object stays: callers hold it)."""
    if other is not state:
        state.steps, state.maps = list(other.steps), other.maps
        state.scales.load_state_dict(other.scales.state_dict())


def _part(calib: Calibration, teacher: Teacher, rows: slice) -> tuple[Calibration, Teacher]:
    """The training sequences ``rows`` as a calibration set of their own (views, not copies)."""
    part = dataclasses.replace(calib, train_ids=calib.train_ids[rows], train_targets=calib.train_targets[rows])
    topk = [None if t is None else t[rows] for t in (teacher.topk_ids, teacher.topk_logp)]
    return part, Teacher(topk[0], topk[1], teacher.held_hidden)


def _best(ranking: dict[Trial, float], kinds: dict[str, Losses], n: int) -> list[Trial]:
    """The ``n`` best-ranked trials of each kind (lowest loss, then lowest layer and
    group), kind by kind."""
    best: list[Trial] = []
    for kind in kinds:
        mine = [t for t in ranking if t.kind == kind]
        best += sorted(mine, key=lambda t: (ranking[t], t.layer, t.group or 0))[:n]
    return best


def _removing(trial: Trial) -> str:
    """``skipping layer 5`` / ``replacing layer 5 by a linear map`` / ``removing KV group 1
    of layer 5``, for messages."""
    if trial.kind == GROUP:
        return f"removing KV group {trial.group} of layer {trial.layer}"
    what = "skipping layer {}" if trial.kind == SKIP else "replacing layer {} by a linear map"
    return what.format(trial.layer)
