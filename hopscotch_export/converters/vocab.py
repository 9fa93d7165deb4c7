"""Tokenizer metadata (``tokenizer.ggml.*``) from a Hugging Face tokenizer folder.

The goal is that llama.cpp tokenizes text exactly as transformers does. The rules follow
llama.cpp's own converter (``convert_hf_to_gguf.py``: ``get_vocab_base``,
``get_vocab_base_pre``, ``_set_vocab_gpt2``, ``_create_vocab_sentencepiece``,
``_set_vocab_llama_hf``); its pre-tokenizer hash table, as of llama.cpp commit 0024aa7417ef,
is :mod:`hopscotch_export.families.pretokenizers`.

gguf-py (0.19.0) does the parts it has: ``SpecialVocab`` (merges, special ids, add_bos/eos,
chat template), ``SentencePieceVocab`` (tokenizer.model pieces) and ``LlamaHfVocab``
(SentencePiece-style tokenizer.json). What it lacks is kept here, each for one reason:

- byte-level BPE tokens: gguf-py's ``BpeVocab`` marks every added token CONTROL and does not
  pad to the model's rows, so ``get_vocab_base`` is followed instead;
- the pre-tokenizer name (``tokenizer.ggml.pre``): gguf-py has no hash table nor detection;
- SentencePiece added tokens, padding and ``add_space_prefix``: gguf-py's vocab classes
  leave these to llama.cpp's converter, whose ``_create_vocab_sentencepiece`` is followed.

Three deliberate differences from llama.cpp's converter:

- ``add_bos``/``add_eos`` are measured on the tokenizer itself (what ``encode`` with
  special tokens adds) and always written. llama.cpp otherwise applies per-pre-tokenizer
  defaults (``llama-bpe`` turns ``add_bos`` on) that disagree with some tokenizer files.
- An unknown pre-tokenizer hash is not fatal: the candidate llama.cpp pre-tokenizers are
  emulated with the ``tokenizers`` library on the model's own BPE and the one that gives
  the same ids as the model on a set of probe texts is chosen, with a warning. If none
  does, :class:`TokenizerError` is raised rather than writing a file that tokenizes wrong.
- A SentencePiece-style ``tokenizer.json`` without ``tokenizer.model`` gets scores from
  its merge ranks (gguf-py's ``LlamaHfVocab`` writes -1000 for every token, which makes
  llama.cpp's SPM tokenizer merge left to right instead of by rank).

Differences that no GGUF key can remove (llama.cpp behaviour, checked with llama-cpp-python
0.3.36 and transformers 5.24):

- llama.cpp does not NFC-normalize (Qwen2's tokenizer does): NFC-normalize text first.
- SentencePiece: llama.cpp adds the dummy prefix '▁' to every text fragment after a special
  token, like sentencepiece per turn and transformers with ``legacy=True``; with
  ``legacy=False`` transformers does not. transformers 5 also skips the prefix when the
  text already starts with a space, and, converting a tokenizer.model, ranks the merge
  '▁ ▁' first; llama.cpp follows sentencepiece itself in both.
"""

from __future__ import annotations

import json
import logging
import warnings
from hashlib import sha256
from pathlib import Path
from typing import Any

import gguf

from ..errors import HopscotchError
from ..families.pretokenizers import CHKTXT, KNOWN_PRE_HASHES, PRE_CANDIDATES

logger = logging.getLogger(__name__)

__all__ = ["TokenizerError", "add_hf_tokenizer", "check_hf_tokenizer"]


class TokenizerError(HopscotchError, ValueError):
    """The tokenizer folder cannot be written as a GGUF vocabulary that llama.cpp reads the same way."""


# Extra texts on which a guessed pre-tokenizer must give the model's own ids.
_PROBE_TEXTS = (
    CHKTXT,
    "Hello world! I'm here, DON'T panic; you'RE fine. We'll see, they'd've gone.",
    "Numbers: 1 12 123 1234 12345 1234567890 3.14159 1,000,000 0x1F -42",
    "def f(x):\n    if x:\n\treturn x  # tab\n\n\n        pass\r\n",
    "Ünïcödé àéîõü ñ ß ø – “quotes” — 日本語のテキスト 中文 한국어 Ελληνικά русский ﷺ",
    "emoji 🤗🦙👩‍👩‍👧 ✅❌ ☃️ and trailing spaces   ",
    "   leading spaces\n\n\n\nmany newlines\t\t\ttabs  \u00a0nbsp",
    "snake_case camelCase ALLCAPS https://example.com/a?b=c&d=e#f <html><b>x</b></html>",
)


