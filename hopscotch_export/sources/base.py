"""What every model source offers: its spec, a weight fingerprint, tensors one at a
time (memory-mapped), and a torch model for the search stage."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from gguf import GGMLQuantizationType

from ..families import ModelSpec
from ..plan import ModelRef

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

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

    def raw(self) -> np.ndarray:
        """Storage bytes/values as the GGUF reader exposes them (GGUF sources)."""
        return self._load_raw()

    def float32(self) -> np.ndarray:
        """Dequantized float32 values shaped ``shape``."""
        return self._load_f32()

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
    def load_torch(self, dtype: torch.dtype, device_map: Any = None) -> PreTrainedModel:
        """The model in transformers, for search and for torch-side references."""

    @abstractmethod
    def load_tokenizer(self) -> Any:
        """The transformers tokenizer of this model."""

    @property
    def q_k_rope_neox(self) -> bool:
        """True when q/k rows are in rotate-half order and need llama.cpp's permutation."""
        return True

    def model_ref(self) -> ModelRef:
        s = self.spec
        return ModelRef(s.architecture, s.n_layers, s.hidden_size, self.fingerprint())

    def describe(self) -> str:
        return f"{self.path}"


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
