"""Output types: which GGML type each tensor gets, and which need llama.cpp's quantizer."""

from __future__ import annotations

from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from ..errors import HopscotchError

Q = GGMLQuantizationType

#: Types we write directly (gguf-py converts or quantizes them in Python).
DIRECT = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}

#: Types llama.cpp's own quantizer makes from an f16 intermediate (its mixes, its rules).
LLAMA_QUANTIZER = {
    "q4_0": LlamaFileType.MOSTLY_Q4_0,
    "q4_1": LlamaFileType.MOSTLY_Q4_1,
    "q5_0": LlamaFileType.MOSTLY_Q5_0,
    "q5_1": LlamaFileType.MOSTLY_Q5_1,
    "q2_k": LlamaFileType.MOSTLY_Q2_K,
    "q3_k_m": LlamaFileType.MOSTLY_Q3_K_M,
    "q4_k_s": LlamaFileType.MOSTLY_Q4_K_S,
    "q4_k_m": LlamaFileType.MOSTLY_Q4_K_M,
    "q5_k_s": LlamaFileType.MOSTLY_Q5_K_S,
    "q5_k_m": LlamaFileType.MOSTLY_Q5_K_M,
    "q6_k": LlamaFileType.MOSTLY_Q6_K,
}

OUTTYPES = ("auto", "source", *DIRECT, *LLAMA_QUANTIZER)

_FILE_TYPES = {
    Q.F32: LlamaFileType.ALL_F32,
    Q.F16: LlamaFileType.MOSTLY_F16,
    Q.BF16: LlamaFileType.MOSTLY_BF16,
    Q.Q8_0: LlamaFileType.MOSTLY_Q8_0,
}


@dataclass(frozen=True)
class OutputChoice:
    """What the user asked for, resolved against the source."""

    name: str
    #: None means "keep each tensor's source type" (GGUF ``source``, or Hugging Face dtypes).
    direct: GGMLQuantizationType | None
    #: set when llama.cpp's quantizer runs after an f16 intermediate.
    quantizer: LlamaFileType | None = None


def resolve_outtype(outtype: str, source_kind: str, first_dtype: GGMLQuantizationType) -> OutputChoice:
    """Pick the output type like llama.cpp's converter does for ``auto``.

    ``auto`` keeps a GGUF's quantization (no second rounding) and, for Hugging Face
    weights, is bf16 when the weights are bf16 and f16 otherwise.
    """
    name = outtype.lower()
    if name not in OUTTYPES:
        raise HopscotchError(f"unknown --outtype {outtype!r}; choose one of: {', '.join(OUTTYPES)}")
    if name == "source" or (name == "auto" and source_kind == "gguf"):
        return OutputChoice(name, None)
    if name == "auto":
        return OutputChoice(name, Q.BF16 if first_dtype == Q.BF16 else Q.F16)
    if name in LLAMA_QUANTIZER:
        return OutputChoice(name, Q.F16, LLAMA_QUANTIZER[name])
    return OutputChoice(name, DIRECT[name])


def tensor_type(choice: OutputChoice, name: str, shape: tuple[int, ...], source_type: GGMLQuantizationType) -> GGMLQuantizationType:
    """The type one tensor is written in.

    1-D tensors (norms, biases) and ``rope_freqs`` stay F32, as llama.cpp requires; a
    quantized type falls back to F16 when a row is not a whole number of blocks.
    """
    if choice.direct is None:
        return Q.F32 if len(shape) == 1 and source_type in (Q.F16, Q.BF16) else source_type
    if len(shape) == 1 or name == "rope_freqs.weight":
        return Q.F32
    block, _ = GGML_QUANT_SIZES[choice.direct]
    if shape[-1] % block:
        return Q.F16
    return choice.direct


#: Types a linear layer's map may keep from the source's ``attn_output``: the ones gguf-py
#: quantizes in Python (it has no K-quant or i-quant encoder; its ternary and MXFP4
#: encoders are for other kinds of models).
MAP_TYPES = frozenset({Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0})


def map_type(choice: OutputChoice, source_type: GGMLQuantizationType, hidden: int) -> GGMLQuantizationType:
    """The type of a linear layer's map (a new ``hidden x hidden`` ``attn_output``).

    It is made from float32, so there is no source encoding to keep: it takes the type of
    the other projections (``--outtype``, or the f16 intermediate llama.cpp quantizes), or
    with ``source``/``auto`` on a GGUF the source ``attn_output``'s type when we can encode
    it, else Q8_0; F16 when a row is not a whole number of blocks.
    """
    if choice.direct is None:
        qtype = source_type if source_type in MAP_TYPES else Q.Q8_0
        return qtype if hidden % GGML_QUANT_SIZES[qtype][0] == 0 else Q.F16
    return tensor_type(choice, "attn_output.weight", (hidden, hidden), Q.F32)


def file_type(choice: OutputChoice, types: list[GGMLQuantizationType]) -> int:
    """``general.file_type`` for the written file: the most common 2-D tensor type."""
    if choice.quantizer is not None:
        return int(choice.quantizer)
    if choice.direct is not None:
        return int(_FILE_TYPES[choice.direct])
    counts: dict[GGMLQuantizationType, int] = {}
    for t in types:
        counts[t] = counts.get(t, 0) + 1
    main = max((t for t in counts if t != Q.F32), key=lambda t: counts[t], default=Q.F32)
    try:
        return int(LlamaFileType[f"MOSTLY_{main.name}"])
    except KeyError:
        return int(LlamaFileType.GUESSED)


def nbytes(qtype: GGMLQuantizationType, shape: tuple[int, ...]) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    n = 1
    for d in shape:
        n *= d
    return n // block * size