def check_hf_tokenizer(model_dir: Path, vocab_size: int) -> None:
    """Raise the :class:`TokenizerError` that converting this tokenizer would raise, into a
    writer that is never written: the one command refuses before its search, not after."""
    add_hf_tokenizer(gguf.GGUFWriter(None, "deci"), model_dir, vocab_size)


def add_hf_tokenizer(writer: gguf.GGUFWriter, model_dir: Path, vocab_size: int) -> None:
    """Write tokenizer.ggml.* keys (model, pre, tokens, token types, scores where relevant, merges,
    special token ids, add_bos/add_eos, chat template) for the HF tokenizer in model_dir.

    ``vocab_size`` is the model's embedding rows (config.json's ``vocab_size``); the token
    list is padded to it with ``[PAD{i}]`` tokens, as llama.cpp's converter does.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise TokenizerError(f"tokenizer folder {model_dir} does not exist; pass the model's Hugging Face folder")
    if vocab_size <= 0:
        raise TokenizerError(f"vocab_size must be positive, got {vocab_size}; check config.json's vocab_size")

    tokenizer_json = _read_json(model_dir / "tokenizer.json")
    kind = _tokenizer_kind(model_dir, tokenizer_json)
    if kind == "spm":
        _add_spm(writer, model_dir, vocab_size, tokenizer_json, from_tokenizer_model=True)
    elif kind == "llama-hf":
        _add_spm(writer, model_dir, vocab_size, tokenizer_json, from_tokenizer_model=False)
    else:
        _add_bpe(writer, model_dir, vocab_size, tokenizer_json)


# ---------------------------------------------------------------------------------------
# which kind of tokenizer


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise TokenizerError(f"cannot read {path}: {e}; re-download the tokenizer files") from e
    return data if isinstance(data, dict) else None


def _is_byte_level(tokenizer_json: dict[str, Any]) -> bool:
    """True when tokenizer.json is a GPT-2 style byte-level BPE."""

    def has_byte_level(node: Any) -> bool:
        if not isinstance(node, dict):
            return False
        if node.get("type") == "ByteLevel":
            return True
        return any(has_byte_level(n) for n in node.get("pretokenizers", []) + node.get("decoders", []))

    return has_byte_level(tokenizer_json.get("pre_tokenizer")) or has_byte_level(tokenizer_json.get("decoder"))


def _is_spm_style(tokenizer_json: dict[str, Any]) -> bool:
    """True for a SentencePiece BPE converted to tokenizer.json (Llama 2, Mistral, TinyLlama)."""
    model = tokenizer_json.get("model") or {}
    decoder = tokenizer_json.get("decoder") or {}
    return model.get("type") == "BPE" and bool(model.get("byte_fallback")) and decoder.get("type") == "Sequence"


def _sentencepiece_loads(path: Path) -> bool:
    try:
        from sentencepiece import SentencePieceProcessor
    except ImportError as e:  # pragma: no cover - sentencepiece is a dependency
        raise TokenizerError("the sentencepiece package is missing; pip install sentencepiece") from e
    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(path))
    except (OSError, RuntimeError):
        return False
    return True


def _tokenizer_kind(model_dir: Path, tokenizer_json: dict[str, Any] | None) -> str:
    # llama.cpp's LlamaModel.set_vocab order: tokenizer.model, then an SPM-style
    # tokenizer.json, then byte-level BPE. A tokenizer.model next to a byte-level
    # tokenizer.json (Llama 3 ships a tiktoken file under that name) is not SentencePiece.
    spm_file = model_dir / "tokenizer.model"
    if tokenizer_json is not None and _is_byte_level(tokenizer_json):
        return "bpe"
    if spm_file.is_file() and _sentencepiece_loads(spm_file):
        return "spm"
    if tokenizer_json is not None:
        model_type = (tokenizer_json.get("model") or {}).get("type")
        if _is_spm_style(tokenizer_json):
            return "llama-hf"
        if model_type == "BPE":
            return "bpe"
        raise TokenizerError(
            f"{model_dir / 'tokenizer.json'} is a {model_type} tokenizer; only BPE (Llama 3, Qwen2, SmolLM) "
            "and SentencePiece (Llama 2) tokenizers are supported"
        )
    if (model_dir / "vocab.json").is_file() and (model_dir / "merges.txt").is_file():
        return "bpe"
    if spm_file.is_file():
        raise TokenizerError(
            f"{spm_file} is not a SentencePiece model and there is no tokenizer.json; "
            "copy tokenizer.json from the original Hugging Face repository"
        )
    raise TokenizerError(
        f"no tokenizer in {model_dir} (tokenizer.json, tokenizer.model or vocab.json+merges.txt); "
        "copy the tokenizer files from the original Hugging Face repository"
    )


def _load_hf_tokenizer(model_dir: Path, required: bool) -> Any | None:
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except Exception as e:  # transformers raises many kinds here
        if required:
            raise TokenizerError(
                f"transformers cannot load the tokenizer in {model_dir} ({type(e).__name__}: {e}); "
                "check tokenizer_config.json and the tokenizer files"
            ) from e
        logger.debug("transformers could not load %s: %s", model_dir, e)
        return None


# ---------------------------------------------------------------------------------------
# shared pieces


def _does_token_look_special(token: str) -> bool:
    """llama.cpp's ModelBase.does_token_look_special."""
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<｜") and token.endswith("｜>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


