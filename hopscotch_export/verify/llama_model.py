"""One GGUF in llama.cpp (through llama-cpp-python's C API): tokenize, decode, logits.

The low-level API is used rather than ``llama_cpp.Llama`` because verification needs
logits for chosen positions only (as ``llama-perplexity`` asks for them), read in place
batch by batch, and several contexts on one loaded model. The KV cache size is computed from the file's own
metadata and only cross-checked against the figure llama.cpp logs. Flash attention is on
unless asked otherwise: without it llama.cpp pads the V cache of every layer and removed
blocks keep their V cache (docs/design.md section 2; kv_cache.py models both layouts).
Several contexts may share one loaded model (``share=``): the same weights measured with
another KV cache type cost a context, not a second copy of the model.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import gguf
import numpy as np

from ..errors import HopscotchError
from ..kv_cache import kv_bytes_per_cell
from ..llama_lib import default_threads, llama_library
from ..sources.gguf_file import scan_gguf

#: Tokens per ``llama_decode`` call: one llama.cpp micro-batch, so that the logits held
#: in memory at once stay small (rows x vocabulary x 4 bytes).
DEFAULT_BATCH = 512

#: llama.cpp's report of a new context's KV cache (``llama_kv_cache: size = 11.25 MiB (512
#: cells, ...``); only a cross-check: a changed message must not break verification.
_KV_LINE = re.compile(r"kv_cache\w*: size = +([\d.]+) MiB \( *(\d+) cells")

#: V cache types llama.cpp can use without flash attention
_UNQUANTIZED = ("f16", "f32", "bf16")


@dataclass(frozen=True)
class KvCacheInfo:
    """The KV cache of one context, computed from the file's own metadata: per-layer K/V
    widths x the context's cells x the cache type's size.

    Where llama.cpp logs its own (rounded) figure, the two are compared: a difference is
    kept in ``warning`` for the report rather than failing the verification.
    """

    bytes: int
    cells: int
    #: layers that hold K/V (llama.cpp counts skipped ones too, with zero width)
    layers: int
    type_k: str
    type_v: str
    #: what llama.cpp logged, or None when no such line was found
    llama_mib: float | None
    warning: str | None = None
    #: the same cache with flash attention off (every layer's V padded to the widest); None
    #: where llama.cpp needs flash attention for the V type (a quantized V cache)
    flash_off_bytes: int | None = None
    flash_attn: bool = True

    @property
    def bytes_per_token(self) -> int:
        return self.bytes // self.cells

    def to_json(self) -> dict[str, Any]:
        return {
            "bytes": self.bytes,
            "bytes_per_token": self.bytes_per_token,
            "cells": self.cells,
            "layers": self.layers,
            "type_k": self.type_k,
            "type_v": self.type_v,
            "flash_attention": self.flash_attn,
            "flash_attention_off_bytes": self.flash_off_bytes,
            "llama_cpp_mib": self.llama_mib,
            "warning": self.warning,
        }


class Timing(NamedTuple):
    """Wall-clock seconds, and CPU seconds this process used meanwhile (all its threads).

    On a shared machine the wall clock also counts time other programs held the cores;
    CPU time counts only the work done (on a CPU-only run), so it is the steadier
    measure of what skipping saves.
    """

    wall: float
    cpu: float


@contextlib.contextmanager
def _vocabulary_only(path: Path) -> Iterator[Any]:
    """``path`` loaded without its weights (vocabulary and metadata): cheap, and no context
    (a context would need the weights and log a misleading context-size warning)."""
    lib, _ = llama_library()
    mparams = lib.llama_model_default_params()
    mparams.vocab_only = True
    model = _load_model(path, mparams)
    try:
        yield model
    finally:
        lib.llama_model_free(model)


@dataclass(frozen=True)
class Tokenized:
    """A text as one file's vocabulary tokenizes it (BOS added when the vocabulary asks)."""

    tokens: list[int]
    n_vocab: int
    bos: int
    add_bos: bool


