"""When the fast engine's opt-in kernels run (``hmar_core.fast.checked.checked_kernel``)."""

from __future__ import annotations

import logging

import pytest
import torch

from hmar_core.fast.checked import checked_kernel

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # no GPU needed: nothing runs on it


def _broken() -> object:
    raise RuntimeError("the kernel disagrees")


def test_off_and_auto_off_cuda_never_build():
    def fail() -> object:
        raise AssertionError("built")

    assert checked_kernel(False, CUDA, "k", "torch ops", fail, lambda: True) is None
    assert checked_kernel(None, CPU, "k", "torch ops", fail, lambda: True) is None


def test_auto_on_cuda_builds_or_falls_back_with_a_warning(caplog):
    assert checked_kernel(None, CUDA, "k", "torch ops", lambda: "kernel", lambda: False) == "kernel"
    with caplog.at_level(logging.WARNING, logger="hmar_core.fast.checked"):
        assert checked_kernel(None, CUDA, "k", "torch ops", _broken, lambda: False) is None
    assert "k unavailable (RuntimeError: the kernel disagrees); using torch ops" in caplog.text


def test_requested_raises_and_needs_cuda_or_the_interpreter():
    with pytest.raises(RuntimeError, match="disagrees"):
        checked_kernel(True, CUDA, "k", "torch ops", _broken, lambda: False)
    with pytest.raises(ValueError, match="k: needs a CUDA device"):
        checked_kernel(True, CPU, "k", "torch ops", lambda: "kernel", lambda: False)
    assert checked_kernel(True, CPU, "k", "torch ops", lambda: "kernel", lambda: True) == "kernel"
