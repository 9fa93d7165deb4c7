"""Every search option in one dataclass, validated before any model is loaded."""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import HopscotchError
from ..families import Family

if TYPE_CHECKING:
    from ..families import ModelSpec

OBJECTIVES = ("kl", "ce")
GRANULARITIES = ("layer", "channel")
DEVICES = ("auto", "cuda", "mps", "cpu")
#: ``auto``: bfloat16 on a GPU; on CPU float32 when it fits in memory, else bfloat16
DTYPES = ("auto", "float32", "bfloat16", "float16")
#: what takes a removed attention block's place: nothing (``skip``), a fitted
#: ``n_embd x n_embd`` map of its normalised input (``linear``, llama.cpp ``deci``'s linear
#: attention), or whichever of the two loses less at each step (``auto``)
REPLACEMENTS = ("skip", "linear", "auto")
#: ``--replace auto`` compares the kinds on the last quarter of the training sequences
#: (``linear.fit_and_ridge_rows``), which is empty below this many
AUTO_MIN_SAMPLES = 4
#: what one greedy step removes: a whole attention block, one KV group (a KV head and its
#: query heads), or both, each state compared with those freeing as much KV (``levels.py``)
UNITS = ("block", "group", "auto")

#: ``--skips auto`` tries up to this many blocks unless told otherwise (``--max-skips``): a
#: quarter of a 32-layer model, where the paper's losses start to climb
MAX_SKIPS = 8

#: The calibration budget on CPU when the user gives none. The dataclass defaults are the
#: paper's scale, sized for a GPU; on two CPU cores they take hours even for a 135M model.
#: This one searches SmolLM2-135M for 4 skips in minutes (README, "Timing").
CPU_BUDGET = {"samples": 16, "heldout": 8, "seq_len": 128, "final_epochs": 4, "max_new_tokens": 128}

#: Options that change which blocks the greedy selection picks: a run can only be resumed
#: with the same values (``skips`` and the final-training options, ``linear_epochs``
#: included, may change).
SELECTION_OPTIONS = (
    "granularity", "objective", "shortlist", "protect", "data", "data_config", "data_split",
    "data_field", "samples", "heldout", "seq_len", "score_samples", "batch_size", "lr",
    "epochs", "seed", "max_new_tokens", "dtype", "replace", "max_linear", "map_lr", "unit",
)  # fmt: skip


