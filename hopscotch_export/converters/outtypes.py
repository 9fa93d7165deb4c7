"""Output types: which GGML type each tensor gets, and which need llama.cpp's quantizer."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from ..errors import HopscotchError

Q = GGMLQuantizationType

#: Types we write directly (gguf-py converts or quantizes them in Python).
DIRECT = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}

def _file_types(*names: str) -> dict[str, LlamaFileType]:
    return {n.lower(): LlamaFileType[f"MOSTLY_{n}"] for n in names}


#: Types llama.cpp's own quantizer makes from an f16 intermediate (its mixes, its rules):
#: every one ``llama_model_quantize`` makes without an importance matrix, but MXFP4_MOE
#: (mixtures of experts, which deci cannot hold) and NVFP4 (it fails on CPU builds).
LLAMA_QUANTIZER = _file_types(
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S",
    "Q5_K_M", "Q6_K", "IQ3_S", "IQ3_M", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "Q1_0",
)
#: Types llama.cpp quantizes only with an importance matrix (``llama-imatrix``'s file), which
#: llama-cpp-python cannot hand to it: ``--imatrix FILE`` writes f16 and prints the
#: ``llama-quantize`` command that makes them (:func:`.quantize.imatrix_command`).
IMATRIX_ONLY = _file_types("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "Q2_K_S")

OUTTYPES = ("auto", "source", *DIRECT, *LLAMA_QUANTIZER, *IMATRIX_ONLY)

_FILE_TYPES = {
    Q.F32: LlamaFileType.ALL_F32,
    Q.F16: LlamaFileType.MOSTLY_F16,
    Q.BF16: LlamaFileType.MOSTLY_BF16,
    Q.Q8_0: LlamaFileType.MOSTLY_Q8_0,
}
#: ``general.file_type`` -> the ``outtype`` that writes it
OUTTYPE_OF_FILE_TYPE = {
    **{_FILE_TYPES[q]: name for name, q in DIRECT.items()},
    **{t: name for name, t in LLAMA_QUANTIZER.items()},
}


@dataclass(frozen=True)
class OutputChoice:
    """What the user asked for, resolved against the source."""

    name: str
    #: None means "keep each tensor's source type" (GGUF ``source``, or Hugging Face dtypes).
    direct: GGMLQuantizationType | None
    #: set when llama.cpp's quantizer runs after an f16 intermediate.
    quantizer: LlamaFileType | None = None
    #: set when the file is written as f16 for ``llama-quantize --imatrix`` to make this type
    after: LlamaFileType | None = None


def resolve_outtype(
    outtype: str, source_kind: str, first_dtype: GGMLQuantizationType, imatrix: bool = False
) -> OutputChoice:
    """Pick the output type like llama.cpp's converter does for ``auto``.

    ``auto`` keeps a GGUF's quantization (no second rounding) and, for Hugging Face
    weights, is bf16 when the weights are bf16 and f16 otherwise. With an importance matrix
    (``imatrix``) a llama.cpp type is written as f16, for ``llama-quantize`` to finish.
    """
    name = outtype.lower()
    if name not in OUTTYPES:
        raise HopscotchError(f"unknown --outtype {outtype!r}; choose one of: {', '.join(OUTTYPES)}")
    if name in IMATRIX_ONLY and not imatrix:
        raise HopscotchError(
            f"--outtype {name} needs an importance matrix: pass --imatrix FILE (llama.cpp's llama-imatrix writes "
            "one), or choose a type without one (q4_k_m, iq4_xs, ...)"
        )
    if imatrix:
        if name not in LLAMA_QUANTIZER and name not in IMATRIX_ONLY:
            raise HopscotchError(
                f"--imatrix is for llama.cpp's quantized types (q4_k_m, iq2_xs, ...); --outtype {name} does not use "
                "one, drop --imatrix"
            )
        return OutputChoice("f16", Q.F16, after={**LLAMA_QUANTIZER, **IMATRIX_ONLY}[name])
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


#: Types gguf-py's Python quantizer encodes; the others (K-quants, i-quants) go through
#: llama.cpp's ``ggml_quantize_chunk`` (:func:`.quantize.ggml_quantize`).
PYTHON_ENCODED = MAP_TYPES

#: Types ggml quantizes only with an importance matrix, which a conversion does not have.
_NEEDS_IMATRIX = frozenset({Q.IQ2_XXS, Q.IQ2_XS, Q.IQ1_S, Q.IQ1_M})

#: What llama.cpp's quantizer writes when rows are not whole blocks of the type asked for
#: (llama-quant.cpp, ``llama_tensor_get_type``'s fallback).
_FALLBACK = {Q.Q2_K: Q.Q4_0, Q.Q3_K: Q.Q4_0, Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0, Q.IQ4_XS: Q.IQ4_NL}


def cut_type(qtype: GGMLQuantizationType, head_dim: int, n_cols: int) -> GGMLQuantizationType:
    """The type of a kept ``attn_output`` (``qtype``) that lost the columns of whole query
    heads (a KV-group cut), ``n_cols`` left: its own type when a head is whole blocks (the
    blocks are copied) or when it can be requantized at the new width; else the type
    llama.cpp's quantizer falls back to for such rows (Q4_K: Q5_0, Q6_K: Q8_0, ...), Q8_0
    for types without one, F16 when even that does not fit."""
    block = GGML_QUANT_SIZES[qtype][0]
    if head_dim % block == 0 or (n_cols % block == 0 and qtype not in _NEEDS_IMATRIX):
        return qtype
    fallback = _FALLBACK.get(qtype, Q.Q8_0)
    return fallback if n_cols % GGML_QUANT_SIZES[fallback][0] == 0 else Q.F16


def file_type(choice: OutputChoice, tensors: dict[str, GGMLQuantizationType]) -> int:
    """``general.file_type`` for the written file (tensor name -> type): the type asked of
    llama.cpp's quantizer or written directly, else the one llama.cpp's quantizer writes for
    the mix the source's types keep (:func:`mix_file_type`)."""
    if choice.quantizer is not None:
        return int(choice.quantizer)
    if choice.direct is not None:
        return int(_FILE_TYPES[choice.direct])
    return int(mix_file_type(tensors))


