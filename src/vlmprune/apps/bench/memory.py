"""Peak memory of one ``vlmprune bench`` configuration on the CPU, in a process of its own.

A CPU process has no allocator statistics per call, and its peak resident set size (RSS) never
goes down: measured in the benchmark's own process, every row would report the largest run so
far. So each configuration (the full model, the oracle at K, a method at K) runs once more in a
fresh Python process that builds the same model and inputs, records its RSS, resets the kernel's
high-water mark (``/proc/self/clear_refs``) and runs one ``generate``. It reports:

- ``peak_mem_bytes``: the process's peak RSS during that call (model weights, the Python and torch
  runtime and the call's own working memory: what the machine must hold);
- ``mem_delta_bytes``: that peak minus the RSS before the call (the call's working memory).

The child runs :func:`vlmprune.apps.bench.runner.memory_child` with the configuration as JSON on
stdin and prints one line of JSON. Linux only (``/proc``); elsewhere the fields stay empty.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict

STATUS = "/proc/self/status"
CHILD = "from vlmprune.apps.bench.runner import memory_child; memory_child()"


def available() -> bool:
    """Whether peak RSS can be read per call here (a Linux ``/proc``)."""
    return os.path.exists(STATUS)


def _status_bytes(field: str) -> int | None:
    with open(STATUS) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS to the current RSS
        return True
    except OSError:
        return False


def measure(settings, image_size, kind: str, method: str | None = None, config=None, timeout: float = 600):
    """``{"peak_mem_bytes", "mem_delta_bytes"}`` of one configuration (``kind`` full, oracle or
    pruned; ``config`` ``(budget|ratio, value)`` for a method, ``(k,)`` for the oracle), measured
    in a child process; empty values where it cannot be measured."""
    empty = {"peak_mem_bytes": None, "mem_delta_bytes": None}
    if not available():
        return empty
    spec = {"settings": asdict(settings), "image_size": image_size, "kind": kind, "method": method}
    spec["config"] = list(config) if config is not None else None
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHILD],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except (OSError, subprocess.TimeoutExpired):
        return empty
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return empty
    return {**empty, **json.loads(lines[-1])}


def in_child(run_once) -> dict:
    """In the child: the peak RSS of ``run_once()`` (a callable running the configuration once)
    and its rise over the RSS before it (empty where the high-water mark cannot be reset)."""
    before = _status_bytes("VmRSS")
    if not _reset_peak():
        return {}
    run_once()
    peak = _status_bytes("VmHWM")
    return {"peak_mem_bytes": peak, "mem_delta_bytes": peak - before}