def tokenize_file(path: Path, text: str) -> Tokenized:
    """Tokenize ``text`` with ``path``'s vocabulary, without loading its weights: verify
    checks that two files tokenize alike before it loads either."""
    lib, _ = llama_library()
    with _vocabulary_only(path) as model:
        vocab = lib.llama_model_get_vocab(model)
        add_bos = bool(lib.llama_vocab_get_add_bos(vocab))
        return Tokenized(_tokenize(lib, vocab, text, True), lib.llama_vocab_n_tokens(vocab),
                         lib.llama_vocab_bos(vocab), add_bos)  # fmt: skip


def chat_format(path: Path) -> tuple[str | None, str | None]:
    """(chat template, end-of-sequence token text) as llama.cpp reads them from ``path``,
    from its vocabulary and metadata only."""
    lib, _ = llama_library()
    with _vocabulary_only(path) as model:
        buf = ctypes.create_string_buffer(1 << 16)
        n = lib.llama_model_meta_val_str(model, b"tokenizer.chat_template", buf, len(buf))
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            n = lib.llama_model_meta_val_str(model, b"tokenizer.chat_template", buf, len(buf))
        template = buf.value.decode("utf-8", "replace") if n >= 0 else None
        vocab = lib.llama_model_get_vocab(model)
        eos_id = lib.llama_vocab_eos(vocab)
        eos = None
        if eos_id >= 0:
            piece = ctypes.create_string_buffer(256)
            m = lib.llama_token_to_piece(vocab, eos_id, piece, len(piece), 0, True)
            eos = piece.raw[:m].decode("utf-8", "replace") if m > 0 else None
        return template, eos


def _load_model(path: Path, mparams: Any) -> Any:
    """``llama_model_load_from_file``, with llama.cpp's own reason when it fails."""
    lib, log = llama_library()
    mark = log.count
    model = lib.llama_model_load_from_file(str(path).encode(), mparams)
    if not model:
        raise HopscotchError(f"llama.cpp could not load {path}: {_last_error(log.since(mark))}")
    return model


def gpu_offload_available() -> bool:
    """Whether the installed llama-cpp-python was built with a GPU backend (CUDA, Metal...)."""
    llama_cpp, _ = llama_library()
    return bool(llama_cpp.llama_supports_gpu_offload())


def gpu_layers_for(asked: int | None) -> tuple[int, str]:
    """Layers llama.cpp offloads (-1: all) and, in words, where it runs and why: ``asked``
    (``--gpu-layers``), or by default all when llama.cpp was built with GPU offload, else none."""
    if asked is not None:
        where = "all layers" if asked < 0 else f"{asked} layer(s)"
        return asked, f"{where} on the GPU (--gpu-layers {asked})" if asked else "CPU only (--gpu-layers 0)"
    if gpu_offload_available():
        return -1, "all layers on the GPU (default: this llama.cpp has GPU offload)"
    return 0, "CPU only (default: this llama-cpp-python was built without GPU offload)"


