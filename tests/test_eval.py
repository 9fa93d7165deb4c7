"""eval: lm-eval tasks scored by our llama.cpp model class, checked against lm-eval's own
``hf`` backend on the same tiny f32 model, at chance for a random model, above it for
SmolLM2; stop strings; the command's table, JSON and one-line errors.

The tasks are local (a YAML per task over a JSONL the test writes, lm-eval's
``--include_path`` layout), so nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lm_eval", reason="the optional extra [eval]")

from lm_eval import evaluator  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402

from hopscotch_export.converters.convert import convert  # noqa: E402
from hopscotch_export.evaluation import EvalOptions, run_eval  # noqa: E402
from hopscotch_export.evaluation.model import LlamaCppLM  # noqa: E402
from hopscotch_export.evaluation.tasks import task_manager  # noqa: E402
from hopscotch_export.sources import open_source  # noqa: E402
from test_cli import assert_one_line_error, run_cli  # noqa: E402

#: One thread: on a shared 2-core machine OpenMP threads that wait for each other are slower.
THREADS = 1
COLOURS = ["red", "green", "blue", "yellow"]
#: short context, so that the rolling task needs several windows
CTX = 48

EASY = [
    ("What is the capital of France?", ["Paris", "Tokyo", "Cairo", "Lima"], 0),
    ("How many legs does a dog have?", ["two", "four", "eight", "none"], 1),
    ("What colour is grass?", ["purple", "orange", "green", "black"], 2),
    ("Which animal says moo?", ["cat", "duck", "snake", "cow"], 3),
    ("What is frozen water called?", ["ice", "sand", "smoke", "wood"], 0),
    ("Which planet do we live on?", ["Mars", "Earth", "Venus", "Pluto"], 1),
    ("What do bees make?", ["milk", "silk", "honey", "glass"], 2),
    ("What is two plus two?", ["one", "seven", "ten", "four"], 3),
    ("What is the opposite of hot?", ["cold", "loud", "tall", "fast"], 0),
    ("Which season is the coldest?", ["summer", "winter", "spring", "autumn"], 1),
    ("What do we use to see?", ["ears", "hands", "eyes", "feet"], 2),
    ("Which one is a fruit?", ["stone", "chair", "spoon", "apple"], 3),
]


def _multiple_choice_yaml(task: str, data: Path) -> str:
    return f"""task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def colours(n: int) -> list[dict]:
    """``n`` documents of the four-way colour task, each colour the right answer equally often
    (``n`` a multiple of 12)."""
    return [
        {"question": f"Which colour is item {i} painted?", "choices": COLOURS[i % 3 :] + COLOURS[: i % 3],
         "answer": (i // 3 + 4 - i % 3) % 4}
        for i in range(n)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of task YAMLs: ``colours`` (multiple choice where each colour is the right
    answer equally often, so a model that ignores the question scores exactly 1/4),
    ``easy`` (questions SmolLM2 knows), ``rolling`` (perplexity) and ``until`` (generation)."""
    d = tmp_path_factory.mktemp("eval_tasks")
    (d / "colours.yaml").write_text(_multiple_choice_yaml("colours", _write_jsonl(d / "colours.jsonl", colours(96))))
    easy = [{"question": q, "choices": c, "answer": a} for q, c, a in EASY]
    (d / "easy.yaml").write_text(_multiple_choice_yaml("easy", _write_jsonl(d / "easy.jsonl", easy)))
    texts = [
        {"text": "The quick brown fox jumps over the lazy dog. " * 6},
        {"text": "Rivers carry water from the mountains to the sea, and on their way they cut valleys. " * 2},
    ]
    (d / "rolling.yaml").write_text(f"""task: rolling
dataset_path: json
dataset_kwargs:
  data_files:
    test: {_write_jsonl(d / "rolling.jsonl", texts)}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
""")
    prompts = [{"prompt": p, "answer": "x"} for p in ("Once upon a time", "def main():", "Dear Sir,")]
    (d / "until.yaml").write_text(f"""task: until
dataset_path: json
dataset_kwargs:
  data_files:
    test: {_write_jsonl(d / "until.jsonl", prompts)}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n\\n", "."]
  max_gen_toks: 12
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
""")
    return d


def test_colours_is_balanced():
    """The chance argument: each colour is the right answer equally often."""
    rows = [(COLOURS[i % 3 :] + COLOURS[: i % 3])[(i // 3 + 4 - i % 3) % 4] for i in range(96)]
    assert {c: rows.count(c) for c in COLOURS} == dict.fromkeys(COLOURS, 24)


@pytest.fixture(scope="module")
def tiny_f32(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval_gguf") / "tiny.f32.gguf"
    convert(open_source(tiny_llama), None, out, outtype="f32")
    return out


def _ours(path: Path, **kw) -> LlamaCppLM:
    """Our model with an f32 KV cache and flash attention off (CPU flash attention rounds Q
    to f16), so that it can be compared with torch to float tolerance."""
    return LlamaCppLM(path, **{"max_length": CTX, "threads": THREADS, "cache_type": "f32", "flash_attn": False, **kw})


def _simple(lm, tasks: Path, names: list[str], limit: int | None = None) -> dict:
    return evaluator.simple_evaluate(
        model=lm, tasks=names, task_manager=task_manager(names, tasks), limit=limit, log_samples=True,
        bootstrap_iters=0,
    )  # fmt: skip


def _lls(samples: list[dict]) -> np.ndarray:
    return np.array([[r[0] for r in s["filtered_resps"]] for s in sorted(samples, key=lambda s: s["doc_id"])])


def test_matches_lm_eval_hf_backend(tiny_f32, tiny_llama, tasks):
    """Same tiny f32 weights, same requests: log-likelihoods to 1e-4, accuracy exactly,
    rolling log-likelihoods (several windows each) and greedy generations alike."""
    from lm_eval.models.huggingface import HFLM

    names = ["colours", "rolling", "until"]
    with _ours(tiny_f32) as lm:
        ours = _simple(lm, tasks, names, limit=24)
    hf = _simple(HFLM(pretrained=str(tiny_llama), dtype="float32", device="cpu", batch_size=8, max_length=CTX),
                 tasks, names, limit=24)  # fmt: skip

    a, b = _lls(ours["samples"]["colours"]), _lls(hf["samples"]["colours"])
    assert a.shape == b.shape == (24, 4)
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
    for metric in ("acc,none", "acc_norm,none"):
        assert ours["results"]["colours"][metric] == hf["results"]["colours"][metric]

    rolling = [sorted(r["samples"]["rolling"], key=lambda s: s["doc_id"]) for r in (ours, hf)]
    ll = np.array([[s["filtered_resps"][0] for s in side] for side in rolling])
    assert ll.shape == (2, 2) and (ll < 0).all()
    np.testing.assert_allclose(ll[0], ll[1], atol=1e-4, rtol=0)

    generated = [[s["filtered_resps"] for s in sorted(r["samples"]["until"], key=lambda s: s["doc_id"])]
                 for r in (ours, hf)]  # fmt: skip
    assert generated[0] == generated[1]
    assert any(g[0] for g in generated[0])


def test_stop_strings_cut_the_generation(tiny_f32):
    """A stop string taken from the middle of the unstopped generation ends it just before."""

    def generate(lm: LlamaCppLM, until: list[str]) -> str:
        request = Instance("generate_until", {}, ("The weather today", {"until": until, "max_gen_toks": 24}), 0)
        return lm.generate_until([request])[0]

    with _ours(tiny_f32) as lm:
        free = generate(lm, [])
        assert len(free) > 12, free
        stop = free[6:9]
        cut = generate(lm, [stop])
    assert cut == free[: free.index(stop)]
    assert stop not in cut


def test_random_model_scores_at_chance(tiny_f32, tasks):
    """A random-weight model on a balanced 4-way task: within 2 standard errors of 1/4."""
    with _ours(tiny_f32) as lm:
        result = _simple(lm, tasks, ["colours"])["results"]["colours"]
    acc = result["acc,none"]
    stderr = np.sqrt(0.25 * 0.75 / 96)
    assert abs(acc - 0.25) <= 2 * stderr, acc


@pytest.mark.slow
def test_smollm2_above_chance(smollm2, tasks):
    """SmolLM2 knows the easy questions: well above the 1/4 a guess gets."""
    report = run_eval(smollm2, None, EvalOptions(tasks=("easy",), include_path=tasks, ctx=256, threads=THREADS))
    assert report.results["results"]["easy"]["acc,none"] >= 0.75


def test_eval_command_with_reference(monkeypatch, capsys, tmp_path, tiny_f32, tiny_llama, tasks):
    """The command, with the Hugging Face original as the reference (converted to f32 like
    the file, so identical): a table per metric with standard errors, the difference and
    the agreement; the JSON in lm-eval's results layout with the comparison beside it."""
    out = tmp_path / "eval.json"
    code, stdout, err = run_cli(
        monkeypatch, capsys, "eval", str(tiny_f32), "--tasks", "colours", "--include-path", str(tasks),
        "--reference", str(tiny_llama), "--limit", "8", "--threads", "1", "--ctx", "64", "--json", str(out),
    )  # fmt: skip
    assert code == 0, stdout
    assert "colours" in stdout and "acc_norm" in stdout and "±" in stdout and "100%" in stdout
    assert "it/s" not in err and "Tokenizing" not in err  # lm-eval's own bars stay off our display
    data = json.loads(out.read_text())
    assert data["n-samples"]["colours"]["effective"] == 8
    reference = data["hopscotch"]["reference_results"]
    assert data["results"]["colours"]["acc,none"] == reference["results"]["colours"]["acc,none"]
    assert data["results"]["colours"]["acc_stderr,none"] > 0
    assert data["hopscotch"]["comparison"]["colours"] == {"difference": {"acc": 0.0, "acc_norm": 0.0}, "agreement": 1.0}
    assert "samples" not in data


def test_uncached_dataset_is_one_line(monkeypatch, capsys, tmp_path, tiny_f32):
    """Offline (the tests set HF_HUB_OFFLINE) with the data not cached: the task and how to fetch it."""
    (tmp_path / "remote.yaml").write_text(
        "task: remote\ndataset_path: hopscotch-test/not-cached\ndataset_name: easy\noutput_type: multiple_choice\n"
        "test_split: test\ndoc_to_text: q\ndoc_to_choice: ['a', 'b']\ndoc_to_target: 0\n"
    )
    args = ("eval", str(tiny_f32), "--tasks", "remote", "--include-path", str(tmp_path))
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert_one_line_error(code, err, "--tasks remote", "hopscotch-test/not-cached", "datasets.load_dataset(")


def test_one_command_scores_tasks_beside_the_original(monkeypatch, capsys, tmp_path, tiny_llama, text_file, tasks):
    """``--tasks`` (here a task YAML by path) scores the exported file and the original on the
    same requests and writes ``model.eval.json`` beside the GGUF."""
    rows = [json.loads(line) for line in (tasks / "colours.jsonl").read_text().splitlines()[:6]]
    yaml = tmp_path / "mini.yaml"
    yaml.write_text(_multiple_choice_yaml("mini", _write_jsonl(tmp_path / "mini.jsonl", rows)))
    out = tmp_path / "m.gguf"
    code, printed, err = run_cli(
        monkeypatch, capsys, str(tiny_llama), "--skips", "1", "-o", str(out), "--data", str(text_file),
        "--samples", "4", "--heldout", "2", "--seq-len", "32", "--score-samples", "2", "--batch-size", "2",
        "--final-epochs", "1", "--device", "cpu", "--no-verify", "--outtype", "f32", "--threads", "1",
        "--tasks", str(yaml),
    )  # fmt: skip
    assert code == 0, err
    data = json.loads((tmp_path / "m.eval.json").read_text())
    assert data["n-samples"]["mini"]["effective"] == 6
    assert data["hopscotch"]["reference"] == str(tiny_llama)
    assert data["hopscotch"]["reference_results"]["n-samples"]["mini"]["effective"] == 6
    assert 0 <= data["hopscotch"]["comparison"]["mini"]["agreement"] <= 1
    assert "mini" in printed and "m.eval.json" in printed


def test_missing_model_and_bad_limit_are_one_line(monkeypatch, capsys, tmp_path, tiny_f32):
    """Refused before lm-eval indexes its tasks (seconds)."""
    code, _, err = run_cli(monkeypatch, capsys, "eval", str(tmp_path / "no.gguf"), "--tasks", "colours")
    assert_one_line_error(code, err, "no.gguf not found")
    code, _, err = run_cli(monkeypatch, capsys, "eval", str(tiny_f32), "--tasks", "colours", "--limit", "0")
    assert_one_line_error(code, err, "--limit 0")
