"""Small llama.cpp helpers for tests: logits for a token sequence, KL between runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def llama_logits(path: Path | str, tokens: list[int], n_ctx: int = 256) -> np.ndarray:
    """llama.cpp's logits for every position of ``tokens``, with an f32 KV cache and flash
    attention off (CPU flash attention rounds Q to f16), so that an f32 model can be
    compared with torch to float tolerance."""
    import llama_cpp

    llm = llama_cpp.Llama(
        str(path), n_ctx=n_ctx, logits_all=True, verbose=False, flash_attn=False, n_threads=2,
        type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32,
    )
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float64)
    finally:
        llm.close()


def mean_kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """Mean over positions of KL(p || q), with verify's own divergence code."""
    from hopscotch_export.verify.divergence import log_softmax, token_kl

    return float(token_kl(log_softmax(p_logits), log_softmax(q_logits)).mean())
