"""The plan file: the contract between the search stage and the converter.

A plan says which attention blocks are skipped and by how much each remaining branch
output is scaled (DESIGN.md section 1: branch scales fold exactly into ``attn_output`` and
``ffn_down``). It is validated once, at load, and trusted afterwards.

JSON layout (``format`` = ``hopscotch-plan/1``)::

    {"format": "hopscotch-plan/1",
     "complete": true,
     "model": {"architecture": "LlamaForCausalLM", "n_layers": 30,
               "hidden_size": 576, "fingerprint": "…"},
     "skip": [5, 11],
     "scales": {"attn": [1.0, 0.97, …], "mlp": [1.0, [0.9, 1.1, …], …]},
     "provenance": {…free form…}}

Each scale entry is a number (layer granularity) or a list of ``hidden_size`` numbers
(channel granularity). The attention scale of a skipped layer is ignored.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Union

import numpy as np

from .errors import PlanError
from .files import write_text_atomic

FORMAT = "hopscotch-plan/1"

Scale = Union[float, list[float]]


@dataclass(frozen=True)
class ModelRef:
    """What a plan was made for; enough to refuse a plan meant for another model."""

    architecture: str
    n_layers: int
    hidden_size: int
    fingerprint: str

    def to_json(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "n_layers": self.n_layers,
            "hidden_size": self.hidden_size,
            "fingerprint": self.fingerprint,
        }


@dataclass(frozen=True)
class Plan:
    """Skipped attention blocks and branch scales for one model."""

    model: ModelRef
    skip: tuple[int, ...]
    attn: tuple[Scale, ...]
    mlp: tuple[Scale, ...]
    provenance: dict[str, Any] = field(default_factory=dict)
    complete: bool = True

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def identity(cls, model: ModelRef, skip: tuple[int, ...] = (), **provenance: Any) -> Plan:
        """A plan that skips ``skip`` and leaves every scale at 1."""
        ones = tuple(1.0 for _ in range(model.n_layers))
        return cls(model, tuple(sorted(skip)), ones, ones, dict(provenance))

    @property
    def granularity(self) -> str:
        """``channel`` when any layer has a per-channel vector, else ``layer``."""
        return "channel" if any(isinstance(s, list) for s in self.attn + self.mlp) else "layer"

    @property
    def kept_attention(self) -> list[int]:
        return [i for i in range(self.model.n_layers) if i not in self.skip]

    def attn_factor(self, layer: int) -> np.ndarray:
        """The factor folded into layer's ``attn_output`` rows (0 when skipped)."""
        if layer in self.skip:
            return np.zeros(1, dtype=np.float64)
        return np.atleast_1d(np.asarray(self.attn[layer], dtype=np.float64))

    def mlp_factor(self, layer: int) -> np.ndarray:
        """The factor folded into layer's ``ffn_down`` rows."""
        return np.atleast_1d(np.asarray(self.mlp[layer], dtype=np.float64))

    def with_fields(self, **changes: Any) -> Plan:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "complete": self.complete,
            "model": self.model.to_json(),
            "skip": list(self.skip),
            "scales": {"attn": list(self.attn), "mlp": list(self.mlp)},
            "provenance": self.provenance,
        }

    def save(self, path: Path | str, force: bool = False) -> None:
        """Write atomically; ``force`` allows replacing an existing file."""
        write_text_atomic(path, json.dumps(self.to_json(), indent=1) + "\n", force=force)

    def check_model(self, model: ModelRef, force: bool = False) -> None:
        """Refuse a plan made for another model; ``force`` waives only the fingerprint."""
        mine = self.model
        for attr in ("architecture", "n_layers", "hidden_size"):
            if getattr(mine, attr) != getattr(model, attr):
                raise PlanError(
                    f"plan was made for a model with {attr}={getattr(mine, attr)}, this model has "
                    f"{getattr(model, attr)}; run search on this model to make a plan for it"
                )
        if mine.fingerprint != model.fingerprint and not force:
            raise PlanError(
                "plan was made for different weights (fingerprint mismatch); "
                "run search on this model, or pass --force to apply it anyway"
            )


