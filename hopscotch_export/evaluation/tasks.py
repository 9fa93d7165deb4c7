"""lm-eval's task registry: names checked, data loaded (from the local datasets cache when
offline), each failure one line that names the task and the fix."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from ..errors import HopscotchError


def task_manager(names: list[str], include_path: Path | None = None) -> Any:
    """A ``TaskManager`` that knows every name in ``names`` (built-in tasks, or task YAMLs
    under ``include_path``), and has loaded their data once, so that a missing data set
    stops the run before a model is loaded.

    Indexing lm-eval's own tasks takes seconds, so when every name is under
    ``include_path`` (or a YAML file's path) they are left out."""
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        raise HopscotchError(f"--include-path {include_path}: not a folder; give the folder of your task YAML files")
    manager = None
    if include_path is not None or all(_is_yaml(n) for n in names):
        manager = TaskManager(include_path=str(include_path) if include_path else None, include_defaults=False)
        if not all(_known(manager, n) for n in names):
            manager = None
    if manager is None:
        manager = TaskManager(include_path=str(include_path) if include_path else None)
    for name in names:
        if not _known(manager, name):
            close = difflib.get_close_matches(name, manager.all_tasks, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "see `lm-eval ls tasks`"
            raise HopscotchError(
                f"--tasks {name}: no such lm-eval task ({hint}); a task of your own goes in a YAML file "
                "under --include-path"
            )
        _load(manager, name)
    return manager


def _is_yaml(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) and Path(name).is_file()


def _known(manager: Any, name: str) -> bool:
    return name in manager.task_index or _is_yaml(name)


def _load(manager: Any, name: str) -> None:
    """Load a task's data; offline, the local datasets cache is used (``datasets`` does that)."""
    try:
        manager.load([name])
    except Exception as e:  # datasets and lm-eval raise many types; all are about the data
        cause = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise HopscotchError(_load_error(manager, name, e, cause)) from None


def _load_error(manager: Any, name: str, error: BaseException, cause: BaseException) -> str:
    entry = manager.task_index.get(name)
    cfg = getattr(entry, "cfg", None) or {}
    dataset, config = cfg.get("dataset_path"), cfg.get("dataset_name")
    offline = isinstance(error, ConnectionError) or isinstance(cause, (ConnectionError, FileNotFoundError))
    if offline and dataset:
        args = repr(dataset) + (f", {config!r}" if config else "")
        return (
            f"--tasks {name}: its data set {dataset}{f' ({config})' if config else ''} is not in the local datasets "
            f"cache and the hub cannot be reached; fetch it once online: "
            f'python -c "import datasets; datasets.load_dataset({args})"'
        )
    what = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return (
        f"--tasks {name}: cannot load the task ({what}); run once online so that its data set is cached, "
        "or check the task's YAML"
    )
