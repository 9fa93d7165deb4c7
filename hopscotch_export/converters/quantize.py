"""K-quant outputs through llama.cpp's own quantizer (its type mixes and fallbacks).

llama-cpp-python exposes ``llama_model_quantize``; it accepts ``deci`` files
(docs/design.md section 2).
"""

from __future__ import annotations

import os
from pathlib import Path

from gguf import LlamaFileType

from ..errors import HopscotchError


def llama_quantize(src: Path, dst: Path, ftype: LlamaFileType, threads: int | None = None) -> None:
    """Quantize GGUF ``src`` into ``dst`` with llama.cpp; raises if llama.cpp reports failure."""
    from ..llama_lib import llama_library  # its log captured, not printed (a line per tensor)

    llama_cpp, _ = llama_library()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(ftype)
    params.nthread = threads or os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise HopscotchError(f"llama.cpp failed to quantize to {ftype.name} (code {rc}); try --outtype q8_0 or f16")
