"""The libraries' own output, silenced once at CLI start so that only ours is shown.

transformers draws tqdm bars ("Loading weights") and logs advice meant for its developers;
torch and the Hugging Face libraries warn about their own internals. None of it is
something a user of this tool can act on, and a bar drawn between our rich displays
breaks them (a log file keeps every carriage-return frame). Our stages show their own
progress and spinners for the same work. Warnings of this package stay, one line each.
llama.cpp's log is captured by ``verify.llama_model`` (its numbers are read from it).
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import TextIO

#: Libraries whose warnings concern their own internals (deprecations, defaults, kernels).
_LIBRARIES = ("torch", "transformers", "accelerate", "huggingface_hub", "datasets", "safetensors", "gguf", "tqdm")


def quiet_libraries() -> None:
    """Silence third-party progress bars, logs and warnings; show ours as ``warning: ...``.

    A hub download's bar is kept on a terminal: it comes before any display of ours, and
    for a large model it is the only sign of progress."""
    from huggingface_hub import utils as hub
    from transformers.utils import logging as transformers_logging

    warnings.filterwarnings("ignore", module=rf"({'|'.join(_LIBRARIES)})(\.|$)")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.showwarning = _one_line
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()  # every bar of transformers and of huggingface_hub
    if sys.stderr.isatty():
        hub.enable_progress_bars("huggingface_hub")
    # datasets is imported only for --data: its settings are read from the environment then
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")


def _one_line(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file: TextIO | None = None,
    line: str | None = None,
) -> None:  # fmt: skip
    """``warning: <message>``: the category, file and source line mean nothing to a user."""
    print(f"warning: {message}", file=file or sys.stderr)
