"""The model card written beside an exported GGUF (``model.README.md``), ready to publish as
the README of a Hugging Face repository: the hub's model-card metadata (``base_model``,
``license`` carried over from the source, ``tags``), what was removed and why, how the
file measured in llama.cpp, and how to run it. Its tables are the ones the run printed
(the same rich tables, written as Markdown), so the card and the reports cannot disagree.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import yaml
from rich.table import Table

from . import __version__
from .ollama import ollama_create_command
from .plan import Plan
from .run_commands import WHY_FLASH_ATTENTION, llama_cpp_command, lm_studio_command, ollama_environment
from .sources import GgufFileSource, ModelSource
from .sources.hub import HubRef

TAGS = ["gguf", "hopscotch"]
PAPER = "https://arxiv.org/abs/2506.03303"


def card_metadata(source: ModelSource, hub: HubRef | None) -> dict[str, Any]:
    """``base_model`` (the hub id the model came from, or the repository a GGUF says it was
    converted from), the source's licence, and :data:`TAGS`; what is unknown is left out."""
    meta: dict[str, Any] = {}
    base = hub.repo_id if hub is not None else _gguf_origin(source)
    if base:
        meta["base_model"] = base
    meta |= source_license(source)
    meta["tags"] = list(TAGS)
    return meta


def source_license(source: ModelSource) -> dict[str, Any]:
    """``license`` (with ``license_name`` / ``license_link`` for ``other``) from a GGUF's
    ``general.license``, else from the front matter of the model card beside the source."""
    if isinstance(source, GgufFileSource) and source.field("general.license"):
        return {"license": str(source.field("general.license"))}
    folder = source.path if source.path.is_dir() else source.path.parent
    front = _front_matter(folder / "README.md")
    return {k: front[k] for k in ("license", "license_name", "license_link") if isinstance(front.get(k), str)}


def _gguf_origin(source: ModelSource) -> str | None:
    """The hub repository a GGUF records as the one it was converted from."""
    if not isinstance(source, GgufFileSource):
        return None
    url = source.field("general.source.repo_url") or source.field("general.source.url") or ""
    m = re.match(r"^https?://(?:huggingface\.co|hf\.co)/([\w.-]+/[\w.-]+)/?$", str(url))
    return m.group(1) if m else None


def _front_matter(path: Path) -> dict[str, Any]:
    """The YAML block a model card starts with; empty when there is none or it is unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
    try:
        front = yaml.safe_load(m.group(1)) if m else None
    except yaml.YAMLError:
        return {}
    return front if isinstance(front, dict) else {}


def markdown_table(table: Table) -> str:
    """A rich table as a Markdown (GitHub / Hugging Face) table."""
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    columns = table.columns
    rows = [[cell(c.header) for c in columns], ["---"] * len(columns)]
    rows += [[cell(v) for v in values] for values in zip(*(list(c.cells) for c in columns))]
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def model_card(
    gguf: Path, modelfile: Path, plan: Plan, report: Any, source: ModelSource, hub: HubRef | None,
    cache_type: str, name: str, curve_png: Path | None,
) -> str:  # fmt: skip
    """The card's text: YAML metadata, then Markdown. ``report`` is the :class:`VerifyReport`
    (None without verification); files are named as they sit beside the card."""
    from .search.display import summary_tables

    meta = card_metadata(source, hub)
    origin = meta.get("base_model") or source.path.name
    lines = [
        "---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "",
        f"# {name}", "",
        f"`{origin}` with {what_was_removed(plan)} by [Hopscotch]({PAPER}), as a GGUF for llama.cpp's "
        f"`{source.spec.family.gguf_out}` architecture (written by hopscotch-export {__version__}).",
        "",
        "## What was removed and why",
        "",
        "A greedy search removed, one step at a time, the attention block (or KV group) whose removal raised "
        "the loss on the calibration data least once learned scales on every branch repaired the drift it "
        "caused; the scales are folded into the weights.",
        "",
    ]  # fmt: skip
    provenance = plan.provenance
    search = provenance.get("search") or {}
    if search.get("steps") and provenance.get("heldout"):
        objective = (provenance.get("options") or {}).get("objective", "kl")
        for table in summary_tables(search["steps"], provenance["heldout"], objective):
            lines += [f"**{table.title}**", "", markdown_table(table), ""]
    else:
        kept = "; ".join(f"layer {i} keeps {list(g)}" for i, g in plan.kv_groups.items())
        groups = f" KV groups: {kept}." if kept else ""
        lines += [f"Removed: layers {', '.join(map(str, [*plan.skip, *plan.linear])) or 'none'}.{groups}", ""]
    lines += ["## How it measured in llama.cpp", ""]
    if report is not None:
        t = report.text
        lines += [
            markdown_table(report.table()), "",
            f"Reference: `{hub or report.reference_spec}`, unmodified. Held-out text: {t.source}; "
            f"{t.scored_tokens} tokens scored in {t.windows} windows of {t.ctx}.", "",
        ]  # fmt: skip
    else:
        lines += ["Not verified (exported with `--no-verify`).", ""]
    if curve_png is not None:
        lines += [f"![quality against attention blocks removed]({curve_png.name})", ""]
    lines += run_instructions(gguf, modelfile, cache_type, name)
    return "\n".join(lines).rstrip() + "\n"


def what_was_removed(plan: Plan) -> str:
    """The card's phrase for what the plan removed: whole attention blocks, KV groups cut
    (and from which layers), or both, so a family that only cuts groups is described as such."""
    n = plan.model.n_layers
    parts = []
    blocks = len(plan.skip) + len(plan.linear)
    if blocks or not plan.kv_groups:
        parts.append(f"{blocks} of its {n} attention blocks removed")
    if plan.kv_groups:
        kv = plan.model.n_kv_heads
        cut = "" if kv is None else f"{sum(kv - len(g) for g in plan.kv_groups.values())} of its {n * kv} "
        layers = ", ".join(map(str, plan.kv_groups))
        saving = plan.kv_saving()
        share = "" if saving is None else f", {saving:.1%} of the KV cache"
        parts.append(f"{cut}KV groups cut (from layers {layers}{share})")
    return " and ".join(parts)


def run_instructions(gguf: Path, modelfile: Path, cache_type: str, name: str) -> list[str]:
    """The card's section on running the file, with the commands the one command prints."""
    here = Path(gguf.name)
    return [
        "## How to run it", "",
        f"Turn flash attention on ({WHY_FLASH_ATTENTION}).", "",
        "llama.cpp:", "", "```bash", llama_cpp_command(here, cache_type), "```", "",
        "LM Studio (import, then turn Flash Attention on in the model's load settings):", "",
        "```bash", lm_studio_command(here), "```", "",
        f"Ollama 0.9.3 or later, with `{modelfile.name}` from this repository:", "",
        "```bash", f"{ollama_environment(cache_type)} ollama serve",
        f"{ollama_create_command(Path(modelfile.name), name)} && ollama run {shlex.quote(name)}", "```",
    ]  # fmt: skip


def upload_commands(files: list[Path], card: Path, repo: str) -> list[str]:
    """The commands that publish ``files`` and the card (as README.md) to the hub repository
    ``repo``: ``hf upload``, the command huggingface_hub 1.x provides (it dropped
    ``huggingface-cli``)."""
    lines = [f"hf upload {repo} {shlex.quote(str(f))} {shlex.quote(f.name)}" for f in files]
    return lines + [f"hf upload {repo} {shlex.quote(str(card))} README.md"]
