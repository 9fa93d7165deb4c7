"""The plan file: the contract between the search stage and the converter.

A plan says, for each layer, what becomes of its attention block: kept, skipped, kept with
only some of its KV groups (a KV head and the query heads that share it; ``deci`` stores
``head_count`` and ``head_count_kv`` per layer), or replaced by a fitted linear map
(llama.cpp ``deci``'s "linear attention" of Nemotron-51B: ``x + W · RMSNorm(x)``, one
``hidden x hidden`` matrix, no KV cache), and by how much each remaining branch output is
scaled (docs/design.md section 1: branch scales fold exactly into
``attn_output`` and ``ffn_down``; a linear layer's attention scale folds into W's rows).
It is validated once, at load, and trusted afterwards.

JSON layout (``format`` = ``hopscotch-plan/3``)::

    {"format": "hopscotch-plan/3",
     "complete": true,
     "model": {"architecture": "LlamaForCausalLM", "n_layers": 30,
               "hidden_size": 576, "n_kv_heads": 3, "fingerprint": "…"},
     "skip": [5, 11],
     "linear": {"layers": [6], "file": "plan.linear.safetensors", "sha256": "…"},
     "kv_groups": {"3": [0, 2]},
     "scales": {"attn": [1.0, 0.97, …], "mlp": [1.0, [0.9, 1.1, …], …]},
     "provenance": {…free form…}}

Each scale entry is a number (layer granularity) or a list of ``hidden_size`` numbers
(channel granularity). The attention scale of a skipped layer is ignored. The maps are
too large for JSON: they live in one safetensors file beside the plan (``file`` is
relative to the plan's folder), one float32 ``(hidden, hidden)`` tensor per linear layer
named ``layer.<i>``, in (out, in) order; ``sha256`` ties the file to this plan, so a plan
never runs with another plan's maps. Without linear layers ``linear`` is
``{"layers": []}`` and no file is written.

``kv_groups`` names, for each layer that keeps only some of its KV groups, the groups it
keeps (group ``g`` is KV head ``g`` and query heads ``g * q_per_kv`` to
``(g + 1) * q_per_kv - 1``); a layer not named keeps all of them, a skipped or linear layer
none. It needs ``model.n_kv_heads``. Format 1 (no ``linear``) and format 2 (no
``kv_groups``) files still load, as plans that cut no groups.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from .errors import PlanError
from .files import atomic_output, check_writable, write_text_atomic

FORMAT = "hopscotch-plan/3"

#: Formats this version reads: format 1 has no linear layers, format 2 no KV-group cuts.
READABLE = ("hopscotch-plan/1", "hopscotch-plan/2", FORMAT)

Scale = Union[float, list[float]]

#: the option that applies a plan to weights other than those it was searched on
ACCEPT_FOREIGN = "--accept-foreign-plan"


@dataclass(frozen=True)
class ModelRef:
    """What a plan was made for; enough to refuse a plan meant for another model."""

    architecture: str
    n_layers: int
    hidden_size: int
    fingerprint: str
    #: KV heads per layer; needed by a plan that cuts KV groups (format 1 and 2 plans lack it)
    n_kv_heads: int | None = None

    def to_json(self) -> dict[str, Any]:
        kv = {} if self.n_kv_heads is None else {"n_kv_heads": self.n_kv_heads}
        return {
            "architecture": self.architecture,
            "n_layers": self.n_layers,
            "hidden_size": self.hidden_size,
            **kv,
            "fingerprint": self.fingerprint,
        }


@dataclass(frozen=True)
class Plan:
    """Skipped and linear attention blocks, their maps, and branch scales for one model.

    ``maps`` holds one float32 ``(hidden, hidden)`` array per layer of ``linear``, in
    (out, in) order: the block outputs ``normed_x @ W.T``. It is left out of ``==`` and
    ``repr`` (arrays have no single truth value, and are large).
    """

    model: ModelRef
    skip: tuple[int, ...]
    attn: tuple[Scale, ...]
    mlp: tuple[Scale, ...]
    provenance: dict[str, Any] = field(default_factory=dict)
    complete: bool = True
    linear: tuple[int, ...] = ()
    maps: Mapping[int, np.ndarray] = field(default_factory=dict, compare=False, repr=False)
    #: layers that keep only some KV groups -> the groups they keep (sorted)
    kv_groups: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    #: where the plan was read from (its file), for messages about it; None when made in memory
    origin: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # float32 (out, in) is the one form every consumer reads; convert once, here
        object.__setattr__(self, "maps", {k: np.asarray(v, dtype=np.float32) for k, v in self.maps.items()})
        groups = {k: tuple(sorted(v)) if all(_is_int(g) for g in v) else tuple(v) for k, v in self.kv_groups.items()}
        object.__setattr__(self, "kv_groups", dict(sorted(groups.items(), key=lambda kv: str(kv[0]).zfill(12))))
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
        """Layers whose attention branch contributes (kept or linear), so whose scale counts."""
        return [i for i in range(self.model.n_layers) if i not in self.skip]

    def kind(self, layer: int) -> Literal["keep", "skip", "linear"]:
        """What becomes of ``layer``'s attention block (a layer that keeps some KV groups is
        kept: see :meth:`kept_groups`)."""
        if layer in self.skip:
            return "skip"
        return "linear" if layer in self.linear else "keep"

    def kept_groups(self, layer: int) -> tuple[int, ...] | None:
        """The KV groups ``layer`` keeps: None for all of them, () for a skipped or linear layer."""
        if layer in self.skip or layer in self.linear:
            return ()
        return self.kv_groups.get(layer)

    def kv_saving(self) -> float | None:
        """The fraction of the original KV cache that the plan removes (every layer's KV
        heads are the same size); None when a plan cutting no groups lacks ``n_kv_heads``
        (then skipped and linear layers are the saving, as a fraction of the layers)."""
        n, kv = self.model.n_layers, self.model.n_kv_heads
        whole = len(self.skip) + len(self.linear)
        if kv is None:
            return None if self.kv_groups else whole / n
        return (whole * kv + sum(kv - len(g) for g in self.kv_groups.values())) / (n * kv)

    def attn_factor(self, layer: int) -> np.ndarray:
        """The factor folded into layer's ``attn_output`` rows (0 when skipped; for a
        linear layer, into the rows of its map)."""
        if layer in self.skip:
            return np.zeros(1, dtype=np.float64)
        return np.atleast_1d(np.asarray(self.attn[layer], dtype=np.float64))

    def mlp_factor(self, layer: int) -> np.ndarray:
        """The factor folded into layer's ``ffn_down`` rows."""
        return np.atleast_1d(np.asarray(self.mlp[layer], dtype=np.float64))

    def with_fields(self, **changes: Any) -> Plan:
        return replace(self, **changes)

    def maps_bytes(self) -> bytes:
        """The maps as the bytes of a safetensors file (deterministic: same maps, same bytes)."""
        return save_safetensors({f"layer.{i}": np.ascontiguousarray(self.maps[i]) for i in sorted(self.linear)})

    def to_json(self, maps_file: str | None = None) -> dict[str, Any]:
        """The plan file's JSON; ``maps_file`` (relative to the plan) is needed when the
        plan has linear layers, and the hash is that of :meth:`maps_bytes`."""
        return self._json(maps_file, self.maps_bytes() if self.linear else b"")

    def save(self, path: Path | str, force: bool = False) -> None:
        """Write atomically; ``force`` allows replacing existing files.

        The maps file (:func:`maps_path`) is written first, so a plan file on disk never
        names a maps file that is not there yet.
        """
        path = Path(path)
        if not self.linear:
            write_text_atomic(path, json.dumps(self.to_json(), indent=1) + "\n", force=force)
            return
        maps = maps_path(path)
        check_writable(path, force)  # before writing either file
        data = self.maps_bytes()
        with atomic_output(maps, force) as tmp:
            tmp.write_bytes(data)
        write_text_atomic(path, json.dumps(self._json(maps.name, data), indent=1) + "\n", force=force)

    def _json(self, maps_file: str | None, maps_data: bytes) -> dict[str, Any]:
        linear: dict[str, Any] = {"layers": list(self.linear)}
        if self.linear:
            if maps_file is None:
                raise ValueError("a plan with linear layers needs the name of its maps file; use Plan.save")
            linear |= {"file": maps_file, "sha256": hashlib.sha256(maps_data).hexdigest()}
        return {
            "format": FORMAT,
            "complete": self.complete,
            "model": self.model.to_json(),
            "skip": list(self.skip),
            "linear": linear,
            "kv_groups": {str(i): list(g) for i, g in self.kv_groups.items()},
            "scales": {"attn": list(self.attn), "mlp": list(self.mlp)},
            "provenance": self.provenance,
        }

    def check_model(self, model: ModelRef, accept_foreign: bool = False, fix: str | None = None) -> None:
        """Refuse a plan made for another model; ``accept_foreign`` (``--accept-foreign-plan``)
        waives only the fingerprint. ``fix`` replaces the refusal's advice where that
        option does not exist (resuming a search, the one command's reuse of its plan)."""
        mine = self.model
        for attr in ("architecture", "n_layers", "hidden_size", "n_kv_heads"):
            if attr == "n_kv_heads" and None in (mine.n_kv_heads, model.n_kv_heads):
                continue  # format 1 and 2 plans do not record it
            if getattr(mine, attr) != getattr(model, attr):
                raise PlanError(
                    f"plan was made for a model with {attr}={getattr(mine, attr)}, this model has "
                    f"{getattr(model, attr)}; run search on this model to make a plan for it"
                )
        if mine.fingerprint != model.fingerprint and not accept_foreign:
            raise PlanError(
                "plan was made for different weights (fingerprint mismatch); "
                + (fix or f"run search on this model, or pass {ACCEPT_FOREIGN} to apply it anyway")
            )


