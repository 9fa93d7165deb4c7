"""Options that must not be accepted and then ignored: --name for a GGUF source,
--reference-outtype for a GGUF reference."""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf import GGUFReader

from hopscotch_export.converters.convert import convert
from hopscotch_export.errors import HopscotchError
from hopscotch_export.sources import open_source
from hopscotch_export.verify import VerifyOptions, run_verify
from test_cli import assert_one_line_error, run_cli


def general_name(path: Path) -> str:
    return GGUFReader(path).fields["general.name"].contents()


@pytest.mark.slow
def test_name_is_written_for_a_gguf_source_and_kept_without_it(smollm2: Path, tmp_path: Path) -> None:
    source = open_source(smollm2)
    convert(source, None, tmp_path / "named.gguf", outtype="source", name="my-smol")
    convert(source, None, tmp_path / "kept.gguf", outtype="source")
    assert general_name(tmp_path / "named.gguf") == "my-smol"
    assert general_name(tmp_path / "kept.gguf") == general_name(smollm2) != "my-smol"


def test_reference_outtype_for_a_gguf_reference_is_refused(smollm2: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(smollm2.read_bytes()[:4096])  # never read: the refusal comes first
    with pytest.raises(HopscotchError, match="is a GGUF already and is used as it is; drop --reference-outtype"):
        run_verify(model, str(smollm2), VerifyOptions(reference_outtype="q8_0", speed=False))


def test_one_command_refuses_reference_outtype_for_a_gguf_model_before_searching(
    monkeypatch, capsys, smollm2: Path, tmp_path: Path
) -> None:
    out = tmp_path / "m.gguf"
    code, _, err = run_cli(monkeypatch, capsys, str(smollm2), "--skips", "1", "-o", str(out), "--reference-outtype", "q8_0")
    assert_one_line_error(code, err, "--reference-outtype q8_0", "drop --reference-outtype")
    assert list(tmp_path.iterdir()) == []