class LlamaModel:
    """A GGUF's weights loaded in llama.cpp (``gpu_layers`` offloaded; -1 = all), for
    sessions to share (``LlamaSession(share=...)``); freed by :meth:`close`, after them."""

    def __init__(self, path: Path, gpu_layers: int = 0) -> None:
        lib, _ = llama_library()
        self._lib = lib
        self.path = Path(path)
        if gpu_layers and not lib.llama_supports_gpu_offload():
            raise HopscotchError(
                "--gpu-layers needs a llama-cpp-python built with CUDA or Metal; this one is CPU only "
                '(reinstall with CMAKE_ARGS="-DGGML_CUDA=on") or drop --gpu-layers'
            )
        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = 0x7FFFFFFF if gpu_layers < 0 else gpu_layers
        self._model = _load_model(self.path, mparams)

    def __enter__(self) -> LlamaModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Free the weights; safe to call twice."""
        if self._model:
            self._lib.llama_model_free(self._model)
        self._model = None


class LlamaSession:
    """A GGUF loaded in llama.cpp with one context of ``n_ctx`` tokens (one sequence).

    ``cache_type`` is the K and V cache type (``-ctk/-ctv``); ``share`` a loaded model (or
    another session's) that this one uses instead of loading its own (its path and GPU
    layers then apply; close this session first).
    """

    def __init__(
        self,
        path: Path,
        *,
        n_ctx: int,
        n_threads: int | None = None,
        gpu_layers: int = 0,
        n_batch: int = DEFAULT_BATCH,
        cache_type: str = "f16",
        flash_attn: bool = True,
        share: LlamaSession | LlamaModel | None = None,
    ) -> None:
        llama_cpp, log = llama_library()
        self._lib = llama_cpp
        self.path = Path(path)
        self._ctx = None
        self._batch = None
        self._own = LlamaModel(self.path, gpu_layers) if share is None else None
        model = self._own or (share.model if isinstance(share, LlamaSession) else share)
        self.model: LlamaModel = model
        self._model = model._model
        try:
            self._vocab = llama_cpp.llama_model_get_vocab(self._model)
            self.n_vocab: int = llama_cpp.llama_vocab_n_tokens(self._vocab)
            self.add_bos: bool = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))
            self.bos: int = llama_cpp.llama_vocab_bos(self._vocab)
            self.eos: int = llama_cpp.llama_vocab_eos(self._vocab)
            threads = n_threads or default_threads()
            self.n_batch = min(n_batch, n_ctx)
            cparams = llama_cpp.llama_context_default_params()
            cparams.n_ctx = n_ctx
            cparams.n_batch = self.n_batch
            cparams.n_ubatch = self.n_batch
            cparams.n_seq_max = 1
            cparams.n_threads = threads
            cparams.n_threads_batch = threads
            cparams.flash_attn_type = (
                llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
            )
            cparams.type_k = cparams.type_v = gguf.GGMLQuantizationType[cache_type.upper()].value
            mark = log.count
            self._ctx = llama_cpp.llama_init_from_model(self._model, cparams)
            if not self._ctx:
                raise HopscotchError(
                    f"llama.cpp could not create a {n_ctx}-token context with a {cache_type} KV cache for "
                    f"{self.path}: {_last_error(log.since(mark))}"
                )
            self.n_ctx: int = llama_cpp.llama_n_ctx(self._ctx)
            self.kv_cache = _kv_cache_info(self.path, self.n_ctx, cache_type, flash_attn, log.since(mark))
            self._memory = llama_cpp.llama_get_memory(self._ctx)
            self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> LlamaSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Free the batch, the context and (unless shared) the model; safe to call twice."""
        lib = self._lib
        if self._batch is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            lib.llama_free(self._ctx)
            self._ctx = None
        if self._own is not None:
            self._own.close()
        self._model = None

    @property
    def file_bytes(self) -> int:
        return self.path.stat().st_size

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """llama.cpp's tokenization; ``add_special`` adds BOS when the vocabulary asks for it.

        Special-token text in ``text`` is not parsed (as ``llama-perplexity`` does).
        """
        return _tokenize(self._lib, self._vocab, text, add_special)

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> str:
        """llama.cpp's text of ``tokens``; special tokens (BOS, end of turn) are left out unless
        ``special``. A character cut between tokens decodes as U+FFFD."""
        ids = (self._lib.llama_token * len(tokens))(*tokens)
        cap = 8 * len(tokens) + 16
        while True:
            buf = ctypes.create_string_buffer(cap)
            n = self._lib.llama_detokenize(self._vocab, ids, len(tokens), buf, cap, False, special)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", errors="replace")
            cap = -n

    def is_end(self, token: int) -> bool:
        """Whether ``token`` ends generation (end of sequence or of turn), as llama.cpp decides."""
        return bool(self._lib.llama_vocab_is_eog(self._vocab, token))

    def clear(self) -> None:
        """Forget every cached token: the next decode starts a new sequence."""
        self._lib.llama_memory_clear(self._memory, True)

    def truncate(self, n_pos: int) -> None:
        """Drop cached positions ``n_pos`` and later, keeping the prefix before them."""
        self._lib.llama_memory_seq_rm(self._memory, 0, n_pos, -1)

    def decode(
        self, tokens: Sequence[int], start: int, outputs: Sequence[bool] | None = None, *, copy: bool = True
    ) -> np.ndarray:
        """Append ``tokens`` at positions ``start``.. and return logits where ``outputs`` is true.

        Returns float32 ``(n_outputs, n_vocab)``, in token order. At most ``n_batch``
        tokens per call, so that one call is one llama.cpp micro-batch. ``copy=False``
        returns llama.cpp's own buffer, valid until the next decode (no second copy of a
        batch of logits in memory).
        """
        n = len(tokens)
        if not 0 < n <= self.n_batch:
            raise ValueError(f"decode takes 1..{self.n_batch} tokens, got {n}")
        if start + n > self.n_ctx:
            raise ValueError(f"positions {start}..{start + n - 1} exceed the context of {self.n_ctx}")
        flags = [False] * n if outputs is None else list(outputs)
        b = self._batch
        b.n_tokens = n
        for i, tok in enumerate(tokens):
            b.token[i] = tok
            b.pos[i] = start + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = flags[i]
        rc = self._lib.llama_decode(self._ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc} on {self.path}")
        n_out = sum(flags)
        if n_out == 0:
            return np.empty((0, self.n_vocab), dtype=np.float32)
        ptr = self._lib.llama_get_logits(self._ctx)
        logits = np.ctypeslib.as_array(ptr, shape=(n_out, self.n_vocab))
        return logits.copy() if copy else logits

    def timed_decode(self, tokens: Sequence[int], start: int) -> Timing:
        """Time llama.cpp takes to process ``tokens`` (logits for the last one only).

        Longer inputs go in ``n_batch`` pieces, as llama.cpp's own tools process prompts.
        """
        wall = cpu = 0.0
        for i in range(0, len(tokens), self.n_batch):
            piece = tokens[i : i + self.n_batch]
            last = i + len(piece) == len(tokens)
            outputs = [False] * (len(piece) - 1) + [last]
            w0, c0 = time.perf_counter(), time.process_time()
            self.decode(piece, start + i, outputs)
            self._lib.llama_synchronize(self._ctx)
            wall += time.perf_counter() - w0
            cpu += time.process_time() - c0
        return Timing(wall, cpu)


