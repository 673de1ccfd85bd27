"""Exponential moving average of a model's weights (DiT-style ``update_ema``).

The average is kept in float32 for every floating-point parameter of the model, including
frozen ones (they simply stay equal to the model). Its state dict goes into checkpoints, and
:meth:`EMA.copy_to` writes it into a module for sampling or export.
"""

from __future__ import annotations

from copy import deepcopy
from typing import TypeVar

import torch
import torch.nn as nn

__all__ = ["EMA", "averaged"]

Module = TypeVar("Module", bound=nn.Module)


class EMA:
    """``shadow ← decay · shadow + (1 − decay) · param`` after every optimiser step.

    The effective decay ramps up as ``min(decay, (1 + n) / (10 + n))`` over the first updates,
    so early averages are not dominated by the random initialisation.

    Args:
        model: the (unwrapped) network whose parameters are averaged.
        decay: the target decay, in (0, 1).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            name: param.detach().float().clone()
            for name, param in model.named_parameters() if param.is_floating_point()
        }

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Restart the average from ``model``'s current parameters."""
        for name, param in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].copy_(param.detach().float())
        self.num_updates = 0

    def current_decay(self) -> float:
        """The decay the next update uses."""
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average toward the current parameters of ``model``."""
        decay = self.current_decay()
        names, shadows, params = [], [], []
        for name, param in model.named_parameters():
            if name in self.shadow and param.requires_grad:
                names.append(name)
                shadows.append(self.shadow[name])
                params.append(param.detach().float())
        if shadows:
            torch._foreach_lerp_(shadows, params, 1 - decay)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s parameters with the average (cast to their dtype)."""
        for name, param in model.named_parameters():
            if name in self.shadow:
                param.copy_(self.shadow[name].to(param.dtype))

    def state_dict(self) -> dict[str, object]:
        return {"decay": self.decay, "num_updates": self.num_updates,
                "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict[str, object]) -> None:
        shadow = state["shadow"]
        if not isinstance(shadow, dict):
            raise ValueError("EMA state has no 'shadow' dict")
        missing = sorted(set(self.shadow) - set(shadow))
        unexpected = sorted(set(shadow) - set(self.shadow))
        if missing or unexpected:
            raise ValueError(f"EMA state does not match the model: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        for name, value in shadow.items():
            self.shadow[name].copy_(value)
        self.decay = float(state["decay"])  # type: ignore[arg-type]
        self.num_updates = int(state["num_updates"])  # type: ignore[call-overload]


def averaged(model: Module, ema: EMA | None) -> Module:
    """The weights to evaluate, preview or export: an EMA copy in eval mode when the run keeps
    an average, else ``model`` itself.

    The copy is a ``deepcopy`` (no module construction, so the global RNG stays untouched and
    a resumed run continues exactly).
    """
    if ema is None:
        return model
    copy = deepcopy(model)
    ema.copy_to(copy)
    return copy.eval()
