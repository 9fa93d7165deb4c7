"""What a model family is: the facts every stage needs about one architecture, the
hyper-parameters a family reads (:class:`ModelSpec`), and the registry that finds the
family of an architecture name.

llama.cpp's ``convert_hf_to_gguf.py`` keeps one class per architecture, registered by the
names it handles; so do we. A family class says which Hugging Face classes and GGUF
architectures it accepts, how its ``config.json`` reads into a :class:`ModelSpec`, what
it refuses and why, which chat formats its models carry, and what differs in its tensors.
The rest of the code asks the family, never which architecture a model is. Family and
spec name each other, and every refusal names the supported families, so the three live
here; the package (``families/__init__.py``) registers the families.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import gguf

from ..errors import SourceError
from .chat_formats import ChatFormat
from .refused import REFUSED
from .rope import LONG_ROPE, PARTIAL_ROPE, ROPE_CARRIED, rope_kind, rope_scaling_of

if TYPE_CHECKING:
    from ..plan import Plan


class Family:
    """A decoder that llama.cpp's ``deci`` computes exactly: pre-norm RMSNorm layers of
    rotary self-attention (no sliding window, no q/k norms) and a SwiGLU MLP, a final
    RMSNorm and a linear head. Subclasses state their differences."""

    #: Hugging Face ``architectures`` class names this family reads
    hf_architectures: ClassVar[tuple[str, ...]] = ()
    #: GGUF ``general.architecture`` values this family reads
    gguf_archs: ClassVar[tuple[str, ...]] = ()
    #: GGUF ``general.architecture`` values of this family's models that it does not read -> why
    gguf_unread: ClassVar[dict[str, str]] = {}
    #: transformers ``model_type`` of a config built for a GGUF source
    model_type: ClassVar[str] = ""
    #: chat formats this family's models carry (:func:`chat_formats` orders them all)
    chat_formats: ClassVar[tuple[ChatFormat, ...]] = ()
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
    #: why every layer keeps a KV group, when ``removes_blocks`` is False
    keeps_blocks_why: ClassVar[str] = ""
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
    def check_gguf_experts(cls, arch: str, expert_count: Any, tensors: Iterable[str], where: str) -> None:
        """Refuse, in one line, a GGUF mixture of experts: one may say ``llama`` (Mixtral
        does), so it is told by its expert count or expert tensors, which a plain file has
        neither of. ``tensors``: the file's tensor names, in its order."""
        count = expert_count or 0
        experts = next((name for name in tensors if "_exps" in name), None)
        if (isinstance(count, int) and count > 1) or experts:
            what = f"{arch}.expert_count={count}" if isinstance(count, int) and count > 1 else f"tensor {experts}"
            raise SourceError(
                f"{where} is a mixture of experts ({what}); deci has one MLP per layer, so it cannot hold "
                f"it. {supported_line()}"
            )

    @classmethod
    def check_gguf_rope(cls, arch: str, rope_dims: Any, head_dim: int, tensors: Iterable[str], where: str) -> None:
        """Refuse, in one line, GGUF rope that ``deci`` cannot express: long-context factors
        (Phi-3's longrope) or a rotary dimension (``rope_dims``) short of the head."""
        factors = sorted(n for n in tensors if n.startswith("rope_factors"))
        if factors:
            raise SourceError(f"{where} has {factors[0]}: its rope scaling {LONG_ROPE}. {supported_line()}")
        if rope_dims != head_dim:
            raise SourceError(
                f"{where}: {arch}.rope.dimension_count={rope_dims} (of a head of {head_dim}) {PARTIAL_ROPE}. "
                f"{supported_line()}"
            )

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


