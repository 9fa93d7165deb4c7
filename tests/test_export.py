"""The one command end to end on SmolLM2 with a small budget."""

from __future__ import annotations

import json
import stat
import sys

import pytest

from hopscotch_export import cli


@pytest.mark.slow
def test_one_command_on_smollm2(monkeypatch, capsys, tmp_path):
    out = tmp_path / "smol.gguf"
    args = [
        "bundled:smollm2", "--skips", "2", "-o", str(out), "--samples", "4", "--heldout", "2",
        "--seq-len", "64", "--score-samples", "4", "--shortlist", "2", "--final-epochs", "1",
        "--max-new-tokens", "48", "--chunks", "1", "--speed-rounds", "1", "--speed-gen", "8",
    ]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["hopscotch-export", *args])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 0
    printed = capsys.readouterr().out

    plan = json.loads((tmp_path / "smol.plan.json").read_text())
    assert plan["complete"] and len(plan["skip"]) == 2 and 0 not in plan["skip"]
    report = json.loads((tmp_path / "smol.verify.json").read_text())
    assert report["passed"]
    assert report["model"]["kv_cache"]["bytes"] == report["reference"]["kv_cache"]["bytes"] * 28 // 30
    modelfile = (tmp_path / "smol.Modelfile").read_text()
    assert modelfile.startswith("# Start Ollama with OLLAMA_FLASH_ATTENTION=1 ollama serve")
    assert "\nFROM ./smol.gguf\n" in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "ollama create smol -f smol.Modelfile" in printed
    assert "-fa on -cnv" in printed and "OLLAMA_FLASH_ATTENTION=1 ollama serve" in printed
    assert {r["cache_type"] for r in report["alternatives"]["rows"]} == {"f16", "q8_0", "q4_0"}
    assert out.stat().st_mode & stat.S_IROTH  # readable by Ollama's service user
    card = (tmp_path / "smol.README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0\ntags:\n- gguf\n- hopscotch\n---\n")  # the GGUF's licence
    assert "hf upload YOUR_NAME/smol" in printed and "smol.README.md README.md" in printed

    import llama_cpp

    llm = llama_cpp.Llama(str(out), n_ctx=256, verbose=False, flash_attn=True)
    try:
        text = llm.create_chat_completion([{"role": "user", "content": "Name a colour."}], max_tokens=12)
        assert text["choices"][0]["message"]["content"].strip()
    finally:
        llm.close()

    # a second run reuses the complete plan and refuses to overwrite without --force
    monkeypatch.setattr(sys, "argv", ["hopscotch-export", *args])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2
    assert "--force" in capsys.readouterr().err
