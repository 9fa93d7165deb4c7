"""What a model family is: the facts every stage needs about one architecture.

llama.cpp's ``convert_hf_to_gguf.py`` keeps one class per architecture, registered by the
names it handles; so do we. A family class says which Hugging Face classes and GGUF
architectures it accepts, how its ``config.json`` reads into a :class:`ModelSpec`, what
it refuses and why, and what differs in its tensors. The rest of the code asks the
family, never which architecture a model is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import gguf

from ..errors import SourceError

if TYPE_CHECKING:
    from ..plan import Plan
    from .spec import ModelSpec


class Family:
    """A decoder that llama.cpp's ``deci`` computes exactly: pre-norm RMSNorm layers of
    rotary self-attention (no sliding window, no q/k norms) and a SwiGLU MLP, a final
    RMSNorm and a linear head. Subclasses state their differences."""

    #: Hugging Face ``architectures`` class names this family reads
    hf_architectures: ClassVar[tuple[str, ...]] = ()
    #: GGUF ``general.architecture`` values this family reads
    gguf_archs: ClassVar[tuple[str, ...]] = ()
    #: transformers ``model_type`` of a config built for a GGUF source
    model_type: ClassVar[str] = ""
    #: q/k/v biases are always present (Qwen2) rather than set by ``attention_bias``
    qkv_bias: ClassVar[bool] = False
    #: GGUF files of this family store q/k rows in rotate-half (NEOX) order, so the
    #: converter permutes them for ``deci``'s NORM rope (``llama`` GGUFs already did)
    gguf_rope_neox: ClassVar[bool] = False
    #: the llama.cpp architecture the family is written as (docs/design.md sections 2 and 5)
    gguf_out: ClassVar[str] = "deci"
    #: the written architecture ropes rotate-half (NEOX) pairs, so q/k rows go in unpermuted
    out_rope_neox: ClassVar[bool] = False
    #: the written architecture can drop a whole attention block (skip, linear map); without
    #: it every layer keeps at least one KV group, and the search removes groups only
    removes_blocks: ClassVar[bool] = True
    #: gguf-py's tensor name map that names the source's tensors (Hugging Face -> GGUF)
    tensor_names: ClassVar[gguf.MODEL_ARCH] = gguf.MODEL_ARCH.DECI

    @classmethod
    def name(cls) -> str:
        return cls.hf_architectures[0]

    @classmethod
    def check_config(cls, cfg: dict[str, Any], where: str) -> None:
        """Refuse, in one line, what ``deci`` cannot compute although the class name is ours."""
        experts = [k for k in ("num_local_experts", "num_experts", "n_routed_experts") if (cfg.get(k) or 0) > 1]
        if experts:
            raise SourceError(
                f"{where}: a mixture of experts ({experts[0]}={cfg[experts[0]]}); deci has one MLP per layer, "
                f"so it cannot hold it. {supported_line()}"
            )
        cls.check_rope(rope_scaling_of(cfg), where)

    @classmethod
    def check_spec(cls, spec: ModelSpec, where: str) -> None:
        """Refuse, in one line, what the written architecture cannot hold in hyper-parameters
        read alike from a Hugging Face config and a GGUF header. ``deci`` holds them all."""

    @classmethod
    def check_plan(cls, plan: Plan, where: str) -> None:
        """Refuse, in one line, a plan the written architecture cannot express. ``deci``
        holds skips, linear maps and KV-group cuts."""

    @classmethod
    def check_rope(cls, rope: dict[str, Any] | None, where: str) -> None:
        """Refuse, in one line, rope scaling that ``deci`` cannot carry: it holds Llama 3's
        per-frequency factors (a ``rope_freqs`` tensor) and linear scaling (its keys), not
        yarn's, dynamic or longrope's context-dependent ones. Asked before any work (a
        Hugging Face config, a GGUF's keys); the converter asks it again when it writes them."""
        kind = rope_kind(rope)
        if kind not in ("default", *ROPE_CARRIED):
            raise SourceError(
                f"{where}: rope scaling {kind!r} is not supported yet; supported: {', '.join(ROPE_CARRIED)}. "
                f"{supported_line()}"
            )

    @classmethod
    def context_length(cls, cfg: dict[str, Any], where: str) -> tuple[int, str | None]:
        """The context the exported file may be used at, and a notice if that is less than
        the model's own (``deci`` attends to the whole context, so a sliding window must
        cover it)."""
        context = int(cfg.get("max_position_embeddings", 2048))
        window = cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None
        if window and int(window) < context:
            return int(window), (
                f"{where}: attention slides over {window} tokens, which deci cannot express; the exported "
                f"file's context is limited to {window} tokens (from {context}), where the two agree"
            )
        return context, None

    @classmethod
    def folded_scales(cls, cfg: dict[str, Any]) -> dict[str, float]:
        """Constant factors the family's forward applies to some tensors' outputs, which
        ``deci`` has no keys for: GGUF tensor kind (``token_embd``, ``attn_q``,
        ``attn_output``, ``ffn_down``, ``output``) -> factor. The converter folds each into
        its tensor's rows; the torch stack applies the embedding's and the head's itself
        (transformers' layers apply the rest). ``cfg``: config.json as a dict. Llama has none."""
        return {}

    @classmethod
    def split(cls, name: str, spec: ModelSpec) -> list[tuple[str, int, int]] | None:
        """The parts of a fused tensor (``name`` a Hugging Face or GGUF name) as (part name,
        first row, end row), in row order; None for a tensor that ``deci`` stores as it is."""
        return None


#: rope scaling kinds ``deci`` carries besides plain rope
ROPE_CARRIED = ("llama3", "linear")


def rope_scaling_of(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """A config.json's rope scaling (``rope_scaling``, or transformers 5's
    ``rope_parameters``); None for plain rope."""
    rope = cfg.get("rope_scaling") or cfg.get("rope_parameters")
    return rope if isinstance(rope, dict) and rope_kind(rope) != "default" else None


def rope_kind(rope: dict[str, Any] | None) -> str:
    """``llama3``, ``linear``, ``yarn``, ... (``default`` for plain rope)."""
    return str((rope or {}).get("rope_type", (rope or {}).get("type")) or "default").lower()


def supported_line() -> str:
    """``Supported: LlamaForCausalLM (llama), ...`` for refusals."""
    from . import REGISTRY

    names = []
    for f in dict.fromkeys(REGISTRY.values()):
        names.append(f.name() + (f" ({', '.join(f.gguf_archs)})" if f.gguf_archs else ""))
    return "Supported: " + ", ".join(names)
