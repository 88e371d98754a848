"""Running under ``torchrun``: detect it, start and stop ``torch.distributed``, and the few
collectives the rest of huberfit needs (sum, any, broadcast of a string).

Detected from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``). The backend
is gloo on the CPU and NCCL on CUDA, one GPU per local rank. Every collective has a timeout
(``HUBERFIT_DIST_TIMEOUT`` seconds, default 60), so a rank that dies or fails alone cannot
leave the others waiting forever. Imports torch only.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    """This process's place in the group."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum_(self, tensor: torch.Tensor) -> None:
        """All-reduce ``tensor`` in place: the sum over ranks."""
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank."""
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def broadcast_text(self, text: str | None) -> str:
        """Rank 0's ``text`` on every rank."""
        box = [text]
        dist.broadcast_object_list(box, src=0)
        return str(box[0])


# What a collective raises when a peer process is gone or too slow (gloo: RuntimeError
# subclasses such as DistBackendError; the timeout: DistError).
PeerError = (dist.DistError, RuntimeError) if hasattr(dist, "DistError") else (RuntimeError,)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


@contextmanager
def session(device: str) -> Iterator[Dist | None]:
    """Initialise ``torch.distributed`` when launched by torchrun (else yield None) and
    tear it down on every exit path."""
    if not launched_by_torchrun():
        yield None
        return
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
    timeout = datetime.timedelta(seconds=float(os.environ.get("HUBERFIT_DIST_TIMEOUT", "60")))
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout)
    try:
        yield Dist(
            rank=dist.get_rank(),
            world=dist.get_world_size(),
            local_rank=local,
            device=torch.device("cuda", local) if use_cuda else torch.device("cpu"),
        )
    finally:
        dist.destroy_process_group()
