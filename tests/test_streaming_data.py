"""Datasets are streamed: a search or a task takes the rows it needs, never a whole split."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import datasets
import pytest

from hopscotch_export.errors import HopscotchError
from hopscotch_export.text_sources import read_records
from hopscotch_export.verify.data import load_rows, load_text


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Wraps ``datasets.load_dataset``: records its keyword arguments and counts the rows read."""
    real = datasets.load_dataset
    seen: dict = {"kwargs": [], "rows": 0}

    def count(row: dict) -> dict:
        seen["rows"] += 1
        return row

    def load(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen["kwargs"].append(kwargs)
        return real(*args, **kwargs).map(count)

    monkeypatch.setattr(datasets, "load_dataset", load)
    return seen


def test_search_data_reads_only_the_rows_taken(tmp_path: Path, spy: dict) -> None:
    f = tmp_path / "big.jsonl"
    f.write_text("".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(20_000)))
    taken = list(itertools.islice(read_records(str(f), None, "train", None), 5))
    assert taken == [f"document {i}" for i in range(5)]
    assert spy["kwargs"][0]["streaming"] is True
    assert spy["rows"] <= 10  # not 20,000


def test_verify_rows_and_text_from_a_dataset_folder(tmp_path: Path, spy: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "mydata"
    folder.mkdir()
    (folder / "test.jsonl").write_text("".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(5_000)))
    monkeypatch.chdir(tmp_path)  # a dataset name, as on the hub, that datasets finds locally
    rows = load_rows("mydata", None, "test", what="--task", limit=3)
    assert rows == [{"text": "line 0"}, {"text": "line 1"}, {"text": "line 2"}]
    assert spy["kwargs"][0]["streaming"] is True and spy["rows"] <= 6
    text = load_text("mydata", None, "test")
    assert text.text.startswith("line 0\n\nline 1\n\n") and text.source == "mydata [test]"


def test_offline_hub_dataset_falls_back_to_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def load(path, streaming=False, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(streaming)
        if streaming:
            raise ConnectionError("Couldn't reach 'org/data' on the Hub (OfflineModeIsEnabled)")
        return [{"text": "cached"}]

    monkeypatch.setattr(datasets, "load_dataset", load)
    assert load_rows("org/data", None, "test", what="--data") == [{"text": "cached"}]
    assert calls == [True, False]


def test_errors_while_streaming_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def rows():  # type: ignore[no-untyped-def]
        yield {"text": "fine"}
        raise ValueError("JSON parse error in row 1\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", lambda path, **kwargs: rows())
    records = read_records("org/data", None, "train", None)
    assert next(records) == "fine"
    with pytest.raises(HopscotchError) as e:
        next(records)
    assert str(e.value) == (
        "--data org/data: cannot load it (JSON parse error in row 1); check the name, config and split, "
        "or pass a local file"
    )


def test_unreachable_dataset_not_in_the_cache_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def load(path, **kwargs):  # type: ignore[no-untyped-def]
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", load)
    with pytest.raises(HopscotchError, match=r"^--task org/none: cannot load it \(Couldn't reach .*check the name"):
        load_rows("org/none", None, "test", what="--task")
