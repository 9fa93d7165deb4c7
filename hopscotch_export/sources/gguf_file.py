"""Existing GGUF files of the architectures a family reads (``Family.gguf_archs``), in any quantization.

gguf-py's reader trusts every count and length in a file: a damaged array count makes it
loop for ever, a damaged string its callers fail far from the cause. :func:`scan_gguf`
walks the header first and checks each against the file's size, so a damaged or truncated
file is refused in one line before gguf-py sees it.
"""

from __future__ import annotations

import math
import mmap
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ..errors import SourceError
from ..families import Family, ModelSpec, family_for, supported_line
from .base import ModelSource, SourceTensor, fused_parts, part_shape, sampled_fingerprint
from .layout import read_rows, row_bytes


class GgufFileSource(ModelSource):
    """A GGUF file read through gguf-py's memory-mapped reader."""

    kind = "gguf"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reader = read_gguf(path)
        arch = self.field("general.architecture")
        family = family_for(str(arch), f"{path} (GGUF)")
        if arch not in family.gguf_archs:  # a Hugging Face class name where a GGUF architecture belongs
            raise SourceError(f"{path} says general.architecture={arch!r}, not a GGUF architecture. {supported_line()}")
        self.arch: str = arch
        tensors = [t.name for t in self.reader.tensors]
        family.check_gguf_experts(arch, self.field(f"{arch}.expert_count"), tensors, str(path))
        self.spec = self._spec(family)
        self.rope_freqs = self._rope_freqs(family)
        self._fingerprint: str | None = None

    def field(self, key: str, default: Any = None) -> Any:
        """A metadata value, decoded (strings as str, arrays as lists)."""
        f = self.reader.fields.get(key)
        return default if f is None else f.contents()

    def per_model(self, key: str, default: Any = None) -> Any:
        """A hyper-parameter that llama.cpp also accepts per layer; must be uniform here."""
        value = self.field(key, default)
        if isinstance(value, list):
            if len(set(value)) != 1:
                raise SourceError(f"{self.path}: {key} differs between layers; this is not a plain {self.arch} model")
            return value[0]
        return value

    def _spec(self, family: type[Family]) -> ModelSpec:
        a = self.arch
        names = {t.name for t in self.reader.tensors}
        try:
            heads = self.per_model(f"{a}.attention.head_count")
            hidden = self.field(f"{a}.embedding_length")
            window = {"max_position_embeddings": int(self.field(f"{a}.context_length", 2048)),
                      "sliding_window": self.field(f"{a}.attention.sliding_window")}  # fmt: skip
            context, notice = family.context_length(window, str(self.path))
            spec = ModelSpec(
                family=family,
                n_layers=self.field(f"{a}.block_count"),
                hidden_size=hidden,
                intermediate_size=self.per_model(f"{a}.feed_forward_length"),
                n_heads=heads,
                n_kv_heads=self.per_model(f"{a}.attention.head_count_kv", heads),
                head_dim=self.field(f"{a}.attention.key_length", hidden // heads),
                vocab_size=len(self.field("tokenizer.ggml.tokens")),
                rms_eps=float(self.field(f"{a}.attention.layer_norm_rms_epsilon", 1e-6)),
                rope_theta=float(self.field(f"{a}.rope.freq_base", 10000.0)),
                rope_scaling=self._rope_scaling(family),
                context_length=context,
                tie_embeddings="output.weight" not in names,
                attention_bias="blk.0.attn_q.bias" in names,
                mlp_bias="blk.0.ffn_down.bias" in names,
                notice=notice,
            )
        except (TypeError, ValueError, ZeroDivisionError, OverflowError):  # absent, or of the wrong type
            raise SourceError(f"{self.path} lacks {a}.* hyper-parameters; is it a complete model GGUF?") from None
        sizes = ("n_layers", "hidden_size", "intermediate_size", "n_heads", "n_kv_heads", "head_dim", "vocab_size")
        bad = [k for k in sizes if not _positive_int(getattr(spec, k))]
        if bad or spec.context_length < 1 or not math.isfinite(spec.rms_eps) or not math.isfinite(spec.rope_theta):
            raise SourceError(
                f"{self.path} has impossible hyper-parameters ({', '.join(bad) or 'context, eps or rope'}); "
                "re-download or re-convert it"
            )
        blocks = {int(m.group(1)) for m in map(_BLOCK.match, names) if m}
        if len(blocks) != spec.n_layers or max(blocks) != spec.n_layers - 1:  # blocks 0..n-1
            raise SourceError(
                f"{self.path} says {a}.block_count={spec.n_layers} but has tensors for {len(blocks)} blocks; "
                "it is damaged or incomplete, re-download or re-convert it"
            )
        rope_dims = self.field(f"{a}.rope.dimension_count", spec.head_dim)
        family.check_gguf_rope(a, rope_dims, spec.head_dim, names, str(self.path))
        family.check_spec(spec, f"{self.path} (GGUF)")
        return spec

    def _rope_scaling(self, family: type[Family]) -> dict[str, Any] | None:
        """Linear scaling as llama.cpp reads it: ``rope.scaling.factor`` (or the older
        ``rope.scale_linear``) divides positions unless ``rope.scaling.type`` is ``none``;
        a type ``deci`` cannot carry (yarn, longrope) is refused by the family, in its line."""
        a, where = self.arch, f"{self.path} (GGUF)"
        kind = str(self.field(f"{a}.rope.scaling.type", "linear")).lower()
        if kind != "linear":
            family.check_rope({"rope_type": "default" if kind == "none" else kind}, where)
        attn = self.field(f"{a}.rope.scaling.attn_factor", 1.0)
        if attn != 1.0:  # llama.cpp multiplies rope's cos and sin by it, whatever the type
            raise SourceError(
                f"{where}: {a}.rope.scaling.attn_factor={attn} scales rotated q and k, which transformers' rope "
                f"does not; not supported yet. {supported_line()}"
            )
        if kind == "none":
            return None
        factor = self.field(f"{a}.rope.scaling.factor", self.field(f"{a}.rope.scale_linear", 0.0))
        if not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor < 0:
            raise SourceError(f"{self.path}: {a}.rope.scaling.factor={factor!r} is not a factor; re-convert it")
        if factor in (0, 1):  # llama.cpp: no scaling
            return None
        rope = {"rope_type": "linear", "factor": float(factor)}
        family.check_rope(rope, where)
        return rope

    def _rope_freqs(self, family: type[Family]) -> np.ndarray | None:
        """``rope_freqs.weight``: llama.cpp divides each rotary frequency by its factor (how
        llama.cpp's converter writes Llama 3's rope scaling). The torch model gets the same
        frequencies installed (:meth:`skeleton`) rather than factors guessed back from them."""
        t = next((t for t in self.reader.tensors if t.name == "rope_freqs.weight"), None)
        if t is None:
            return None
        family.check_rope({"rope_type": "llama3"}, f"{self.path} (GGUF, rope_freqs.weight)")
        factors = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).ravel()
        if factors.size != self.spec.head_dim // 2 or not (np.isfinite(factors).all() and (factors > 0).all()):
            raise SourceError(
                f"{self.path}: rope_freqs.weight holds {factors.size} values, not {self.spec.head_dim // 2} positive "
                "factors (one per rotary frequency); re-download or re-convert it"
            )
        return factors

    @property
    def q_k_rope_neox(self) -> bool:
        return self.spec.family.gguf_rope_neox

    def tensors(self) -> Iterator[SourceTensor]:
        for t in self.reader.tensors:
            whole = tuple(int(d) for d in reversed(t.shape.tolist()))
            for name, first, end in fused_parts(t.name, whole, self.spec):  # a fused tensor: its parts
                yield self._tensor(t, name, part_shape(whole, first, end), first * row_bytes(t.tensor_type, whole))

    def _tensor(self, t: Any, name: str, shape: tuple[int, ...], skip: int) -> SourceTensor:
        """Rows of the reader's tensor ``t``: ``shape`` from ``skip`` bytes into its data."""
        offset = t.data_offset + skip
        stored = (shape[0], *t.data.shape[1:]) if len(shape) > 1 else t.data.shape  # quantized rows are bytes

        def raw() -> np.ndarray:
            # A plain read, not the reader's memory map, whose touched pages stay resident.
            return np.fromfile(self.path, dtype=t.data.dtype, count=math.prod(stored), offset=offset).reshape(stored)

        def f32() -> np.ndarray:
            return gguf.quants.dequantize(raw(), t.tensor_type).reshape(shape).astype(np.float32, copy=False)

        def rows(start: int, stop: int) -> np.ndarray:
            return read_rows(self.path, offset, shape, t.tensor_type, start, stop)

        return SourceTensor(name, shape, t.tensor_type, raw, f32, rows)

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            header = "".join(
                f"{t.name}:{t.tensor_type.name}:{t.shape.tolist()};" for t in self.reader.tensors
            ).encode()
            ranges = [(self.path, t.data_offset, t.n_bytes) for t in self.reader.tensors]
            self._fingerprint = sampled_fingerprint(header, ranges)
        return self._fingerprint

    def load_torch(self, dtype: Any, device_map: Any = None, max_memory: Any = None) -> Any:
        """Built tensor by tensor from the file: transformers' own GGUF loader dequantizes
        every tensor to float32 first (32 GB for an 8B Q4_K_M file); here one tensor at a
        time is float32, the model holds ``dtype``."""
        import torch
        from accelerate import dispatch_model, infer_auto_device_map
        from accelerate.utils import set_module_tensor_to_device

        model = self.skeleton(dtype)
        for name, _ in list(model.named_parameters()):
            if name == "lm_head.weight" and self.spec.tie_embeddings:
                continue  # the embedding, tied below
            value = torch.from_numpy(np.require(self.hf_tensor(name).float32(), np.float32, "CW")).to(dtype)
            set_module_tensor_to_device(model, name, "cpu", value=value)
        if self.spec.tie_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        model.eval()
        if device_map in (None, "cpu"):
            return model
        if isinstance(device_map, dict) and set(device_map) == {""}:
            return model.to(torch.device("cuda", device_map[""]) if isinstance(device_map[""], int) else device_map[""])
        if device_map == "mps":
            return model.to("mps")
        placed = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=model._no_split_modules)
        return dispatch_model(model, placed)

    def skeleton(self, dtype: Any) -> Any:
        """With ``rope_freqs``, the rotary frequencies llama.cpp computes: each divided by its factor."""
        import torch

        model = super().skeleton(dtype)
        if self.rope_freqs is not None:
            rotary = model.model.rotary_emb
            rotary.inv_freq = rotary.inv_freq / torch.from_numpy(self.rope_freqs).to(rotary.inv_freq)
            rotary.original_inv_freq = rotary.inv_freq
        return model

    def load_config(self) -> Any:
        """Built from the hyper-parameters already read: transformers' own GGUF config reader
        parses every metadata array, the whole vocabulary included (hundreds of MB for a
        large one), only to find these few numbers."""
        from transformers import AutoConfig

        s = self.spec
        return AutoConfig.for_model(
            s.family.model_type, architectures=[s.architecture], vocab_size=s.vocab_size, hidden_size=s.hidden_size,
            intermediate_size=s.intermediate_size, num_hidden_layers=s.n_layers, num_attention_heads=s.n_heads,
            num_key_value_heads=s.n_kv_heads, head_dim=s.head_dim, rms_norm_eps=s.rms_eps, rope_theta=s.rope_theta,
            max_position_embeddings=s.context_length, tie_word_embeddings=s.tie_embeddings, rope_scaling=s.rope_scaling,
            attention_bias=s.attention_bias, mlp_bias=s.mlp_bias,
        )  # fmt: skip

    def load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.path.parent, gguf_file=self.path.name)