def _measured_special_flags(tok: Any) -> tuple[tuple[bool, int | None], tuple[bool, int | None]] | None:
    """What ``tok.encode(text)`` adds around the text: ((add_bos, bos_id), (add_eos, eos_id))."""
    try:
        plain = list(tok.encode("a", add_special_tokens=False))
        full = list(tok.encode("a", add_special_tokens=True))
    except Exception as e:  # pragma: no cover - defensive
        logger.debug("cannot measure special tokens: %s", e)
        return None
    n = len(plain)
    for start in range(len(full) - n + 1):
        if full[start : start + n] == plain:
            prefix, suffix = full[:start], full[start + n :]
            break
    else:
        return None
    if len(prefix) > 1 or len(suffix) > 1:
        warnings.warn(
            f"the tokenizer adds {prefix} before and {suffix} after the text; llama.cpp can add only one BOS "
            "and one EOS token, so prompts will differ in their special tokens",
            stacklevel=3,
        )
    bos = (bool(prefix), prefix[0] if prefix else None)
    eos = (bool(suffix), suffix[-1] if suffix else None)
    return bos, eos


def _write_special_vocab(
    writer: gguf.GGUFWriter, model_dir: Path, n_vocab: int, load_merges: bool, tok: Any | None,
    spm_ids: dict[str, int] | None = None,
) -> None:
    special_vocab = gguf.SpecialVocab(model_dir, load_merges=load_merges, n_vocab=n_vocab)
    if load_merges and not special_vocab.merges:
        raise TokenizerError(
            f"no BPE merges found in {model_dir} (tokenizer.json model.merges or merges.txt); "
            "copy the complete tokenizer files from the original repository"
        )
    if tok is not None:
        # Special ids named by the tokenizer itself (covers a tokenizer.model-only folder,
        # where gguf's SpecialVocab cannot map token strings to ids).
        for typ in ("bos", "eos", "unk", "pad"):
            tid = getattr(tok, f"{typ}_token_id", None)
            if isinstance(tid, int) and 0 <= tid < n_vocab:
                special_vocab.special_token_ids.setdefault(typ, tid)
    for typ, tid in (spm_ids or {}).items():
        if 0 <= tid < n_vocab:
            special_vocab.special_token_ids.setdefault(typ, tid)

    flags = _measured_special_flags(tok) if tok is not None else None
    if flags is not None:
        for typ, (add, tid) in zip(("bos", "eos"), flags):
            special_vocab.add_special_token[typ] = add
            if add and tid is not None:
                if special_vocab.special_token_ids.get(typ) not in (None, tid):
                    logger.info("tokenizer adds token %d as %s; using it as the %s id", tid, typ, typ)
                special_vocab.special_token_ids[typ] = tid
    # else: no loadable tokenizer (a bare tokenizer.model): SpecialVocab's reading of
    # tokenizer_config.json, or llama.cpp's SentencePiece defaults (BOS yes, EOS no).
    special_vocab.add_to_gguf(writer, quiet=True)


