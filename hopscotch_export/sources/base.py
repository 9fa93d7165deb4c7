"""What every model source offers: its spec, a weight fingerprint, tensors one at a
time (plain reads), single tensors or row ranges in Hugging Face layout (streaming parity),
and a torch model for the search stage."""

from __future__ import annotations

import functools
import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType

from ..errors import SourceError
from ..families import ModelSpec
from ..plan import ModelRef
from .layout import rope_permutation

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel

#: Bytes sampled per tensor for the fingerprint: a fine-tune or a re-quantization changes
#: every tensor, so evenly spaced samples catch it without reading gigabytes.
_SAMPLES_PER_TENSOR = 16
_SAMPLE_BYTES = 256


@dataclass
class SourceTensor:
    """One tensor of a source, under its GGUF name, loaded only when asked.

    ``shape`` is in numpy order (rows last-but-one: ``(out_features, in_features)``).
    ``qtype`` is the storage type; Hugging Face tensors report F32, F16 or BF16.
    """

    name: str
    shape: tuple[int, ...]
    qtype: GGMLQuantizationType
    _load_raw: Callable[[], np.ndarray]
    _load_f32: Callable[[], np.ndarray]
    _load_rows: Callable[[int, int], np.ndarray]

    def raw(self) -> np.ndarray:
        """Storage bytes/values as the GGUF reader exposes them (GGUF sources)."""
        return self._load_raw()

    def float32(self) -> np.ndarray:
        """Dequantized float32 values shaped ``shape``."""
        return self._load_f32()

    def rows(self, start: int, stop: int) -> np.ndarray:
        """float32 rows ``start:stop`` (axis 0), reading and dequantizing only those rows."""
        if not 0 <= start <= stop <= self.shape[0]:
            raise ValueError(f"rows {start}:{stop} of {self.name}, which has {self.shape[0]}")
        return self._load_rows(start, stop)

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape))


