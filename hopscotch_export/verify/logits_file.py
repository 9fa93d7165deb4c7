"""Rows of logits kept on disk while their model is freed, read back a few rows at a time.

verify holds one llama.cpp model at a time (docs/design.md section 4, "One model at a
time"): the reference's distributions, which every candidate's KL is measured against,
are written here during the reference's pass, as ``llama-perplexity --kl-divergence-base``
writes its base file. They are kept whole, in float32 as llama.cpp returned them, so KL is
the same number as with both models loaded (llama.cpp's base file stores 16 bits per
logit and drops p < e^-16, an error of about 1e-4 nats). The file is written and read with
plain reads and writes, not a memory map: pages of a mapped file count in the process's
resident memory for as long as they stay mapped, and the point is a bounded peak.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..files import disk_errors

_DTYPE = np.dtype(np.float32)


class LogitsFile:
    """An append-only file of float32 rows of ``n_vocab`` logits (``what``: whose, for
    messages); rows are read back by index."""

    def __init__(self, path: Path, n_vocab: int, what: str) -> None:
        self.path = Path(path)
        self.n_vocab = n_vocab
        #: what the rows are, for the one-line error when the disk fills
        self.what = what
        self.rows = 0
        self._file = open(self.path, "w+b")  # noqa: SIM115 (closed by close())

    def __enter__(self) -> LogitsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    @staticmethod
    def row_bytes(n_vocab: int) -> int:
        return n_vocab * _DTYPE.itemsize

    def append(self, logits: np.ndarray) -> None:
        """Write ``logits`` (rows x ``n_vocab``) after the rows already written."""
        data = np.ascontiguousarray(logits, dtype=_DTYPE)
        if data.ndim != 2 or data.shape[1] != self.n_vocab:
            raise ValueError(f"expected rows of {self.n_vocab} logits, got shape {data.shape}")
        with disk_errors(self.path, fix="pass --work-dir on a disk with more room, or lower --chunks",
                         what=self.what):  # fmt: skip
            self._file.seek(self.rows * self.row_bytes(self.n_vocab))
            self._file.write(memoryview(data).cast("B"))
            self._file.flush()
        self.rows += len(data)

    def read(self, start: int, count: int) -> np.ndarray:
        """Rows ``start .. start + count - 1`` (fewer at the end of the file)."""
        count = max(0, min(count, self.rows - start))
        out = np.empty((count, self.n_vocab), dtype=_DTYPE)
        self._file.seek(start * self.row_bytes(self.n_vocab))
        if self._file.readinto(memoryview(out).cast("B")) != out.nbytes:
            raise EOFError(f"{self.path} is shorter than its {self.rows} rows")
        return out
