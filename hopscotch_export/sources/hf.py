"""Hugging Face model folders (config.json + safetensors, single or sharded)."""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ..errors import SourceError
from ..families import ModelSpec
from .base import ModelSource, SourceTensor, fused_parts, gguf_names, part_shape, sampled_fingerprint
from .layout import read_rows, row_bytes

_DTYPES = {
    "F32": gguf.GGMLQuantizationType.F32,
    "F16": gguf.GGMLQuantizationType.F16,
    "BF16": gguf.GGMLQuantizationType.BF16,
}


class HfFolderSource(ModelSource):
    """A local Hugging Face model folder."""

    kind = "hf"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.config: dict[str, Any] = read_config(path)
        self.spec = ModelSpec.from_hf_config(self.config, str(path / "config.json"))
        self.files = sorted(path.glob("*.safetensors"))
        if not self.files:
            raise SourceError(
                f"{path} has no .safetensors weights; save the model with safe_serialization=True"
            )
        _check_shards(path, self.files)
        if not any((path / name).is_file() for name in _TOKENIZER_FILES):
            raise SourceError(
                f"{path} has no tokenizer ({', '.join(_TOKENIZER_FILES)}); "
                "copy the tokenizer files from the original Hugging Face repository"
            )
        self._headers = {f: _read_header(f) for f in self.files}
        self._fingerprint: str | None = None

    def _entries(self) -> list[tuple[str, str, Path, dict[str, Any], int, int]]:
        """(gguf name, hf name, file, header entry, first row, end row), sorted so blocks come
        in order; a fused tensor gives one entry per part."""
        out = []
        for f, (header, _) in self._headers.items():
            for fused, entry in header.items():
                if fused == "__metadata__" or fused.endswith("rotary_emb.inv_freq"):
                    continue
                for hf_name, first, end in fused_parts(fused, tuple(entry["shape"]), self.spec):
                    name = gguf_names(self.spec).get_name(hf_name, try_suffixes=(".weight", ".bias"))
                    if name is None:
                        raise SourceError(f"{f.name}: tensor {hf_name!r} is not part of a {self.spec.architecture}")
                    out.append((name, hf_name, f, entry, first, end))
        if self.spec.tie_embeddings:
            out = [e for e in out if e[0] != "output.weight"]
            if self.spec.folded.get("token_embd", 1.0) != self.spec.folded.get("output", 1.0):
                # the head reads the embedding, but folds another constant: it gets its own tensor
                out += [("output.weight", *e[1:]) for e in out if e[0] == "token_embd.weight"]
        return sorted(out, key=lambda e: _tensor_order(e[0]))

    def tensors(self) -> Iterator[SourceTensor]:
        for name, hf_name, f, entry, first, end in self._entries():
            if entry["dtype"] not in _DTYPES:
                raise SourceError(f"{f.name}: tensor {hf_name} has dtype {entry['dtype']}; expected F32, F16 or BF16")
            qtype = _DTYPES[entry["dtype"]]
            start = self._headers[f][1] + entry["data_offsets"][0] + first * row_bytes(qtype, tuple(entry["shape"]))
            shape = part_shape(tuple(entry["shape"]), first, end)
            yield SourceTensor(
                name,
                shape,
                qtype,
                lambda f=f, start=start, shape=shape, qtype=qtype: _read(f, start, shape, qtype),
                lambda f=f, start=start, shape=shape, qtype=qtype: _to_f32(_read(f, start, shape, qtype), qtype),
                lambda a, b, f=f, start=start, shape=shape, qtype=qtype: read_rows(f, start, shape, qtype, a, b),
            )

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            ranges = []
            header_bytes = b""
            for f, (header, data_start) in self._headers.items():
                header_bytes += json.dumps(header, sort_keys=True).encode()
                for key in sorted(k for k in header if k != "__metadata__"):
                    a, b = header[key]["data_offsets"]
                    ranges.append((f, data_start + a, b - a))
            self._fingerprint = sampled_fingerprint(header_bytes, ranges)
        return self._fingerprint

    def load_torch(self, dtype: Any, device_map: Any = None, max_memory: Any = None) -> Any:
        from transformers import AutoModelForCausalLM

        # use_kernels=False: transformers (5.25, with `kernels` installed) otherwise swaps layers for
        # Hub kernels on a GPU, downloading code at load time (and failing offline); the search
        # measures the model as written, the same on every device
        return AutoModelForCausalLM.from_pretrained(
            self.path, dtype=dtype, device_map=device_map, max_memory=max_memory, use_kernels=False
        )

    def load_config(self) -> Any:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.path)

    def load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(self.path)
        except Exception as e:  # transformers raises many kinds for damaged tokenizer files
            reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise SourceError(
                f"transformers cannot load the tokenizer in {self.path} ({type(e).__name__}: {reason}); "
                "re-download tokenizer.json and tokenizer_config.json from the original repository"
            ) from None