#: K-quant block types, which llama.cpp's quantizer mixes by tensor (llama-quant.cpp,
#: ``llama_tensor_get_type``).
_K_TYPES = frozenset({Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K})
#: tensors the K-quant mixes never raise: they keep the type the file type asks for
_PLAIN = frozenset({"attn_q", "attn_k", "ffn_gate", "ffn_up"})
#: tensors the mixes raise (Q4_K_M: half of attn_v and ffn_down to Q6_K; Q3_K_M/L: attn_output)
_RAISED = frozenset({"attn_v", "ffn_down", "attn_output"})
#: what llama.cpp's quantizer gives a K-quant tensor whose rows are not whole 256 blocks
_K_FALLBACKS = frozenset({Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0})


def mix_file_type(tensors: dict[str, GGMLQuantizationType]) -> LlamaFileType:
    """The file type llama.cpp's quantizer writes for this mix of 2-D tensor types.

    The asked-for type is the one of the tensors it never raises; where their rows are not
    whole 256-wide K blocks it fell back to another type (Q4_K to Q5_0), and the least
    precise K type of the raised tensors tells it. Q4_K/Q5_K with Q6_K on attn_v or
    ffn_down is the _M mix, without it the _S one; Q3_K's mixes differ by attn_output
    (Q4_K: _M, Q5_K: _L). GUESSED where no file type names the mix.
    """
    def of(kinds: frozenset[str]) -> list[GGMLQuantizationType]:
        return [t for name, t in tensors.items() if _kind(name) in kinds]

    plain = Counter(t for t in of(_PLAIN) if t in _K_TYPES)
    raised = [t for t in of(_RAISED) if t in _K_TYPES]
    # i-quant files also carry K types on the raised tensors; only a fallback type means
    # the plain tensors were asked to be K-quants
    fell_back = bool(of(_PLAIN)) and all(t in _K_FALLBACKS for t in of(_PLAIN))
    if plain:
        base = max(plain, key=plain.__getitem__)
    elif raised and fell_back:  # the plain tensors fell back: their rows are not whole K blocks
        base = min(raised, key=bits_per_weight)
    else:
        counts = Counter(t for t in tensors.values() if t != Q.F32)  # 1-D tensors are F32 in every file
        base = max(counts, key=counts.__getitem__, default=Q.F32)
    suffix = ""
    if base in (Q.Q4_K, Q.Q5_K):
        suffix = "_M" if Q.Q6_K in of(frozenset({"attn_v", "ffn_down"})) else "_S"
    elif base == Q.Q3_K:
        output = set(of(frozenset({"attn_output"})))
        suffix = "_L" if Q.Q5_K in output else "_M" if Q.Q4_K in output else "_S"
    try:
        return LlamaFileType["ALL_F32" if base == Q.F32 else f"MOSTLY_{base.name}{suffix}"]
    except KeyError:
        return LlamaFileType.GUESSED


def _kind(name: str) -> str:
    """``blk.3.attn_v.weight`` -> ``attn_v``; other names are no layer's."""
    parts = name.split(".")
    return parts[2] if len(parts) == 4 and parts[0] == "blk" and parts[3] == "weight" else ""


def bits_per_weight(qtype: GGMLQuantizationType) -> float:
    block, size = GGML_QUANT_SIZES[qtype]
    return 8 * size / block
