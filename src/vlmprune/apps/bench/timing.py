"""Measurement helpers of ``vlmprune bench``: clocks, cache sizes, per-layer lengths, statistics."""

from __future__ import annotations

import math
import os
import platform
import statistics
import time

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stamps(device):
    """A logits processor recording (after a device sync) when each step's logits exist:
    ``times[0]`` is the end of prefill (first token), ``times[i]`` the end of decode step ``i``;
    ``cpu`` the process CPU time at the first step (``time.process_time``)."""
    from transformers import LogitsProcessor

    class _Stamps(LogitsProcessor):
        def __init__(self):
            self.times: list[float] = []
            self.cpu: float | None = None

        def __call__(self, input_ids, scores):
            sync(device)
            self.times.append(time.perf_counter())
            if self.cpu is None:
                self.cpu = time.process_time()
            return scores

    return _Stamps()


def cache_bytes(cache) -> int:
    """Bytes held by a transformers cache object (keys + values of every layer)."""
    total = 0
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer in layers:
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                if torch.is_tensor(t):
                    total += t.numel() * t.element_size()
        return total
    for name in ("key_cache", "value_cache"):  # older caches
        for t in getattr(cache, name, []) or []:
            if torch.is_tensor(t):
                total += t.numel() * t.element_size()
    return total


class LayerLengths:
    """Forward pre-hooks on the decoder layers recording the sequence length each layer sees
    (registered after a pruning session's own hooks, so they see the shortened hidden states)."""

    def __init__(self, layers):
        self.lengths: list[int] = []
        self._handles = [layer.register_forward_pre_hook(self._hook, with_kwargs=True) for layer in layers]

    def _hook(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        self.lengths.append(int(hidden.shape[1]))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(q1, median, q3) of ``values`` (inclusive method; one value -> itself three times)."""
    vals = sorted(values)
    if len(vals) == 1:
        return vals[0], vals[0], vals[0]
    q1, q2, q3 = statistics.quantiles(vals, n=4, method="inclusive")
    return q1, q2, q3


def summary(values: list[float], prefix: str) -> dict:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {
            prefix: None,
            f"{prefix}_q1": None,
            f"{prefix}_q3": None,
            f"{prefix}_min": None,
            f"{prefix}_max": None,
        }
    q1, med, q3 = quartiles(vals)
    return {
        prefix: med,
        f"{prefix}_q1": q1,
        f"{prefix}_q3": q3,
        f"{prefix}_min": min(vals),
        f"{prefix}_max": max(vals),
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU: {name}, {torch.get_num_threads()} torch thread(s), {os.cpu_count()} logical cores visible"


def load_average() -> float | None:
    """1-minute system load average (None where unavailable): how shared the machine was."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None