def _read(path: Path, start: int, shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """One tensor in its stored form (BF16 as uint8 row bytes, as GGUF readers expose it).

    A plain read, not a memory map: mapped pages stay resident once touched, so a
    streaming conversion would end up holding the whole model.
    """
    n = int(np.prod(shape)) if shape else 1
    if qtype == gguf.GGMLQuantizationType.BF16:
        data = np.fromfile(path, dtype=np.uint8, count=2 * n, offset=start)
        return data.reshape(*shape[:-1], 2 * shape[-1]) if shape else data
    dtype = np.float32 if qtype == gguf.GGMLQuantizationType.F32 else np.float16
    return np.fromfile(path, dtype=dtype, count=n, offset=start).reshape(shape)


def _to_f32(data: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    if qtype == gguf.GGMLQuantizationType.F32:
        return data
    import torch  # its dtype conversions are vectorised; numpy's float16 ones are not

    if qtype == gguf.GGMLQuantizationType.BF16:
        return torch.from_numpy(data.view(np.int16)).view(torch.bfloat16).float().numpy()
    return torch.from_numpy(data).float().numpy()


def read_config(path: Path) -> dict[str, Any]:
    """``config.json`` of the folder ``path``, checked for the values :class:`ModelSpec` reads,
    so that a damaged file is named here rather than failing later inside transformers."""
    cfg_path = path / "config.json"
    fix = "correct it or re-download the model folder"
    if not cfg_path.is_file():
        raise SourceError(f"{path} has no config.json; point at a Hugging Face model folder or a .gguf file")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except OSError as e:
        raise SourceError(f"cannot read {cfg_path} ({e.strerror}); check its permissions") from None
    except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8
        raise SourceError(f"{cfg_path} is not valid JSON ({str(e).splitlines()[0]}); {fix}") from None
    if not isinstance(cfg, dict):
        raise SourceError(f"{cfg_path} holds a JSON {type(cfg).__name__}, not an object; {fix}")
    archs = cfg.get("architectures")
    if archs is not None and not (isinstance(archs, list) and archs and all(isinstance(a, str) for a in archs)):
        raise SourceError(f'{cfg_path}: "architectures" is {archs!r}, expected a list like ["LlamaForCausalLM"]; {fix}')
    for key, kind in _CONFIG_TYPES.items():
        value = cfg.get(key)
        if value is None:
            continue  # a missing required key is named by ModelSpec, after the family check
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is not dict and value <= 0):
            expected = "an object" if kind is dict else "a positive number"
            raise SourceError(f'{cfg_path}: "{key}" is {value!r}, expected {expected}; {fix}')
    heads, kv_heads = cfg.get("num_attention_heads"), cfg.get("num_key_value_heads")
    if heads and kv_heads and heads % kv_heads:
        raise SourceError(f"{cfg_path}: {heads} attention heads do not split into {kv_heads} KV head groups; {fix}")
    if heads and cfg.get("hidden_size") and not cfg.get("head_dim") and cfg["hidden_size"] % heads:
        raise SourceError(f"{cfg_path}: hidden_size {cfg['hidden_size']} is not a multiple of {heads} heads; {fix}")
    return cfg


#: config.json values ModelSpec reads, and their JSON types (numbers must be positive)
_CONFIG_TYPES: dict[str, Any] = {
    **dict.fromkeys(("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads"), int),
    **dict.fromkeys(("num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings"), int),
    **dict.fromkeys(("rms_norm_eps", "rope_theta"), (int, float)),
    **dict.fromkeys(("rope_scaling", "rope_parameters"), dict),
}
#: any one of these makes a tokenizer (SentencePiece, tokenizers' JSON, GPT-2 style BPE)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
_INDEX = "model.safetensors.index.json"


def _check_shards(path: Path, files: list[Path]) -> None:
    """Every shard the index names is present (a download cut short leaves some out)."""
    index_path = path / _INDEX
    if not index_path.is_file():
        return
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        wanted = set(weight_map.values())
    except (ValueError, KeyError, TypeError, AttributeError):
        raise SourceError(f"{index_path} is damaged (no readable weight_map); re-download it") from None
    missing = sorted(wanted - {f.name for f in files})
    if missing:
        raise SourceError(
            f"{path} lacks {len(missing)} of the {len(wanted)} weight files {_INDEX} names ({missing[0]}, ...); "
            "re-download the model (an interrupted download leaves shards out)"
        )


#: the longest JSON header the safetensors format's reference reader accepts (its
#: ``MAX_HEADER_SIZE``); a longer one is damage, and would be read whole into memory
MAX_HEADER = 100_000_000


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The safetensors JSON header and the offset where tensor data starts; a damaged or
    truncated file is named with the fix."""
    size = path.stat().st_size
    damaged = f"{path} is not a complete safetensors file"
    fix = "re-download it (or save the model again)"
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else size
        if n > size - 8:
            raise SourceError(f"{damaged} (its header runs past the end); {fix}")
        if n > MAX_HEADER:
            raise SourceError(
                f"{path}: its header says it is {n:,} bytes long, more than the {MAX_HEADER:,} safetensors "
                f"allows; {fix}"
            )
        try:
            header = json.loads(f.read(n))
            end = max((e["data_offsets"][1] for k, e in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            raise SourceError(f"{damaged} (unreadable header); {fix}") from None
    if 8 + n + end > size:
        raise SourceError(f"{damaged} ({size} bytes, its header describes {8 + n + end}); {fix}")
    return header, 8 + n


_BLOCK = re.compile(r"^blk\.(\d+)\.")
_TOP_ORDER = {"token_embd.weight": 0, "rope_freqs.weight": 1, "output_norm.weight": 3, "output.weight": 4}


def _tensor_order(name: str) -> tuple[int, int, str]:
    """token_embd, rope_freqs, blocks in numeric order, output_norm, output."""
    m = _BLOCK.match(name)
    if m:
        return (2, int(m.group(1)), name)
    return (_TOP_ORDER.get(name, 5), 0, name)
