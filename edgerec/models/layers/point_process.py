"""A continuous-time point process with attention: the time-aware preference of COUPA.
Spec: shared/specs/coupa.md §2.2 (every equation there is a reference design [R]; our choices are
in docs/design.md, "COUPA").

For user u, target item i (or mark c) and time t, given the user's past events (i_j, t_j), t_j < t
(strictly: an event at t or later takes no attention and no excitation, on the scoring paths as in the
likelihood, so a history event logged with the target's own timestamp cannot leak into its score):

    Δ_j        = (t - t_j) in hours                                 continuous, never bucketed
    cyc(t)     = [cos, sin](2π k t / P), P in {24 h, 168 h}, k = 1..K   daily and weekly cyclic terms
    a_j        = softmax_j( W_q[e_i ; cyc(t)] · W_k[e_j ; Φ(Δ_j) ; cyc(t_j)] / sqrt(d) )
    ψ_j        = v^T ReLU(W_e[e_j ; e_i ; e_j ⊙ e_i ; Φ(Δ_j)]) · exp(-κ Δ_j)   excitation, may be < 0
    μ          = MLP([e_u ; e_i ; cyc(t)])                         base rate with its own cycles
    λ_{u,i}(t) = softplus_β( μ + Σ_j a_j ψ_j )      excitation = "attention" (default)
               = softplus_β( μ + Σ_j ψ_j )          excitation = "sum": the classical Hawkes sum, so
                                                    one matching past event counts in full
               + Σ_{j: i_j = i} w_s^T Φ(Δ_j) + b_s  inside softplus, same_item = True: the diagonal
                                                    (self-exciting) term of a marked Hawkes process,
                                                    summed over earlier events of the SAME item
    h_time     = Σ_j a_j W_v[e_j ; Φ(Δ_j)]

Φ is the shared FourierTimeEncoding (learned frequencies initialised with 24 h and 168 h), κ a
learned decay rate (softplus of a scalar). The scorer reads s_time = log λ and h_time.

Why a same-item term: the cross-item excitation ψ_j sees the target only through embeddings, so
"the user bought exactly this before" must be learned from e_j ⊙ e_i, which is weak for rarely
seen items. A marked Hawkes process has a separate diagonal kernel for an event exciting its own
mark; here it is a learned function of the gap (w_s^T Φ(Δ)), so repurchase cycles can be read off.

`log_likelihood` is the optional auxiliary objective: for the last K events of each history,
log λ_{c_k}(t_k | events before t_k) minus Σ_c ∫ λ_c over the gap before t_k, the integral by
Monte Carlo with M uniform points per gap; marks c are an item side feature (e.g. the category)
or a single mark.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from edgerec.features.time import SECONDS_PER_HOUR
from edgerec.models.layers.mlp import MLP
from edgerec.models.layers.sequence import PackedHistory, one_history_product, per_row
from edgerec.models.layers.time import FourierTimeEncoding

CYCLE_PERIODS_HOURS = (24.0, 168.0)


def cyclic_features(ts: torch.Tensor, harmonics: int = 2) -> torch.Tensor:
    """Daily and weekly Fourier features of absolute time: (...) unix seconds -> (..., 4 * harmonics).

    The origin (1970-01-01 00:00 UTC, a Thursday) only shifts phases, which the next linear layer absorbs.
    Hours are taken modulo the period first, so float32 keeps sub-minute precision for any date."""
    out = []
    for period in CYCLE_PERIODS_HOURS:
        frac = torch.remainder(ts, int(period * SECONDS_PER_HOUR)).to(torch.float32) / (period * SECONDS_PER_HOUR)
        for k in range(1, harmonics + 1):
            out += [torch.cos(2 * math.pi * k * frac), torch.sin(2 * math.pi * k * frac)]
    return torch.stack(out, dim=-1)


class PointProcessIntensity(nn.Module):
    def __init__(self, item_dim: int, user_dim: int = 0, time_dim: int = 32, units: tuple[int, ...] = (64,),
                 harmonics: int = 2, beta: float = 1.0, use_decay: bool = True, n_marks: int = 0,
                 excitation: str = "attention", same_item: bool = False):
        super().__init__()
        if excitation not in ("attention", "sum"):
            raise ValueError(f"excitation must be 'attention' or 'sum', got {excitation!r}")
        self.excitation = excitation
        d, c = item_dim, 4 * harmonics
        self.harmonics, self.beta = harmonics, beta
        self.phi = FourierTimeEncoding(time_dim)
        self.query = nn.Linear(d + c, d)
        self.key = nn.Linear(d + time_dim + c, d)
        self.value = nn.Linear(d + time_dim, d)
        self.excite = MLP(3 * d + time_dim, units)  # ends in a 1-unit linear layer
        self.base = MLP(user_dim + d + c, units)
        self.raw_decay = nn.Parameter(torch.tensor(-3.0)) if use_decay else None  # κ = softplus(-3) ≈ 0.05 / h
        # target vectors of the marks in the likelihood; only built when the likelihood is trained
        self.marks = nn.Embedding(n_marks, d) if n_marks > 0 else None
        if self.marks is not None:
            nn.init.normal_(self.marks.weight, std=0.01)
        # the same-item (diagonal) kernel w_s^T Φ(Δ) + b_s; zero at start: the model begins as without it
        self.self_excite = nn.Linear(time_dim, 1) if same_item else None
        if self.self_excite is not None:
            nn.init.zeros_(self.self_excite.weight)
            nn.init.zeros_(self.self_excite.bias)

    def decay(self) -> torch.Tensor:
        return F.softplus(self.raw_decay) if self.raw_decay is not None else torch.zeros(())

    def history_side(self, ts: torch.Tensor, e_hist: torch.Tensor, hist_ts: torch.Tensor,
                     packed: PackedHistory) -> dict[str, torch.Tensor]:
        """Everything that does not depend on the candidate (serving stage 1): (N, ...) tensors.

        `seen` (N,) marks the events strictly before the target time, the only ones the intensity may
        read (as in dense_log_intensity); the others are kept in the packed layout but weigh nothing."""
        dt = packed.rows(ts) - hist_ts  # (N,) seconds
        seen = dt > 0  # (N,) causal
        dt_h = dt.clamp_min(0).to(torch.float32) / SECONDS_PER_HOUR  # (N,)
        phi = self.phi(dt_h)  # (N, t)
        k = per_row(self.key, torch.cat([e_hist, phi, cyclic_features(hist_ts, self.harmonics)], -1))  # (N, d)
        v = per_row(self.value, torch.cat([e_hist, phi], -1))  # (N, d)
        out = {"e_hist": e_hist, "dt_h": dt_h, "phi": phi, "k": k, "v": v, "seen": seen}
        if self.self_excite is not None:  # (N,) each event's self-excitation, none from the not yet seen
            out["self_k"] = per_row(self.self_excite, phi).squeeze(-1).masked_fill(~seen, 0.0)
        return out

    def _same(self, same: torch.Tensor | None) -> torch.Tensor | None:
        """Check the same-item mask is given exactly when the same-item term is on."""
        if self.self_excite is not None and same is None:
            raise ValueError("PointProcessIntensity(same_item=True) needs `same`: which history events are "
                             "the target item")
        return same if self.self_excite is not None else None

    def target_side(self, e_target: torch.Tensor, ts: torch.Tensor, hist: dict[str, torch.Tensor],
                    packed: PackedHistory, e_user: torch.Tensor | None = None,
                    same: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The candidate-dependent part (serving stage 2): e_target (B, d), ts (B,) -> outputs.

        same (N,) bool: history event j is the target item (needed when same_item is on)."""
        same = self._same(same)
        cyc_t = cyclic_features(ts, self.harmonics)  # (B, c)
        q = self.query(torch.cat([e_target, cyc_t], -1))  # (B, d)
        logits = (packed.rows(q) * hist["k"]).sum(-1) / math.sqrt(q.shape[-1])  # (N,)
        a = packed.softmax(logits, keep=hist["seen"])  # (N,) 0 for events not before ts
        e_t, e_h = packed.rows(e_target), hist["e_hist"]  # (N, d) each
        psi = per_row(self.excite, torch.cat([e_h, e_t, e_h * e_t, hist["phi"]], -1)).squeeze(-1)  # (N,)
        psi = psi * torch.exp(-self.decay() * hist["dt_h"])  # (N,) continuous-time decay
        parts = [e_target, cyc_t] if e_user is None else [e_user, e_target, cyc_t]
        mu = self.base(torch.cat(parts, -1)).squeeze(-1)  # (B,)
        w = a if self.excitation == "attention" else hist["seen"].to(psi.dtype)  # (N,) 0 where not seen
        excitation = packed.pool(w, psi.unsqueeze(-1)).squeeze(-1)  # (B,)
        if same is not None:  # + Σ_{j: i_j = i} w_s^T Φ(Δ_j) + b_s
            excitation = excitation + packed.pool(same.to(psi.dtype), hist["self_k"].unsqueeze(-1)).squeeze(-1)
        log_lam = torch.log(F.softplus(mu + excitation, beta=self.beta) + 1e-6)  # (B,)
        h_time = packed.pool(a, hist["v"])  # (B, d)
        return {"log_intensity": log_lam, "h_time": h_time, "attention": packed.unpack(a)}

    # ---- serving: many candidates against ONE history (coupa.md §3.2), dense and factorised
    def serving_history(self, hist: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add the candidate-free parts of the excitation MLP's first layer to `hist` (one request).

        Why: the first layer is linear in [e_h ; e_t ; e_h ⊙ e_t ; Φ], so for behaviour n and candidate c

            W·x + b = (W_h e_h[n] + W_p Φ_n + b) + (W_x diag(e_h[n]) + W_t) e_t[c]
                    =        pre[n]               +        M[n] e_t[c]

        with pre (N, h) and M (N, h, d) free of the candidate. So the C × N pair block is ONE matrix
        product e_t (C, d) @ M^T (d, N·h) plus a bias (`one_history_product`): no tiled C × N inputs, no (C, N, d) product and
        no broadcast adds over (C, N, h). M costs N·h·d floats per request whatever C is (50 × 64 × 64
        for COUPA_o2o, 0.8 MB), a third of the (C·N, d) product it replaces at C = 200."""
        first = self.excite.net[0]
        d, t = hist["e_hist"].shape[-1], hist["phi"].shape[-1]
        w_h, w_t, w_x, w_p = first.weight.split([d, d, d, t], dim=1)  # (h, d) x 3, (h, t)
        pre = torch.addmm(first.bias, hist["e_hist"], w_h.T) + hist["phi"] @ w_p.T  # (N, h)
        m = hist["e_hist"][:, None, :] * w_x[None] + w_t[None]  # (N, h, d): M[n] = W_x diag(e_h[n]) + W_t
        decay = torch.exp(-self.decay() * hist["dt_h"]) * hist["seen"]  # (N,) 0 for events not yet seen
        return {**hist, "excite_pre": pre, "excite_m": m, "excite_decay": decay}

    def target_side_one_history(self, e_target: torch.Tensor, ts: torch.Tensor, hist: dict[str, torch.Tensor],
                                e_user: torch.Tensor | None = None, same: torch.Tensor | None = None
                                ) -> dict[str, torch.Tensor]:
        """`target_side` for C candidates that share one request's history (from `serving_history`).

        e_target (C, d), ts (C,) all equal (the request time), hist tensors (N, ...) for the N real
        behaviours, e_user (C, du) or None, same (C, N) bool: behaviour n is candidate c's item.
        Same outputs as target_side over a (C, L) batch of identical histories, within float rounding;
        attention comes back as (C, N)."""
        same = self._same(same)
        C, d = e_target.shape
        cyc_t = cyclic_features(ts[:1], self.harmonics).expand(C, -1)  # (C, c): one request time
        parts = [e_target, cyc_t] if e_user is None else [e_user, e_target, cyc_t]
        mu = self.base(torch.cat(parts, -1)).squeeze(-1)  # (C,)
        N = hist["k"].shape[0]
        # no history: nothing to attend, no excitation (as the packed path gives). The general path below
        # gives the same on an empty history, and an ONNX trace must keep it (a Python branch is frozen)
        if not torch.jit.is_tracing() and N == 0:
            log_lam = torch.log(F.softplus(mu, beta=self.beta) + 1e-6)
            return {"log_intensity": log_lam, "h_time": e_target.new_zeros(C, d), "attention": e_target.new_zeros(C, 0),
                    "base_rate": mu, "excitation": torch.zeros_like(mu)}
        q = self.query(torch.cat([e_target, cyc_t], -1))  # (C, d)
        logits = (q @ hist["k"].T / math.sqrt(d)).masked_fill(~hist["seen"], float("-inf"))  # (C, N)
        a = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # (C, N); all zero if no event is seen yet
        x = one_history_product(e_target, hist["excite_m"], hist["excite_pre"])  # (C, N, h): the first layer's output
        weight = a * hist["excite_decay"] if self.excitation == "attention" else hist["excite_decay"].expand(C, N)
        # excitation = Σ_n weight_n ψ_n (C,). With hidden layers, ψ_n = v·x_n + b after them, so pool
        # first: v·(Σ_n weight_n x_n) + b Σ_n weight_n. Without (units = ()), x is ψ itself (C, N, 1).
        if len(self.excite.net) == 1:
            excitation = (weight * x.squeeze(-1)).sum(-1)  # (C,)
        else:
            *hidden, last = self.excite.net[1:]  # activation [, more layers], then Linear(h', 1)
            for layer in hidden:  # ReLU in place: x (C, N, h) is the biggest tensor here
                x = x.relu_() if isinstance(layer, nn.ReLU) else layer(x)
            pooled = (weight[:, None, :] @ x).squeeze(1)  # (C, 1, N) @ (C, N, h') -> (C, h')
            excitation = pooled @ last.weight[0] + last.bias * weight.sum(-1)  # (C,)
        if same is not None:
            excitation = excitation + same.to(weight.dtype) @ hist["self_k"]  # (C, N) @ (N,) -> (C,)
        log_lam = torch.log(F.softplus(mu + excitation, beta=self.beta) + 1e-6)  # (C,)
        # base_rate μ and excitation (C,) each: the two terms inside the softplus, for the console's "why now"
        return {"log_intensity": log_lam, "h_time": a @ hist["v"], "attention": a,  # h_time (C, d)
                "base_rate": mu, "excitation": excitation}

    def forward(self, e_target: torch.Tensor, ts: torch.Tensor, e_hist: torch.Tensor, hist_ts: torch.Tensor,
                packed: PackedHistory, e_user: torch.Tensor | None = None,
                same: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """e_target (B, d), ts (B,) seconds, e_hist (N, d) and hist_ts (N,) the packed real history,
        same (N,) bool when same_item is on.

        Returns log_intensity (B,), h_time (B, d) and attention (B, L)."""
        return self.target_side(e_target, ts, self.history_side(ts, e_hist, hist_ts, packed), packed, e_user, same)

    def dense_log_intensity(self, e_query: torch.Tensor, t_query: torch.Tensor, e_hist: torch.Tensor,
                            hist_ts: torch.Tensor, hist_mask: torch.Tensor,
                            e_user: torch.Tensor | None = None, same: torch.Tensor | None = None) -> torch.Tensor:
        """log λ at Q query (target, time) pairs per row, each seeing only events strictly before it.

        e_query (B, Q, d), t_query (B, Q) seconds, e_hist (B, L, d), hist_ts (B, L), hist_mask (B, L)
        -> (B, Q); same (B, Q, L) bool: history event l has query q's mark (when same_item is on).
        Dense: used by the likelihood on a few rows, not on the scoring path."""
        same = self._same(same)
        B, Q, d = e_query.shape
        dt = (t_query[:, :, None] - hist_ts[:, None, :]).to(torch.float32) / SECONDS_PER_HOUR  # (B, Q, L)
        seen = hist_mask[:, None, :] & (dt > 0)  # (B, Q, L) causal: strictly earlier events only
        dt = dt.clamp_min(0)
        phi = self.phi(dt)  # (B, Q, L, t)
        L = hist_ts.shape[1]
        cyc_q = cyclic_features(t_query, self.harmonics)  # (B, Q, c)
        cyc_h = cyclic_features(hist_ts, self.harmonics)[:, None].expand(B, Q, L, -1)  # (B, Q, L, c)
        eh = e_hist[:, None].expand(B, Q, L, d)  # (B, Q, L, d)
        q = self.query(torch.cat([e_query, cyc_q], -1))  # (B, Q, d)
        k = self.key(torch.cat([eh, phi, cyc_h], -1))  # (B, Q, L, d)
        logits = (q[:, :, None] * k).sum(-1) / math.sqrt(d)  # (B, Q, L)
        a = torch.softmax(logits.masked_fill(~seen, float("-inf")), -1).nan_to_num(0.0)  # (B, Q, L)
        et = e_query[:, :, None].expand(B, Q, L, d)
        psi = self.excite(torch.cat([eh, et, eh * et, phi], -1)).squeeze(-1) * torch.exp(-self.decay() * dt)
        parts = [e_query, cyc_q] if e_user is None else [e_user[:, None].expand(B, Q, -1), e_query, cyc_q]
        mu = self.base(torch.cat(parts, -1)).squeeze(-1)  # (B, Q)
        w = a if self.excitation == "attention" else seen.to(psi.dtype)  # (B, Q, L)
        excitation = (w * psi).sum(-1)  # (B, Q)
        if same is not None:
            self_k = self.self_excite(phi).squeeze(-1)  # (B, Q, L)
            excitation = excitation + ((same & seen).to(psi.dtype) * self_k).sum(-1)
        return torch.log(F.softplus(mu + excitation, beta=self.beta) + 1e-6)  # (B, Q)

    def log_likelihood(self, hist_marks: torch.Tensor, hist_ts: torch.Tensor, hist_mask: torch.Tensor,
                       events: int = 4, mc_points: int = 2, e_user: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Monte-Carlo point-process log-likelihood of each row's last `events` events, per event.

        hist_marks (B, L) mark codes, hist_ts (B, L), hist_mask (B, L) -> (B,) mean log-likelihood per
        scored event (0 for rows with fewer than two events). The history is most-recent-last."""
        if self.marks is None:
            raise ValueError("build PointProcessIntensity with n_marks >= 1 to use its log-likelihood")
        B, L = hist_ts.shape
        K = min(events, L - 1)
        C = self.marks.num_embeddings
        ev_ts = hist_ts[:, L - K:]  # (B, K) event times
        prev_ts = hist_ts[:, L - K - 1:L - 1]  # (B, K) the event before each
        ok = hist_mask[:, L - K:] & hist_mask[:, L - K - 1:L - 1]  # (B, K) both real
        marks_all = self.marks.weight  # (C, d)
        e_hist = marks_all[hist_marks]  # (B, L, d): history events by their mark
        e_ev = marks_all[hist_marks[:, L - K:]]  # (B, K, d)
        u = torch.rand(B, K, mc_points, generator=generator, device=hist_ts.device)  # (B, K, M)
        gap = (ev_ts - prev_ts).clamp_min(0)  # (B, K) seconds
        t_mc = prev_ts[:, :, None] + (u * gap[:, :, None]).long()  # (B, K, M)
        q_e = e_ev  # (B, K, d): λ of the observed mark at the event time
        q_mc = marks_all[None, None, None].expand(B, K, mc_points, C, -1)  # (B, K, M, C, d): every mark
        t_q = torch.cat([ev_ts, t_mc[..., None].expand(B, K, mc_points, C).reshape(B, -1)], 1)  # (B, K + K*M*C)
        e_q = torch.cat([q_e, q_mc.reshape(B, -1, q_e.shape[-1])], 1)
        same = None
        if self.self_excite is not None:  # the same-item term in mark space: event l has query q's mark
            q_marks = torch.cat([hist_marks[:, L - K:], torch.arange(C, device=hist_marks.device)
                                 .repeat(K * mc_points)[None].expand(B, -1)], 1)  # (B, Q)
            same = q_marks[:, :, None] == hist_marks[:, None, :]  # (B, Q, L)
        log_lam = self.dense_log_intensity(e_q, t_q, e_hist, hist_ts, hist_mask, e_user, same)  # (B, Q)
        at_events = log_lam[:, :K]  # (B, K)
        lam_mc = log_lam[:, K:].exp().view(B, K, mc_points, C).sum(-1).mean(-1)  # (B, K) Σ_c λ_c, mean over M
        integral = lam_mc * gap.to(torch.float32) / SECONDS_PER_HOUR  # (B, K), intensity per hour
        ll = (at_events - integral) * ok  # (B, K)
        return ll.sum(-1) / ok.sum(-1).clamp_min(1)
