#!/usr/bin/env bash
# The prepared GPU run (issue 8): on a CUDA machine, search Llama-3.2-1B- and
# Llama-3.1-8B-shaped models (random bf16 weights unless --models names real folders)
# with the GPU defaults and with --shortlist all, then convert and verify; prints time per
# stage and peak GPU memory as JSON lines and writes bench-gpu/gpu-bench.json.
#   bash bench/gpu.sh [--models llama-3.2-1b,llama-3.1-8b] [--skips 4] [--no-exhaustive]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv || true
"$PY" - <<'PYCHECK'
import importlib, sys
missing = [m for m in ("torch", "transformers", "accelerate", "gguf", "safetensors", "llama_cpp", "typer", "rich")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages on this machine: {', '.join(missing)} (run scripts/setup.sh where a package index is reachable)")
import torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA GPU")
print(f"torch {torch.__version__}, {torch.cuda.device_count()} GPU(s): {torch.cuda.get_device_name(0)}")
PYCHECK
PYTHONPATH=. "$PY" bench/gpu.py "$@"
