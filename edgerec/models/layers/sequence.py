"""Pooling over padded behaviour sequences."""

from __future__ import annotations

import torch
from torch import nn


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over the sequence axis where mask is True; zeros for empty sequences.

    x: (B, L, d), mask: (B, L) bool -> (B, d)
    """
    m = mask.unsqueeze(-1).to(x.dtype)  # (B, L, 1)
    total = (x * m).sum(dim=1)  # (B, d)
    count = m.sum(dim=1).clamp_min(1.0)  # (B, 1)
    return total / count


ROW_BUCKET = 1024


def bucket_rows(x: torch.Tensor, fn: nn.Module | None = None, multiple: int = ROW_BUCKET) -> torch.Tensor:
    """x (N, ...) padded with zero rows to a multiple of `multiple` rows, under bf16 autocast only, for
    the row-wise module `fn` that will read it (unpadded when `fn` is not row-wise: see rows_independent).

    Why: oneDNN builds (and keeps) kernels per matrix shape for bf16 matmuls, and the number of real
    behaviours N differs in every batch, so without this a bf16 run's memory grew by ~17-24 MB per batch
    of a new N (1.36 GB peak in fp32, 2.9 GB in bf16 after one ml-100k epoch). Callers slice the padded
    rows off the result: each row of an MLP is computed independently, so the real rows are unchanged
    and the padding gets no gradient. A no-op in fp32 (and so in every export and serving path)."""
    if not torch.is_autocast_enabled(x.device.type) or x.shape[0] % multiple == 0:
        return x
    if fn is not None and not rows_independent(fn):
        return x
    return torch.cat([x, x.new_zeros(multiple - x.shape[0] % multiple, *x.shape[1:])])


def rows_independent(module: nn.Module) -> bool:
    """Whether `module` computes each row on its own. A BatchNorm in training (e.g. inside Dice) takes
    batch statistics over all rows it is given, so padding rows would change the real rows and its
    running estimates; in eval it uses the running estimates and is row-wise too."""
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in module.modules())


def one_history_product(query: torch.Tensor, m: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """A first layer applied to every (candidate, behaviour) pair of ONE request, when it splits
    into pre[n] + M[n] q_c with both parts free of the candidate (serving's dense stage 2: DIN's
    attention unit, COUPA's excitation): query (C, d), m (N, h, d), pre (N, h) -> (C, N, h), as ONE
    matrix product q (C, d) @ M^T (d, N·h) with pre as its bias."""
    N, h, d = m.shape
    return torch.addmm(pre.reshape(N * h), query, m.reshape(N * h, d).T).view(query.shape[0], N, h)


def per_row(fn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """fn (a row-wise module: Linear, MLP) on x (N, ...) with bucket_rows' padding, sliced back to N rows."""
    return fn(bucket_rows(x, fn))[: x.shape[0]]


class PackedHistory:
    """The real behaviours of a padded (B, L) history as a flat list of N (row, slot) pairs.

    Why: at L = 200 more than half of the slots are padding on ml-100k; computing per-behaviour
    quantities (attention units, time encodings, gates) on the N real behaviours only, and
    scattering just the (B, L) weights back, makes the cost follow the data, not the padding.
    """

    def __init__(self, mask: torch.Tensor):
        self.shape = mask.shape  # (B, L)
        self.b_idx, self.l_idx = mask.nonzero(as_tuple=True)  # (N,), (N,)
        self.flat = self.b_idx * mask.shape[1] + self.l_idx  # (N,) index into the (B * L) slots

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, ...) -> (N, ...), by index_select on the flattened slots (backward: index_add)."""
        return x.flatten(0, 1).index_select(0, self.flat)

    def unpack(self, v: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """(N, ...) -> (B, L, ...), `fill` at padding."""
        out = v.new_full((*self.shape, *v.shape[1:]), fill)
        return out.index_put((self.b_idx, self.l_idx), v)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """Per-row tensor (B, ...) repeated for each behaviour: (N, ...). index_select, not x[b_idx]:
        its backward is an index_add, where advanced indexing's is a ~4x slower accumulating index_put."""
        return x.index_select(0, self.b_idx)

    def pool(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Σ over each row's behaviours of w * x: (N,), (N, d) -> (B, d)."""
        out = x.new_zeros(self.shape[0], x.shape[-1])
        if torch.jit.is_tracing():  # ONNX export: index_add becomes a ScatterElements that keeps ONE of the
            # rows sent to the same place instead of their sum; scatter_add is the same sum and exports as
            # reduction="add". Not used in training: on CPU it is ~20 % slower than index_add here.
            return out.scatter_add(0, self.b_idx.unsqueeze(-1).expand(-1, x.shape[-1]), w.unsqueeze(-1) * x)
        return out.index_add(0, self.b_idx, w.unsqueeze(-1) * x)

    def softmax(self, logits: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax over each row's behaviours (only those with keep=True): (N,) -> (N,).
        A row with nothing to attend gives zeros, not NaN."""
        if keep is not None:
            logits = logits.masked_fill(~keep, float("-inf"))
        full = self.unpack(logits, fill=float("-inf"))  # (B, L)
        return torch.softmax(full, dim=-1).nan_to_num(0.0)[self.b_idx, self.l_idx]
