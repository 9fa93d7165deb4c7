"""lm-evaluation-harness tasks on a GGUF, run by llama.cpp in this process (``eval``).

``run_eval(model_gguf, reference, EvalOptions(tasks=(...)))`` returns an
:class:`EvalReport`; :mod:`.model` is the lm-eval model class (``hopscotch-llama-cpp``).
lm-eval is the optional extra ``eval``: nothing here imports it until a run starts.
"""

from .report import EvalReport
from .run import EvalOptions, run_eval

__all__ = ["EvalOptions", "EvalReport", "run_eval"]