@dataclass(frozen=True)
class SearchOptions:
    """What ``hopscotch-export search`` does; defaults suit a GPU, scale them down on CPU."""

    #: attention blocks to remove; with ``unit`` group or auto, blocks' worth of KV cache
    #: (N x KV heads groups); with ``kv_saving``, set from it by :meth:`for_model`
    skips: int
    #: one scale per branch (``layer``) or one per hidden unit of each branch (``channel``)
    granularity: str = "layer"
    #: ``kl``: divergence from the unmodified model; ``ce``: cross-entropy on the data
    objective: str = "kl"
    #: candidates trained per step after the training-free scoring; None trains every
    #: candidate, which is the paper's exhaustive procedure
    shortlist: int | None = 2
    #: layers that keep their attention (layer 0 always does)
    protect: tuple[int, ...] = ()
    #: Hugging Face dataset name or local .txt/.jsonl/.json/.parquet; None: self-generated
    data: str | None = None
    data_config: str | None = None
    data_split: str = "train"
    #: column holding text or chat messages; None picks messages/conversations/text
    data_field: str | None = None
    #: calibration sequences used for training / held out for the final report
    samples: int = 64
    heldout: int = 16
    seq_len: int = 256
    #: training sequences that screen candidates without training (None: a quarter of
    #: ``samples``); the best of the screen are then scored on all of them
    score_samples: int | None = None
    #: sequences per optimizer step (and per forward batch)
    batch_size: int = 4
    #: brief training of each shortlisted candidate (paper: 1 epoch at 1e-2)
    lr: float = 1e-2
    epochs: int = 1
    #: the longer training of the final set (paper: 10 epochs at 3e-3)
    final_lr: float = 3e-3
    final_epochs: int = 10
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    #: answer length when the model writes its own calibration data
    max_new_tokens: int = 256
    #: what replaces a removed attention block: ``skip``, ``linear`` or ``auto`` (see REPLACEMENTS)
    replace: str = "skip"
    #: epochs that train the linear maps with the scales after the final training (0: keep
    #: the maps as the greedy steps left them). None: as many as ``final_epochs``, the
    #: budget the user gave the final fit to this data; on the prototype 4 such epochs (the
    #: CPU budget's final epochs) took SmolLM2's KL at 4 blocks 20% below the scales' alone.
    linear_epochs: int | None = None
    #: at most this many blocks become linear maps; None: no bound
    max_linear: int | None = None
    #: learning rate of the linear maps, in the brief and the final training (the
    #: prototype's 1e-3: a map has n_embd^2 entries that Adam each moves by up to this much
    #: a step, a scale is one number)
    map_lr: float = 1e-3
    #: ``--skips auto``: greedy steps up to ``skips`` (``--max-skips``), a final training and
    #: held-out figures for every count on the way (the quality curve), and the plan of the
    #: largest count within ``max_kl`` / ``max_ppl_increase``
    curve: bool = False
    #: the most held-out KL to the original model a ``--skips auto`` plan may have
    max_kl: float | None = None
    #: the most held-out perplexity rise, in percent, a ``--skips auto`` plan may have
    max_ppl_increase: float | None = None
    #: what a greedy step removes (see UNITS)
    unit: str = "block"
    #: the budget as a fraction of the KV cache, instead of ``skips`` (which is then 0
    #: until :meth:`for_model`): steps until the saving reaches it, none overshooting it
    kv_saving: float | None = None
    #: no step removes a layer's last KV group (set by :meth:`for_family` for a family
    #: written where a layer cannot lose all its heads: Qwen3 as ``openelm``)
    keep_last_group: bool = False
    #: torch's CPU threads (``torch.set_num_threads``); None leaves torch's default
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise HopscotchError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.granularity not in GRANULARITIES:
            raise HopscotchError(
                f"--granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}"
            )
        if self.device not in DEVICES:
            raise HopscotchError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise HopscotchError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.replace not in REPLACEMENTS:
            raise HopscotchError(f"--replace must be one of {', '.join(REPLACEMENTS)}, got {self.replace!r}")
        if self.unit not in UNITS:
            raise HopscotchError(f"--unit must be one of {', '.join(UNITS)}, got {self.unit!r}")
        self._check_kv_saving()
        if self.threads is not None and self.threads < 1:
            raise HopscotchError(f"--threads must be at least 1, got {self.threads}")
        for name in ("linear_epochs", "max_linear"):
            if (getattr(self, name) or 0) < 0:
                raise HopscotchError(f"--{name.replace('_', '-')} must be at least 0, got {getattr(self, name)}")
        if self.replace == "auto" and self.samples < AUTO_MIN_SAMPLES:
            raise HopscotchError(
                f"--replace auto judges skips against maps on a held-out quarter of --samples, and {self.samples} "
                f"sequence(s) leave none; pass --samples {AUTO_MIN_SAMPLES} or more, or --replace skip|linear"
            )
        if self.max_linear is not None and self.replace == "skip":
            raise HopscotchError(
                "--max-linear bounds linear maps, which --replace skip makes none of; add --replace auto"
            )
        self._check_curve()
        positive = ("samples", "heldout", "seq_len", "batch_size", "epochs", "final_epochs", "max_new_tokens")
        positive = positive if self.kv_saving is not None else ("skips", *positive)
        for name in positive:
            if getattr(self, name) < 1:
                raise HopscotchError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.score_samples is not None and not 1 <= self.score_samples <= self.samples:
            raise HopscotchError(
                f"--score-samples must be between 1 and --samples ({self.samples}), got {self.score_samples}"
            )
        if self.shortlist is not None and self.shortlist < 1:
            raise HopscotchError(f"--shortlist must be at least 1 or 'all', got {self.shortlist}")
        for name in ("lr", "final_lr", "map_lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise HopscotchError(f"--{name.replace('_', '-')} must be a positive number, got {value}")

    def _check_kv_saving(self) -> None:
        f = self.kv_saving
        if f is None:
            return
        if not (math.isfinite(f) and 0 < f < 1):
            raise HopscotchError(
                f"--kv-saving is a fraction of the KV cache between 0 and 1 (0.25: a quarter), got {f}"
            )
        if self.curve or self.skips:
            raise HopscotchError("--kv-saving and --skips are alternatives; give one of them")

    def _check_curve(self) -> None:
        limits = {"max_kl": self.max_kl, "max_ppl_increase": self.max_ppl_increase}
        for name, value in limits.items():
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise HopscotchError(f"--{name.replace('_', '-')} must be a number of at least 0, got {value}")
        given = [f"--{n.replace('_', '-')}" for n, v in limits.items() if v is not None]
        if self.curve and not given:
            raise HopscotchError(
                "--skips auto exports the most blocks removed within a limit; add --max-kl X and/or "
                "--max-ppl-increase PERCENT"
            )
        if given and not self.curve:
            raise HopscotchError(
                f"{' and '.join(given)} choose how many blocks to remove; use them with --skips auto "
                "(or drop them and give --skips N)"
            )

    @property
    def scoring_samples(self) -> int:
        return self.score_samples if self.score_samples is not None else max(1, self.samples // 4)

    @property
    def map_epochs(self) -> int:
        """Epochs of the maps' final training (``linear_epochs``, or ``final_epochs`` if unset)."""
        return self.final_epochs if self.linear_epochs is None else self.linear_epochs

    def for_model(self, n_layers: int) -> SearchOptions:
        """With ``--skips auto``, the most blocks tried lowered to what the model offers;
        with ``--kv-saving F``, ``skips`` the blocks' worth of KV it asks for (rounded up)."""
        if self.kv_saving is not None:
            derived = copy.copy(self)  # not dataclasses.replace: a given --skips is still refused
            object.__setattr__(derived, "skips", max(1, math.ceil(self.kv_saving * n_layers - 1e-9)))
            return derived
        if not self.curve:
            return self
        room = len([i for i in range(1, n_layers) if i not in self.protect]) - 1
        return dataclasses.replace(self, skips=max(1, min(self.skips, room)))

    def for_spec(self, spec: ModelSpec) -> SearchOptions:
        """These options as the search runs them on a model of ``spec``: :meth:`for_model`,
        then :meth:`for_family`. The search and ``--dry-run`` both ask it, so a dry run
        refuses what the search would."""
        return self.for_model(spec.n_layers).for_family(spec.family, spec.n_layers, spec.n_kv_heads)

    def for_family(self, family: type[Family], n_layers: int, n_kv: int) -> SearchOptions:
        """These options for a model of ``family``, after :meth:`for_model`. A family that
        cannot lose whole blocks (Qwen3) removes single KV groups only, every layer keeping
        one: ``--unit block|auto`` and ``--replace linear|auto`` are refused, not
        reinterpreted, and so is a budget beyond the groups that may go (``--skips auto``
        lowers its most blocks' worth to fit them). ``--unit group`` with ``--replace
        linear|auto`` is refused here, not at construction, so the message suggests only
        units the family accepts."""
        if family.removes_blocks:
            if self.unit == "group" and self.replace != "skip":
                raise HopscotchError(
                    f"--replace {self.replace} replaces whole blocks, which --unit group never removes; "
                    "use --unit auto (blocks and groups) or --unit block"
                )
            return self
        asked = [f"--unit {self.unit}"] * (self.unit != "group")
        asked += [f"--replace {self.replace}"] * (self.replace != "skip")
        if asked:
            raise HopscotchError(
                f"{' and '.join(asked)} {'remove' if len(asked) > 1 else 'removes'} whole attention blocks, but "
                f"{family.keeps_blocks_why}; pass --unit group{' without --replace' if self.replace != 'skip' else ''}"
            )
        room = len(self.candidates(n_layers)) * (n_kv - 1)
        options = self
        if self.curve:  # the most blocks' worth tried, lowered to what may go
            options = dataclasses.replace(self, skips=max(1, min(self.skips, room // n_kv)))
        target = options.kv_target(n_layers, n_kv)
        if target > room:
            raise HopscotchError(
                f"the budget is {target} KV groups, but with every layer keeping one (layer 0 and protected layers "
                f"all theirs), at most {room} of the {n_layers * n_kv} can go; lower --skips or --kv-saving"
            )
        return dataclasses.replace(options, keep_last_group=True)

    def kv_target(self, n_layers: int, n_kv: int) -> int:
        """The KV groups the search frees (of ``n_layers x n_kv``), after :meth:`for_model`:
        ``skips`` blocks' worth, or with ``--kv-saving`` the fewest groups that reach it
        (a block search: the fewest blocks)."""
        if self.kv_saving is None or self.unit == "block":
            return self.skips * n_kv
        return max(1, math.ceil(self.kv_saving * n_layers * n_kv - 1e-9))

    def candidates(self, n_layers: int) -> list[int]:
        """Layers whose attention may be skipped; raise if ``skips`` cannot be met."""
        bad = [i for i in self.protect if not 0 <= i < n_layers]
        if bad:
            raise HopscotchError(f"--protect {bad} out of range: the model has layers 0..{n_layers - 1}")
        found = [i for i in range(1, n_layers) if i not in self.protect]
        if self.skips >= len(found):
            asked = f"--skips {self.skips}"
            if self.kv_saving is not None:
                asked = f"--kv-saving {self.kv_saving:g} ({self.skips} blocks' worth)"
            raise HopscotchError(
                f"{asked} needs more candidates than the {len(found)} this model offers "
                f"({n_layers} layers, layer 0 and {len(set(self.protect) - {0})} protected kept); "
                "lower --skips or protect fewer layers"
            )
        return found

    @classmethod
    def sized_for_device(cls, **given: Any) -> SearchOptions:
        """Options from command-line values: budget fields left ``None`` take the GPU
        defaults, or :data:`CPU_BUDGET` when the search will run on the CPU."""
        on_cpu = device_name(given.get("device", "auto")) == "cpu"
        values = {k: v for k, v in given.items() if v is not None or k not in CPU_BUDGET}
        if on_cpu:
            values = {**CPU_BUDGET, **values}
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["protect"] = list(self.protect)
        return data

    def selection_mismatch(self, recorded: dict[str, Any]) -> list[str]:
        """Options that differ from a recorded run's in ways that change the selection."""
        mine = self.to_json()
        default = {f.name: f.default for f in dataclasses.fields(self)}
        # an option a plan does not record (it predates the option) had its default value
        return [
            f"{k.replace('_', '-')} {recorded.get(k, default[k])!r} -> {mine[k]!r}"
            for k in SELECTION_OPTIONS
            if recorded.get(k, default[k]) != mine[k]
        ]


def device_name(name: str) -> str:
    """``auto`` resolved to the device torch would use: cuda, then mps, else cpu."""
    if name != "auto":
        return name
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"
