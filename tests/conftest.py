"""Shared fixtures: tiny random models (session-scoped, built once) and SmolLM2."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from models import make_tiny_model, smollm2_gguf  # noqa: E402


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return smollm2_gguf()


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Untied Llama with GQA and Llama 3 rope scaling."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny_llama"), "llama", rope_scaling=True)


@pytest.fixture(scope="session")
def tiny_llama_bias(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tied Llama with q/k/v/o biases, stored in bf16."""
    import torch

    return make_tiny_model(
        tmp_path_factory.mktemp("tiny_llama_bias"), "llama", tied=True, attention_bias=True, dtype=torch.bfloat16
    )


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tied Qwen2 with q/k/v biases and GQA."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny_qwen2"), "qwen2", tied=True)


@pytest.fixture(scope="session")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in prompts as a plain-text calibration file (no generation step)."""
    from hopscotch_export.search.generate import builtin_prompts

    path = tmp_path_factory.mktemp("data") / "prompts.txt"
    path.write_text("\n\n".join(builtin_prompts()), encoding="utf-8")
    return path