#: GGUF value types: struct format of each scalar type; 8 is a string, 9 an array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
#: ggml's limit on tensor dimensions, and the deepest array of arrays read.
_MAX_DIMS, _MAX_NESTING = 4, 4


@dataclass(frozen=True)
class GgufHeader:
    """What a GGUF header holds, every count and extent checked against the file."""

    #: key -> value; string arrays (the vocabulary) and nested arrays as their length
    metadata: dict[str, Any]
    #: tensor name -> (type, shape in GGUF order, byte offset in the file, bytes)
    tensors: dict[str, tuple[gguf.GGMLQuantizationType, tuple[int, ...], int, int]]


_BLOCK = re.compile(r"^blk\.(\d+)\.")


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


class _Damaged(Exception):
    """The header contradicts itself or the file's size."""


def read_gguf(path: Path) -> gguf.GGUFReader:
    """gguf-py's reader for ``path``, after :func:`scan_gguf` has found its header sound."""
    scan_gguf(path)
    try:
        return gguf.GGUFReader(path, "r")
    except Exception as e:  # anything the scan did not foresee: still the file's fault
        raise SourceError(
            f"{path} is not a readable GGUF file ({type(e).__name__}: {e}); re-download or re-convert it"
        ) from None


def scan_gguf(path: Path) -> GgufHeader:
    """Walk the header of ``path`` without trusting it; raise :class:`SourceError` (one
    line) on a truncated or damaged file. Reads the header only (the vocabulary's strings
    are checked to be UTF-8, as gguf-py decodes them), never tensor data."""
    try:
        with open(path, "rb") as f:
            if f.seek(0, 2) < 24:
                raise _Damaged("shorter than a GGUF header")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _Scanner(buf).header()
    except _Damaged as e:
        raise SourceError(f"{path} is not a readable GGUF file ({e}); re-download or re-convert it") from None
    except OSError as e:
        raise SourceError(f"cannot read {path} ({e.strerror}); check the path and its permissions") from None


