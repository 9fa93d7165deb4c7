"""Existing ``llama`` / ``qwen2`` GGUF files, in any quantization."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ..errors import SourceError
from ..families import Family, ModelSpec, family_for
from .base import ModelSource, SourceTensor, sampled_fingerprint
from .layout import read_rows


class GgufFileSource(ModelSource):
    """A GGUF file read through gguf-py's memory-mapped reader."""

    kind = "gguf"

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.reader = gguf.GGUFReader(path, "r")
        except Exception as e:  # gguf-py raises bare ValueError/struct errors on junk
            raise SourceError(f"{path} is not a readable GGUF file ({e})") from None
        arch = self.field("general.architecture")
        if arch not in ("llama", "qwen2"):
            raise SourceError(
                f"{path} is a {arch!r} GGUF; supported GGUF architectures: llama, qwen2"
            )
        self.arch: str = arch
        self.spec = self._spec(family_for(arch))
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

    def _spec(self, family: Family) -> ModelSpec:
        a = self.arch
        names = {t.name for t in self.reader.tensors}
        heads = self.per_model(f"{a}.attention.head_count")
        hidden = self.field(f"{a}.embedding_length")
        try:
            return ModelSpec(
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
                context_length=int(self.field(f"{a}.context_length", 2048)),
                tie_embeddings="output.weight" not in names,
                attention_bias="blk.0.attn_q.bias" in names,
                mlp_bias="blk.0.ffn_down.bias" in names,
            )
        except TypeError:
            raise SourceError(f"{self.path} lacks {a}.* hyper-parameters; is it a complete model GGUF?") from None

    @property
    def q_k_rope_neox(self) -> bool:
        return self.spec.family.gguf_rope_neox

    def tensors(self) -> Iterator[SourceTensor]:
        for t in self.reader.tensors:
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))

            def raw(t: Any = t) -> np.ndarray:
                # A plain read, not the reader's memory map, whose touched pages stay resident.
                data = np.fromfile(self.path, dtype=t.data.dtype, count=t.data.size, offset=t.data_offset)
                return data.reshape(t.data.shape)

            def f32(raw: Any = raw, t: Any = t, shape: tuple[int, ...] = shape) -> np.ndarray:
                return gguf.quants.dequantize(raw(), t.tensor_type).reshape(shape).astype(np.float32, copy=False)

            def rows(start: int, stop: int, t: Any = t, shape: tuple[int, ...] = shape) -> np.ndarray:
                return read_rows(self.path, t.data_offset, shape, t.tensor_type, start, stop)

            yield SourceTensor(t.name, shape, t.tensor_type, raw, f32, rows)

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
        from accelerate import dispatch_model, infer_auto_device_map, init_empty_weights
        from accelerate.utils import set_module_tensor_to_device
        from transformers import AutoModelForCausalLM

        with init_empty_weights():  # rotary buffers stay real: they are computed, not read
            model = AutoModelForCausalLM.from_config(self.load_config(), dtype=dtype)
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

    def load_config(self) -> Any:
        """Built from the hyper-parameters already read: transformers' own GGUF config reader
        parses every metadata array, the whole vocabulary included (hundreds of MB for a
        large one), only to find these few numbers."""
        from transformers import AutoConfig

        s = self.spec
        return AutoConfig.for_model(
            s.family.gguf_arch, architectures=[s.architecture], vocab_size=s.vocab_size, hidden_size=s.hidden_size,
            intermediate_size=s.intermediate_size, num_hidden_layers=s.n_layers, num_attention_heads=s.n_heads,
            num_key_value_heads=s.n_kv_heads, head_dim=s.head_dim, rms_norm_eps=s.rms_eps, rope_theta=s.rope_theta,
            max_position_embeddings=s.context_length, tie_word_embeddings=s.tie_embeddings,
            attention_bias=s.attention_bias, mlp_bias=s.mlp_bias,
        )  # fmt: skip

    def load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.path.parent, gguf_file=self.path.name)