def _tokenize(lib: Any, vocab: Any, text: str, add_special: bool) -> list[int]:
    """llama.cpp's tokenization of ``text`` with ``vocab`` (see :meth:`LlamaSession.tokenize`)."""
    data = text.encode("utf-8")
    cap = len(data) + 8
    buf = (lib.llama_token * cap)()
    n = lib.llama_tokenize(vocab, data, len(data), buf, cap, add_special, False)
    if n < 0:
        raise RuntimeError(f"llama_tokenize needs {-n} tokens, more than the {cap} allotted")
    return list(buf[:n])


def _last_error(lines: list[str]) -> str:
    """The most telling line llama.cpp logged, for a one-line error."""
    for key in ("error", "failed", "unknown", "not "):  # "... does not divide n_embd_head_k=16"
        for line in reversed(lines):
            if key in line.lower():
                return line.strip()
    return "see llama.cpp's log (no error line captured); is it a complete GGUF?"


def _kv_cache_info(path: Path, cells: int, cache_type: str, flash_attn: bool, lines: list[str]) -> KvCacheInfo:
    """The KV cache of ``cells`` positions from the file's metadata, checked against the size
    llama.cpp logged in ``lines`` when it did; with the flash-attention-off figure beside it."""
    meta = scan_gguf(path).metadata
    per_cell, layers = kv_bytes_per_cell(meta, cache_type, cache_type, flash_attn=flash_attn)
    exact = cells * per_cell
    flash_off = cells * kv_bytes_per_cell(meta, cache_type, cache_type, flash_attn=False)[0]
    info = KvCacheInfo(exact, cells, layers, cache_type, cache_type, None, None,
                       flash_off if cache_type in _UNQUANTIZED else None, flash_attn)  # fmt: skip
    reported = next((m for m in map(_KV_LINE.search, lines) if m), None)
    if reported is None:
        return info
    mib, llama_cells = float(reported[1]), int(reported[2])
    warning = None
    if llama_cells != cells or abs(exact / 2**20 - mib) > 0.006:  # llama.cpp prints two decimals
        warning = (
            f"llama.cpp reports a KV cache of {mib:.2f} MiB for {llama_cells} cells, the file's metadata gives "
            f"{exact / 2**20:.2f} MiB for {cells}; the metadata figure is reported"
        )
    return dataclasses.replace(info, llama_mib=mib, warning=warning)