# ---------------------------------------------------------------------------------------
# byte-level BPE (Llama 3, Qwen2, SmolLM): tokenizer.ggml.model = gpt2


def _add_bpe(writer: gguf.GGUFWriter, model_dir: Path, vocab_size: int, tokenizer_json: dict[str, Any] | None) -> None:
    tok = _load_hf_tokenizer(model_dir, required=True)
    vocab: dict[str, int] = dict(tok.get_vocab())
    if not vocab:
        raise TokenizerError(f"the tokenizer in {model_dir} has an empty vocabulary; re-download it")
    max_id = max(vocab.values())
    if max_id >= vocab_size:
        raise TokenizerError(
            f"the tokenizer has token id {max_id} but the model's vocab_size is {vocab_size}; "
            "use the tokenizer that belongs to this model"
        )

    tokpre = _choose_pre(tok, tokenizer_json, model_dir)

    # llama.cpp's get_vocab_base
    reverse_vocab = {id_: text for text, id_ in vocab.items()}
    added_vocab = tok.get_added_vocab()
    added_tokens_decoder = tok.added_tokens_decoder
    tokens: list[str] = []
    toktypes: list[int] = []
    for i in range(vocab_size):
        if i not in reverse_vocab:
            tokens.append(f"[PAD{i}]")
            toktypes.append(gguf.TokenType.UNUSED)
            continue
        token = reverse_vocab[i]
        if token in added_vocab:
            # llama.cpp assumes CONTROL and USER_DEFINED tokens are pre-normalized
            added = added_tokens_decoder.get(i)
            if added is not None and not added.normalized:
                token = tok.decode(tok.encode(token, add_special_tokens=False))
            if (added is not None and added.special) or _does_token_look_special(token):
                toktypes.append(gguf.TokenType.CONTROL)
            else:
                token = token.replace("\u2581", " ")  # pre-normalize user-defined spaces
                toktypes.append(gguf.TokenType.USER_DEFINED)
        else:
            toktypes.append(gguf.TokenType.NORMAL)
        tokens.append(token)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tokpre)
    writer.add_token_list(tokens)
    writer.add_token_types(toktypes)
    _write_special_vocab(writer, model_dir, vocab_size, load_merges=True, tok=tok)


def _choose_pre(tok: Any, tokenizer_json: dict[str, Any] | None, model_dir: Path) -> str:
    chkhsh = sha256(str(tok.encode(CHKTXT)).encode()).hexdigest()
    ignore_merges = bool(((tokenizer_json or {}).get("model") or {}).get("ignore_merges", False))
    name = KNOWN_PRE_HASHES.get(chkhsh)
    if name is not None:
        # The hash cannot see BPE's ignore_merges: Llama 3 without its BOS template hashes
        # like smaug-bpe, which llama.cpp runs without ignore_merges. Prefer the same
        # regex with the model's own ignore_merges when llama.cpp has one.
        known = PRE_CANDIDATES.get(name)
        if known is not None and known[1] != ignore_merges:
            for other, (regexes, other_ignore) in PRE_CANDIDATES.items():
                if regexes == known[0] and other_ignore == ignore_merges:
                    logger.info("pre-tokenizer %s -> %s (ignore_merges=%s)", name, other, ignore_merges)
                    return other
        return name

    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise TokenizerError(
            f"unknown BPE pre-tokenizer (chkhsh {chkhsh}) in {model_dir} and no tokenizer.json to inspect; "
            "add the hash to KNOWN_PRE_HASHES from llama.cpp's convert_hf_to_gguf.py"
        )
    matches = _emulate_pre_candidates(backend, ignore_merges)
    if not matches:
        raise TokenizerError(
            f"unknown BPE pre-tokenizer (chkhsh {chkhsh}) in {model_dir}, and none of llama.cpp's "
            f"{', '.join(PRE_CANDIDATES)} pre-tokenizers reproduces it; llama.cpp would tokenize this model "
            "differently (add its hash to KNOWN_PRE_HASHES only if llama.cpp supports it)"
        )
    name = matches[0]
    warnings.warn(
        f"unknown BPE pre-tokenizer hash {chkhsh} in {model_dir}; using '{name}', which gives the same tokens "
        "on the probe texts",
        stacklevel=3,
    )
    return name


