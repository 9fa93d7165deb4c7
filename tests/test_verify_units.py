"""Pieces of verify that need no model: windows, statistics, task rows, GGUF metadata."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest

from hopscotch_export.errors import HopscotchError
from hopscotch_export.ollama import modelfile
from hopscotch_export.run_commands import llama_cpp_command
from hopscotch_export.verify.alternatives import Row, recommend
from hopscotch_export.verify.llama_model import KvCacheInfo
from hopscotch_export.verify.speed import Speed
from hopscotch_export.verify.data import BUILTIN_NAME, load_text
from hopscotch_export.verify.divergence import Divergence, log_softmax, token_kl
from hopscotch_export.verify.heldout import window_outputs
from hopscotch_export.verify.perplexity import Perplexity, make_windows
from hopscotch_export.sources.gguf_file import scan_gguf
from hopscotch_export.verify.tasks import load_task, parse_row


def test_windows_replace_first_token_with_bos_and_drop_the_tail():
    tokens = list(range(100, 125))  # 25 tokens, ctx 8 -> 3 windows, 1 token dropped
    windows = make_windows(tokens, 8, bos=1)
    assert windows == [[1, *range(101, 108)], [1, *range(109, 116)], [1, *range(117, 124)]]
    assert make_windows(tokens, 8, bos=None, max_windows=2) == [list(range(100, 108)), list(range(108, 116))]


def test_windows_need_twice_the_context_like_llama_perplexity():
    with pytest.raises(HopscotchError, match="needs at least 16"):
        make_windows(list(range(15)), 8, bos=None)


def test_scored_positions_are_the_second_half_but_the_last():
    flags = window_outputs(8)
    assert [i for i, f in enumerate(flags) if f] == [4, 5, 6]  # n_ctx - 1 - n_ctx/2 tokens


def test_perplexity_and_uncertainty_match_llama_cpp_formulas():
    nll = np.array([1.0, 2.0, 3.0, 2.5])
    p = Perplexity.from_nll(nll)
    assert p.ppl == pytest.approx(np.exp(2.125))
    var = (nll**2).mean() - 2.125**2
    assert p.uncertainty == pytest.approx(np.exp(2.125) * np.sqrt(var / 3))


def test_kl_and_percentiles():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 11)), rng.normal(size=(50, 11))
    kl = token_kl(log_softmax(a), log_softmax(b))
    pa, pb = np.exp(log_softmax(a)), np.exp(log_softmax(b))
    np.testing.assert_allclose(kl, (pa * np.log(pa / pb)).sum(1), rtol=1e-12)
    assert token_kl(log_softmax(a), log_softmax(a + 3.0)).max() < 1e-12  # shift-invariant
    d = Divergence.from_values(kl, a.argmax(1) == b.argmax(1))
    assert d.max_kl == kl.max() and d.p99_kl <= d.max_kl and d.p99_kl == pytest.approx(np.percentile(kl, 99))


@pytest.mark.parametrize(
    "row,expected",
    [
        (  # ARC: labelled choices, answerKey names a label
            {"question": "Q?", "choices": {"text": ["a", "b", "c"], "label": ["1", "2", "3"]}, "answerKey": "3"},
            ("Q?", ("a", "b", "c"), 2),
        ),
        ({"question": "Q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "B"}, ("Q?", ("a", "b"), 1)),
        ({"ctx": "C", "endings": ["x", "y", "z"], "label": "2"}, ("C", ("x", "y", "z"), 2)),  # HellaSwag
        ({"goal": "G", "sol1": "p", "sol2": "q", "label": 1}, ("G", ("p", "q"), 1)),  # PIQA
        ({"question": "Q", "choices": ["x", "y"], "answer": "y"}, ("Q", ("x", "y"), 1)),  # answer as text
        ({"question": "Q", "choices": ["x", "y"], "answer": "A"}, ("Q", ("x", "y"), 0)),  # letter
    ],
)
def test_parse_row_layouts(row, expected):
    assert parse_row(row, "t") == expected


@pytest.mark.parametrize(
    "row,message",
    [
        ({"choices": ["a", "b"], "answer": 0}, "no question"),
        ({"question": "Q", "choices": ["a"], "answer": 0}, "at least two"),
        ({"question": "Q", "choices": ["a", "b"], "answer": 2}, "does not name"),
        ({"question": "Q", "choices": ["a", "b"]}, "no answer"),
    ],
)
def test_parse_row_errors_are_one_line(row, message):
    with pytest.raises(HopscotchError, match=message) as e:
        parse_row(row, "item 1")
    assert "\n" not in str(e.value)


def test_jsonl_task_and_its_errors(tmp_path):
    good = tmp_path / "t.jsonl"
    good.write_text(
        "\n".join(json.dumps({"question": f"q{i}", "choices": ["a", "b"], "answer": i % 2}) for i in range(5)) + "\n"
    )
    task = load_task(str(good), limit=3, template="Q: {question}\nA:")
    assert [q.context for q in task.questions] == ["Q: q0\nA:", "Q: q1\nA:", "Q: q2\nA:"]
    assert [q.answer for q in task.questions] == [0, 1, 0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n{oops\n')
    with pytest.raises(HopscotchError, match=r"bad.jsonl:2: not valid JSON"):
        load_task(str(bad))
    with pytest.raises(HopscotchError, match="file not found"):
        load_task(str(tmp_path / "missing.jsonl"))


def test_data_file_and_missing_data(tmp_path):
    f = tmp_path / "held.txt"
    f.write_text("some text\n", encoding="utf-8")
    text = load_text(str(f))
    assert text.text == "some text\n" and text.source == str(f) and not text.builtin
    with pytest.raises(HopscotchError, match="file not found"):
        load_text(str(tmp_path / "missing.txt"))


def test_builtin_text_is_used_and_named_when_no_data():
    text = load_text(None)
    assert text.builtin and text.source == BUILTIN_NAME and len(text.text) > 10_000


def test_scan_gguf_reads_every_value_type(tmp_path):
    path = tmp_path / "meta.gguf"
    w = gguf.GGUFWriter(path, "deci")
    w.add_block_count(3)
    w.add_head_count([4, 0, 4])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_bool("test.flag", True)
    w.add_string("test.name", "naïve")
    w.add_token_list(["a", "bb", "ccc", "dddd"])
    w.add_array("test.floats", [0.5, 1.5])
    w.add_uint64("test.big", 2**40)
    w.add_tensor("x", np.zeros(4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    meta = scan_gguf(path).metadata
    assert meta["general.architecture"] == "deci"
    assert meta["deci.block_count"] == 3
    assert meta["deci.attention.head_count"] == [4, 0, 4]
    assert meta["deci.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    assert meta["test.flag"] is True and meta["test.name"] == "naïve" and meta["test.big"] == 2**40
    assert meta["tokenizer.ggml.tokens"] == 4  # string arrays: only their length
    assert meta["test.floats"] == [0.5, 1.5]


def _row(model: str, cache_type: str, kv: int, kl: float | None, gen: float, main: bool = False) -> Row:
    speed = Speed(100.0, gen, 100.0, gen, 32, 4, ())
    divergence = None if kl is None else Divergence(kl, kl, kl, 1.0, 10)
    return Row(model, "m.gguf", KvCacheInfo(kv, 1, 1, cache_type, cache_type, None), Perplexity(1, 0, 0, 1),
               divergence, speed, main)  # fmt: skip


def test_recommendation_rule():
    """Among rows within the tolerance (the main row's KL + 5%, or --max-kl): the smallest KV
    cache for memory, the fastest generation for speed."""
    rows = [
        _row("original", "f16", 1000, None, 10.0),
        _row("original", "q8_0", 531, 0.005, 9.0),
        _row("original", "q4_0", 281, 0.084, 9.5),
        _row("export", "f16", 867, 0.1785, 12.0, main=True),
        _row("export", "q8_0", 460, 0.1870, 11.0),  # 4.8% above the main row's KL: within
    ]
    r = recommend(rows, None)
    assert r.kl_tolerance == pytest.approx(0.1785 * 1.05)
    assert r.memory.label == "original, q4_0 KV" and r.speed.label == "export, f16 KV"
    line = r.line(rows[0])
    assert "For memory take the original with a q4_0 KV cache (KV x0.281" in line
    assert "for speed take the export with an f16 KV cache (generation x1.20" in line
    strict = recommend(rows, 0.01)  # --max-kl: only q8_0 of the original is close enough
    assert strict.memory.label == "original, q8_0 KV" and strict.speed.label == "original, f16 KV"
    rows[4] = _row("export", "q8_0", 460, 0.1870, 13.0)  # the fastest, 4.8% above the main row's KL: taken
    assert recommend(rows, None).speed.label == "export, q8_0 KV"
    rows[4] = _row("export", "q8_0", 460, 0.1900, 13.0)  # 6.4% above: left out
    assert recommend(rows, None).speed.label == "export, f16 KV"


def test_run_commands_and_modelfile_carry_flash_attention_and_the_cache_type(tmp_path):
    assert llama_cpp_command(Path("a b.gguf")) == "llama-cli -m 'a b.gguf' -fa on -cnv"
    assert llama_cpp_command(Path("m.gguf"), "q8_0") == "llama-cli -m m.gguf -fa on -ctk q8_0 -ctv q8_0 -cnv"
    text = modelfile("m.gguf", "<|im_start|>", "<|im_end|>", "q8_0")
    assert text.startswith("# Start Ollama with OLLAMA_FLASH_ATTENTION=1 OLLAMA_KV_CACHE_TYPE=q8_0 ollama serve")
    assert "pads every layer's V cache" in text and "\nFROM ./m.gguf\n" in text
    plain = modelfile("m.gguf", None, None)
    assert "OLLAMA_FLASH_ATTENTION=1 ollama serve" in plain and "KV_CACHE_TYPE" not in plain
