"""The search stage: which attention blocks to remove (skip, or replace by fitted linear
maps), and the branch scales (and maps) that repair them.

``run_search(source, SearchOptions(skips=4), Path("plan.json"))`` writes a plan the
converter folds into a GGUF; ``search_command`` (in ``command.py``) is its CLI.
"""

from .options import SearchOptions
from .run import SearchInterrupted, run_search

__all__ = ["SearchOptions", "SearchInterrupted", "run_search"]