class ModelSource(ABC):
    """A model to read: a Hugging Face folder or a GGUF file."""

    #: ``hf`` or ``gguf``
    kind: str
    path: Path
    spec: ModelSpec

    @abstractmethod
    def tensors(self) -> Iterator[SourceTensor]:
        """Every tensor under its GGUF name, in a stable order, lazily loaded."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A short hash that changes when the weights change."""

    @abstractmethod
    def load_torch(self, dtype: torch.dtype, device_map: Any = None, max_memory: Any = None) -> PreTrainedModel:
        """The model in transformers for the search; ``device_map`` / ``max_memory`` as
        accelerate takes them (spread over GPUs, offload to CPU)."""

    @abstractmethod
    def load_config(self) -> PretrainedConfig:
        """The transformers config: builds the model skeleton without loading weights."""

    def skeleton(self, dtype: torch.dtype) -> PreTrainedModel:
        """The transformers model with every parameter on the ``meta`` device (code and
        shapes); its rotary tables are real, since they are computed, not read."""
        from accelerate import init_empty_weights
        from transformers import AutoModelForCausalLM

        with init_empty_weights():
            return AutoModelForCausalLM.from_config(self.load_config(), dtype=dtype)

    @abstractmethod
    def load_tokenizer(self) -> Any:
        """The transformers tokenizer of this model."""

    @property
    def q_k_rope_neox(self) -> bool:
        """True when q/k rows are in rotate-half order and need llama.cpp's permutation."""
        return True

    def hf_tensor(self, hf_name: str) -> SourceTensor:
        """The tensor transformers calls ``hf_name``, in its layout (q/k rows in rotate-half order).

        A ``llama`` GGUF stores q/k rows in llama.cpp's NORM order; they are put back, as
        transformers' own GGUF loader does, so that the torch model computes the same thing.
        A fused tensor (Phi-3's ``qkv_proj``) is its parts stacked again.
        """
        parts = self.spec.family.split(hf_name, self.spec)
        if parts is not None:
            return _stacked(hf_name, [self.hf_tensor(part) for part, _, _ in parts])
        name = gguf_names(self.spec).get_name(hf_name, try_suffixes=(".weight", ".bias"))
        t = self._tensor_index.get(name or "")
        if t is None:
            raise SourceError(f"{self.path} has no tensor for {hf_name}; is it a complete {self.spec.architecture}?")
        m = _Q_OR_K.match(t.name)
        if m is None or self.q_k_rope_neox:
            return t
        heads = self.spec.n_heads if m.group(1) == "q" else self.spec.n_kv_heads
        return _reordered(t, np.argsort(rope_permutation(t.shape[0], heads)))

    def hf_state(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """float32 torch tensors for the transformers parameter ``names``, read one at a time."""
        import torch

        return {n: torch.from_numpy(np.require(self.hf_tensor(n).float32(), np.float32, "CW")) for n in names}

    @functools.cached_property
    def _tensor_index(self) -> dict[str, SourceTensor]:
        return {t.name: t for t in self.tensors()}

    def model_ref(self) -> ModelRef:
        s = self.spec
        return ModelRef(s.architecture, s.n_layers, s.hidden_size, self.fingerprint(), s.n_kv_heads)

    def describe(self) -> str:
        return f"{self.path}"


_Q_OR_K = re.compile(r"^blk\.\d+\.attn_([qk])\.(weight|bias)$")


def gguf_names(spec: ModelSpec) -> gguf.TensorNameMap:
    """Hugging Face -> GGUF tensor names, by the family's map (``deci`` names equal ``llama`` /
    ``qwen2`` ones; Qwen3's adds the q/k norms)."""
    return _name_map(spec.family.tensor_names, spec.n_layers)


@functools.lru_cache(maxsize=8)
def _name_map(arch: gguf.MODEL_ARCH, n_layers: int) -> gguf.TensorNameMap:
    return gguf.get_tensor_name_map(arch, n_layers)


def fused_parts(name: str, shape: tuple[int, ...], spec: ModelSpec) -> list[tuple[str, int, int]]:
    """(name, first row, end row) of each tensor that ``deci`` stores from the source tensor
    ``name``: itself whole, or the parts its family splits a fused tensor into."""
    parts = spec.family.split(name, spec)
    if parts is None:
        return [(name, 0, shape[0] if shape else 0)]
    if not shape or parts[-1][2] != shape[0]:
        raise SourceError(
            f"tensor {name} has shape {shape}, but a {spec.architecture} of these hyper-parameters stacks "
            f"{parts[-1][2]} rows in it; the model is damaged or not what its header says, re-download it"
        )
    return parts


def part_shape(shape: tuple[int, ...], first: int, end: int) -> tuple[int, ...]:
    """The shape of rows ``first:end`` of a tensor of ``shape``."""
    return (end - first, *shape[1:]) if shape else shape


def _stacked(name: str, parts: list[SourceTensor]) -> SourceTensor:
    """One tensor of ``parts`` stacked by rows (a fused tensor rebuilt from its parts)."""
    starts = np.cumsum([0] + [p.shape[0] for p in parts[:-1]])

    def rows(start: int, stop: int) -> np.ndarray:
        spans = [(p, np.clip([start - a, stop - a], 0, p.shape[0])) for p, a in zip(parts, starts)]
        return np.concatenate([p.rows(int(lo), int(hi)) for p, (lo, hi) in spans])

    shape = (sum(p.shape[0] for p in parts), *parts[0].shape[1:])
    return SourceTensor(
        name, shape, parts[0].qtype, lambda: np.concatenate([p.raw() for p in parts]),
        lambda: np.concatenate([p.float32() for p in parts]), rows,
    )  # fmt: skip


def _reordered(t: SourceTensor, order: np.ndarray) -> SourceTensor:
    """``t`` with its rows in ``order`` (``new[i] = old[order[i]]``)."""

    def rows(start: int, stop: int) -> np.ndarray:
        # a rope permutation stays within each head, so the span read is about one head
        idx = order[start:stop]
        if idx.size == 0:
            return t.rows(0, 0)
        lo = int(idx.min())
        return t.rows(lo, int(idx.max()) + 1)[idx - lo]

    def raw() -> np.ndarray:
        data = t.raw()
        return np.take(data, order, axis=-2 if data.ndim > 1 else 0)

    return SourceTensor(t.name, t.shape, t.qtype, raw, lambda: t.float32()[order], rows)


def sampled_fingerprint(header: bytes, files_ranges: Iterable[tuple[Path, int, int]]) -> str:
    """sha256 over ``header`` and evenly spaced samples of each (file, start, length) range."""
    h = hashlib.sha256(header)
    handles: dict[Path, Any] = {}
    try:
        for path, start, length in files_ranges:
            f = handles.get(path) or handles.setdefault(path, open(path, "rb"))
            n = max(1, min(_SAMPLES_PER_TENSOR, length // _SAMPLE_BYTES))
            for k in range(n):
                f.seek(start + (length - _SAMPLE_BYTES) * k // max(1, n - 1) if length > _SAMPLE_BYTES else start)
                h.update(f.read(min(_SAMPLE_BYTES, length)))
    finally:
        for f in handles.values():
            f.close()
    return h.hexdigest()[:16]
