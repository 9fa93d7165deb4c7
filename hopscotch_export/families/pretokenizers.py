"""llama.cpp's BPE pre-tokenizers, as data: the fingerprint table and the regexes behind the names.

The hashes, names, references and ``CHKTXT`` are copied from ``get_vocab_base_pre`` in llama.cpp's
``convert_hf_to_gguf.py``; all are identical at llama.cpp commit 0024aa7417ef (checked entry by entry),
and llama-cpp-python 0.3.36's ``libllama`` knows every name. Its vendored llama.cpp commit could not be
pinned (no source installed; 0.3.35 vendors 4df29be4f), and gguf-py (0.19.0) carries no such table.
Only the tokenizers that the Llama- and Qwen2-architecture families use are listed.
"""

from __future__ import annotations

# The text llama.cpp's converter encodes to fingerprint a BPE pre-tokenizer.
CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis "
    "concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? "
    "'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)

# sha256(str(tokenizer.encode(CHKTXT))) -> tokenizer.ggml.pre, each under the model llama.cpp took it from
KNOWN_PRE_HASHES: dict[str, str] = {
    # meta-llama/Meta-Llama-3-8B
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    # abacusai/Smaug-Llama-3-70B-Instruct
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",
    # tiiuae/Falcon3-7B-Base
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",
    # Qwen/Qwen1.5-7B
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    # Qwen/Qwen3-Embedding-0.6B
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",
    # deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",
    # Infinigence/Megrez-3B-Instruct
    "d4c8f286ea6b520b3d495c4455483cfa2302c0cfcd4be05d781b6a8a0a7cdaf1": "megrez",
    # Qwen/Qwen3.5-9B-Instruct
    "d30d75d9059f1aa2c19359de71047b3ae408c70875e8a3ccf8c5fba56c9d8af4": "qwen35",
    # HuggingFaceTB/SmolLM-135M
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    # openai-community/gpt2
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    # evilfreelancer/ruGPT3XL
    "0fe1cf6eda062318a1af7270f3331a85c539a01778ff948e24388e949c5282f4": "gpt-2",
    # deepseek-ai/deepseek-llm-7b-base
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",
    # deepseek-ai/deepseek-coder-6.7b-base
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",
}

# llama.cpp's BPE pre-tokenizers (src/llama-vocab.cpp), written in the Hugging Face regex
# syntax: llama.cpp applies the regexes one after another, keeping matched and unmatched
# pieces, which is a Sequence of "Isolated" Splits.
_GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN35_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# name -> (regexes, llama.cpp's ignore_merges for that name); the candidates when a hash is
# unknown, in order of preference.
PRE_CANDIDATES: dict[str, tuple[tuple[str, ...], bool]] = {
    "llama-bpe": ((_LLAMA3_RE,), True),
    "smaug-bpe": ((_LLAMA3_RE,), False),
    "qwen2": ((_QWEN2_RE,), False),
    "qwen35": ((_QWEN35_RE,), False),
    "smollm": ((r"\p{N}", _GPT2_RE), False),
    "gpt-2": ((_GPT2_RE,), False),
}
