"""vLLM schedulers that charge a pruned image's encoder work at its unpruned size.

vLLM's scheduler charges each image (video) against its per-step encoder budget by its
placeholder count. Under the plugin that is K, the kept count, while the vision tower still runs
on all N of the image's tokens: one step then batches up to N/K times the tower work vLLM planned
for, and the first token of every request in it waits for all of them. These schedulers charge
N instead, read from the item's ``vlmprune_tokens`` field (the plugin's processor attaches it):

    vllm serve DIR --hf-overrides '{"vlmprune": {...}}' \\
        --scheduler-cls vlmprune.integrations.vllm.scheduler.Scheduler

(vLLM's ``AsyncScheduler`` underneath where async scheduling is on, its default). Items without the field (no pruning,
or another model) are charged as vLLM charges them. The encoder cache still holds K rows per item
and is accounted by K.

Within one request the charge is per item ``K_i / s`` with ``s = max_i K_i / N_i``: exact when the
request's items share one kept share (one configuration per request, the usual case), and never
above ``N_i``, so a request the stock rule could schedule is never starved.
"""

from __future__ import annotations

import math

from vllm.v1.core.sched.async_scheduler import AsyncScheduler as _StockAsync
from vllm.v1.core.sched.scheduler import Scheduler as _StockScheduler

from vlmprune.integrations.vllm.common import TOKENS_FIELD


def kept_share(request) -> float:
    """``max_i K_i / N_i`` over the request's items that carry their unpruned count N (1.0: none)."""
    shares = []
    for feature in request.mm_features or ():
        field = TOKENS_FIELD.get(feature.modality)
        elem = None if feature.data is None or field is None else feature.data.get(field)
        if elem is not None:
            n = int(elem.data)
            shares.append(feature.mm_position.get_num_embeds() / n if n > 0 else 1.0)
    return min(1.0, max(shares, default=1.0))


class EncoderCostMixin:
    """Mixed in before vLLM's scheduler: the encoder budget is charged ``N`` per pruned item."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._vlmprune_shares: dict[str, float] = {}

    def _vlmprune_share(self, request) -> float:
        share = self._vlmprune_shares.get(request.request_id)
        if share is None:  # read once: the items' data may be released after their encoder step
            share = self._vlmprune_shares[request.request_id] = kept_share(request)
        return share

    def _try_schedule_encoder_inputs(
        self, request, num_computed_tokens, num_new_tokens, encoder_compute_budget, shift_computed_tokens=0
    ):
        share = self._vlmprune_share(request) if request.has_encoder_inputs else 1.0
        if share >= 1.0:
            return super()._try_schedule_encoder_inputs(
                request, num_computed_tokens, num_new_tokens, encoder_compute_budget, shift_computed_tokens
            )
        scaled = math.floor(encoder_compute_budget * share)  # the budget in kept tokens
        out = super()._try_schedule_encoder_inputs(
            request, num_computed_tokens, num_new_tokens, scaled, shift_computed_tokens
        )
        spent = math.ceil((scaled - out[2]) / share)  # kept tokens charged -> their N
        return (out[0], out[1], max(0, encoder_compute_budget - spent), *out[3:])

    def _free_request(self, request, *args, **kwargs):
        self._vlmprune_shares.pop(request.request_id, None)
        return super()._free_request(request, *args, **kwargs)


class Scheduler(EncoderCostMixin, _StockScheduler):
    """vLLM's scheduler charging pruned items' encoder work at N: an :class:`AsyncScheduler`
    where the configuration has async scheduling on, vLLM's plain ``Scheduler`` otherwise."""

    def __new__(cls, *args, **kwargs):
        config = kwargs.get("vllm_config", args[0] if args else None)
        if cls is Scheduler and config is not None and config.scheduler_config.async_scheduling:
            cls = AsyncScheduler
        return super().__new__(cls)


class AsyncScheduler(Scheduler, _StockAsync):
    """vLLM's ``AsyncScheduler`` charging pruned items' encoder work at N."""
