"""The convert stage: source + plan -> ``deci`` GGUF. Knows nothing of training."""

from .convert import ConvertSummary, convert
from .outtypes import OUTTYPES

__all__ = ["ConvertSummary", "convert", "OUTTYPES"]