def load_plan(path: Path | str) -> Plan:
    """Read and validate a plan file; every problem becomes a one-line :class:`PlanError`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(f"plan file {path} not found; make one with `hopscotch-export search`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PlanError(f"plan file {path} is not valid JSON ({e}); regenerate it with search") from None
    return plan_from_json(data, source=str(path))


def plan_from_json(data: Any, source: str = "plan") -> Plan:
    """Build a :class:`Plan` from parsed JSON, validating every field."""
    if not isinstance(data, dict):
        raise PlanError(f"{source}: a plan must be a JSON object")
    fmt = data.get("format")
    if fmt != FORMAT:
        raise PlanError(
            f"{source}: unknown plan format {fmt!r}, this version reads {FORMAT!r}; "
            "regenerate the plan with this version's search"
        )
    try:
        m = data["model"]
        model = ModelRef(str(m["architecture"]), m["n_layers"], m["hidden_size"], str(m["fingerprint"]))
        scales = data["scales"]
        skip, attn, mlp = data["skip"], scales["attn"], scales["mlp"]
    except (KeyError, TypeError) as e:
        raise PlanError(f"{source}: missing field {e}; regenerate the plan with search") from None
    if not isinstance(skip, list) or not isinstance(attn, list) or not isinstance(mlp, list):
        raise PlanError(f"{source}: 'skip', 'scales.attn' and 'scales.mlp' must be lists")
    provenance = data.get("provenance", {})
    if not isinstance(provenance, dict):
        raise PlanError(f"{source}: 'provenance' must be an object")
    try:
        return Plan(
            model,
            tuple(skip),
            tuple(attn),
            tuple(mlp),
            provenance,
            bool(data.get("complete", True)),
        )
    except PlanError as e:
        raise PlanError(f"{source}: {e}") from None


def _validate(plan: Plan) -> None:
    n, hidden = plan.model.n_layers, plan.model.hidden_size
    if not _is_int(n) or n < 1 or not _is_int(hidden) or hidden < 1:
        raise PlanError("model.n_layers and model.hidden_size must be positive integers")
    if not all(_is_int(i) for i in plan.skip):
        raise PlanError(f"skipped layers must be integers, got {list(plan.skip)}")
    bad = [i for i in plan.skip if not 0 <= i < n]
    if bad:
        raise PlanError(f"skipped layer(s) {bad} out of range: the model has layers 0..{n - 1}")
    dup = sorted({i for i in plan.skip if plan.skip.count(i) > 1})
    if dup:
        raise PlanError(f"layer(s) {dup} listed more than once in 'skip'")
    if len(plan.skip) >= n:
        raise PlanError(f"the plan skips every one of the {n} attention blocks; keep at least layer 0")
    if 0 in plan.skip:
        raise PlanError("the plan skips layer 0, which llama.cpp needs (it reads the head size there); keep it")
    for name, scales in (("attn", plan.attn), ("mlp", plan.mlp)):
        if len(scales) != n:
            raise PlanError(f"scales.{name} has {len(scales)} entries, the model has {n} layers")
        for i, s in enumerate(scales):
            _check_scale(name, i, s, hidden)


def _check_scale(name: str, layer: int, s: Any, hidden: int) -> None:
    where = f"scales.{name}[{layer}]"
    if isinstance(s, list):
        if len(s) != hidden:
            raise PlanError(f"{where} has {len(s)} channels, the model's hidden size is {hidden}")
        values = s
    else:
        values = [s]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise PlanError(f"{where} must be a number or a list of numbers, got {v!r}")
        if not math.isfinite(v):
            raise PlanError(f"{where} is not finite ({v}); the search diverged, rerun it")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
