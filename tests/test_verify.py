"""verify end to end: converted tiny models and SmolLM2 in llama.cpp, checked independently.

Perplexity is recomputed here with llama-cpp-python's high-level ``Llama`` (all logits,
numpy log-softmax); task log-likelihoods with torch on the Hugging Face model.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from hopscotch_export.cli import app
from hopscotch_export.converters.convert import convert
from hopscotch_export.errors import HopscotchError
from hopscotch_export.plan import Plan
from hopscotch_export.sources import open_source
from hopscotch_export.verify import VerifyOptions, run_verify
from hopscotch_export.verify import needs as verify_needs_module
from hopscotch_export.verify import measure as verify_run
from hopscotch_export.verify.data import load_text
from hopscotch_export.verify.divergence import log_softmax, token_kl
from hopscotch_export.verify.heldout import window_outputs
from hopscotch_export.estimates import human
from hopscotch_export.verify.needs import verify_needs
from hopscotch_export.verify.parity import floor_applies, torch_parity
from hopscotch_export.verify.perplexity import Perplexity, make_windows, token_nll
from hopscotch_export.verify.llama_model import LlamaModel, LlamaSession
from hopscotch_export.verify.speed import measure_speed
from hopscotch_export.verify.tasks import Question, Task, choice_logliks, score_task
from models import smollm2_tokenizer
from test_cli import assert_one_line_error, run_cli

#: One thread: on a shared 2-core machine OpenMP threads that wait for each other are slower.
THREADS = 1

QUESTIONS = [
    {"question": "What colour is the sky on a clear day?", "choices": ["blue", "green", "a loud trumpet"], "answer": 0},
    {"question": "Which number is even?", "choices": ["7", "12", "nine hundred and one", "3"], "answer": 1},
    {"question": "def add(a, b): return", "choices": ["a + b", "a - b"], "answer": 0},
]


def options(**changes) -> VerifyOptions:
    base = dict(ctx=64, chunks=4, speed=False, threads=THREADS)
    return VerifyOptions(**{**base, **changes})


@pytest.fixture(scope="module")
def tiny(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """f32 conversions of the tiny Llama with an empty plan and with a 2-skip scaled plan."""
    d = tmp_path_factory.mktemp("verify_tiny")
    src = open_source(tiny_llama)
    ref = src.model_ref()
    n = ref.n_layers
    empty = Plan.identity(ref)
    skip = Plan(ref, (2, 4), tuple(np.linspace(0.7, 1.3, n).tolist()), tuple(np.linspace(1.2, 0.8, n).tolist()))
    out = {"hf": tiny_llama}
    for name, plan in (("empty", empty), ("skip", skip)):
        convert(src, plan, d / f"{name}.gguf", outtype="f32")
        plan.save(d / f"{name}.plan.json")
        out[name] = d / f"{name}.gguf"
        out[f"{name}_plan"] = d / f"{name}.plan.json"
    tasks = d / "task.jsonl"
    tasks.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    out["task"] = tasks
    return out


def independent_ppl(path: Path, text: str, ctx: int, max_windows: int) -> float:
    """llama-perplexity's recipe, written out again over the high-level API's logits."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=ctx, logits_all=True, n_threads=THREADS, verbose=False, flash_attn=True)
    try:
        tokens = llm.tokenize(text.encode(), add_bos=True, special=False)
        add_bos = llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(llm.model))
        nll = []
        for i in range(min(len(tokens) // ctx, max_windows)):
            window = tokens[i * ctx : (i + 1) * ctx]
            if add_bos:
                window[0] = llm.token_bos()
            llm.reset()
            llm.eval(window)
            x = np.array(llm.scores[:ctx], dtype=np.float64)
            lp = x - x.max(1, keepdims=True)
            lp -= np.log(np.exp(lp).sum(1, keepdims=True))
            nll += [-lp[j, window[j + 1]] for j in range(ctx // 2, ctx - 1)]
        return math.exp(float(np.mean(nll)))
    finally:
        llm.close()


def test_empty_plan_matches_hf_reference(tiny):
    """Reference given as a Hugging Face folder: converted to f32 like the model, then identical."""
    r = run_verify(tiny["empty"], str(tiny["hf"]), options())
    assert r.reference_converted_to == "f32"
    assert r.divergence.max_kl < 1e-9 and r.divergence.same_top == 1.0
    assert r.model.perplexity.ppl == pytest.approx(r.reference.perplexity.ppl, rel=1e-9)
    assert r.model.kv_cache == r.reference.kv_cache
    assert r.text.builtin and r.text.windows == 4 and r.text.scored_tokens == 4 * 31
    assert r.model.perplexity.ppl == pytest.approx(independent_ppl(tiny["empty"], load_text(None).text, 64, 4), rel=1e-4)


def test_skip_plan_diverges_and_passes_parity(tiny):
    r = run_verify(
        tiny["skip"],
        str(tiny["hf"]),
        options(
            plan=tiny["skip_plan"], task=str(tiny["task"]),
            speed=True, speed_prompt=32, speed_gen=4, speed_rounds=2,
        ),
    )
    d = r.divergence
    assert d.mean_kl > 1e-3 and d.max_kl >= d.p99_kl >= 0 and d.same_top < 1.0  # flat random logits: small KL
    assert r.model.perplexity.ppl != pytest.approx(r.reference.perplexity.ppl, rel=1e-3)
    assert r.model.kv_cache.bytes * 6 == r.reference.kv_cache.bytes * 4  # 2 of 6 layers hold no K/V
    assert (r.model.kv_cache.layers, r.reference.kv_cache.layers) == (4, 6)
    assert (r.model.layer_kinds, r.reference.layer_kinds) == ({"keep": 4, "skip": 2}, {"keep": 6})
    assert r.parity is not None and r.parity.mean_kl < 1e-3 and r.parity.same_top > 0.98
    assert r.task_questions == 3 and r.model.task is not None and r.reference.task is not None
    speed = r.comparison()
    assert r.model.speed.prompt_tps > 0 and r.reference.speed.gen_tps > 0
    assert len(r.model.speed.runs) == 2 and r.model.speed.gen_cpu_tps > 0
    assert speed["prompt_speed_ratio"] == pytest.approx(r.model.speed.prompt_tps / r.reference.speed.prompt_tps)
    data = r.to_json()
    assert data["passed"] and data["parity"]["mean_kl"] == r.parity.mean_kl
    assert data["comparison"]["divergence"]["mean_kl"] == d.mean_kl
    # the parity gate: the unmodified file's floor measured on the same tokens, the limit from it
    assert r.parity.floor is not None and 0 <= r.parity.floor < 1e-3
    assert [c.name.split(":")[0] for c in r.limits] == ["parity with torch under the plan"]
    assert r.limits[0].limit == pytest.approx(4 * r.parity.floor + 5e-4)
    assert {"parity with torch", "parity floor (unmodified file)", "task", "speed"} <= set(data["checks_run"])


def test_parity_catches_a_file_that_does_not_match_the_plan(tiny):
    """The same GGUF against torch with the wrong plan (nothing skipped): KL far above the floor."""
    with LlamaSession(tiny["skip"], n_ctx=64, n_threads=THREADS) as s:
        windows = make_windows(s.tokenize(load_text(None).text), 64, None, 2)
        good = torch_parity(s, tiny["hf"], tiny["skip_plan"], windows)
        wrong = torch_parity(s, tiny["hf"], tiny["empty_plan"], windows)
    assert good.mean_kl < 1e-3
    assert wrong.mean_kl > 100 * good.mean_kl


def test_prompt_once_decodes_each_prompt_once_and_generates_every_round_at_the_same_depth(tiny, monkeypatch):
    """Prompt-once speed: each session decodes its prompt once; every round drops the cache
    back to the prompt and generates the same positions again, forward/reverse interleaved."""
    calls: list[tuple[LlamaSession, str, int, int]] = []  # (session, what, tokens or n_pos, start)
    real_decode, real_truncate = LlamaSession.timed_decode, LlamaSession.truncate

    def timed_decode(self, tokens, start):
        calls.append((self, "decode", len(tokens), start))
        return real_decode(self, tokens, start)

    def truncate(self, n_pos):
        calls.append((self, "truncate", n_pos, -1))
        real_truncate(self, n_pos)

    monkeypatch.setattr(LlamaSession, "timed_decode", timed_decode)
    monkeypatch.setattr(LlamaSession, "truncate", truncate)
    n_prompt, n_gen, rounds = 40, 3, 3
    steps: list[int] = []  # calls made (two warm-ups first) by each call of advance
    with LlamaSession(tiny["empty"], n_ctx=64, n_threads=THREADS) as a, \
            LlamaSession(tiny["skip"], n_ctx=64, n_threads=THREADS) as b:  # fmt: skip
        tokens = a.tokenize(load_text(None).text)
        speeds = measure_speed([a, b], tokens, prompt_tokens=n_prompt, gen_tokens=n_gen, rounds=rounds,
                               advance=lambda: steps.append(len(calls)), prompt_once=True)  # fmt: skip
        one_round = [("truncate", n_prompt, -1)] + [("decode", 1, n_prompt + i) for i in range(n_gen)]
        for s in (a, b):
            mine = [c[1:] for c in calls if c[0] is s]
            assert mine == [("decode", 16, 0), ("decode", n_prompt, 0)] + rounds * one_round  # warm-up, prompt, rounds
        # the prompts in order, then the rounds a b, b a, a b; advance after each prompt and each round
        assert [c[0] for c in calls if c[1] == "truncate"] == [a, b, b, a, a, b]
    assert steps == [3, 4] + [4 + k * len(one_round) for k in range(1, 2 * rounds + 1)] and steps[-1] == len(calls)
    for sp in speeds:
        assert len(sp.runs) == rounds and sp.gen_cpu_tps > 0
        assert len({r.prompt_tps for r in sp.runs}) == 1 and sp.prompt_tps == sp.runs[0].prompt_tps


def test_choice_logliks_equal_hand_computed_torch(tiny):
    """Harness-style split and sum of log-probs, against torch on the Hugging Face model."""
    tok = smollm2_tokenizer()
    model = open_source(tiny["hf"]).load_torch(torch.float32)
    task = Task("t", [Question(f"Question: {q['question']}\nAnswer:", tuple(q["choices"]), q["answer"]) for q in QUESTIONS])
    expected = []
    for q in task.questions:
        ctx = tok.encode(q.context, add_special_tokens=False)
        row = []
        for choice in q.choices:
            cont = tok.encode(q.context + " " + choice, add_special_tokens=False)[len(ctx) :]
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0].double(), -1)
            row.append(sum(float(lp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont)))
        expected.append(row)
    with LlamaSession(tiny["empty"], n_ctx=64, n_threads=THREADS) as s:
        assert not s.add_bos  # SmolLM2's tokenizer adds no BOS, so torch gets none either
        got = [choice_logliks(s, q.context, q.choices) for q in task.questions]
        score = score_task(s, task)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, atol=2e-2)
    picks = [int(np.argmax(e)) for e in expected]
    norm_picks = [int(np.argmax(np.array(e) / [len(c) for c in q.choices])) for e, q in zip(expected, task.questions)]
    assert list(score.picks) == picks
    assert score.acc == pytest.approx(np.mean([p == q.answer for p, q in zip(picks, task.questions)]))
    assert score.acc_norm == pytest.approx(np.mean([p == q.answer for p, q in zip(norm_picks, task.questions)]))


def test_smollm2_against_itself_and_independent_perplexity(smollm2):
    r = run_verify(smollm2, smollm2, options(ctx=128, chunks=2))
    assert r.reference_converted_to is None
    assert r.divergence.max_kl == 0.0 and r.divergence.same_top == 1.0
    want = independent_ppl(smollm2, load_text(None).text, 128, 2)
    assert r.reference.perplexity.ppl == pytest.approx(want, rel=1e-4)
    assert 1 < r.reference.perplexity.ppl < 1000


@pytest.fixture(scope="module")
def smol_skip3(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 with blocks 3, 9 and 15 removed, its own Q4_1 types kept."""
    src = open_source(smollm2)
    out = tmp_path_factory.mktemp("smol_skip3") / "smol-skip3.gguf"
    convert(src, Plan.identity(src.model_ref(), skip=(3, 9, 15)), out, outtype="source")
    return out


@pytest.fixture(scope="module")
def smol_report(smol_skip3: Path, smollm2: Path):
    return run_verify(smol_skip3, smollm2, options(ctx=128, chunks=2, speed=True, speed_prompt=32, speed_gen=4,
                                                     speed_rounds=2))  # fmt: skip


def test_smollm2_with_skips_diverges(smol_report):
    r = smol_report
    assert r.divergence.mean_kl > 1e-2 and r.divergence.same_top < 1.0
    assert r.model.kv_cache.bytes * 30 == r.reference.kv_cache.bytes * 27


def test_alternatives_are_measured_on_the_same_tokens(smol_report):
    """Original with q8_0 and q4_0 KV cache and the export with q8_0, beside the f16 rows: KV
    bytes from the arithmetic (3 KV heads of 64 per layer), KL really measured."""
    r = smol_report
    rows = {(row.model, row.kv_cache.type_k): row for row in r.rows}
    assert list(rows) == [("original", "f16"), ("original", "q8_0"), ("original", "q4_0"), ("export", "f16"),
                          ("export", "q8_0")]  # fmt: skip
    cells = r.reference.kv_cache.cells
    per_layer = {"f16": 2 * 192 * 2, "q8_0": 2 * 192 // 32 * 34, "q4_0": 2 * 192 // 32 * 18}
    for (model, cache_type), row in rows.items():
        layers = 30 if model == "original" else 27
        assert row.kv_cache.bytes_per_token == layers * per_layer[cache_type]
        assert row.kv_cache.bytes == cells * layers * per_layer[cache_type]
        assert row.perplexity.tokens == r.text.scored_tokens and row.speed is not None
    # flash attention off: the three removed blocks keep their (padded) V cache, lose their K
    assert rows["export", "f16"].kv_cache.flash_off_bytes == cells * (27 + 30) * 192 * 2
    assert rows["original", "f16"].kv_cache.flash_off_bytes == r.reference.kv_cache.bytes
    assert rows["original", "q8_0"].kv_cache.flash_off_bytes is None
    q8, q4 = rows["original", "q8_0"].mean_kl, rows["original", "q4_0"].mean_kl
    assert 0 < q8 < q4
    main = rows["export", "f16"]
    assert main.main and main.divergence == r.divergence and rows["original", "f16"].mean_kl == 0
    assert len(main.speed.runs) == 2 and len(rows["export", "q8_0"].speed.runs) == 1  # fewer rounds for alternatives
    data = r.to_json()["alternatives"]
    assert [(x["model"], x["cache_type"], x["main"]) for x in data["rows"]][3] == ("export", "f16", True)
    assert data["rows"][2]["kv_bytes"] == rows["original", "q4_0"].kv_cache.bytes
    assert data["recommendation"]["memory"] == r.recommendation.memory.label
    console = Console(file=io.StringIO(), width=250)
    r.render(console)
    printed = console.file.getvalue()
    assert "For memory take" in printed and "for speed take" in printed and "flash attention off" in printed


def test_cache_type_q8_0_makes_it_the_main_row(smol_skip3, smollm2, smol_report, tmp_path):
    """``--cache-type q8_0``: the model side is the export with a q8_0 cache (the same KL as the
    f16 run's q8_0 alternative: same tokens), the f16 export an alternative, and the printed
    commands carry the cache type and flash attention."""
    report = tmp_path / "r.json"
    result = CliRunner().invoke(app, [
        "verify", str(smol_skip3), "--reference", str(smollm2), "--ctx", "128", "--chunks", "2", "--no-speed",
        "--threads", str(THREADS), "--cache-type", "q8_0", "--json", str(report),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["model"]["kv_cache"]["type_k"] == data["model"]["kv_cache"]["type_v"] == "q8_0"
    assert data["settings"]["cache_type"] == "q8_0"
    rows = {(x["model"], x["cache_type"]): x for x in data["alternatives"]["rows"]}
    assert rows["export", "q8_0"]["main"] and not rows["export", "f16"]["main"]
    before = {(row.model, row.kv_cache.type_k): row for row in smol_report.rows}
    assert data["comparison"]["divergence"]["mean_kl"] == pytest.approx(before["export", "q8_0"].mean_kl, rel=1e-9)
    assert rows["export", "f16"]["mean_kl"] == pytest.approx(smol_report.divergence.mean_kl, rel=1e-9)
    assert "-fa on -ctk q8_0 -ctv q8_0" in result.output
    assert "OLLAMA_FLASH_ATTENTION=1 OLLAMA_KV_CACHE_TYPE=q8_0 ollama serve" in result.output


def test_a_bad_cache_type_is_a_one_line_error(tiny, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "verify", str(tiny["skip"]), "--reference", str(tiny["hf"]),
                           "--cache-type", "q5")  # fmt: skip
    assert_one_line_error(code, err, "--cache-type 'q5'", "use f16, q8_0, q4_0")
    out = tmp_path / "m.gguf"  # the one command refuses before its search starts
    code, _, err = run_cli(monkeypatch, capsys, str(tiny["hf"]), "--skips", "1", "-o", str(out), "--cache-type", "q5")
    assert_one_line_error(code, err, "--cache-type 'q5'")
    assert list(tmp_path.iterdir()) == []


def test_the_one_command_passes_the_cache_type_to_verify(tiny, tmp_path, monkeypatch):
    from hopscotch_export import export as one_command

    seen = []
    monkeypatch.setattr(one_command, "export", lambda model, output, search, verify, **kw: seen.append(verify) or 0)
    args = [str(tiny["hf"]), "--skips", "1", "-o", str(tmp_path / "m.gguf"), "--cache-type", "q8_0"]
    result = CliRunner().invoke(one_command.export_app, args)
    assert result.exit_code == 0, result.output
    assert seen[0].cache_type == "q8_0"


@pytest.fixture
def models_alive(monkeypatch) -> list[int]:
    """[most llama.cpp models loaded at once so far, models loaded now], kept by LlamaModel."""
    alive: set[int] = set()
    counts = [0, 0]
    real_init, real_close = LlamaModel.__init__, LlamaModel.close

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        alive.add(id(self))
        counts[:] = max(counts[0], len(alive)), len(alive)

    def close(self):
        alive.discard(id(self))
        counts[1] = len(alive)
        real_close(self)

    monkeypatch.setattr(LlamaModel, "__init__", init)
    monkeypatch.setattr(LlamaModel, "close", close)
    return counts


def test_one_model_at_a_time_with_parity_and_sequential_speed(tiny, models_alive, monkeypatch):
    """Never two llama.cpp models: parity's llama.cpp side is recorded in each model's pass and
    torch runs after both are freed; the speed rounds are sequential when both would not fit."""
    monkeypatch.setattr(verify_needs_module, "fits", lambda needs: False)  # as if both did not fit together
    opts = options(chunks=2, plan=tiny["skip_plan"], source=str(tiny["hf"]), parity_windows=1, speed=True,
                   speed_prompt=16, speed_gen=2, speed_rounds=1)  # fmt: skip
    r = run_verify(tiny["skip"], str(tiny["hf"]), opts)
    assert models_alive == [1, 0]
    assert r.settings["speed_rounds"] == "sequential" and r.model.speed and r.reference.speed
    assert r.parity is not None and r.parity.floor is not None and r.passed
    assert not list(tiny["skip"].parent.glob("*hopscotch-verify-*"))  # logits and reference removed


def test_the_estimate_printed_before_verify_says_when_both_models_load(tiny, models_alive):
    """Interleaved speed rounds load both models: the estimate printed before anything runs
    chooses them (they fit here), counts both files and says so, and the run does what it said;
    without speed the same estimate is one model's."""
    opts = options(chunks=1, speed=True, speed_prompt=16, speed_gen=2, speed_rounds=1)
    needs = verify_needs(tiny["skip"], str(tiny["hf"]), opts)
    one = verify_needs(tiny["skip"], str(tiny["hf"]), options(chunks=1, speed=False))
    assert "interleaved" in needs[0].what and "both models" in needs[0].what
    assert "one model at a time" in one[0].what and "interleaved" not in one[0].what
    assert {"reference weights (mapped)", "model weights (mapped)"} <= set(needs[0].parts)  # both files
    assert needs[0].bytes > one[0].bytes and needs[0].parts["model weights (mapped)"] == tiny["skip"].stat().st_size
    out = io.StringIO()
    r = run_verify(tiny["skip"], str(tiny["hf"]), opts, console=Console(file=out, width=300))
    assert r.settings["speed_rounds"] == "interleaved" and models_alive[0] == 2
    assert f"verify: estimated need ram {human(needs[0].bytes)}" in out.getvalue()
    assert "speed rounds interleaved, both models loaded together" in out.getvalue()


def test_one_model_at_a_time_gives_the_figures_of_both_side_by_side(smol_skip3, smollm2, models_alive):
    """Perplexity and KL equal those computed here with both models loaded at once: the
    reference's logits come back from the work folder's file bit for bit (float32, as
    llama.cpp returned them), so only float64 summation order could differ (rel 1e-12)."""
    r = run_verify(smol_skip3, smollm2, options(ctx=128, chunks=2))
    assert models_alive == [1, 0] and r.settings["speed_rounds"] is None
    nll: dict[str, list[np.ndarray]] = {"ref": [], "model": []}
    kl, top = [], []
    with LlamaSession(smollm2, n_ctx=128, n_threads=THREADS) as ref, \
            LlamaSession(smol_skip3, n_ctx=128, n_threads=THREADS) as model:  # fmt: skip
        for window in make_windows(ref.tokenize(load_text(None).text), 128, None, 2):
            flags = window_outputs(128)
            targets = [window[i + 1] for i, f in enumerate(flags) if f]
            lps = {}
            for name, s in (("ref", ref), ("model", model)):
                s.clear()
                lps[name] = log_softmax(s.decode(window, 0, flags))
                nll[name].append(token_nll(lps[name], targets))
            kl.append(token_kl(lps["ref"], lps["model"]))
            top.append(lps["ref"].argmax(1) == lps["model"].argmax(1))
    assert r.reference.perplexity.ppl == pytest.approx(Perplexity.from_nll(np.concatenate(nll["ref"])).ppl, rel=1e-12)
    assert r.model.perplexity.ppl == pytest.approx(Perplexity.from_nll(np.concatenate(nll["model"])).ppl, rel=1e-12)
    assert r.divergence.mean_kl == pytest.approx(float(np.concatenate(kl).mean()), rel=1e-12)
    assert r.divergence.max_kl == pytest.approx(float(np.concatenate(kl).max()), rel=1e-12)
    assert r.divergence.same_top == float(np.concatenate(top).mean())


def test_verify_needs_one_model_not_two(tiny):
    """The estimate is verify's largest stage: one model's weights, never both; the logits
    kept between the models are disk in the work folder, beside the converted reference."""
    need = verify_needs(tiny["skip"], str(tiny["hf"]), options(chunks=2, plan=tiny["skip_plan"]))
    ram = need[0]
    assert ram.where == "ram" and "one model at a time" in ram.what
    assert len([k for k in ram.parts if "weights" in k]) <= 1
    # without parity's torch side a model's pass is the largest stage: exactly one model's weights
    alone = verify_needs(tiny["skip"], str(tiny["hf"]), options(chunks=2))[0]
    assert len([k for k in alone.parts if "weights" in k]) == 1, alone.parts
    disk = next(n for n in need if n.where == f"disk:{tiny['skip'].parent.resolve()}")
    vocab = open_source(tiny["hf"]).spec.vocab_size
    assert disk.parts["reference's held-out logits (2 windows)"] == 2 * 31 * vocab * 4  # 31 scored positions each
    assert any(k.startswith("reference.gguf") for k in disk.parts)


def test_a_cache_llama_cpp_refuses_is_listed_not_fatal(tiny):
    """The tiny model's heads (16 values) hold no whole q8_0/q4_0 block: llama.cpp refuses those
    contexts; verify says why and reports the rest. As the main row it is the user's error."""
    r = run_verify(tiny["skip"], str(tiny["hf"]), options(chunks=2))
    assert [(row.model, row.kv_cache.type_k) for row in r.rows] == [("original", "f16"), ("export", "f16")]
    assert set(r.unmeasured) == {"original, q8_0 KV", "original, q4_0 KV", "export, q8_0 KV"}
    assert all("does not divide" in why for why in r.unmeasured.values())
    with pytest.raises(HopscotchError, match="q8_0 KV cache.*does not divide"):
        run_verify(tiny["skip"], str(tiny["hf"]), options(chunks=2, cache_type="q8_0"))


def independent_token_count(path: Path, text: str) -> int:
    """llama.cpp's count through the high-level API (vocabulary only), as verify's windows see it."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    return len(llm.tokenize(text.encode(), add_bos=True, special=False))  # BOS where the vocabulary adds one


def test_the_estimate_counts_the_reference_logits_without_chunks(tiny, tmp_path, monkeypatch):
    """Without --chunks the disk for the reference's logits is still estimated: the text is
    read and tokenized (the built-in sample, a text file), all its windows counted; a
    dataset is not streamed for an estimate, so its figure is one window's and says so."""
    per_window = 31 * open_source(tiny["hf"]).spec.vocab_size * 4  # 31 scored positions of 64, float32

    def logits(**changes) -> dict[str, int]:
        disk = verify_needs(tiny["skip"], str(tiny["hf"]), options(**{"chunks": None, **changes}))[1]
        assert disk.where == f"disk:{tiny['skip'].parent.resolve()}"
        return {k: v for k, v in disk.parts.items() if k.startswith("reference's held-out logits")}

    windows = independent_token_count(tiny["skip"], load_text(None).text) // 64
    assert windows > 4 and logits() == {f"reference's held-out logits ({windows} windows)": windows * per_window}
    text = tmp_path / "held.txt"
    text.write_text(load_text(None).text[:3000], encoding="utf-8")
    short = independent_token_count(tiny["skip"], text.read_text()) // 64
    assert 1 < short < windows and logits(data=str(text)) == {
        f"reference's held-out logits ({short} windows)": short * per_window}  # fmt: skip
    assert logits(data=str(text), chunks=1) == {"reference's held-out logits (1 window)": per_window}
    seen = []
    monkeypatch.setattr("hopscotch_export.verify.data.stream_rows", lambda *a, **k: seen.append(a) or iter(()))
    (label, value), = logits(data="someone/some-dataset").items()
    assert value == per_window and "per window" in label and "--chunks" in label and not seen
    # the one command's --dry-run, before the GGUF exists: counted with the source's tokenizer,
    # the count verify makes once the file is there
    before = verify_needs(tmp_path / "not-yet.gguf", str(tiny["hf"]), options(chunks=None), model_bytes=10**6,
                          model_outtype="f32")[1]  # fmt: skip
    assert before.parts[f"reference's held-out logits ({windows} windows)"] == windows * per_window


def test_cli_dry_run_prints_the_logits_disk_without_chunks(tiny, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    result = CliRunner().invoke(app, ["verify", str(tiny["skip"]), "--reference", str(tiny["hf"]), "--ctx", "64",
                                      "--dry-run"])  # fmt: skip
    assert result.exit_code == 0, result.output
    windows = independent_token_count(tiny["skip"], load_text(None).text) // 64
    assert f"reference's held-out logits ({windows} windows)" in result.output


def test_a_main_cache_type_llama_cpp_refuses_fails_before_any_model_is_loaded(tiny, tmp_path, models_alive,
                                                                             monkeypatch, capsys):  # fmt: skip
    """Heads of 16 values hold no q8_0 block: refused at the start in one line (exit 2), not
    after the reference's whole pass, and by the one command before its search."""
    converted = []
    monkeypatch.setattr(verify_run, "reference_gguf", lambda *a, **k: converted.append(a))
    with pytest.raises(HopscotchError, match="q8_0 KV cache.*block size 32 does not divide n_embd_head_k=16"):
        run_verify(tiny["skip"], str(tiny["hf"]), options(chunks=2, cache_type="q8_0"))
    assert models_alive == [0, 0] and converted == []
    code, _, err = run_cli(monkeypatch, capsys, "verify", str(tiny["skip"]), "--reference", str(tiny["hf"]),
                           "--cache-type", "q4_0", "--dry-run")  # fmt: skip
    assert_one_line_error(code, err, "--cache-type q4_0", "does not divide n_embd_head_k=16", "use f16")
    searched = []
    monkeypatch.setattr("hopscotch_export.search.run.run_search", lambda *a, **k: searched.append(a))
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run_cli(monkeypatch, capsys, str(tiny["hf"]), "--skips", "1", "-o", str(out / "m.gguf"),
                           "--cache-type", "q8_0")  # fmt: skip
    assert_one_line_error(code, err, "--cache-type q8_0", "does not divide")
    assert searched == [] and list(out.iterdir()) == []


def test_the_floor_applies_to_a_model_stored_at_least_as_precisely(tiny, tmp_path):
    """An f32 reference's floor says nothing about a q8_0 file's rounding; the reverse bounds it."""
    q8 = tmp_path / "q8.gguf"
    convert(open_source(tiny["hf"]), None, q8, outtype="q8_0")
    assert floor_applies(tiny["skip"], tiny["empty"]) and floor_applies(tiny["skip"], q8)
    assert not floor_applies(q8, tiny["empty"])


def test_no_gate_means_no_verdict(tiny, capsys):
    """Without --plan or a limit nothing is checked against anything: ``passed`` is null, not true."""
    r = run_verify(tiny["skip"], str(tiny["hf"]), options(chunks=2))
    assert r.limits == [] and r.passed is None and r.to_json()["passed"] is None
    assert "parity with torch" not in r.checks_run
    console = Console(file=io.StringIO(), width=200)
    r.render(console)
    assert "no gate ran" in console.file.getvalue()


def test_cli_parity_gate_fails_a_file_that_does_not_match_its_plan(tiny, tmp_path):
    base = ["verify", str(tiny["skip"]), "--reference", str(tiny["hf"]), "--ctx", "64", "--chunks", "2",
            "--no-speed", "--threads", str(THREADS), "--parity-windows", "1"]
    good = CliRunner().invoke(app, [*base, "--plan", str(tiny["skip_plan"])])
    assert good.exit_code == 0, good.output
    report = tmp_path / "r.json"
    wrong = CliRunner().invoke(app, [*base, "--plan", str(tiny["empty_plan"]), "--json", str(report)])
    assert wrong.exit_code == 1 and "FAIL" in wrong.output
    gate = json.loads(report.read_text())["limits"][0]
    assert not gate["passed"] and gate["value"] > gate["limit"]


def test_cli_limits_become_exit_codes(tiny, tmp_path):
    """``hopscotch-export verify`` as registered in cli.py."""
    runner = CliRunner()
    base = ["verify", str(tiny["skip"]), "--reference", str(tiny["hf"]), "--ctx", "64", "--chunks", "2",
            "--no-speed", "--threads", str(THREADS)]
    report = tmp_path / "report.json"

    ok = runner.invoke(app, [*base, "--max-kl", "100", "--json", str(report)])
    assert ok.exit_code == 0, ok.output
    assert "perplexity" in ok.output and "same top token" in ok.output
    data = json.loads(report.read_text())
    assert data["passed"] and data["limits"][0]["passed"]
    kl, increase = data["comparison"]["divergence"]["mean_kl"], data["comparison"]["ppl_increase_pct"]

    assert runner.invoke(app, [*base, "--max-kl", str(kl / 2)]).exit_code == 1
    assert runner.invoke(app, [*base, "--max-ppl-increase", str(increase - 1)]).exit_code == 1

    again = runner.invoke(app, [*base, "--json", str(report)])  # refuses before any work
    assert again.exit_code == 2 and "already exists" in again.output
    missing = runner.invoke(app, ["verify", str(tmp_path / "nope.gguf"), "--reference", str(tiny["hf"])])
    assert missing.exit_code == 2 and "not found" in missing.output


def test_speed_rounds_are_sequential_when_layers_go_to_a_gpu(tiny, models_alive, monkeypatch):
    """The estimate that lets both models load for interleaved rounds counts RAM only: with
    layers offloaded to a GPU (here a CPU build ignores them) the rounds are sequential."""
    monkeypatch.setattr(verify_needs_module, "fits", lambda needs: True)  # RAM would hold both
    for module in (verify_run, verify_needs_module):
        monkeypatch.setattr(module, "gpu_layers_for", lambda asked: (-1, "forced for the test"))
    from hopscotch_export.llama_lib import llama_library

    # this CPU build has no GPU: say it has, and llama.cpp, finding no device, keeps the layers
    monkeypatch.setattr(llama_library()[0], "llama_supports_gpu_offload", lambda: True)
    opts = options(chunks=1, speed=True, speed_prompt=16, speed_gen=2, speed_rounds=1)
    r = run_verify(tiny["skip"], str(tiny["hf"]), opts)
    assert r.settings["speed_rounds"] == "sequential" and models_alive == [1, 0]
