"""Position bias: how likely a user is to EXAMINE each feed position. Spec: shared/specs/coupa.md §2.3.

A logged click is modelled as  p(click) = θ_u(p) · r_{u,i}(t)  (examination x relevance, PAL-style).
θ is only used in training, where the displayed position p is known; at serving there is no
position and the relevance r alone ranks. Modes (COUPA's `position_mode`):

  personalized  COUPA's position selector with a position personalization module:
                  o_u    = MLP([e_u ; click-position history ; log #clicks]) ∈ R^P    personal logits
                  g_u    = σ(w · [e_u ; history])                                 gate, personal vs global
                  ℓ_u(p) = g_u · o_u[p] + (1 - g_u) · b[p]                        the selector gathers at p
                  θ_u(p) = σ(ℓ_u(p))
  pal           PAL (Guo et al., RecSys 2019): one global curve, θ(p) = σ(b[p])
  feature       position as an input feature of the relevance tower; serving feeds a default position
  none          positions ignored

`ExaminationModel` holds the first two; `feature` and `none` are handled by the model (coupa.py).
"""

from __future__ import annotations

import torch
from torch import nn

from edgerec.models.layers.mlp import MLP

POSITION_MODES = ("personalized", "pal", "feature", "none")


def click_position_profile(hist_position: torch.Tensor, hist_mask: torch.Tensor, n_positions: int) -> torch.Tensor:
    """Behaviour features of a user's browsing: the histogram of the positions of their past clicks
    (normalised) and log(1 + #clicks). hist_position (B, L) 1-based, hist_mask (B, L) -> (B, P + 1)."""
    P = n_positions
    pos = hist_position.clamp(1, P) - 1  # (B, L)
    counts = torch.zeros(hist_position.shape[0], P, dtype=torch.float32, device=hist_position.device)
    counts = counts.scatter_add(1, pos, hist_mask.to(torch.float32))  # (B, P)
    total = counts.sum(-1, keepdim=True)  # (B, 1)
    return torch.cat([counts / total.clamp_min(1.0), torch.log1p(total)], -1)  # (B, P + 1)


class ExaminationModel(nn.Module):
    """θ_u(p): the probability that user u examines position p (1-based, clipped to n_positions)."""

    def __init__(self, n_positions: int, user_dim: int = 0, personalized: bool = True,
                 units: tuple[int, ...] = (64,), use_click_history: bool = True):
        super().__init__()
        self.P = n_positions
        self.personalized = personalized
        self.use_click_history = use_click_history
        # global prior b: starts as a gently decaying curve (logits 2 .. 0), like most feeds
        self.prior = nn.Parameter(torch.linspace(2.0, 0.0, n_positions))
        in_dim = user_dim + (n_positions + 1 if use_click_history else 0)
        if personalized:
            if in_dim == 0:
                raise ValueError("a personalized examination model needs user features or the click history")
            self.personal = MLP(in_dim, units, output_dim=n_positions)
            self.gate = nn.Linear(in_dim, 1)

    def user_input(self, e_user: torch.Tensor | None, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        parts = [] if e_user is None else [e_user]
        if self.use_click_history:
            if "hist_position" not in batch:
                raise KeyError("the personalized examination model needs hist_position (positions of past "
                               "clicks); build samples with the impression protocol")
            parts.append(click_position_profile(batch["hist_position"], batch["hist_mask"], self.P))
        return torch.cat(parts, -1) if parts else None

    def logits(self, e_user: torch.Tensor | None, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """ℓ_u(p) for every position: (B, P)."""
        B = batch["hist_mask"].shape[0]
        prior = self.prior.expand(B, -1)  # (B, P)
        if not self.personalized:
            return prior
        x = self.user_input(e_user, batch)  # (B, in)
        g = torch.sigmoid(self.gate(x))  # (B, 1)
        return g * self.personal(x) + (1 - g) * prior  # (B, P)

    def forward(self, e_user: torch.Tensor | None, batch: dict[str, torch.Tensor],
                position: torch.Tensor) -> torch.Tensor:
        """log θ_u(p) at the displayed positions (B,) 1-based -> (B,)."""
        ell = self.logits(e_user, batch)  # (B, P)
        sel = ell.gather(1, (position.clamp(1, self.P) - 1).unsqueeze(-1)).squeeze(-1)  # (B,) the selector
        return torch.nn.functional.logsigmoid(sel)

    @torch.no_grad()
    def curves(self, e_user: torch.Tensor | None, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """θ_u(1..P) per row, for plots and the Spearman check against the truth: (B, P)."""
        return torch.sigmoid(self.logits(e_user, batch))
