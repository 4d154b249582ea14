"""Time encodings: absolute time cycles (semantic slots + cyclic convolution) and relative time
cycles (a learned Fourier / Bochner map of time gaps). Spec: shared/specs/dicycle.md §3.2-3.4.

AbsoluteTimeEncoding  Λ(t) = Σ_g Σ_{j=0..J} maxpool_slots(ReLU(conv_g(window_{g,j}(slot_g(t)))))
    For every granularity g (hour, weekday, month, day-of-month) each slot has an embedding; the
    2j+1 slots centred on t's slot (cyclic: hour 23's neighbour is hour 0) are convolved along the
    window axis (kernel n, 'same' padding, d -> d channels), passed through ReLU and max-pooled.
    Summing over j = 0..J makes a neighbour's influence fade with distance (the centre slot is in
    every window, +-1 in J of them, ...). Λ depends only on the slot, so a (P_g, d) table is
    computed once per forward and gathered: cost independent of batch size and history length.

FourierTimeEncoding   Φ(Δt) = sqrt(1/d) [cos(ω_1 Δt), sin(ω_1 Δt), ..., cos(ω_{d/2} Δt), sin(ω_{d/2} Δt)]
    with learned frequencies ω (no phase), so <Φ(t1), Φ(t2)> = (1/d) Σ_i cos(ω_i (t2 - t1)) is a
    translation-invariant kernel of the gap. Δt is in hours; ω starts on a geometric grid of
    periods from 1 hour to 1 year with 24 h and 168 h included exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from edgerec.features.time import SLOT_SIZES, time_slots, unpack_slots


class AbsoluteTimeEncoding(nn.Module):
    def __init__(self, dim: int, granularities: tuple[str, ...] = ("hour", "weekday", "month"),
                 surrounding_range: int = 2, kernel_size: int = 3):
        super().__init__()
        unknown = [g for g in granularities if g not in SLOT_SIZES]
        if unknown:
            raise ValueError(f"unknown granularities {unknown}; choose from {list(SLOT_SIZES)}")
        if surrounding_range < 0 or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError("surrounding_range must be >= 0 and kernel_size a positive odd number")
        self.granularities = tuple(granularities)
        self.J = surrounding_range
        self.slots = nn.ModuleDict({g: nn.Embedding(SLOT_SIZES[g], dim) for g in self.granularities})
        self.convs = nn.ModuleDict({g: nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2)
                                    for g in self.granularities})
        for emb in self.slots.values():
            nn.init.normal_(emb.weight, std=0.01)

    def slot_table(self, g: str) -> torch.Tensor:
        """(P_g, d): Λ_g for every slot of granularity g."""
        E = self.slots[g].weight  # (P, d)
        P = E.shape[0]
        centre = torch.arange(P, device=E.device)
        out = torch.zeros_like(E)
        for j in range(self.J + 1):
            offsets = torch.arange(-j, j + 1, device=E.device)
            window = E[(centre[:, None] + offsets[None, :]) % P]  # (P, 2j+1, d), cyclic neighbours
            conv = F.relu(self.convs[g](window.transpose(1, 2)))  # (P, d, 2j+1)
            out = out + conv.max(dim=-1).values  # (P, d)
        return out

    def table(self) -> torch.Tensor:
        """All granularities' slot tables stacked: (Σ_g P_g, d), row offset of g = sum of earlier P."""
        return torch.cat([self.slot_table(g) for g in self.granularities], dim=0)

    def forward(self, ts: torch.Tensor | None = None, table: torch.Tensor | None = None,
                packed: torch.Tensor | None = None) -> torch.Tensor:
        """Λ for unix seconds `ts` (...) or packed slots `packed` (...) -> (..., d).

        Pass `table` (from .table()) to reuse one step's tables; one embedding_bag(sum) gathers and
        sums the granularities in a single pass.
        """
        table = self.table() if table is None else table
        slots = time_slots(ts) if packed is None else unpack_slots(packed)
        offset, idx = 0, []
        for g in self.granularities:
            idx.append(slots[g] + offset)
            offset += SLOT_SIZES[g]
        idx = torch.stack(idx, dim=-1)  # (..., G)
        shape = idx.shape[:-1]
        out = F.embedding_bag(idx.reshape(-1, len(self.granularities)), table, mode="sum")  # (N, d)
        return out.view(*shape, table.shape[-1])  # d spelled out: -1 is ambiguous for an empty history


def default_periods_hours(n: int) -> torch.Tensor:
    """n periods on a geometric grid from 1 h to 8760 h (1 year), with 24 h and 168 h included."""
    if n <= 2:
        return torch.tensor([24.0, 168.0][:n])
    grid = torch.logspace(0, math.log10(8760.0), n - 2, dtype=torch.float64)
    return torch.sort(torch.cat([grid, torch.tensor([24.0, 168.0], dtype=torch.float64)])).values.float()


class FourierTimeEncoding(nn.Module):
    def __init__(self, dim: int, learnable: bool = True):
        super().__init__()
        if dim % 2:
            raise ValueError(f"FourierTimeEncoding needs an even dim, got {dim}")
        self.dim = dim
        omega = 2 * math.pi / default_periods_hours(dim // 2)  # (d/2,) radians per hour
        self.omega = nn.Parameter(omega, requires_grad=learnable)

    def forward(self, dt_hours: torch.Tensor) -> torch.Tensor:
        """dt_hours: float (...) -> (..., d), pairs (cos, sin) per frequency."""
        phase = dt_hours.unsqueeze(-1) * self.omega  # (..., d/2)
        out = torch.stack([torch.cos(phase), torch.sin(phase)], dim=-1)  # (..., d/2, 2)
        # reshape with the sizes spelled out, not flatten: ONNX cannot infer a -1 axis of an empty history
        return out.reshape(*phase.shape[:-1], self.dim) * math.sqrt(1.0 / self.dim)  # (..., d)

    @torch.no_grad()
    def kernel(self, dt_hours: torch.Tensor) -> torch.Tensor:
        """<Φ(0), Φ(Δt)> = (1/d) Σ_i cos(ω_i Δt): the learned relative-time kernel, for plots."""
        return (torch.cos(dt_hours.unsqueeze(-1) * self.omega).sum(-1) / self.dim)
