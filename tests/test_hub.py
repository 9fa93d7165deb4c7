"""Hub models as users name them, from a pre-filled huggingface_hub cache, offline
(``HF_HUB_OFFLINE=1`` is set by conftest): GGUF repositories by tag and by file,
``--revision``, and the one-line refusal of what the cache lacks."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from test_cli import assert_one_line_error, run_cli

from hopscotch_export.sources import open_source
from hopscotch_export.sources.gguf_file import read_gguf


def fill_cache(cache: Path, repo_id: str, files: dict[str, Path], *, ref: str = "main", commit: str = "a" * 40) -> Path:
    """Lay ``files`` (name in the repository -> local file) out as huggingface_hub caches a
    download: content-addressed blobs, a snapshot of symlinks per commit, a ref naming it."""
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / ref).write_text(commit)
    snapshot = folder / "snapshots" / commit
    for name, src in files.items():
        blob = folder / "blobs" / hashlib.sha256(src.read_bytes()).hexdigest()
        shutil.copyfile(src, blob)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory) -> dict[int, Path]:
    """llama GGUFs of 2 and 3 layers (told apart by their block count)."""
    from models import llama_gguf, make_tiny_model

    root = tmp_path_factory.mktemp("hub_ggufs")
    return {n: llama_gguf(make_tiny_model(root / f"hf{n}", layers=n), root / f"tiny{n}.gguf") for n in (2, 3)}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    from huggingface_hub import constants

    folder = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(folder))
    return folder


def _layers(path: Path) -> int:
    return next(int(f.contents()) for k, f in read_gguf(path).fields.items() if k.endswith(".block_count"))


def test_gguf_repository_by_tag_file_and_revision(cache, ggufs, tmp_path, monkeypatch, capsys):
    fill_cache(cache, "org/tiny-GGUF", {"tiny-Q8_0.gguf": ggufs[2], "tiny-F32.gguf": ggufs[3], "README.md": ggufs[2]})
    fill_cache(cache, "org/tiny-GGUF", {"tiny-Q8_0.gguf": ggufs[3]}, ref="v1", commit="b" * 40)

    assert open_source("org/tiny-GGUF:Q8_0").spec.n_layers == 2
    assert open_source("hf.co/org/tiny-GGUF:q8_0").spec.n_layers == 2  # as Ollama writes it
    assert open_source("org/tiny-GGUF/tiny-F32.gguf").spec.n_layers == 3
    assert open_source("org/tiny-GGUF:Q8_0", revision="v1").spec.n_layers == 3

    out = tmp_path / "o.gguf"
    args = ["convert", "hf.co/org/tiny-GGUF:Q8_0", "--revision", "v1", "-o", str(out)]
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert _layers(out) == 3

    # no tag and no Q4_K_M (llama.cpp's default) among two files: the files are named
    code, _, err = run_cli(monkeypatch, capsys, "convert", "org/tiny-GGUF", "-o", str(tmp_path / "x.gguf"))
    assert_one_line_error(code, err, "Q4_K_M", "tiny-F32.gguf", "tiny-Q8_0.gguf", "org/tiny-GGUF:TAG")


def test_not_in_the_cache_offline(cache, ggufs, tmp_path, monkeypatch, capsys):
    fill_cache(cache, "org/tiny-GGUF", {"tiny-Q8_0.gguf": ggufs[2]})
    for spec, needles in (
        ("org/tiny-GGUF:Q4_K_M", ("Q4_K_M", "tiny-Q8_0.gguf")),  # cached repository, other quantization
        ("org/absent:Q4_K_M", ("not in the local cache", "hf download org/absent")),
        ("org/tiny-GGUF/other.gguf", ("hf download org/tiny-GGUF other.gguf",)),
    ):
        out = tmp_path / "o.gguf"
        code, _, err = run_cli(monkeypatch, capsys, "convert", spec, "-o", str(out))
        assert_one_line_error(code, err, *needles)
        assert not out.exists()
    code, _, err = run_cli(monkeypatch, capsys, "convert", str(ggufs[2]), "--revision", "v1", "-o", str(out))
    assert_one_line_error(code, err, "--revision applies to hub models")
