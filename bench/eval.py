"""lm-eval tasks built from local text, scored on an exported GGUF beside its original
(docs/evaluation.md): accuracy, how often both chose alike, and llama.cpp's time per 100
requests. No data set is downloaded: the tasks are cut from verify's built-in held-out
text (or ``--text``), one YAML and one JSONL each, lm-eval's ``--include_path`` layout.

- ``heldout_next`` (multiple choice, HellaSwag-like): a sentence, then its true next
  sentence among three sentences of other paragraphs.
- ``heldout_word`` (log-likelihood, LAMBADA-like): a paragraph up to a sentence's last
  word; ``acc`` is whether greedy decoding gives that word (with its space: lm-eval puts
  no delimiter before a log-likelihood task's target).
- ``heldout_gen`` (generation): the same prompts, the word generated greedily until a
  stop string (``.``, ``,``, ``;``, newline); exact match.

    python bench/eval.py out/smollm2-hopscotch.gguf --reference bundled:smollm2
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from importlib import resources
from pathlib import Path

from rich.console import Console

from hopscotch_export.evaluation import EvalOptions, run_eval

SEED = 0


def sentences(paragraph: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", paragraph) if s.strip()]


def build_tasks(text: str, folder: Path) -> tuple[str, ...]:
    """Write the three tasks' YAML and JSONL files into ``folder``; return their names."""
    rng = random.Random(SEED)
    paragraphs = [sentences(p) for p in re.split(r"\n\s*\n", text) if len(sentences(p)) >= 2]
    nexts, words = [], []
    for i, para in enumerate(paragraphs):
        others = [s for j, p in enumerate(paragraphs) if j != i for s in p]
        for k, (first, second) in enumerate(zip(para, para[1:])):
            choices = [second, *rng.sample(others, 3)]
            rng.shuffle(choices)
            nexts.append({"context": first, "choices": choices, "answer": choices.index(second)})
        for k, s in enumerate(para):
            m = re.match(r"^(.*\S)\s+([A-Za-z]+)[.!?]$", s)
            if m and len(m[1].split()) >= 6:
                words.append({"context": " ".join([*para[:k], m[1]]), "word": m[2]})
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("next", nexts), ("word", words)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    head = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    metric = "  - metric: {0}\n    aggregation: {1}\n    higher_is_better: {2}\n"
    (folder / "heldout_next.yaml").write_text(
        "task: heldout_next\n" + head.format(data=folder / "next.jsonl")
        + "output_type: multiple_choice\ndoc_to_text: '{{context}}'\ndoc_to_choice: '{{choices}}'\n"
        + "doc_to_target: answer\nmetric_list:\n" + metric.format("acc", "mean", "true")
        + metric.format("acc_norm", "mean", "true")
    )  # fmt: skip
    (folder / "heldout_word.yaml").write_text(
        "task: heldout_word\n" + head.format(data=folder / "word.jsonl")
        + "output_type: loglikelihood\ndoc_to_text: '{{context}}'\ndoc_to_target: \"{{' ' + word}}\"\nmetric_list:\n"
        + metric.format("acc", "mean", "true") + metric.format("perplexity", "perplexity", "false")
    )  # fmt: skip
    (folder / "heldout_gen.yaml").write_text(
        "task: heldout_gen\n" + head.format(data=folder / "word.jsonl")
        + "output_type: generate_until\ndoc_to_text: '{{context}}'\ndoc_to_target: '{{word}}'\n"
        + "generation_kwargs:\n  until: ['.', ',', ';', \"\\n\"]\n  max_gen_toks: 8\n  do_sample: false\n"
        + "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
        + "    ignore_case: true\n    regexes_to_ignore: [' ']\n"
    )  # fmt: skip
    print(f"tasks in {folder}: heldout_next {len(nexts)}, heldout_word and heldout_gen {len(words)} documents")
    return ("heldout_next", "heldout_word", "heldout_gen")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="the exported GGUF")
    ap.add_argument("--reference", default="bundled:smollm2", help="the original (default: bundled:smollm2)")
    ap.add_argument("--text", type=Path, help="text to cut the tasks from (default: verify's held-out text)")
    ap.add_argument("--tasks-dir", type=Path, default=Path("bench-eval-tasks"), help="where the task files go")
    ap.add_argument("--limit", type=int, default=None, help="documents per task (default: all)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, help="write the report here")
    args = ap.parse_args()
    text = (args.text.read_text(encoding="utf-8") if args.text else
            resources.files("hopscotch_export.verify").joinpath("heldout.txt").read_text(encoding="utf-8"))  # fmt: skip
    names = build_tasks(text, args.tasks_dir.resolve())
    start = time.perf_counter()
    options = EvalOptions(names, limit=args.limit, include_path=args.tasks_dir.resolve(), ctx=512, threads=args.threads)
    report = run_eval(args.model, args.reference, options, Console(stderr=True))
    report.render(Console())
    print(f"total {time.perf_counter() - start:.0f} s", file=sys.stderr)
    if args.json:
        report.save(args.json, force=True)


if __name__ == "__main__":
    main()
