"""Greedy selection loops with a constant, small number of tensor operations per step.

On a GPU every tensor operation is a kernel launch and every ``.item()`` stalls the stream, so a
greedy loop that dispatches a dozen operations per step costs more than the prefill it saves.
These loops dispatch three to five operations per step, on device tensors only, with no host
sync inside the loop and a step count fixed by the caller (never by the data):

- :func:`max_min_steps`: greedy max-min diversity on a distance matrix (DivPrune);
- :func:`dpp_steps`: greedy MAP of a DPP by pivoted Cholesky on the residual kernel (CDPruner,
  PromPrune's coverage stage);
- :func:`dpp_factor_steps`: the same greedy on a low-rank kernel ``L = B Bᵀ`` given by its
  factor ``B`` (N, D), in ``O(N D)`` memory and ``O(N D)`` work per step, for ``D < N`` (a
  high-resolution image: more tokens than dimensions), where the residual kernel would cost
  ``O(N²)`` memory and work per step.

Both work on a whole batch ``(B, N, N)`` at once and return picks in selection order.

Loop lengths: on an accelerator a loop whose useful length depends on the data (PromPrune's
coverage share) runs a length fixed on the host and discards the surplus steps on the device. On
device types in :data:`HOST_READS` (the CPU: no stream to stall, a read is a memory load, an
operation costs its arithmetic rather than a launch) a caller may read the length first
(:func:`reads_on_host`) and run only the steps it needs, or run a form that spends more operations
on less arithmetic (VisPruner's compacting rounds).

Opt-in compilation (:func:`compile_loops`): the loops have no host sync and no data-dependent
shape, so ``torch.compile(fullgraph=True)`` takes each whole; with ``mode="reduce-overhead"`` on
CUDA the compiled loop is captured as a CUDA graph and replayed for each (B, N, K) it has seen, one
launch instead of hundreds. Tensors on other devices keep the eager loops.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class _Compiled:
    devices: tuple[str, ...] = ()  # device types that take the compiled loops (none: opt-in)
    options: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)


_COMPILED = _Compiled()

#: the smallest pivot a forced first pick divides by (``sqrt(max(d², 1e-8))``, Chen et al. 2018)
PIVOT_FLOOR = 1e-8

# device types where reading a tensor on the host costs a memory load, not a stalled stream, and
# an operation its arithmetic, not a launch: they run the methods' CPU forms
HOST_READS: set[str] = {"cpu"}


def reads_on_host(tensor: torch.Tensor) -> bool:
    """Whether a loop may read a data-dependent length from ``tensor`` (its device type is in
    :data:`HOST_READS`) instead of running the fixed, device-side length."""
    return tensor.device.type in HOST_READS


def compile_loops(devices=("cuda",), mode: str | None = "reduce-overhead", backend: str = "inductor") -> None:
    """Run :func:`max_min_steps`, :func:`dpp_steps` and the other loops that ask
    (:func:`maybe_compiled`) through ``torch.compile(fullgraph=True)`` for tensors on ``devices``
    (device types; ``()`` turns it off). ``mode="reduce-overhead"`` captures CUDA graphs; each new
    (B, N, K) compiles once, up to ``torch._dynamo.config.recompile_limit`` shapes per loop (8 by
    default; beyond it torch runs the loop eagerly). ``backend`` as ``torch.compile``'s
    (``"eager"`` only traces: the test-suite uses it on the CPU to check that the loops capture
    whole and pick what the eager loops pick)."""
    if isinstance(devices, str) or not all(isinstance(d, str) for d in devices):
        raise ValueError(f"`devices` must be a tuple of device types, got {devices!r}")
    _COMPILED.devices = tuple(devices)
    _COMPILED.options = {"fullgraph": True, "dynamic": False, "backend": backend}
    if mode is not None and backend == "inductor":
        _COMPILED.options["mode"] = mode
    _COMPILED.cache.clear()


def maybe_compiled(fn, tensor: torch.Tensor):
    """``fn`` compiled when ``tensor``'s device type opted in (:func:`compile_loops`), else ``fn``.
    For loops with no host sync and shapes known on the host, such as VisPruner's rounds."""
    if tensor.device.type not in _COMPILED.devices:
        return fn
    if fn not in _COMPILED.cache:
        _COMPILED.cache[fn] = torch.compile(fn, **_COMPILED.options)
    return _COMPILED.cache[fn]


