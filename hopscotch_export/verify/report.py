"""The verification report: a rich table for people, JSON for scripts, limits for gates."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ..files import write_text_atomic
from .alternatives import Recommendation, Row
from .divergence import Divergence
from .llama_model import KvCacheInfo
from .parity import Parity
from .perplexity import Perplexity
from .speed import Speed
from .tasks import TaskScore

FORMAT = "hopscotch-verify/1"


@dataclass(frozen=True)
class Side:
    """What was measured on one model (the candidate or the reference)."""

    path: str
    file_bytes: int
    kv_cache: KvCacheInfo
    perplexity: Perplexity
    task: TaskScore | None = None
    speed: Speed | None = None
    #: attention layers by kind: keep (KV cache), skip and linear (neither holds one)
    layer_kinds: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "file_bytes": self.file_bytes,
            "layer_kinds": self.layer_kinds,
            "kv_cache": self.kv_cache.to_json(),
            "perplexity": self.perplexity.to_json(),
            "task": self.task.to_json() if self.task else None,
            "speed": self.speed.to_json() if self.speed else None,
        }


@dataclass(frozen=True)
class TextInfo:
    """Which held-out text was scored and how it was cut."""

    source: str
    builtin: bool
    tokens: int
    ctx: int
    windows: int
    scored_tokens: int

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class LimitCheck:
    """One ``--max-...`` gate: the measured value against the user's limit."""

    name: str
    value: float
    limit: float

    @property
    def passed(self) -> bool:
        return self.value <= self.limit

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "limit": self.limit, "passed": self.passed}


