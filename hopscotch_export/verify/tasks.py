"""Multiple-choice accuracy scored by log-likelihood, as lm-evaluation-harness scores it.

For each question the prompt is ``template`` filled with the question, and each choice is
the continuation ``" " + choice``. Tokens are split as the harness's ``_encode_pair`` does:
trailing spaces of the context move to the continuation, the continuation's tokens are
``tokenize(context + continuation)`` minus the first ``len(tokenize(context))``. A choice's
score is the sum of its tokens' log-probabilities. ``acc`` picks the highest sum,
``acc_norm`` the highest sum divided by the choice's length in characters (the harness's
``acc_norm``). BOS is prepended when the model's vocabulary asks for it, as llama.cpp does.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import HopscotchError
from .data import load_rows
from .divergence import log_softmax
from .llama_model import LlamaSession

DEFAULT_TEMPLATE = "Question: {question}\nAnswer:"

_QUESTION_KEYS = ("question", "query", "goal", "ctx", "sentence", "prompt")
_CHOICE_KEYS = ("choices", "endings", "options")
_ANSWER_KEYS = ("answer", "answerKey", "label", "gold")


@dataclass(frozen=True)
class Question:
    """One item: the filled-in prompt, the choices, and the index of the right one."""

    context: str
    choices: tuple[str, ...]
    answer: int


@dataclass(frozen=True)
class Task:
    source: str
    questions: list[Question]


def load_task(
    spec: str,
    *,
    config: str | None = None,
    split: str = "test",
    limit: int | None = None,
    template: str = DEFAULT_TEMPLATE,
) -> Task:
    """Questions from a local JSONL file (question / choices / answer) or a Hugging Face dataset."""
    if "{question}" not in template:
        raise HopscotchError("--task-template must contain {question}")
    path = Path(spec).expanduser()
    if path.is_file():
        rows, source = _read_jsonl(path), str(path)
    else:
        rows = load_rows(spec, config, split, what="--task", limit=limit)
        source = spec + (f" ({config})" if config else "") + f" [{split}]"
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise HopscotchError(f"--task {spec}: no questions")
    questions = []
    for i, row in enumerate(rows):
        question, choices, answer = parse_row(row, f"--task {spec}: item {i + 1}")
        questions.append(Question(template.replace("{question}", question), choices, answer))
    return Task(source, questions)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise HopscotchError(f"--task {path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise HopscotchError(f"--task {path}:{n}: each line must be a JSON object")
        rows.append(row)
    return rows


def parse_row(row: dict[str, Any], where: str) -> tuple[str, tuple[str, ...], int]:
    """(question, choices, answer index) from the common dataset layouts.

    Accepts ``question``/``query``/``goal``/``ctx``; ``choices`` as a list of strings or
    ``{"text": [...], "label": [...]}`` (ARC), ``endings``/``options``, or ``sol1``/``sol2``
    (PIQA); ``answer``/``answerKey``/``label``/``gold`` as a 0-based index, a label from
    ``choices.label``, a letter, or the text of the right choice.
    """
    question = next((row[k] for k in _QUESTION_KEYS if k in row), None)
    if not isinstance(question, str):
        raise HopscotchError(f"{where}: no question text (expected one of {', '.join(_QUESTION_KEYS)})")
    raw = next((row[k] for k in _CHOICE_KEYS if k in row), None)
    labels: list[str] | None = None
    if raw is None and "sol1" in row:
        raw = [row[k] for k in sorted(row) if k.startswith("sol")]
    if isinstance(raw, dict):
        labels = [str(x) for x in raw.get("label", [])] or None
        raw = raw.get("text")
    if not isinstance(raw, list) or len(raw) < 2 or not all(isinstance(c, str) and c for c in raw):
        raise HopscotchError(f"{where}: 'choices' must be a list of at least two non-empty strings")
    choices = tuple(raw)
    key = next((k for k in _ANSWER_KEYS if k in row), None)
    if key is None:
        raise HopscotchError(f"{where}: no answer (expected one of {', '.join(_ANSWER_KEYS)})")
    return question, choices, _answer_index(row[key], choices, labels, where)


def _answer_index(value: Any, choices: tuple[str, ...], labels: list[str] | None, where: str) -> int:
    index: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        index = value
    elif isinstance(value, str):
        text = value.strip()
        if labels and text in labels:
            index = labels.index(text)
        elif text in choices:
            index = choices.index(text)
        elif len(text) == 1 and text in string.ascii_uppercase:
            index = string.ascii_uppercase.index(text)
        elif text.isdigit():
            index = int(text)
    if index is None or not 0 <= index < len(choices):
        raise HopscotchError(f"{where}: answer {value!r} does not name one of its {len(choices)} choices")
    return index


def encode_pair(session: LlamaSession, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness's context/continuation token split, with llama.cpp's tokenizer."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = session.tokenize(context + continuation)
    context_tokens = session.tokenize(context)
    return context_tokens, whole[len(context_tokens) :]


def choice_logliks(session: LlamaSession, context: str, choices: Sequence[str]) -> list[float]:
    """Sum of log-probabilities of each ``" " + choice`` after ``context``.

    The context is decoded once; each choice reuses its cached positions.
    """
    pairs = [encode_pair(session, context, " " + c) for c in choices]
    ctx = pairs[0][0]
    if not ctx:
        raise HopscotchError("a task prompt tokenizes to nothing; use a --task-template with text")
    longest = len(ctx) + max(len(cont) for _, cont in pairs)
    if longest > session.n_ctx:
        raise HopscotchError(f"a task question needs {longest} tokens, more than --ctx {session.n_ctx}")
    session.clear()
    for start in range(0, len(ctx) - 1, session.n_batch):
        session.decode(ctx[start : min(start + session.n_batch, len(ctx) - 1)], start)
    logliks = []
    for choice, (_, cont) in zip(choices, pairs):
        if not cont:
            raise HopscotchError(f"task choice {choice!r} adds no tokens to its prompt")
        session.truncate(len(ctx) - 1)
        feed = [ctx[-1], *cont[:-1]]
        total = 0.0
        for start in range(0, len(feed), session.n_batch):
            piece = feed[start : start + session.n_batch]
            logits = session.decode(piece, len(ctx) - 1 + start, [True] * len(piece))
            lp = log_softmax(logits)
            total += float(lp[np.arange(len(piece)), cont[start : start + len(piece)]].sum())
        logliks.append(total)
    return logliks


@dataclass(frozen=True)
class TaskScore:
    """Accuracy of one model, and each question's pick (for agreement between models)."""

    acc: float
    acc_norm: float
    picks: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"acc": self.acc, "acc_norm": self.acc_norm}


def score_task(session: LlamaSession, task: Task, advance: Callable[[], None] = lambda: None) -> TaskScore:
    """``acc`` and ``acc_norm`` of one model over the task."""
    right = right_norm = 0
    picks = []
    for q in task.questions:
        ll = np.array(choice_logliks(session, q.context, q.choices))
        lengths = np.array([float(len(c)) for c in q.choices])
        pick = int(ll.argmax())
        right += pick == q.answer
        right_norm += int((ll / lengths).argmax()) == q.answer
        picks.append(pick)
        advance()
    n = len(task.questions)
    return TaskScore(right / n, right_norm / n, tuple(picks))
