"""Many small tensors between host and device in one copy per dtype (one host sync, not one each).

An edit ends with its token pyramid, source tokens, keep masks and confidences moved to the
CPU, and an edit session hashes the spec's tensors: on an accelerator each ``.cpu()`` waits
for the device, and thirty of them cost more than the work they wait for at batch size 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["to_device", "to_host"]


def to_host(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors on the CPU, same dtypes, shapes and values, in the same order.

    One transfer per dtype (tensors that were on the CPU already come back as copies).
    """
    return _moved(tensors, torch.device("cpu"))


def to_device(tensors: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """The tensors on ``device``, same dtypes, shapes and values, in the same order.

    One transfer per dtype, the reverse of :func:`to_host`: for host-made tensors that the
    device needs (an edit's per-scale masks). From the CPU to CUDA the copy is queued without
    waiting (through pinned memory).
    """
    return _moved(tensors, device)


def _moved(tensors: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    out: list[torch.Tensor | None] = [None] * len(tensors)
    groups: dict[torch.dtype, list[int]] = {}
    for index, tensor in enumerate(tensors):
        groups.setdefault(tensor.dtype, []).append(index)
    for indices in groups.values():
        flat = torch.cat([tensors[i].detach().reshape(-1) for i in indices])
        if flat.device.type == "cpu" and device.type == "cuda":
            flat = flat.pin_memory().to(device, non_blocking=True)
        else:
            flat = flat.to(device)
        for i, part in zip(indices, flat.split([tensors[i].numel() for i in indices])):
            out[i] = part.view(tensors[i].shape)
    return out  # type: ignore[return-value]