@dataclass(frozen=True)
class VerifyReport:
    """Everything ``verify`` measured, side by side."""

    model: Side
    reference: Side
    reference_spec: str
    #: output type the reference was converted to, None when it was a GGUF already
    reference_converted_to: str | None
    text: TextInfo
    divergence: Divergence
    task_source: str | None = None
    task_questions: int = 0
    parity: Parity | None = None
    limits: list[LimitCheck] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    #: every model x KV cache type measured: the reference, the main row and the alternatives
    rows: list[Row] = field(default_factory=list)
    #: alternatives llama.cpp could not run (label: its reason)
    unmeasured: dict[str, str] = field(default_factory=dict)
    recommendation: Recommendation | None = None

    @property
    def passed(self) -> bool | None:
        """Whether every gate passed; None when no gate ran (nothing to pass or fail)."""
        return all(c.passed for c in self.limits) if self.limits else None

    @property
    def checks_run(self) -> list[str]:
        """What was measured, gates or not."""
        run = ["perplexity", "KL from reference", "KV cache"]
        run += ["KV cache alternatives"] if len(self.rows) > 2 else []
        run += ["task"] if self.model.task else []
        run += ["speed"] if self.model.speed else []
        if self.parity:
            run += ["parity with torch"] + (["parity floor (unmodified file)"] if self.parity.floor is not None else [])
        return run

    @property
    def ppl_increase_pct(self) -> float:
        return 100.0 * (self.model.perplexity.ppl / self.reference.perplexity.ppl - 1.0)

    @property
    def task_agreement(self) -> float | None:
        """Share of questions where both models pick the same choice."""
        a, b = self.model.task, self.reference.task
        if a is None or b is None:
            return None
        return sum(x == y for x, y in zip(a.picks, b.picks)) / len(a.picks)

    def comparison(self) -> dict[str, Any]:
        m, r = self.model, self.reference
        out: dict[str, Any] = {
            "ppl_increase_pct": self.ppl_increase_pct,
            "divergence": self.divergence.to_json(),
            "file_bytes_ratio": m.file_bytes / r.file_bytes,
            "kv_cache_bytes_ratio": m.kv_cache.bytes / r.kv_cache.bytes,
        }
        if m.task and r.task:
            out["task_acc_diff"] = m.task.acc - r.task.acc
            out["task_acc_norm_diff"] = m.task.acc_norm - r.task.acc_norm
            out["task_agreement"] = self.task_agreement
        if m.speed and r.speed:
            out["prompt_speed_ratio"] = m.speed.prompt_tps / r.speed.prompt_tps
            out["gen_speed_ratio"] = m.speed.gen_tps / r.speed.gen_tps
            out["prompt_cpu_speed_ratio"] = m.speed.prompt_cpu_tps / r.speed.prompt_cpu_tps
            out["gen_cpu_speed_ratio"] = m.speed.gen_cpu_tps / r.speed.gen_cpu_tps
        return out

    def to_json(self) -> dict[str, Any]:
        reference = self.reference.to_json()
        reference["spec"] = self.reference_spec
        reference["converted_to"] = self.reference_converted_to
        return {
            "format": FORMAT,
            # null when no gate ran: nothing was checked against a limit
            "passed": self.passed,
            "checks_run": self.checks_run,
            "model": self.model.to_json(),
            "reference": reference,
            "comparison": self.comparison(),
            "heldout": self.text.to_json(),
            "task": {"source": self.task_source, "questions": self.task_questions} if self.task_source else None,
            "parity": self.parity.to_json() if self.parity else None,
            "limits": [c.to_json() for c in self.limits],
            "settings": self.settings,
            "alternatives": {
                "rows": [r.to_json() for r in self.rows],
                "unmeasured": self.unmeasured,
                "recommendation": self.recommendation.to_json() if self.recommendation else None,
            },
        }

    def save(self, path: Path | str, force: bool = False) -> None:
        """Write the JSON report atomically; ``force`` allows replacing an existing file."""
        write_text_atomic(path, json.dumps(self.to_json(), indent=1) + "\n", force=force)

    def table(self) -> Table:
        """Reference and model side by side (printed by :meth:`render`, and in the model card)."""
        m, r = self.model, self.reference
        table = Table(title="hopscotch-export verify", title_justify="left")
        table.add_column("")
        table.add_column("reference", justify="right")
        table.add_column("model", justify="right")
        table.add_column("difference", justify="right")
        table.add_row("file size", _mib(r.file_bytes), _mib(m.file_bytes), _pct(m.file_bytes, r.file_bytes))
        if m.layer_kinds:
            table.add_row("attention layers", _kinds(r.layer_kinds), _kinds(m.layer_kinds), "")
        table.add_row(
            f"KV cache at {self.text.ctx} tokens",
            _mib(r.kv_cache.bytes),
            _mib(m.kv_cache.bytes),
            _pct(m.kv_cache.bytes, r.kv_cache.bytes),
        )
        if m.kv_cache.flash_off_bytes and r.kv_cache.flash_off_bytes:
            table.add_row(
                "  the same, flash attention off",
                _mib(r.kv_cache.flash_off_bytes),
                _mib(m.kv_cache.flash_off_bytes),
                _pct(m.kv_cache.flash_off_bytes, r.kv_cache.flash_off_bytes),
            )
        table.add_row(
            "perplexity",
            _ppl(r.perplexity),
            _ppl(m.perplexity),
            f"{self.ppl_increase_pct:+.2f}%",
        )
        d = self.divergence
        table.add_row("KL from reference: mean", "", "", f"{d.mean_kl:.5f}")
        table.add_row("KL: 99th percentile / max", "", "", f"{d.p99_kl:.4f} / {d.max_kl:.4f}")
        table.add_row("same top token", "", "", f"{100 * d.same_top:.2f}%")
        if m.task and r.task:
            table.add_row("task acc", _acc(r.task.acc), _acc(m.task.acc), f"{100 * (m.task.acc - r.task.acc):+.1f} pts")
            table.add_row(
                "task acc_norm",
                _acc(r.task.acc_norm),
                _acc(m.task.acc_norm),
                f"{100 * (m.task.acc_norm - r.task.acc_norm):+.1f} pts",
            )
            table.add_row("same answer as reference", "", "", f"{100 * (self.task_agreement or 0):.1f}%")
        if m.speed and r.speed:
            ms, rs = m.speed, r.speed
            table.add_row(
                f"prompt tokens/s ({ms.prompt_tokens} tokens)",
                f"{rs.prompt_tps:.1f}",
                f"{ms.prompt_tps:.1f}",
                f"x{ms.prompt_tps / rs.prompt_tps:.3f} (CPU time x{ms.prompt_cpu_tps / rs.prompt_cpu_tps:.3f})",
            )
            table.add_row(
                f"generated tokens/s ({ms.gen_tokens} tokens)",
                f"{rs.gen_tps:.1f}",
                f"{ms.gen_tps:.1f}",
                f"x{ms.gen_tps / rs.gen_tps:.3f} (CPU time x{ms.gen_cpu_tps / rs.gen_cpu_tps:.3f})",
            )
        if self.parity:
            p = self.parity
            table.add_row("parity with torch + plan: mean KL", "", f"{p.mean_kl:.3g}", "")
            if p.floor is not None:
                table.add_row("parity floor: unmodified file vs torch", f"{p.floor:.3g}", "", "")
            table.add_row("parity: same top token", "", f"{100 * p.same_top:.2f}%", "")
        return table

    def render(self, console: Console) -> None:
        """The side-by-side table, what was measured on, and the limit verdicts."""
        console.print(self.table())
        self._render_alternatives(console)
        t = self.text
        converted = f", converted to {self.reference_converted_to}" if self.reference_converted_to else ""
        console.print(f"reference: {self.reference_spec}{converted}")
        if self.settings.get("placement"):
            console.print(f"llama.cpp: {self.settings['placement']}", highlight=False)
        console.print(
            f"held-out text: {t.source}; {t.tokens} tokens, {t.windows} windows of {t.ctx}, "
            f"{t.scored_tokens} tokens scored"
        )
        if self.task_source:
            console.print(f"task: {self.task_source}, {self.task_questions} questions")
        console.print(f"checks run: {', '.join(self.checks_run)}", highlight=False)
        if self.settings.get("speed_rounds") == "sequential":
            console.print(
                "speed rounds sequential, one model after the other (both models do not fit in memory together, "
                "or layers are offloaded to a GPU, whose memory the estimate does not count), "
                "so a drift in the machine's load between them counts as a speed difference"
            )
        for c in self.limits:
            verdict = "[green]pass[/green]" if c.passed else "[red]FAIL[/red]"
            console.print(f"{c.name}: {c.value:.5g} (limit {c.limit:.5g}) {verdict}", highlight=False)
        if self.parity and self.parity.floor is None:
            console.print(
                "parity not gated: the reference is stored more precisely than the model, so its floor does "
                "not bound the model's (compare with a reference of the model's type)"
            )
        if not self.limits:
            console.print("no gate ran (no --plan, --max-kl or --max-ppl-increase): nothing passed or failed")

    def _render_alternatives(self, console: Console) -> None:
        """The export beside llama.cpp's KV cache quantization, and which row to take."""
        if len(self.rows) < 2:
            return
        ref = self.rows[0]
        table = Table(title="against what llama.cpp already offers (same tokens)", title_justify="left")
        for name in ("model", "KV cache", "KV bytes/token", f"KV at {self.text.ctx}", "KV vs original",
                     "KV, flash attn off", "mean KL", "perplexity", "prompt tok/s", "gen tok/s"):  # fmt: skip
            table.add_column(name, justify="left" if name in ("model", "KV cache") else "right")
        for row in self.rows:
            kv = row.kv_cache
            table.add_row(
                row.model + (" (main)" if row.main else ""),
                kv.type_k,
                f"{kv.bytes_per_token:,}",
                _mib(kv.bytes),
                f"x{kv.bytes / ref.kv_cache.bytes:.3f}",
                _mib(kv.flash_off_bytes) if kv.flash_off_bytes else "n/a (needs -fa)",
                f"{row.mean_kl:.4f}",
                f"{row.perplexity.ppl:.3f}",
                f"{row.speed.prompt_tps:.1f}" if row.speed else "",
                f"{row.speed.gen_tps:.1f}" if row.speed else "",
            )
        console.print(table)
        for label, reason in self.unmeasured.items():
            console.print(f"not measured: {label}: {reason}", highlight=False, soft_wrap=True)
        if self.recommendation:
            console.print(self.recommendation.line(ref), highlight=False, soft_wrap=True)


def _kinds(kinds: dict[str, int]) -> str:
    """``23 keep, 3 keep some KV groups, 2 skip, 2 linear``."""
    order = ("keep", "keep some KV groups", "skip", "linear")
    return ", ".join(f"{kinds[k]} {k}" for k in order if kinds.get(k))


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def _pct(a: float, b: float) -> str:
    return f"{100 * (a / b - 1):+.2f}%"


def _ppl(p: Perplexity) -> str:
    return f"{p.ppl:.4f} ± {p.uncertainty:.4f}"


def _acc(x: float) -> str:
    return f"{100 * x:.1f}%"
