"""Verify a converted GGUF against its reference in llama.cpp (the ``verify`` command).

``run_verify(model_gguf, reference, VerifyOptions(...))`` returns a :class:`VerifyReport`;
``verify_command`` is the typer command that prints it and turns limits into exit codes.
"""

from .measure import run_verify
from .options import VerifyOptions
from .report import VerifyReport

__all__ = ["VerifyOptions", "VerifyReport", "run_verify"]
