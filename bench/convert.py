"""Conversion throughput and peak memory: streaming converter vs the naive way.

    .venv/bin/python bench/convert.py [--layers 7] [--hidden 2048]

Builds a Hugging Face Llama of random bf16 weights (about 1 GB with the defaults, SmolLM2's
tokenizer), then in fresh processes, one after another:
  - the disk's copy speed (a plain file copy of the weights),
  - ``convert`` to f16 (streaming, one tensor at a time),
  - the naive way: load the whole model with transformers, then write every tensor,
  - ``convert`` of the SmolLM2 Q4_1 GGUF with ``--outtype source``.
Prints MB/s and peak resident memory as a multiple of the largest tensor (in f32, the form
the converter computes in), after subtracting the process's resident memory once imports
are done (the constant).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

CHILD_PRELUDE = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
import numpy, torch, gguf, transformers
from hopscotch_export.converters import convert
from hopscotch_export.sources import open_source
def rss_mb():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1]) / 1024
def peak_mb():  # VmHWM, not ru_maxrss: the latter keeps the forking parent's peak across exec
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM'):
            return int(line.split()[1]) / 1024
base = rss_mb()
t0 = time.perf_counter()
"""

STREAMING = """
convert(open_source({src!r}), None, Path({out!r}), outtype={outtype!r}, force=True)
"""

NAIVE = """
from transformers import AutoModelForCausalLM
from hopscotch_export.converters.metadata import write_hparams
from hopscotch_export.converters.vocab import add_hf_tokenizer
src = open_source({src!r})
model = AutoModelForCausalLM.from_pretrained({src!r}, dtype=torch.float32)
names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.DECI, src.spec.n_layers)
w = gguf.GGUFWriter({out!r}, "deci")
write_hparams(w, src.spec, ())
add_hf_tokenizer(w, Path({src!r}), src.spec.vocab_size)
for k, v in model.state_dict().items():
    name = names.get_name(k, try_suffixes=(".weight", ".bias"))
    x = v.numpy()
    w.add_tensor(name, x.astype(numpy.float16) if x.ndim == 2 else x)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
"""

CHILD_END = """
print(json.dumps({{"seconds": time.perf_counter() - t0, "peak_mb": peak_mb(), "base_mb": base}}))
"""


def run_child(body: str, **fmt: str) -> dict[str, float]:
    code = CHILD_PRELUDE.format(tests=str(ROOT / "tests")) + body.format(**fmt) + CHILD_END.format()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_random_llama(out: Path, layers: int, hidden: int) -> tuple[int, int]:
    """A bf16 Llama of random weights written directly with safetensors (fast, no init)."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    from models import smollm2_tokenizer

    tok = smollm2_tokenizer()
    inter, heads, kv = int(hidden * 2.75) // 256 * 256, hidden // 64, max(1, hidden // 256)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
    )
    out.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(out)
    tok.save_pretrained(out)
    g = torch.Generator().manual_seed(0)
    hd = hidden // heads
    shapes = {"model.embed_tokens.weight": (len(tok), hidden), "lm_head.weight": (len(tok), hidden),
              "model.norm.weight": (hidden,)}  # fmt: skip
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (kv * hd, hidden),
            p + "self_attn.v_proj.weight": (kv * hd, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter), p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
        }  # fmt: skip
    tensors = {k: (torch.randn(s, generator=g) * 0.02).to(torch.bfloat16) for k, s in shapes.items()}
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    largest = max(int(np.prod(s)) for s in shapes.values())
    return sum(t.numel() * 2 for t in tensors.values()), largest * 4


def copy_speed(path: Path, dst: Path) -> float:
    t0 = time.perf_counter()
    with open(path, "rb") as f, open(dst, "wb") as g:
        while chunk := f.read(64 << 20):
            g.write(chunk)
    return path.stat().st_size / (time.perf_counter() - t0) / 1e6


def row(label: str, size: int, largest_f32: int, r: dict[str, float]) -> str:
    extra = r["peak_mb"] - r["base_mb"]
    return (
        f"| {label} | {size / 1e6 / r['seconds']:.0f} | {r['peak_mb']:.0f} | {extra:.0f} | "
        f"{extra * 2**20 / largest_f32:.2f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=7)
    ap.add_argument("--hidden", type=int, default=2048)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        model = tmpd / "random-llama"
        size, largest_f32 = make_random_llama(model, args.layers, args.hidden)
        print(f"model: {size / 1e9:.2f} GB bf16, largest tensor {largest_f32 / 2**20:.0f} MiB in f32")
        disk = copy_speed(model / "model.safetensors", tmpd / "copy.bin")
        (tmpd / "copy.bin").unlink()
        stream = run_child(STREAMING, src=str(model), out=str(tmpd / "s.gguf"), outtype="f16")
        naive = run_child(NAIVE, src=str(model), out=str(tmpd / "n.gguf"))
        from models import smollm2_gguf

        smol = smollm2_gguf()
        smol_run = run_child(STREAMING, src=str(smol), out=str(tmpd / "smol.gguf"), outtype="source")
        import gguf

        smol_largest = max(int(np.prod(t.shape)) for t in gguf.GGUFReader(smol).tensors) * 4
        print(f"\ndisk copy speed: {disk:.0f} MB/s\n")
        print("| run | MB/s (source bytes) | peak RSS MiB | peak minus import baseline MiB | x largest tensor (f32) |")
        print("|---|---|---|---|---|")
        print(row("streaming convert, 1 GB bf16 HF -> f16", size, largest_f32, stream))
        print(row("naive: load all, then write", size, largest_f32, naive))
        print(row("streaming convert, SmolLM2 Q4_1 GGUF -> source", smol.stat().st_size, smol_largest, smol_run))


if __name__ == "__main__":
    main()
