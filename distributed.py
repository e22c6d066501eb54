"""Training on several processes with PyTorch's own engine: torchrun starts one process per
device (and per machine, --nnodes), `init()` joins them into a process group (NCCL on CUDA,
gloo on CPU), and the trainer wraps its model in DistributedDataParallel.

Without torchrun (no WORLD_SIZE in the environment, or WORLD_SIZE=1) `init()` returns the
single-process Dist and every helper below is a no-op that returns its input: the one-process
path runs no collective at all.

Every decision the ranks must share goes through one of these helpers, so no rank ever waits
alone in a collective: `together()` turns an error on any rank into the same one-line UserError
on all of them (a setup error never becomes a hang or an NCCL timeout), `all_sum` reduces loss
sums and token counts, `any_of` combines stop flags, and `gather` brings every rank's RNG state
to rank 0 for the checkpoint.
"""
from __future__ import annotations

import contextlib
import datetime
import gc
import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
import torch.distributed as torch_dist

from common import UserError

TIMEOUT = datetime.timedelta(minutes=30)   # a collective that waits longer than this fails (not hangs)


@dataclass(frozen=True)
class Dist:
    """Where this process stands: its rank among world_size processes, and its rank on its machine."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Dist()
_state = {"dist": SINGLE, "device": torch.device("cpu")}


def current() -> Dist:
    return _state["dist"]


def from_env(env=os.environ) -> Dist:
    """The Dist torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK), or SINGLE."""
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank, local = int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0"))
    except ValueError:
        raise UserError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers; start the run with torchrun")
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"RANK={rank} and WORLD_SIZE={world} do not describe a process group; start with torchrun")
    return Dist(rank, world, local) if world > 1 else SINGLE


def init(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group torchrun set up (a no-op without one): NCCL with one GPU per process
    (cuda:LOCAL_RANK) on CUDA, gloo on CPU. Returns (Dist, this process's device)."""
    d = from_env()
    if not d.enabled:
        return d, device
    if device.type == "cuda":
        if d.local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {d.local_rank} but this machine shows {torch.cuda.device_count()} GPU(s); "
                            f"lower --nproc_per_node to the number of GPUs")
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise UserError(f"torchrun training runs on CUDA (NCCL) or on the CPU (gloo), not on {device.type}; "
                        f"pass --device cuda or --device cpu")
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend, timeout=TIMEOUT,
                                      **({"device_id": device} if backend == "nccl" else {}))
    _state.update(dist=d, device=device if backend == "nccl" else torch.device("cpu"))
    return d, device


def shutdown(finished: bool = False) -> None:
    """Leave the process group. `finished`: every rank got here the same way, so they first wait
    for each other (a rank that tears gloo down while another still finishes its last writes can
    abort at exit). Garbage is collected first: the trainer and its DistributedDataParallel
    wrapper outlive train() in reference cycles (any exception caught deep in a call keeps the
    frames above it), and the wrapper's reducer holds the process group, whose gloo threads
    would then be torn down at some later collection, possibly during interpreter shutdown,
    where that aborts (SIGABRT, "terminate called without an active exception": a finished run
    reported as failed by torchrun)."""
    if torch_dist.is_initialized():
        if finished:
            torch_dist.barrier()
        gc.collect()
        torch_dist.destroy_process_group()
    _state.update(dist=SINGLE, device=torch.device("cpu"))


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sum over all ranks, in float64 (loss sums, token counts)."""
    if not current().enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_state["device"])
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
    return t.tolist()


def all_sum_(t: torch.Tensor) -> torch.Tensor:
    """Sum the tensor `t` (on this rank's device) over all ranks in place, without reading it on
    the host: the training step's loss and token sums stay on the GPU."""
    if current().enabled:
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
    return t


def all_max(values: list[int]) -> list[int]:
    """Element-wise maximum over all ranks (stop codes: 0 = go on)."""
    if not current().enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.int64, device=_state["device"])
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
    return t.tolist()


def any_of(flag: bool) -> bool:
    return bool(all_max([int(flag)])[0])


def gather(obj: Any) -> Optional[list]:
    """Every rank's `obj` on rank 0 (a list by rank); None on the other ranks. One rank: [obj]."""
    d = current()
    if not d.enabled:
        return [obj]
    out = [None] * d.world_size if d.is_main else None
    torch_dist.gather_object(obj, out, dst=0)
    return out


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not current().enabled:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def together(what: str) -> Iterator[None]:
    """Run a block on every rank, then agree on how it went: when it raised on any rank, every
    rank raises (its own error, or a UserError naming the rank that failed and its message), so
    no rank goes on to a collective the others will never reach. One rank: the block as is."""
    d = current()
    if not d.enabled:
        yield
        return
    error: Optional[BaseException] = None
    try:
        yield
    except Exception as e:          # noqa: BLE001 (shared with the other ranks, then raised again)
        error = e
    messages = [None] * d.world_size
    torch_dist.all_gather_object(messages, None if error is None else [f"{error}", getattr(error, "code", 1)])
    failed = [(r, m) for r, m in enumerate(messages) if m is not None]
    if not failed:
        return
    rank, (message, code) = failed[0]
    if error is None or d.is_main and rank != 0:   # rank 0 prints the first failing rank's message
        error = UserError(message if rank == 0 else f"rank {rank} failed {what}: {message}", code=code)
    error.shared = not d.is_main                   # main.py: the other ranks stay silent (rank 0 says it)
    raise error