def maps_path(plan_path: Path | str) -> Path:
    """Where :meth:`Plan.save` puts the maps: ``plan.json`` -> ``plan.linear.safetensors``."""
    plan_path = Path(plan_path)
    stem = plan_path.name[: -len(".json")] if plan_path.name.endswith(".json") else plan_path.name
    return plan_path.with_name(f"{stem}.linear.safetensors")


def load_plan(path: Path | str) -> Plan:
    """Read and validate a plan file; every problem becomes a one-line :class:`PlanError`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(f"plan file {path} not found; make one with `hopscotch-export search`") from None
    except OSError as e:  # a folder, no permission
        raise PlanError(f"cannot read plan file {path} ({e.strerror}); pass the plan's .json file") from None
    except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, numbers or nesting past the parser's limits
        raise PlanError(f"plan file {path} is not valid JSON ({str(e)[:100]}); regenerate it with search") from None
    return plan_from_json(data, source=str(path), folder=path.parent)


def plan_from_json(data: Any, source: str = "plan", folder: Path | str | None = None) -> Plan:
    """Build a :class:`Plan` from parsed JSON, validating every field.

    ``folder`` is where the plan file is: the maps file of a plan with linear layers is
    named relative to it (not needed for a plan without linear layers).
    """
    if not isinstance(data, dict):
        raise PlanError(f"{source}: a plan must be a JSON object")
    fmt = data.get("format")
    if fmt not in READABLE:
        raise PlanError(
            f"{source}: unknown plan format {fmt!r}, this version reads {' and '.join(map(repr, READABLE))}; "
            "regenerate the plan with this version's search"
        )
    for key, since in (("linear", "hopscotch-plan/2"), ("kv_groups", FORMAT)):
        if key in data and READABLE.index(fmt) < READABLE.index(since):
            raise PlanError(f"{source}: a {fmt} plan has no {key!r} field; set 'format' to {FORMAT!r}")
    try:
        m = data["model"]
        model = ModelRef(
            str(m["architecture"]), m["n_layers"], m["hidden_size"], str(m["fingerprint"]), m.get("n_kv_heads")
        )
        scales = data["scales"]
        skip, attn, mlp = data["skip"], scales["attn"], scales["mlp"]
    except (KeyError, TypeError) as e:
        raise PlanError(f"{source}: missing field {e}; regenerate the plan with search") from None
    if not isinstance(skip, list) or not isinstance(attn, list) or not isinstance(mlp, list):
        raise PlanError(f"{source}: 'skip', 'scales.attn' and 'scales.mlp' must be lists")
    provenance = data.get("provenance", {})
    if not isinstance(provenance, dict):
        raise PlanError(f"{source}: 'provenance' must be an object")
    linear, maps = _linear_from_json(data.get("linear", {"layers": []}), source, folder, model.hidden_size)
    groups = _groups_from_json(data.get("kv_groups", {}), source)
    try:
        return Plan(
            model,
            tuple(skip),
            tuple(attn),
            tuple(mlp),
            provenance,
            bool(data.get("complete", True)),
            linear,
            maps,
            groups,
            origin=source,
        )
    except PlanError as e:
        raise PlanError(f"{source}: {e}") from None


def _linear_from_json(
    entry: Any, source: str, folder: Path | str | None, hidden: Any
) -> tuple[tuple[int, ...], dict[int, np.ndarray]]:
    """The linear layers and their maps, read from the maps file and checked against its hash.

    The file is the plan's own: inside its folder, a regular file (not a device or a pipe
    that never ends), and no larger than ``hidden x hidden`` float32 maps can make it."""
    layers = entry.get("layers") if isinstance(entry, dict) else None
    if not isinstance(layers, list):
        raise PlanError(f"{source}: 'linear' must be an object with a 'layers' list")
    if not layers:
        return (), {}
    if not all(_is_int(i) for i in layers):
        raise PlanError(f"{source}: linear layers must be integers, got {layers}")
    name, digest = entry.get("file"), entry.get("sha256")
    if not isinstance(name, str) or not isinstance(digest, str):
        raise PlanError(f"{source}: 'linear' needs 'file' and 'sha256' strings; save the plan with Plan.save")
    if folder is None:
        raise PlanError(f"{source}: the plan has linear layers, so its folder is needed to find {name}")
    if not _is_int(hidden) or hidden < 1:
        return tuple(layers), {}  # Plan names the bad hidden_size; no bound to read the maps with
    path = Path(folder) / name
    if not path.resolve().is_relative_to(Path(folder).resolve()):
        raise PlanError(
            f"{source}: its linear maps file {name!r} is outside the plan's folder; "
            "keep the maps file beside the plan, as search saves it"
        )
    # a map is float32 (hidden, hidden); the header names each map's dtype, shape and offsets
    bound = len(layers) * (hidden * hidden * 4 + _MAPS_HEADER_PER_MAP) + _MAPS_HEADER_BASE
    data = _read_bounded(path, bound, source)
    if hashlib.sha256(data).hexdigest() != digest:
        raise PlanError(
            f"{source}: {path} does not hold this plan's maps (sha256 mismatch); "
            "use the maps file saved with this plan or rerun search"
        )
    try:
        tensors = load_safetensors(data)
    except SafetensorError as e:
        raise PlanError(f"{source}: {path} is not a readable safetensors file ({e}); rerun search") from None
    expected = {f"layer.{i}" for i in layers}
    if set(tensors) != expected:
        raise PlanError(
            f"{source}: {path} holds {sorted(tensors)}, the plan needs {sorted(expected)}; rerun search"
        )
    return tuple(layers), {i: tensors[f"layer.{i}"] for i in layers}


def _groups_from_json(entry: Any, source: str) -> dict[int, tuple[int, ...]]:
    """``kv_groups``: an object from layer numbers (as strings) to lists of group numbers."""
    if not isinstance(entry, dict):
        raise PlanError(f"{source}: 'kv_groups' must be an object from layer to the KV groups it keeps")
    groups: dict[int, tuple[int, ...]] = {}
    for key, kept in entry.items():
        if not (isinstance(key, str) and key.isdigit() and key.isascii()) or len(key) > 9:
            raise PlanError(f"{source}: 'kv_groups' keys must be layer numbers, got {key[:20]!r}")
        if not isinstance(kept, list) or len(kept) > 4096:
            raise PlanError(f"{source}: kv_groups[{key}] must be a list of the KV groups the layer keeps")
        groups[int(key)] = tuple(kept)
    return groups


#: bytes of a maps file's safetensors header: 8 for its length, a small JSON object, and per
#: map an entry ``"layer.N":{"dtype":"F32","shape":[H,H],"data_offsets":[A,B]}``, with room
_MAPS_HEADER_BASE = 4096
_MAPS_HEADER_PER_MAP = 256


def _read_bounded(path: Path, bound: int, source: str) -> bytes:
    """The bytes of the regular file ``path``, refused when longer than ``bound``.

    Opened without blocking and checked after opening, so that a FIFO, a device or a file
    swapped in meanwhile is refused rather than read without end."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise PlanError(
            f"{source}: its linear maps file {path} is missing; copy it beside the plan or rerun search"
        ) from None
    except OSError as e:  # no permission, a loop of links
        raise PlanError(f"{source}: cannot read its linear maps file {path} ({e.strerror}); rerun search") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # before fdopen, which refuses a folder itself
        os.close(fd)
        raise PlanError(
            f"{source}: its linear maps file {path} is not a regular file; "
            "use the maps file saved with this plan or rerun search"
        )
    with os.fdopen(fd, "rb") as f:  # read() allocates what it is asked for: ask no more than is there
        data = f.read(min(bound, info.st_size) + 1)
    if len(data) > bound:
        raise PlanError(
            f"{source}: its linear maps file {path} is larger than the {bound} bytes that maps of this plan's "
            "shapes take; use the maps file saved with this plan or rerun search"
        )
    return data