def _flat_index(j: torch.Tensor, base: torch.Tensor | None) -> torch.Tensor:
    """(B,) per-row indices -> indices into the (B*N, ...) flattening (``base`` = row * N)."""
    return j if base is None else j + base


def _bases(b: int, n: int, device) -> torch.Tensor | None:
    return None if b == 1 else torch.arange(b, device=device) * n


def max_min_steps(dist: torch.Tensor, first: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy max-min diversity: ``first`` (B,), then ``steps - 1`` times the index whose smallest
    distance to the picked ones is largest (ties: lowest index).

    ``dist`` (B, N, N) symmetric distances whose diagonal is ``-inf`` (a picked index is then never
    picked again: its running minimum becomes ``-inf``). Returns (B, steps) in selection order.
    Per step: ``argmax``, one row gather, ``minimum`` (plus one add for B > 1).
    """
    return maybe_compiled(_max_min_loop, dist)(dist, first, steps)


def _max_min_loop(dist: torch.Tensor, first: torch.Tensor, steps: int) -> torch.Tensor:
    b, n, _ = dist.shape
    if b == 1:  # one image: (1,)-shaped picks index rows directly
        rows1, pick = dist[0], first
        picks, low = [pick], rows1.index_select(0, pick)  # (1, N) distance to the picked set
        for step in range(1, steps):
            pick = low.argmax(dim=1)  # (1,)
            picks.append(pick)
            if step < steps - 1:  # the last pick's distances are never read
                low = torch.minimum(low, rows1.index_select(0, pick))
        return torch.stack(picks, dim=1)  # steps x (1,) -> (1, steps)
    rows = dist.reshape(b * n, n)  # (B, N, N) -> (B*N, N)
    base = _bases(b, n, dist.device)
    pick = first
    picks = [pick]
    low = rows.index_select(0, _flat_index(pick, base))  # (B, N) distance to the picked set
    for step in range(1, steps):
        pick = low.argmax(dim=1)  # (B,) first maximum: lowest index on ties
        picks.append(pick)
        if step < steps - 1:
            low = torch.minimum(low, rows.index_select(0, _flat_index(pick, base)))
    return torch.stack(picks, dim=1)


def dpp_steps(
    kernel: torch.Tensor, steps: int, first: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy MAP of the DPP with kernel ``L``: each step picks the largest residual diagonal
    ``d²_j = L_jj - Σ_t c_t[j]²`` (ties: lowest index) and removes it from the residual kernel,
    ``R <- R - R[:, j] R[j, :] / R_jj`` (pivoted Cholesky; Chen et al. 2018's incremental update
    in matrix form).

    ``kernel`` (B, N, N) symmetric, **overwritten** (with the residual left before the last pick,
    which needs no update); set a diagonal entry to
    ``-inf`` beforehand to exclude that index. ``first`` (B,) forces the first pick (its pivot
    floored at ``PIVOT_FLOOR``, so a zero token divides by ``1e-4`` as in Chen et al.). Returns
    ``(picks (B, steps), pivots (B, steps))``: picks in selection order and the ``d²`` each was
    picked at. Once every remaining ``d²`` is at rounding level (the kernel's rank is spent) the
    picks are meaningless: callers check ``pivots`` once after the loop and fall back to an exact
    rule. A picked index needs no mask: its residual diagonal drops to rounding level, below every
    pivot a caller accepts. Per step: ``max``, two row gathers, one division, one batched
    rank-1 update (plus one add and one view for B > 1); the last step is its ``max`` alone.
    """
    return maybe_compiled(_dpp_loop, kernel)(kernel, steps, first)


def _dpp_loop(kernel: torch.Tensor, steps: int, first: torch.Tensor | None = None):
    b, n, _ = kernel.shape
    if b == 1:
        return _dpp_steps_one(kernel[0], steps, first)
    col = kernel.view(b * n, n, 1)  # row j as a column (the kernel is symmetric)
    row = kernel.view(b * n, 1, n)
    diag = kernel.diagonal(dim1=1, dim2=2)  # (B, N) view: follows the updates
    base = _bases(b, n, kernel.device)
    picks, pivots = [], []
    for step in range(steps):
        if step == 0 and first is not None:  # a forced pick: its pivot floored as Chen et al. do
            j = first
            d2 = diag.gather(1, j[:, None]).view(b).clamp_min(PIVOT_FLOOR)
        else:
            d2, j = diag.max(dim=1)  # (B,), (B,)
        picks.append(j)
        pivots.append(d2)
        if step == steps - 1:  # the last update would only feed a pick that is never made
            break
        idx = _flat_index(j, base)
        kernel.baddbmm_(col.index_select(0, idx), row.index_select(0, idx) / d2.view(b, 1, 1), alpha=-1.0)
    if not picks:
        empty = torch.empty(b, 0, device=kernel.device)
        return empty.long(), empty
    return torch.stack(picks, dim=1), torch.stack(pivots, dim=1)


def _dpp_steps_one(kernel: torch.Tensor, steps: int, first: torch.Tensor | None):
    """:func:`dpp_steps` on one (N, N) kernel (``first`` (1,) or None) -> picks and pivots, each
    (1, steps): five operations per step (``max``, row and column ``j``, one division, one rank-1
    update; the last step stops after its ``max``)."""
    diag = kernel.diagonal()  # (N,) view: follows the updates
    picks, pivots = [], []
    for step in range(steps):
        if step == 0 and first is not None:
            j = first
            d2 = diag.index_select(0, j).clamp_min(PIVOT_FLOOR)
        else:
            d2, j = diag.max(dim=0, keepdim=True)  # (1,), (1,)
        picks.append(j)
        pivots.append(d2)
        if step == steps - 1:
            break
        r = kernel.index_select(0, j)  # (1, N) row j
        kernel.addcmul_(kernel.index_select(1, j), r / d2, value=-1.0)  # R - c r / d²: (N, 1) x (1, N)
    if not picks:
        empty = torch.empty(1, 0, device=kernel.device)
        return empty.long(), empty
    return torch.stack(picks, dim=1), torch.stack(pivots, dim=1)  # steps x (1,) -> (1, steps)


def dpp_factor_steps(
    rows: torch.Tensor, d2: torch.Tensor, steps: int, first: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`dpp_steps` for the kernel ``L = B Bᵀ`` with ``B`` = ``rows`` (B, N, D), without
    building ``L``: each step picks ``j = argmax d²`` (ties: lowest index), takes the part of
    ``b_j`` orthogonal to the rows picked so far, ``u = (b_j - Σ_t (u_t · b_j) u_t) / sqrt(d²_j)``
    (Gram-Schmidt; ``B u`` is Chen et al.'s Cholesky row ``e``), and updates ``d² <- d² - (B u)²``.

    ``d2`` (B, N) the kernel's diagonal, ``-inf`` at excluded indices, **overwritten** with the
    residual diagonal; ``first`` (B,) forces the first pick. Returns ``(picks (B, steps), pivots
    (B, steps))`` as :func:`dpp_steps` (callers check the pivots once for the kernel's rank).
    Memory ``O((N + steps) D)``; per step one ``N x D`` product, one ``steps x D`` projection and
    eight operations (the last step is its ``max`` alone).
    """
    return maybe_compiled(_dpp_factor_loop, rows)(rows, d2, steps, first)


def _dpp_factor_loop(rows: torch.Tensor, d2: torch.Tensor, steps: int, first: torch.Tensor | None = None):
    b, n, d = rows.shape
    if b == 1:
        return _dpp_factor_one(rows[0], d2[0], steps, first)
    flat = rows.reshape(b * n, d)  # (B, N, D) -> (B*N, D)
    rows_t = rows.transpose(1, 2)  # (B, D, N)
    basis = rows.new_zeros(b, max(steps - 1, 1), d)  # (B, T, D) the orthonormal u_t
    base = _bases(b, n, rows.device)
    picks, pivots = [], []
    for step in range(steps):
        if step == 0 and first is not None:
            j = first
            piv = d2.gather(1, j[:, None]).view(b).clamp_min(PIVOT_FLOOR)
        else:
            piv, j = d2.max(dim=1)  # (B,), (B,)
        picks.append(j)
        pivots.append(piv)
        if step == steps - 1:  # the last update would only feed a pick that is never made
            break
        bj = flat.index_select(0, _flat_index(j, base)).view(b, 1, d)  # (B, 1, D) row j of B
        if step > 0:
            done = basis[:, :step]  # (B, t, D)
            # b_j - (b_j U^T) U: (B, 1, t) @ (B, t, D) -> (B, 1, D)
            bj = torch.baddbmm(bj, torch.bmm(bj, done.transpose(1, 2)), done, alpha=-1.0)
        u = basis[:, step : step + 1]  # (B, 1, D) view, written in place
        torch.div(bj, piv.sqrt().view(b, 1, 1), out=u)
        e = torch.bmm(u, rows_t).view(b, n)  # (B, 1, D) @ (B, D, N) -> (B, N): Cholesky row
        d2.addcmul_(e, e, value=-1.0)  # d² - e²; -inf stays -inf
    if not picks:
        empty = torch.empty(b, 0, device=rows.device)
        return empty.long(), empty
    return torch.stack(picks, dim=1), torch.stack(pivots, dim=1)


def _dpp_factor_one(rows: torch.Tensor, d2: torch.Tensor, steps: int, first: torch.Tensor | None):
    """:func:`dpp_factor_steps` on one (N, D) factor and its (N,) diagonal (a view, overwritten):
    eight operations per step on 2-D tensors; the projection reads the whole (T, D) basis, whose
    rows not yet written are zero."""
    basis = rows.new_zeros(max(steps - 1, 1), rows.shape[1])  # (T, D) the orthonormal u_t
    basis_t = basis.T  # (D, T) view
    u_rows = basis.split(1)  # T x (1, D) views, written in place
    u_cols = [u.T for u in u_rows]  # T x (D, 1) views
    column = d2.view(-1, 1)  # (N, 1) view of the diagonal
    picks, pivots = [], []
    for step in range(steps):
        if step == 0 and first is not None:
            j = first
            piv = d2.index_select(0, j).clamp_min(PIVOT_FLOOR)
        else:
            piv, j = d2.max(dim=0, keepdim=True)  # (1,), (1,)
        picks.append(j)
        pivots.append(piv)
        if step == steps - 1:
            break
        bj = rows.index_select(0, j)  # (1, D)
        if step > 0:  # b_j - (b_j U^T) U: (1, D) @ (D, T) -> (1, T); (1, T) @ (T, D) -> (1, D)
            bj = torch.addmm(bj, torch.mm(bj, basis_t), basis, alpha=-1.0)
        torch.div(bj, piv.sqrt(), out=u_rows[step])
        e = torch.mm(rows, u_cols[step])  # (N, D) @ (D, 1) -> (N, 1): Cholesky row
        column.addcmul_(e, e, value=-1.0)  # d² - e²; -inf stays -inf
    if not picks:
        empty = torch.empty(1, 0, device=rows.device)
        return empty.long(), empty
    return torch.stack(picks, dim=1), torch.stack(pivots, dim=1)  # steps x (1,) -> (1, steps)
