"""Process-group context for single-process and ``torchrun`` runs.

A :class:`DistContext` is built once by a trainer's ``main`` (from the ``torchrun`` environment
variables) and passed down; nothing in ``train/`` reads a global rank or device. NCCL is used on
CUDA, gloo on CPU. The same code path runs single-process (``world_size == 1``), where every
collective below is a no-op.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistContext", "check_replicas", "parameter_checksum", "setup_logging"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Rank, world size and device of this process.

    Attributes:
        rank: global rank.
        world_size: number of processes.
        local_rank: rank on this host (selects the CUDA device).
        device: the device this rank computes on.
        backend: ``"nccl"``/``"gloo"`` when a process group is active, else ``None``.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @classmethod
    def from_env(
        cls, device: str | None = None, env: Mapping[str, str] | None = None
    ) -> DistContext:
        """Read ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and start the process group if needed.

        Args:
            device: ``"cuda"``, ``"cpu"`` or ``None`` (CUDA when available).
            env: the environment (default ``os.environ``).

        Returns:
            The context; with ``WORLD_SIZE > 1`` the default process group is initialised.

        Raises:
            ValueError: an unknown device, or CUDA asked for where there is none.
        """
        env = os.environ if env is None else env
        world_size = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", "0"))
        kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            torch.device(kind)
        except RuntimeError as err:
            raise ValueError(f"unknown device {kind!r} (use cuda or cpu)") from err
        if kind.startswith("cuda"):
            if not torch.cuda.is_available():
                raise ValueError("device 'cuda' was asked for but CUDA is not available")
            torch_device = torch.device("cuda", local_rank)
            torch.cuda.set_device(torch_device)
        else:
            torch_device = torch.device(kind)
        backend = None
        if world_size > 1:
            backend = "nccl" if torch_device.type == "cuda" else "gloo"
            if not dist.is_initialized():
                dist.init_process_group(
                    backend, rank=rank, world_size=world_size,
                    timeout=datetime.timedelta(minutes=30),
                )
        return cls(rank, world_size, local_rank, torch_device, backend)

    def close(self) -> None:
        """Destroy the process group (if this context started one)."""
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    # ------------------------------------------------------------------------ collectives
    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (in place; returns the tensor)."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Mean over ranks (in place; returns the tensor)."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            tensor.div_(self.world_size)
        return tensor

    def all_gather_cat(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate equally shaped tensors of all ranks along dim 0, in rank order."""
        if not self.distributed:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (picklable objects)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def any_true(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank."""
        if not self.distributed:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def local_slice(self, global_batch: int) -> slice:
        """This rank's contiguous part of a global batch (must divide evenly)."""
        if global_batch % self.world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by "
                             f"{self.world_size} processes")
        local = global_batch // self.world_size
        return slice(self.rank * local, (self.rank + 1) * local)


def setup_logging(ctx: DistContext, log_file: str | os.PathLike | None = None,
                  level: int = logging.INFO) -> None:
    """Configure the root logger of an entry point: rank 0 logs to stderr (and a file),
    other ranks only report warnings, prefixed with their rank.

    Args:
        ctx: the process context.
        log_file: also append rank 0's log to this file.
        level: level of rank 0's handlers.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler = logging.StreamHandler()
    if ctx.is_main:
        root.setLevel(level)
        handler.setFormatter(logging.Formatter(fmt, "%H:%M:%S"))
        root.addHandler(handler)
        if log_file is not None:
            file_handler = logging.FileHandler(log_file)
            file_handler.setFormatter(logging.Formatter(fmt))
            root.addHandler(file_handler)
    else:
        root.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter(f"[rank {ctx.rank}] {fmt}", "%H:%M:%S"))
        root.addHandler(handler)


def parameter_checksum(module: torch.nn.Module) -> str:
    """SHA-256 of every parameter's bytes, in name order (bitwise identity of replicas)."""
    import hashlib

    digest = hashlib.sha256()
    for name, param in sorted(module.named_parameters()):
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_replicas(module: torch.nn.Module, ctx: DistContext, step: int) -> str:
    """Assert that every rank holds bitwise-identical parameters (DDP lockstep).

    Returns:
        The common checksum.

    Raises:
        RuntimeError: the ranks' parameters differ.
    """
    local = parameter_checksum(module)
    replicas = ctx.all_gather_object(local) if ctx.distributed else [local]
    if len(set(replicas)) != 1:
        raise RuntimeError(f"step {step}: parameters differ across ranks: {replicas}")
    if ctx.distributed:
        logger.info("step %d: parameters identical on all %d ranks (sha256 %s…)", step,
                    ctx.world_size, local[:12])
    return local