@dataclass(frozen=True)
class ModelSpec:
    """Hyper-parameters of a source model, as both torch and llama.cpp need them, read through its family."""

    family: type[Family]
    n_layers: int
    hidden_size: int
    intermediate_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_eps: float
    rope_theta: float
    #: the context the exported file declares (a sliding window may limit it: ``notice``)
    context_length: int
    tie_embeddings: bool
    attention_bias: bool = False
    mlp_bias: bool = False
    #: Hugging Face ``rope_scaling`` dict (Llama 3 style), or None.
    rope_scaling: dict[str, Any] | None = None
    #: what the user should know about how this model is held (e.g. a limited context)
    notice: str | None = None
    #: constants the converter folds into tensor rows (:meth:`Family.folded_scales`)
    folded: dict[str, float] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return self.family.name()

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any], where: str = "config.json") -> ModelSpec:
        """Read a Hugging Face ``config.json`` dict."""
        archs = cfg.get("architectures") or [cfg.get("model_type", "unknown")]
        family = family_for(archs[0], where)
        family.check_config(cfg, where)
        try:
            n_heads = cfg["num_attention_heads"]
            hidden = cfg["hidden_size"]
            rope_theta = cfg.get("rope_theta")
            if rope_theta is None:  # transformers 5 moves it into rope_parameters
                rope_theta = (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)
            context, notice = family.context_length(cfg, where)
            spec = cls(
                family=family,
                n_layers=cfg["num_hidden_layers"],
                hidden_size=hidden,
                intermediate_size=cfg["intermediate_size"],
                n_heads=n_heads,
                n_kv_heads=cfg.get("num_key_value_heads") or n_heads,
                head_dim=cfg.get("head_dim") or hidden // n_heads,
                vocab_size=cfg["vocab_size"],
                rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                rope_theta=float(rope_theta),
                context_length=context,
                tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                attention_bias=family.qkv_bias or bool(cfg.get("attention_bias", False)),
                mlp_bias=bool(cfg.get("mlp_bias", False)),
                rope_scaling=rope_scaling_of(cfg),
                notice=notice,
                folded=family.folded_scales(cfg),
            )
        except KeyError as e:
            raise SourceError(f"config.json lacks {e}; add it or re-download the complete model folder") from None
        family.check_spec(spec, where)
        return spec


#: Hugging Face class name or GGUF architecture -> its family, in the order refusals list
#: them; filled by :func:`register` from the package's ``FAMILIES``
REGISTRY: dict[str, type[Family]] = {}


def register(*families: type[Family]) -> None:
    """Each family answers for its Hugging Face classes and GGUF architectures."""
    for family in families:
        for name in (*family.hf_architectures, *family.gguf_archs):
            REGISTRY[name] = family


def registered() -> list[type[Family]]:
    """The registered families, each once, in registration order."""
    return list(dict.fromkeys(REGISTRY.values()))


def family_for(architecture: str, where: str = "the model") -> type[Family]:
    """The family reading ``architecture`` (a Hugging Face class name or a GGUF
    ``general.architecture``), or a one-line refusal naming why and what is supported."""
    family = REGISTRY.get(architecture)
    if family is not None:
        return family
    unread = next((f.gguf_unread[architecture] for f in registered() if architecture in f.gguf_unread), None)
    why = REFUSED.get(architecture)
    reason = unread or (f"deci cannot hold it ({why})" if why else "it is not a family this tool knows")
    raise SourceError(f"{where} is {architecture!r}: {reason}. {supported_line()}")


def supported_line() -> str:
    """``Supported: LlamaForCausalLM (llama), ...`` for refusals."""
    names = [f.name() + (f" ({', '.join(f.gguf_archs)})" if f.gguf_archs else "") for f in registered()]
    return "Supported: " + ", ".join(names)


def gguf_help() -> str:
    """The GGUF architectures read, for help texts: ``llama, phi3, ...``."""
    return ", ".join(arch for f in registered() for arch in f.gguf_archs)


def chat_formats() -> list[ChatFormat]:
    """Every chat format the registered families' models carry, in the order they are tried."""
    formats = dict.fromkeys(fmt for f in registered() for fmt in f.chat_formats)
    return sorted(formats, key=lambda fmt: fmt.rank)
