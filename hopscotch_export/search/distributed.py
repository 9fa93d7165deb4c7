"""The greedy search spread over the processes that torchrun starts (torch.distributed).

A greedy step's candidates are independent: every process scores and trains its share
(round-robin by position, the same split everywhere) and the results are gathered, so that
all processes hold the same scores, pick the same winner and continue from the same scales,
which the winner's trainer sends to the others. Rank 0 alone checks and writes the output
files, packs the calibration sequences for all, and shows progress. Without torchrun (``WORLD_SIZE`` unset or 1) there is no process
group and every helper below works on this process alone: a search runs exactly as before.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .. import signals
from ..errors import HopscotchError

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")

#: How long a collective waits for the slowest process. Processes wait for one another at
#: the end of every scoring and training round, and for rank 0 while it alone writes the
#: calibration chats, which can take an hour for a large model. A process that dies is
#: noticed at once: gloo sees its connection close, and torchrun stops the others (SIGTERM).
TIMEOUT = timedelta(hours=6)


class Stopped(KeyboardInterrupt):
    """Another process of the search is gone: a collective failed, or torchrun sent SIGTERM
    to stop the survivors. Handled like Ctrl-C, which keeps the partial plan."""


def launched() -> bool:
    """Whether torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """Whether a process group is up: helpers share work only then."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


@contextlib.contextmanager
def session(cuda: bool) -> Iterator[None]:
    """A process group for one search when torchrun started this process; on CUDA each
    process uses its own GPUs (:func:`local_gpus`). SIGTERM raises :class:`Stopped`.

    The search only exchanges Python objects (scores, CPU copies of scales), which torch
    sends through gloo even next to nccl: gloo reports a lost peer at once, where a CUDA
    collective would block, out of reach of the SIGTERM handler, until the timeout.
    A group that already exists (the caller's) is used as it is and left up."""
    if not launched() or active():
        yield
        return
    if cuda:
        torch.cuda.set_device((local_gpus() or [0])[0])
    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=TIMEOUT)
    previous = signal.signal(signal.SIGTERM, signals.raising(Stopped))
    try:
        yield
    except BaseException:
        # torchrun may still send SIGTERM while the failure is reported: let it not cut
        # the report short (it kills with SIGKILL after a grace period if we hang)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise
    signal.signal(signal.SIGTERM, previous)
    dist.destroy_process_group()


def local_gpus() -> list[int] | None:
    """The GPUs this process may use: under torchrun, its own group of
    ``device_count // LOCAL_WORLD_SIZE`` GPUs (one each with one process per GPU), over
    which its copy of the model is spread; None (every GPU) without torchrun."""
    if not launched() or not torch.cuda.is_available():
        return None
    n, procs = torch.cuda.device_count(), processes_on_node()
    if procs > n:
        raise HopscotchError(f"torchrun started {procs} processes on a node with {n} GPU(s); use --nproc-per-node {n} or fewer")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    per = n // procs
    return list(range(local * per, (local + 1) * per))


def processes_on_node() -> int:
    """Processes of this search on this machine: each holds its own copy of the model in RAM."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if launched() else 1


def share(items: Sequence[T]) -> list[T]:
    """This process's part of ``items``: every ``world_size()``-th item from position
    ``rank()``. Every process computes the same split, so no one has to send it."""
    return list(items[rank() :: world_size()])


def share_size(n: int) -> int:
    """How many of ``n`` items :func:`share` gives this process (what its progress bar counts)."""
    return len(range(rank(), n, world_size()))


def owner(position: int) -> int:
    """The rank whose :func:`share` holds the item at ``position``."""
    return position % world_size()


def merged(work: Callable[[], dict[K, V]]) -> dict[K, V]:
    """``work()`` (results for this process's share, by candidate) merged with every other
    process's. A :class:`HopscotchError` raised on any process is raised on all, so that
    rank 0 reports it and no process waits for a result that will not come."""
    if not active():
        return work()
    try:
        mine: tuple[dict[K, V], HopscotchError | None] = (work(), None)
    except HopscotchError as e:
        mine = ({}, e)
    parts: list[Any] = [None] * world_size()
    _collective(lambda: dist.all_gather_object(parts, mine))
    out: dict[K, V] = {}
    for part, error in parts:
        if error is not None:
            raise error
        out.update(part)
    return out


def shared(make: Callable[[], T], src: int = 0) -> T:
    """``make()`` run on rank ``src`` alone, its result sent to every process: files only
    rank 0 touches, data every process must share, the scales one process trained.
    A :class:`HopscotchError` from ``make`` is raised on every process. Send CPU tensors:
    a CUDA tensor would arrive on the sender's GPU."""
    if not active():
        return make()
    box: list[Any] = [None]
    if rank() == src:
        try:
            box[0] = (make(), None)
        except HopscotchError as e:
            box[0] = (None, e)
    _collective(lambda: dist.broadcast_object_list(box, src=src))
    value, error = box[0]
    if error is not None:
        raise error
    return value  # type: ignore[no-any-return]


def _collective(call: Callable[[], Any]) -> None:
    """Run a collective; a failure means a peer is gone (gloo: connection closed)."""
    try:
        call()
    except RuntimeError as e:  # includes torch.distributed.DistBackendError
        raise Stopped(f"a collective failed: {e}") from None