class _Scanner:
    """A cursor over a GGUF header that refuses any count or length the file cannot hold."""

    def __init__(self, buf: mmap.mmap) -> None:
        self.buf, self.pos, self.order = buf, 0, "<"

    def header(self) -> GgufHeader:
        magic, version = struct.unpack_from("<4sI", self.buf, 0)
        if magic != b"GGUF":
            raise _Damaged("no GGUF magic at its start")
        if version & 0xFFFF == 0:  # written on a big-endian machine
            self.order, version = ">", struct.unpack_from(">I", self.buf, 4)[0]
        if version not in (2, 3):
            raise _Damaged(f"GGUF version {version}; versions 2 and 3 are read")
        self.pos = 8
        n_tensors, n_kv = self.take("Q"), self.take("Q")
        self.room(n_kv, 13, "metadata entries")  # smallest entry: empty key, type, one byte
        self.room(n_tensors, 24, "tensors")  # smallest tensor info: empty name, no dims, type, offset
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self.string()
            if key in metadata:
                raise _Damaged(f"metadata key {key!r} appears twice")
            metadata[key] = self.value(self.take("I"), 0)
        infos = [self.tensor_info() for _ in range(n_tensors)]
        alignment = metadata.get("general.alignment", 32)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise _Damaged(f"general.alignment {alignment!r} is not a power of two")
        start = -(-self.pos // alignment) * alignment
        tensors: dict[str, tuple[gguf.GGMLQuantizationType, tuple[int, ...], int, int]] = {}
        for name, qtype, dims, offset, nbytes in infos:
            if name in tensors:
                raise _Damaged(f"tensor {name!r} appears twice")
            if start + offset + nbytes > len(self.buf):
                raise _Damaged(f"tensor {name!r} lies beyond the end of the file (truncated?)")
            tensors[name] = (qtype, dims, start + offset, nbytes)
        return GgufHeader(metadata, tensors)

    def room(self, count: int, size: int, what: str) -> None:
        if count * size > len(self.buf) - self.pos:
            raise _Damaged(f"it claims {count} {what}, more than the file can hold (truncated or damaged)")

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise _Damaged("it ends inside its header (truncated?)")
        (value,) = struct.unpack_from(self.order + fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.take("Q")
        self.room(n, 1, "bytes in a string")
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Damaged(f"a string at byte {self.pos - n} is not UTF-8") from None

    def value(self, vtype: int, depth: int) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype])
        if vtype != _ARRAY or depth >= _MAX_NESTING:
            raise _Damaged(f"unknown metadata value type {vtype} at byte {self.pos - 4}")
        etype, count = self.take("I"), self.take("Q")
        if etype in _SCALARS:
            size = struct.calcsize(_SCALARS[etype])
            self.room(count, size, "array items")
            values = struct.unpack_from(f"{self.order}{count}{_SCALARS[etype]}", self.buf, self.pos)
            self.pos += count * size
            return list(values)
        self.room(count, 8 if etype == _STRING else 12, "array items")  # a length, or a type and a count
        for _ in range(count):
            self.value(etype, depth + 1)
        return count

    def tensor_info(self) -> tuple[str, gguf.GGMLQuantizationType, tuple[int, ...], int, int]:
        name = self.string()
        n_dims = self.take("I")
        if n_dims > _MAX_DIMS:
            raise _Damaged(f"tensor {name!r} has {n_dims} dimensions, ggml allows {_MAX_DIMS}")
        dims = tuple(self.take("Q") for _ in range(n_dims))
        raw_type, offset = self.take("I"), self.take("Q")
        try:
            qtype = gguf.GGMLQuantizationType(raw_type)
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise _Damaged(f"tensor {name!r} has unknown type {raw_type}") from None
        if dims and dims[0] % block:
            raise _Damaged(f"tensor {name!r} has rows of {dims[0]}, not whole {qtype.name} blocks of {block}")
        nbytes = math.prod(dims) * type_size // block
        if offset + nbytes > len(self.buf):
            raise _Damaged(f"tensor {name!r} lies beyond the end of the file (truncated?)")
        return name, qtype, dims, offset, nbytes