def _validate(plan: Plan) -> None:
    n, hidden = plan.model.n_layers, plan.model.hidden_size
    if not _is_int(n) or n < 1 or not _is_int(hidden) or hidden < 1:
        raise PlanError("model.n_layers and model.hidden_size must be positive integers")
    _check_layers(plan.skip, "skipped", "skip", n)
    if len(plan.skip) >= n:
        raise PlanError(f"the plan skips every one of the {n} attention blocks; keep at least layer 0")
    if 0 in plan.skip:
        raise PlanError("the plan skips layer 0, which llama.cpp needs (it reads the head size there); keep it")
    _validate_linear(plan)
    _validate_groups(plan)
    for name, scales in (("attn", plan.attn), ("mlp", plan.mlp)):
        if len(scales) != n:
            raise PlanError(f"scales.{name} has {len(scales)} entries, the model has {n} layers")
        for i, s in enumerate(scales):
            _check_scale(name, i, s, hidden)


def _check_layers(layers: tuple[int, ...], adjective: str, key: str, n: int) -> None:
    """A list of layer numbers (``skip`` or ``linear``): integers, in range, each once."""
    if not all(_is_int(i) for i in layers):
        raise PlanError(f"{adjective} layers must be integers, got {list(layers)}")
    bad = [i for i in layers if not 0 <= i < n]
    if bad:
        raise PlanError(f"{adjective} layer(s) {bad} out of range: the model has layers 0..{n - 1}")
    dup = sorted({i for i in layers if layers.count(i) > 1})
    if dup:
        raise PlanError(f"layer(s) {dup} listed more than once in '{key}'")


