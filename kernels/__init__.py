"""Attention over token pyramids behind one function, :func:`attention`."""

from .attention import Backend, attention, available_backends
from .mask import Pattern, ScaleMask

__all__ = ["Backend", "Pattern", "ScaleMask", "attention", "available_backends"]
