"""K-quant and i-quant outputs through llama.cpp's own quantizer (its type mixes and
fallbacks), and single tensors through ggml's (types gguf-py cannot encode: K-quants, i-quants).

llama-cpp-python exposes ``llama_model_quantize``; it accepts ``deci`` files
(docs/design.md section 2). Its parameters hold an importance matrix only as a pointer to a
C++ ``std::unordered_map``, which Python cannot build, so the types that need one are left
to the ``llama-quantize`` command (:func:`imatrix_command`). ``ggml_quantize_chunk`` is in
the ``libggml-base`` it ships.
"""

from __future__ import annotations

import ctypes
import functools
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from ..errors import HopscotchError


#: the line llama.cpp's quantizer logs as it starts each tensor: ``[  12/  75] blk.1.attn_q.weight ...``
_TENSOR_LINE = re.compile(r"^\[\s*\d+/\s*\d+\]")


def llama_quantize(
    src: Path, dst: Path, ftype: LlamaFileType, threads: int | None = None,
    on_tensor: Callable[[], None] = lambda: None,
) -> None:  # fmt: skip
    """Quantize GGUF ``src`` into ``dst`` with llama.cpp on ``threads`` (default: the cores
    this process may use); ``on_tensor`` is called as each tensor starts. Raises if
    llama.cpp reports failure."""
    from ..llama_lib import default_threads, llama_library  # its log captured, not printed (a line per tensor)

    llama_cpp, log = llama_library()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(ftype)
    params.nthread = threads or default_threads()
    with log.listening(lambda line: on_tensor() if _TENSOR_LINE.match(line) else None):
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise HopscotchError(f"llama.cpp failed to quantize to {ftype.name} (code {rc}); try --outtype q8_0 or f16")


def imatrix_command(f16: Path, imatrix: Path, ftype: LlamaFileType) -> str:
    """The ``llama-quantize`` command that makes ``ftype`` from our f16 output with an
    importance matrix (beside it, named ``<stem>-<TYPE>.gguf``)."""
    kind = ftype.name.removeprefix("MOSTLY_")
    out = f16.with_name(f"{f16.stem}-{kind}.gguf")
    files = " ".join(shlex.quote(str(p)) for p in (imatrix, f16, out))
    return f"llama-quantize --imatrix {files} {kind}"


def ggml_quantize(x: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """float32 rows ``x`` (2-D, rows whole blocks) encoded by ggml as ``qtype``: ``uint8``
    rows of blocks, the layout gguf-py's writer takes."""
    block, size = GGML_QUANT_SIZES[qtype]
    rows, width = x.shape
    if width % block:
        raise ValueError(f"rows of {width} are not whole {block}-wide {qtype.name} blocks")
    src = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty((rows, width // block * size), dtype=np.uint8)
    written = _quantize_chunk()(int(qtype), src.ctypes.data, out.ctypes.data, 0, rows, width, None)
    if written != out.nbytes:
        raise HopscotchError(f"ggml could not quantize to {qtype.name}; try --outtype q8_0 or f16")
    return out


@functools.lru_cache(maxsize=1)
def _quantize_chunk() -> Any:
    """``ggml_quantize_chunk`` from the ggml that llama-cpp-python ships."""
    from ..llama_lib import llama_library

    llama_cpp, _ = llama_library()
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    found = sorted(lib_dir.glob("*ggml-base.*"))
    if not found:
        raise HopscotchError(f"no ggml-base library in {lib_dir}; reinstall llama-cpp-python")
    lib = ctypes.CDLL(str(found[0]))
    fn = lib.ggml_quantize_chunk
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                   ctypes.c_void_p]  # fmt: skip
    return fn
