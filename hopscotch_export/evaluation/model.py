"""lm-evaluation-harness's model interface, run by llama.cpp in this process.

lm-eval's own ``gguf`` backend talks to a server and depends on the server echoing the
prompt's log-probabilities, which llama-server does not do (docs/evaluation.md). Here the
file is loaded with :class:`~hopscotch_export.verify.llama_model.LlamaSession` and every score
comes from its logits, tokenized and truncated as lm-eval's ``hf`` backend does
(``TemplateLM._encode_pair``, left truncation to ``max_length``), so the two backends
agree on the same weights.

The KV cache keeps the tokens of the previous request: requests are taken in the order of
their tokens, so the choices of one question (and questions sharing few-shot examples)
follow each other, and only what differs from the cached prefix is decoded. A context is
decoded once for all its continuations.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text

from ..errors import HopscotchError
from ..verify.divergence import log_softmax
from ..verify.llama_model import LlamaSession

#: lm-eval's default for generation tasks that do not set ``max_gen_toks``
MAX_GEN_TOKS = 256

#: ``progress(label, total)`` returns the function that advances that count by one
Progress = Callable[[str, int], Callable[[], None]]

log = logging.getLogger(__name__)


def _no_progress(label: str, total: int) -> Callable[[], None]:
    return lambda: None


@register_model("hopscotch-llama-cpp")
class LlamaCppLM(TemplateLM):
    """A GGUF in llama.cpp as an lm-eval model (``--model hopscotch-llama-cpp``).

    ``max_length`` is the context in tokens (inputs are left-truncated to it, as lm-eval
    does); ``cache_type`` and ``flash_attn`` as in verify. Close it (or use ``with``) to
    free the model.
    """

    def __init__(
        self,
        pretrained: str | Path,
        max_length: int = 2048,
        threads: int | None = None,
        gpu_layers: int = 0,
        cache_type: str = "f16",
        flash_attn: bool = True,
        progress: Progress = _no_progress,
    ) -> None:
        super().__init__()
        self.session = LlamaSession(
            Path(pretrained), n_ctx=int(max_length), n_threads=threads, gpu_layers=int(gpu_layers),
            cache_type=cache_type, flash_attn=bool(flash_attn),
        )  # fmt: skip
        #: llama.cpp rounds a context up (to 256 tokens at least); lm-eval's windows use this
        self._max_length = int(max_length)
        self.progress = progress
        #: the tokens the KV cache holds, position by position
        self._cached: list[int] = []
        self._warned_sampling = False
        #: what this model did: requests answered, tokens llama.cpp decoded, seconds spent (by
        #: the wall clock, and CPU seconds of this process: steadier on a shared machine)
        self.requests = 0
        self.tokens = 0
        self.seconds = 0.0
        self.cpu_seconds = 0.0

    def __enter__(self) -> LlamaCppLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()

    # --- tokens -------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.session.eos

    @property
    def prefix_token_id(self) -> int:
        """What an empty context is replaced by: BOS, else EOS (as the ``hf`` backend does)."""
        return self.session.bos if self.session.bos >= 0 else self.session.eos

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return str(self.session.path)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """llama.cpp's tokens; BOS as the vocabulary asks unless ``add_special_tokens`` says."""
        add = self.session.add_bos if add_special_tokens is None else add_special_tokens
        return self.session.tokenize(string, add_special=add)

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.session.detokenize(tokens)

    # --- the three request types --------------------------------------------------

    def _loglikelihood_tokens(
        self, requests: list[tuple[Any, list[int], list[int]]], disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        """(log-probability of the continuation, whether greedy decoding gives it) per request."""
        advance = self._start("log-likelihood", len(requests))
        results: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        for i in sorted(range(len(requests)), key=lambda i: requests[i][1] + requests[i][2]):
            key, context, continuation = requests[i]
            results[i] = self._score(context, continuation)
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, results[i])
            advance()
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Log-probability of whole texts in windows of ``max_length`` (lm-eval's rolling windows)."""
        advance = self._start("rolling log-likelihood", len(requests))
        totals = []
        for request in requests:
            (string,) = request.args
            windows = lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1,
            )  # fmt: skip
            total = sum(self._score(*lm_utils.make_disjoint_window(w))[0] for w in windows)
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            totals.append(total)
            advance()
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, cut before the first of the task's stop strings."""
        advance = self._start("generation", len(requests))
        eos = self.session.detokenize([self.eot_token_id], special=True)
        out = []
        for request in requests:
            context, gen_kwargs = request.args
            kwargs = normalize_gen_kwargs(dict(gen_kwargs), MAX_GEN_TOKS)
            if kwargs.get("do_sample") and not self._warned_sampling:
                log.warning("the task asks for sampling; greedy decoding is used")
                self._warned_sampling = True
            until = handle_stop_sequences(kwargs.get("until"), eos=eos)
            max_gen = int(kwargs["max_gen_toks"])
            if max_gen >= self.max_length:
                raise HopscotchError(
                    f"the task generates up to {max_gen} tokens, as many as the context of {self.max_length}; "
                    "raise --ctx"
                )
            tokens = self.tok_encode(context)[-(self.max_length - max_gen) :] or [self.prefix_token_id]
            text = postprocess_generated_text(self._greedy(tokens, until, max_gen), until, None)
            self.cache_hook.add_partial("generate_until", request.args, text)
            out.append(text)
            advance()
        return out

    # --- llama.cpp ----------------------------------------------------------------

    def _start(self, label: str, total: int) -> Callable[[], None]:
        """The progress bar's advance, counting requests and the time since the last one."""
        bar = self.progress(label, total)
        last = time.perf_counter(), time.process_time()

        def advance() -> None:
            nonlocal last
            now = time.perf_counter(), time.process_time()
            self.requests += 1
            self.seconds += now[0] - last[0]
            self.cpu_seconds += now[1] - last[1]
            last = now
            bar()

        return advance

    def _score(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """Sum of the continuation's log-probabilities after the context, and whether each
        of its tokens is the most likely one; left-truncated to ``max_length`` as ``hf`` does."""
        if len(continuation) > self.max_length:
            raise HopscotchError(
                f"a continuation of {len(continuation)} tokens does not fit the context of {self.max_length}; "
                "raise --ctx"
            )
        whole = (context + continuation)[-(self.max_length + 1) :]
        first = len(whole) - len(continuation)  # the first scored position; context is never empty
        total, greedy = 0.0, True
        for pos, logits in self._forward(whole[:-1], first - 1):
            targets = np.asarray(whole[pos + 1 : pos + 1 + len(logits)])
            total += float(log_softmax(logits)[np.arange(len(targets)), targets].sum())
            greedy = greedy and bool((logits.argmax(axis=1) == targets).all())
        return total, greedy

    def _greedy(self, tokens: list[int], until: list[str], max_gen: int) -> str:
        """Up to ``max_gen`` most likely tokens after ``tokens``; stops at an end-of-generation
        token or once the text holds a stop string (the caller cuts it off)."""
        generated: list[int] = []
        (_, logits), *_ = self._forward(tokens, len(tokens) - 1)
        while len(generated) < max_gen:
            token = int(logits[-1].argmax())
            if self.session.is_end(token):
                break
            generated.append(token)
            text = self.session.detokenize(generated)
            if any(s and s in text for s in until) or len(tokens) + len(generated) >= self.max_length:
                break
            whole = tokens + generated
            (_, logits), *_ = self._forward(whole, len(whole) - 1)
        return self.session.detokenize(generated)

    def _forward(self, tokens: list[int], first: int) -> Iterator[tuple[int, np.ndarray]]:
        """Logits at positions ``first``.. of ``tokens``, one llama.cpp batch at a time, as
        (position of the first row, rows); the row at position p predicts token p + 1.

        Positions the KV cache already holds (the common prefix with the previous call, up
        to ``first``) are not decoded again."""
        keep = 0
        limit = min(first, len(self._cached))
        while keep < limit and self._cached[keep] == tokens[keep]:
            keep += 1
        self.session.truncate(keep)
        del self._cached[keep:]
        step = self.session.n_batch
        for start in range(keep, len(tokens), step):
            piece = tokens[start : start + step]
            outputs = [start + k >= first for k in range(len(piece))]
            logits = self.session.decode(piece, start, outputs)
            self._cached.extend(piece)
            self.tokens += len(piece)
            if len(logits):
                yield max(start, first), logits
