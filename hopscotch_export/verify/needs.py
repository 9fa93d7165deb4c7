"""What ``verify`` needs before it starts: memory for two llama.cpp models (with a context
for each KV cache type measured) and the torch parity check, and disk for a reference that
must be converted first.

Verification runs late in a long job; refusing at its start (or at the start of the one
command) in one line beats the kernel's OOM killer halfway through.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..converters.convert import choose_outtype
from ..converters.needs import convert_needs
from ..kv_cache import type_bytes
from ..resources import PROCESS_BASE, Need
from ..sources import open_source
from .alternatives import alternatives_for, check_cache_type
from .parity import PARITY_TOKENS, parity_needs
from .reference import outtype_of
from .runner import DEFAULT_BATCH

if TYPE_CHECKING:
    from .run import VerifyOptions

#: Rows of float64 log-probabilities the held-out comparison holds at once (heldout._ROWS),
#: times the temporaries alive together (both sides' log-softmax, exp, difference).
_KL_TEMPORARIES = 4 * 64 * 8


def verify_needs(
    model_gguf: Path, reference: str | Path, opts: VerifyOptions, *, model_bytes: int | None = None,
    model_outtype: str | None = None,
) -> list[Need]:  # fmt: skip
    """Needs of :func:`run_verify` in the order its phases run: converting the reference
    (disk in ``opts.work_dir`` or beside ``model_gguf``; memory), then both models in
    llama.cpp with the held-out comparison or, the larger, the parity check.

    Shapes come from the reference; the model is counted with every layer's KV cache, an
    upper bound for a file with skipped blocks. Before ``model_gguf`` exists (the one
    command's ``--dry-run``) pass its expected size and output type.
    """
    check_cache_type(opts.cache_type)
    model_gguf = Path(model_gguf)
    source = open_source(str(reference))
    spec = source.spec
    conversion: list[Need] = []
    if source.kind == "gguf":
        reference_bytes = source.path.stat().st_size
    else:
        folder = Path(opts.work_dir or model_gguf.parent)
        choice = choose_outtype(source, opts.reference_outtype or model_outtype or outtype_of(model_gguf))
        conversion = convert_needs(source, choice, folder / "reference.gguf", folder)
        reference_bytes = next(v for n in conversion for k, v in n.parts.items() if k.startswith("reference.gguf"))
    batch = min(DEFAULT_BATCH, opts.ctx)
    values = opts.ctx * spec.n_layers * 2 * spec.n_kv_heads * spec.head_dim  # K and V
    buffers = 2 * batch * spec.vocab_size * 4  # llama.cpp's logits buffer and the graph's output
    cache_types = ["f16", opts.cache_type] + [t for _, t in alternatives_for(opts.cache_type)]
    parts = {
        "process": PROCESS_BASE,
        "reference weights (mapped)": reference_bytes,
        "model weights (mapped)": model_gguf.stat().st_size if model_bytes is None else model_bytes,
        f"{len(cache_types)} llama.cpp contexts (KV cache types)": sum(
            int(values * type_bytes(t)) + buffers for t in cache_types
        ),
    }
    if opts.plan is not None:
        parity = parity_needs(spec, opts.parity_windows, min(opts.ctx, PARITY_TOKENS), source.kind)[0]
        parts |= {f"parity: {k}": v for k, v in parity.parts.items() if k != "process"}
    else:
        parts["held-out logits"] = 2 * batch * spec.vocab_size * 4 + _KL_TEMPORARIES * spec.vocab_size
    verify = Need("ram", "verify (two models in llama.cpp)", parts,
                  fix="lower --ctx or --parity-windows, or verify on a machine with more memory")
    return [verify, *conversion]  # the conversion runs first, alone: its needs are checked apart