def _emulate_pre_candidates(backend: Any, ignore_merges: bool) -> list[str]:
    """Names of llama.cpp pre-tokenizers that, emulated on this BPE, give the model's ids."""
    from tokenizers import Regex, Tokenizer, pre_tokenizers
    from tokenizers.models import BPE

    spec = json.loads(backend.to_str())
    if (spec.get("model") or {}).get("type") != "BPE":
        return []
    expected = [backend.encode(t, add_special_tokens=False).ids for t in _PROBE_TEXTS]
    spec["normalizer"] = None  # llama.cpp's BPE path does not normalize
    spec["post_processor"] = None
    try:
        emulated = Tokenizer.from_str(json.dumps(spec))
    except Exception as e:  # pragma: no cover - defensive
        logger.debug("cannot rebuild the tokenizer for emulation: %s", e)
        return []
    if not isinstance(emulated.model, BPE):  # pragma: no cover - checked above
        return []
    out: list[str] = []
    # candidates with the model's own ignore_merges first
    for name, (regexes, cand_ignore) in sorted(PRE_CANDIDATES.items(), key=lambda kv: kv[1][1] != ignore_merges):
        emulated.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
        emulated.model.ignore_merges = cand_ignore
        got = [emulated.encode(t, add_special_tokens=False).ids for t in _PROBE_TEXTS]
        if got == expected:
            out.append(name)
    return out


# ---------------------------------------------------------------------------------------
# SentencePiece (Llama 2, Mistral, TinyLlama): tokenizer.ggml.model = llama


def _add_spm(
    writer: gguf.GGUFWriter, model_dir: Path, vocab_size: int, tokenizer_json: dict[str, Any] | None,
    from_tokenizer_model: bool,
) -> None:
    spm_ids: dict[str, int] = {}
    add_space_prefix: bool | None = None
    if from_tokenizer_model:
        spv = gguf.vocab.SentencePieceVocab(model_dir)
        base = list(spv.sentencepiece_tokens())
        sp = spv.sentencepiece_tokenizer
        for typ, fn in (("bos", sp.bos_id), ("eos", sp.eos_id), ("unk", sp.unk_id), ("pad", sp.pad_id)):
            if (tid := fn()) >= 0:
                spm_ids[typ] = tid
        add_space_prefix = _sp_add_dummy_prefix(model_dir / "tokenizer.model")
    else:
        hfv = gguf.vocab.LlamaHfVocab(model_dir)
        base = list(hfv.all_tokens())
        merge_scores = _scores_from_merges(tokenizer_json or {})
        base = [(text, merge_scores.get(text.decode("utf-8"), score) if ttype == gguf.TokenType.NORMAL else score, ttype)
                for text, score, ttype in base]

    if len(base) > vocab_size:
        raise TokenizerError(
            f"the tokenizer has {len(base)} tokens but the model's vocab_size is {vocab_size}; "
            "use the tokenizer that belongs to this model"
        )

    tokens: list[bytes] = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores: list[float] = [-10000.0] * vocab_size
    toktypes: list[int] = [gguf.TokenType.UNUSED] * vocab_size
    for i, (text, score, ttype) in enumerate(base):
        tokens[i], scores[i], toktypes[i] = text, score, ttype

    # added tokens, as llama.cpp's _create_vocab_sentencepiece applies them
    added_json = _read_json(model_dir / "added_tokens.json") or {}
    for text, tid in added_json.items():
        if isinstance(tid, int) and 0 <= tid < vocab_size:
            tokens[tid], scores[tid], toktypes[tid] = text.encode("utf-8"), -1000.0, gguf.TokenType.USER_DEFINED
    for tid, text, special in _added_tokens(model_dir, tokenizer_json):
        if not 0 <= tid < vocab_size:
            logger.warning("ignoring added token %d %r: id out of range (vocab_size %d)", tid, text, vocab_size)
            continue
        if special or _does_token_look_special(text):
            toktypes[tid] = gguf.TokenType.CONTROL
        else:
            text = text.replace("\u2581", " ")  # pre-normalize user-defined spaces
            toktypes[tid] = gguf.TokenType.USER_DEFINED
        scores[tid] = -1000.0
        tokens[tid] = text.encode("utf-8")

    tok_config = _read_json(model_dir / "tokenizer_config.json") or {}
    if isinstance(tok_config.get("add_prefix_space"), bool):
        add_space_prefix = tok_config["add_prefix_space"]
    elif tokenizer_json is not None and (from_json := _json_adds_prefix(tokenizer_json)) is not None:
        add_space_prefix = from_json

    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(toktypes)
    if add_space_prefix is not None:
        writer.add_add_space_prefix(add_space_prefix)
    # transformers reads a bare tokenizer.model as a generic tokenizer without BOS; only
    # a folder that says what the tokenizer is gets its flags measured.
    described = any((model_dir / f).is_file() for f in ("tokenizer_config.json", "tokenizer.json", "config.json"))
    tok = _load_hf_tokenizer(model_dir, required=False) if described else None
    _write_special_vocab(writer, model_dir, vocab_size, load_merges=False, tok=tok, spm_ids=spm_ids)


