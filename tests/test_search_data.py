"""Calibration data for the search: file loaders, chat target masks, packing, bad inputs.

Only the SmolLM2 tokenizer is used (no model), so these run in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hopscotch_export.errors import HopscotchError
from hopscotch_export.search.calibration import build_calibration, render_chat, save_records, tokenize_record
from hopscotch_export.text_sources import read_records
from hopscotch_export.search.generate import builtin_prompts
from models import smollm2_tokenizer

TEXTS = [f"Paragraph {i}: the quick brown fox jumps over the lazy dog {i} times." for i in range(6)]
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "Four."},
    {"role": "user", "content": "And three plus three?"},
    {"role": "assistant", "content": "Six, of course."},
]


def records(path: Path, field: str | None = None) -> list:
    return list(read_records(str(path), None, "train", field))


def test_txt_is_split_into_paragraphs(tmp_path: Path) -> None:
    f = tmp_path / "d.txt"
    f.write_text("\n\n".join(TEXTS) + "\n\n  \n", encoding="utf-8")
    assert records(f) == TEXTS


def test_jsonl_json_and_parquet_give_the_same_records(tmp_path: Path) -> None:
    import datasets

    rows = [{"text": t, "id": i} for i, t in enumerate(TEXTS)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "d.json").write_text(json.dumps(rows))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    for name in ("d.jsonl", "d.json", "d.parquet"):
        assert records(tmp_path / name) == TEXTS, name
    assert records(tmp_path / "d.jsonl", field="text") == TEXTS


def test_chat_records_and_sharegpt_roles(tmp_path: Path) -> None:
    share = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]
    f = tmp_path / "chat.jsonl"
    f.write_text(json.dumps({"messages": CHAT}) + "\n" + json.dumps({"messages": share}) + "\n")
    got = records(f)
    assert got[0] == CHAT
    assert got[1] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]


def test_chat_ce_targets_cover_only_assistant_turns() -> None:
    tok = smollm2_tokenizer()
    ids, targets = tokenize_record(tok, CHAT)
    assert len(ids) == len(targets)
    picked = tok.decode([i for i, t in zip(ids, targets, strict=True) if t])
    assert picked == "Four.<|im_end|>\nSix, of course.<|im_end|>\n"
    text, _ = render_chat(tok, CHAT)
    assert tok.decode(ids) == text  # the mask is over the template's own rendering


def test_plain_text_targets_every_token_and_ends_with_eos() -> None:
    tok = smollm2_tokenizer()
    ids, targets = tokenize_record(tok, TEXTS[0])
    assert all(targets) and ids[-1] == tok.eos_token_id


def test_packing_keeps_heldout_apart_and_saved_records_reload_identically(tmp_path: Path) -> None:
    tok = smollm2_tokenizer()
    docs = [f"Document {i}. " + "word " * (15 + i) for i in range(12)]
    calib = build_calibration(iter(docs), tok, samples=3, heldout=2, seq_len=16)
    assert tuple(calib.train_ids.shape) == (3, 16) and tuple(calib.held_ids.shape) == (2, 16)
    train_text = tok.decode(calib.train_ids.flatten())
    held_text = tok.decode(calib.held_ids.flatten())
    first_held_doc = next(d for d in docs if d.split(".")[0] in held_text)
    assert first_held_doc.split(".")[0] not in train_text  # held-out starts at a fresh document
    assert held_text.startswith(first_held_doc[:10])
    save_records(calib.records, tmp_path / "c.jsonl", force=False)
    again = build_calibration(read_records(str(tmp_path / "c.jsonl"), None, "train", None), tok, 3, 2, 16)
    assert again.hash == calib.hash


def test_not_enough_data_says_what_to_change() -> None:
    with pytest.raises(HopscotchError, match=r"only \d+ chunks of 64 tokens.*--samples 8 \+ --heldout 2"):
        build_calibration(iter(TEXTS), smollm2_tokenizer(), samples=8, heldout=2, seq_len=64)


def test_bad_data_inputs_fail_with_one_line_messages(tmp_path: Path) -> None:
    with pytest.raises(HopscotchError, match="--data file .*missing.jsonl not found"):
        records(tmp_path / "missing.jsonl")
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(HopscotchError, match="d.csv: unsupported file type"):
        records(tmp_path / "d.csv")
    (tmp_path / "d.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(HopscotchError, match=r"has columns \['body'\]; choose .* --data-field"):
        records(tmp_path / "d.jsonl")
    with pytest.raises(HopscotchError, match="--data-field 'text' is not a column"):
        records(tmp_path / "d.jsonl", field="text")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(HopscotchError, match="bad.jsonl: cannot load it"):
        records(tmp_path / "bad.jsonl")


def test_builtin_prompts_are_varied_and_clean() -> None:
    prompts = builtin_prompts()
    assert len(prompts) >= 40 and len(set(prompts)) == len(prompts)
    assert not any(p.startswith("#") for p in prompts)
