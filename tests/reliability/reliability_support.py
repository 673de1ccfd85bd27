"""Shared pieces of the reliability suite: size switch, fuzz settings, memory probes, report.

``HMAR_RELIABILITY_FULL=1`` selects the full sizes (more fuzz cases, 16 users × 60 s of load);
the default is the reduced CI size. Measured figures are collected in :data:`REPORT` and written
to ``tests/_artifacts/reliability.json`` (and the terminal summary) when the session ends.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, settings
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "_artifacts"
FULL = os.environ.get("HMAR_RELIABILITY_FULL", "") == "1"

#: Measured figures by section (written at the end of the session).
REPORT: dict[str, Any] = {"size": "full" if FULL else "reduced"}
_LOCK = threading.Lock()


def sized(reduced: int, full: int) -> int:
    """The reduced (CI) or the full size of something."""
    return full if FULL else reduced


def fuzz_settings(reduced: int, full: int, deadline_s: float = 20.0) -> settings:
    """Hypothesis settings of one fuzz target: example count, a per-example deadline (a slow
    example fails the test instead of passing silently), no example database in the repo."""
    return settings(
        max_examples=sized(reduced, full),
        deadline=deadline_s * 1000.0,
        database=None,
        derandomize=not FULL,  # CI: the same cases every run; full: fresh ones
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much],
        print_blob=True,
    )


def count_case(target: str, outcome: str) -> None:
    """Record one executed fuzz case of ``target`` with its outcome (``ok`` or an error)."""
    with _LOCK:
        section = REPORT.setdefault("fuzz", {})
        counts = section.setdefault(target, collections.Counter())
        counts["cases"] += 1
        counts[outcome] += 1


def record(section: str, **values: Any) -> None:
    """Store measured figures under ``section``."""
    with _LOCK:
        REPORT.setdefault(section, {}).update(values)


# ------------------------------------------------------------------------------ test images
MODES = ("1", "L", "LA", "P", "P+transparency", "RGB", "RGBA", "I;16", "I", "F", "CMYK",
         "YCbCr")


def make_image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    """A PIL image of ``mode`` with random content."""
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    if mode == "P+transparency":
        image = rgb.convert("P")
        image.info["transparency"] = int(rng.integers(0, 256))
        return image
    return rgb.convert(mode)


# ------------------------------------------------------------------------------ memory probes
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_mib() -> float:
    """Resident memory of this process now, MiB."""
    return _status_kib("VmRSS") / 1024


def peak_rss_mib() -> float:
    """Peak resident memory of this process since start (or the last reset), MiB."""
    return _status_kib("VmHWM") / 1024


def reset_peak_rss() -> bool:
    """Reset the peak RSS to the current RSS (Linux ``clear_refs`` 5); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


class PeakRss:
    """Context manager measuring the peak RSS growth (MiB) of the code inside it."""

    def __enter__(self) -> PeakRss:
        self.supported = reset_peak_rss()
        self.start = rss_mib()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.growth = peak_rss_mib() - self.start
        self.seconds = time.perf_counter() - self.started


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]