def _added_tokens(model_dir: Path, tokenizer_json: dict[str, Any] | None) -> list[tuple[int, str, bool]]:
    """(id, content, special) of the added tokens: tokenizer_config's added_tokens_decoder, else tokenizer.json's."""
    tok_config = _read_json(model_dir / "tokenizer_config.json") or {}
    decoder = tok_config.get("added_tokens_decoder")
    out: list[tuple[int, str, bool]] = []
    if isinstance(decoder, dict) and decoder:
        for tid, data in decoder.items():
            if isinstance(data, dict) and isinstance(data.get("content"), str):
                out.append((int(tid), data["content"], bool(data.get("special"))))
        return out
    for data in (tokenizer_json or {}).get("added_tokens", []):
        if isinstance(data, dict) and isinstance(data.get("id"), int) and isinstance(data.get("content"), str):
            out.append((data["id"], data["content"], bool(data.get("special"))))
    return out


def _scores_from_merges(tokenizer_json: dict[str, Any]) -> dict[str, float]:
    """SentencePiece-like scores for llama.cpp's SPM tokenizer: earlier merge, higher score."""
    merges = (tokenizer_json.get("model") or {}).get("merges") or []
    scores: dict[str, float] = {}
    for rank, merge in enumerate(merges):
        if isinstance(merge, str):
            left, _, right = merge.partition(" ")
        else:
            left, right = merge
        scores.setdefault(left + right, -float(rank))
    return scores


def _sp_add_dummy_prefix(path: Path) -> bool | None:
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb

        proto = pb.ModelProto()
        proto.ParseFromString(path.read_bytes())
        return bool(proto.normalizer_spec.add_dummy_prefix)
    except Exception as e:  # protobuf missing or an unusual file
        logger.debug("cannot read normalizer_spec from %s: %s", path, e)
        return None


def _json_adds_prefix(tokenizer_json: dict[str, Any]) -> bool | None:
    """Whether a SentencePiece-style tokenizer.json prepends '▁' to the text."""

    def walk(node: Any) -> bool | None:
        if not isinstance(node, dict):
            return None
        kind = node.get("type")
        if kind == "Prepend":
            return node.get("prepend") == "\u2581"
        if kind == "Metaspace":
            if "prepend_scheme" in node:
                return node["prepend_scheme"] != "never"
            return bool(node.get("add_prefix_space", True))
        for child in node.get("normalizers", []) + node.get("pretokenizers", []):
            if (found := walk(child)) is not None:
                return found
        return None

    for key in ("normalizer", "pre_tokenizer"):
        if (found := walk(tokenizer_json.get(key))) is not None:
            return found
    return False if tokenizer_json.get("normalizer") is None and tokenizer_json.get("pre_tokenizer") is None else None