def _validate_linear(plan: Plan) -> None:
    """Linear layers: like ``skip`` (range, duplicates, never layer 0), disjoint from it,
    and one finite float32 ``(hidden, hidden)`` map for each."""
    n, hidden = plan.model.n_layers, plan.model.hidden_size
    _check_layers(plan.linear, "linear", "linear", n)
    both = sorted(set(plan.linear) & set(plan.skip))
    if both:
        raise PlanError(f"layer(s) {both} are both skipped and linear; keep each in one list")
    if 0 in plan.linear:
        raise PlanError(
            "the plan makes layer 0 linear, but llama.cpp reads the head size from layer 0's attention; keep it"
        )
    if set(plan.maps) != set(plan.linear):
        raise PlanError(
            f"the plan has maps for layers {sorted(plan.maps)} but linear layers {sorted(plan.linear)}; "
            "give one map per linear layer"
        )
    for i, w in plan.maps.items():
        if w.shape != (hidden, hidden):
            raise PlanError(
                f"the map of linear layer {i} has shape {w.shape}, the model needs ({hidden}, {hidden}); rerun search"
            )
        if not np.isfinite(w).all():
            raise PlanError(f"the map of linear layer {i} is not finite; the search diverged, rerun it")


def _validate_groups(plan: Plan) -> None:
    """KV-group cuts: on kept layers other than 0, each a non-empty, strict subset of the
    model's groups, listed once (a layer keeping none is a skip, one keeping all is uncut)."""
    if not plan.kv_groups:
        return
    n, kv = plan.model.n_layers, plan.model.n_kv_heads
    if not _is_int(kv) or kv < 1:
        raise PlanError("a plan that cuts KV groups needs model.n_kv_heads, a positive integer; rerun search")
    layers = tuple(plan.kv_groups)
    _check_layers(layers, "KV-group", "kv_groups", n)
    clash = sorted(set(layers) & (set(plan.skip) | set(plan.linear)))
    if clash:
        raise PlanError(f"layer(s) {clash} are in 'kv_groups' and also skipped or linear; keep each in one place")
    if 0 in layers:
        raise PlanError("the plan cuts KV groups of layer 0, whose attention llama.cpp reads head sizes from; keep it whole")
    for i, kept in plan.kv_groups.items():
        if not all(_is_int(g) and 0 <= g < kv for g in kept):
            raise PlanError(f"kv_groups[{i}] must list group numbers 0..{kv - 1}, got {list(kept)[:8]}")
        if len(set(kept)) != len(kept):
            raise PlanError(f"kv_groups[{i}] lists a group more than once: {list(kept)}")
        if not 0 < len(kept) < kv:
            what = "none (skip the layer instead)" if not kept else "all of them (leave the layer out)"
            raise PlanError(f"kv_groups[{i}] keeps {what}; list the groups a partly cut layer keeps")


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
        if not _finite(v):
            raise PlanError(f"{where} is not finite ({str(v)[:20]}); the search diverged, rerun it")


def _finite(v: float) -> bool:
    """Whether ``v`` is a finite float64 (an integer too large for one is not)."""
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
