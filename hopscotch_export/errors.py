"""User-facing errors: the CLI prints their message on one line and exits non-zero.

Raise these for anything a user can fix (bad path, bad plan, unsupported model); the
message names the problem and the fix. Anything else is a bug and keeps its traceback.
"""


class HopscotchError(Exception):
    """A mistake in the user's input, with a one-line message that says how to fix it."""


class PlanError(HopscotchError):
    """The plan file is malformed or does not belong to the model at hand."""


class SourceError(HopscotchError):
    """The model source cannot be read or is not a supported family."""
