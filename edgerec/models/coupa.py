"""COUPA: an O2O recommender with time-aware and position-aware preference (Xie et al., SIGIR 2023).
Spec: shared/specs/coupa.md. The paper's equations were not available: this is the spec's reference
design [R]; every choice is in docs/design.md ("COUPA").

    time-aware preference   point process with attention (layers/point_process.py):
                            s_time = log λ_{u,i}(t),  h_time = Σ_j a_j W_v[e_j ; Φ(Δ_j)]
    relevance               z = MLP([h_time ; s_time ; e_i ; e_i ⊙ h_time ; e_u]),  r = σ(z)
    position-aware          θ_u(p) examination (layers/position.py), position_mode:
                              personalized  COUPA's position selector + personalization module
                              pal           one global examination curve
                              feature       position embedding fed to the tower; default at serving
                              none          no position
    training                p(click) = θ_u(p) · r       (personalized / pal)
    serving                 r only: in eval mode the model never reads batch["position"]

Switches: use_point_process = False replaces the point process by DIN target attention without
time (COUPA w/o TPP; attention_activation is that DIN unit's activation); pp_decay = False drops
the excitation's exp(-κΔ) factor, so its dependence on the gap is the learned Fourier map Φ(Δ)
alone; pp_excitation = "sum" adds the excitations of all past events (Hawkes) instead of weighting
them by the attention, so one matching past purchase is not diluted by the others (both tested on
Instacart's repeat purchases: docs/results.md); pp_same_item = True adds the marked-Hawkes diagonal
term, a learned kernel of the gap summed over earlier events of the same item (layers/point_process.py:
repeat purchases); position_mode picks the position part;
pp_loss_weight > 0 adds the point-process log-likelihood of the history as an auxiliary loss.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from edgerec.features.spec import FeatureSpec
from edgerec.models.base import CTRModel, register_model
from edgerec.models.layers import MLP, FeatureEmbedding, TargetAttention
from edgerec.models.layers.point_process import PointProcessIntensity
from edgerec.models.layers.position import POSITION_MODES, ExaminationModel
from edgerec.models.layers.sequence import PackedHistory


@register_model
class COUPA(CTRModel):
    def __init__(self, spec: FeatureSpec, embedding_dim: int = 32, use_point_process: bool = True,
                 time_dim: int = 32, pp_units: tuple[int, ...] = (64,), harmonics: int = 2, pp_decay: bool = True,
                 pp_excitation: str = "attention", pp_same_item: bool = False,
                 pp_loss_weight: float = 0.0, pp_rows: int = 128, pp_events: int = 4, pp_mc_points: int = 2,
                 mark_feature: str | None = None, position_mode: str = "personalized",
                 max_position: int | None = None, exam_units: tuple[int, ...] = (64,),
                 use_click_history: bool = True, serving_position: int = 1,
                 mlp_units: tuple[int, ...] = (200, 80), activation: str = "relu", dropout: float = 0.0,
                 use_user_id: bool = False, attention_activation: str = "dice"):
        super().__init__(spec)
        if position_mode not in POSITION_MODES:
            raise ValueError(f"position_mode must be one of {POSITION_MODES}, got {position_mode!r}")
        if position_mode != "none" and spec.n_positions <= 1:
            raise ValueError(f"position_mode {position_mode!r} needs display positions: use the impression "
                             "protocol on a dataset with positions, or position_mode none")
        if mark_feature is not None and mark_feature not in spec.item_features:
            raise ValueError(f"mark_feature {mark_feature!r} is not an item feature of the samples "
                             f"({sorted(spec.item_features)}); add it to data.item_features")
        if mark_feature is not None and spec.item_features[mark_feature] < 2:
            raise ValueError(f"mark_feature {mark_feature!r} has no categories besides 0 = unknown")
        self.emb = FeatureEmbedding(spec, embedding_dim, use_user_id=use_user_id)
        d, du = self.emb.item_dim, self.emb.user_dim
        self.position_mode = position_mode
        self.n_positions = max_position or max(spec.n_positions - 1, 1)
        self.serving_position = serving_position
        self.pp_loss_weight, self.pp_rows = pp_loss_weight, pp_rows
        self.pp_events, self.pp_mc_points, self.mark_feature = pp_events, pp_mc_points, mark_feature
        self.pp_same_item = use_point_process and pp_same_item
        if use_point_process:
            # the likelihood's marks are the side feature's real categories, code - 1 (see forward): its
            # compensator Σ_c ∫λ_c must sum over exactly the marks that can occur, not over code 0 = unknown
            n_marks = 0 if pp_loss_weight <= 0 else (spec.item_features[mark_feature] - 1 if mark_feature else 1)
            self.time = PointProcessIntensity(d, du, time_dim, pp_units, harmonics, use_decay=pp_decay, n_marks=n_marks,
                                              excitation=pp_excitation, same_item=pp_same_item)
            self.interest = None
        else:
            self.time, self.interest = None, TargetAttention(d, activation=attention_activation)
        in_dim = 3 * d + du + int(use_point_process)
        if position_mode == "feature":
            self.position_emb = nn.Embedding(self.n_positions + 1, embedding_dim)
            in_dim += embedding_dim
        self.mlp = MLP(in_dim, mlp_units, activation=activation, dropout=dropout)
        self.examination = (ExaminationModel(self.n_positions, du, personalized=position_mode == "personalized",
                                             units=exam_units, use_click_history=use_click_history)
                            if position_mode in ("personalized", "pal") else None)

    def relevance(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Position-free relevance logit z (B,) and what explains it."""
        packed = PackedHistory(batch["hist_mask"])
        e_i = self.emb.target(batch)  # (B, d)
        e_k = self.emb.history(batch, packed)  # (N, d)
        e_u = self.emb.user(batch)  # (B, du) or None
        hist = self.time.history_side(batch["ts"], e_k, packed.pack(batch["hist_ts"]), packed) if self.time else e_k
        same = self.same_item(packed.pack(batch["hist_item"]), packed.rows(batch["item"])) \
            if self.pp_same_item else None  # (N,)
        return self._score(batch, e_i, hist, packed, e_u, same=same)

    def same_item(self, hist_item: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """Which history events are the target item, for the same-item kernel: broadcasting ==, except
        that the out-of-vocabulary index never matches. Two ids the run never saw both map to
        spec.oov_item; they are not known to be the same item, so no repurchase may be read off them."""
        return (hist_item == item) & (item != self.spec.oov_item)

    def _score(self, batch, e_i, hist, packed: PackedHistory | None, e_u, pp: dict | None = None,
               same: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The relevance tower; `pp` is the point process's output when the caller computed it already."""
        extra: dict[str, torch.Tensor] = {}
        if self.time is not None:
            if pp is None:
                pp = self.time.target_side(e_i, batch["ts"], hist, packed, e_u, same)
            pooled = pp["h_time"]  # (B, d)
            parts = [pooled, pp["log_intensity"].unsqueeze(-1)]
            extra.update(log_intensity=pp["log_intensity"], attention=pp["attention"])
        else:
            pooled, w = self.interest.forward_packed(e_i, hist, packed)  # (B, d), (B, L)
            parts = [pooled]
            extra["attention"] = w
        parts += [e_i, e_i * pooled]
        if e_u is not None:
            parts.append(e_u)
        if self.position_mode == "feature":
            # training: the displayed position; serving (eval): a fixed default, never the true one
            pos = batch["position"] if self.training else torch.full_like(batch["ts"], self.serving_position)
            parts.append(self.position_emb(pos.clamp(1, self.n_positions)))  # (B, e)
        z = self.mlp(torch.cat(parts, -1)).squeeze(-1)  # (B,)
        return {"z": z, "e_user": e_u, **extra}

    # ---- two-stage serving (coupa.md §3.2 reading A): user side once, then any number of candidates
    @torch.no_grad()
    def serve_user(self, request: dict[str, torch.Tensor]) -> dict:
        """Stage 1 for ONE request (a batch of 1: user, ts, hist_*): everything candidate-free."""
        if self.training:
            raise RuntimeError("serve_user needs the model in eval mode (model.eval()): serving never reads "
                               "positions or dropout")
        packed = PackedHistory(request["hist_mask"])
        e_k = self.emb.history(request, packed)  # (N, d)
        if self.time is not None:
            hist = self.time.serving_history(self.time.history_side(request["ts"], e_k, packed.pack(request["hist_ts"]),
                                                                    packed))
        else:
            hist = e_k
        return {"request": request, "hist": hist, "e_user": self.emb.user(request), "mask": request["hist_mask"],
                "hist_item": packed.pack(request["hist_item"])}  # (N,) for the same-item term

    @torch.no_grad()
    def serve_candidates(self, cache: dict, items: torch.Tensor, item_features: dict[str, torch.Tensor] | None = None
                         ) -> torch.Tensor:
        """Stage 2: served relevance (C,) of candidate item indices `items` (C,) for the cached request."""
        return torch.sigmoid(self.candidate_logits(cache, items, item_features))

    @torch.no_grad()
    def candidate_logits(self, cache: dict, items: torch.Tensor, item_features: dict[str, torch.Tensor] | None = None
                         ) -> torch.Tensor:
        """The relevance logits z (C,) behind `serve_candidates` (what an ONNX export outputs)."""
        return self.candidate_outputs(cache, items, item_features)["z"]

    @torch.no_grad()
    def candidate_outputs(self, cache: dict, items: torch.Tensor, item_features: dict[str, torch.Tensor] | None = None
                          ) -> dict[str, torch.Tensor]:
        """`candidate_logits` with what explains them: z (C,), and with the point process on its
        log_intensity, base_rate and excitation (C,) and attention (C, N) over the N real behaviours."""
        C = items.shape[0]
        batch = {"item": items, "ts": cache["request"]["ts"].expand(C)}
        for name, codes in (item_features or {}).items():
            batch[f"item_{name}"] = codes
        e_i = self.emb.target(batch)  # (C, d)
        e_u = None if cache["e_user"] is None else cache["e_user"].expand(C, -1)
        if self.time is not None:  # dense over (C, N): one history, no tiling
            same = self.same_item(cache["hist_item"][None], items[:, None]) if self.pp_same_item else None  # (C, N)
            pp = self.time.target_side_one_history(e_i, batch["ts"], cache["hist"], e_u, same)
            out = self._score(batch, e_i, None, None, e_u, pp=pp)
            return {**out, "base_rate": pp["base_rate"], "excitation": pp["excitation"]}
        packed = PackedHistory(cache["mask"].expand(C, -1))  # every candidate row sees the same history
        hist = cache["hist"].repeat(C, 1)  # (N, d) -> (C*N, d) in packed row order
        return self._score(batch, e_i, hist, packed, e_u)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        rel = self.relevance(batch)
        z, e_u = rel.pop("z"), rel.pop("e_user")
        out = self.output(z, **rel)  # y_pred = relevance: what serving ranks by
        if self.training and self.examination is not None:
            log_theta = self.examination(e_u, batch, batch["position"])  # (B,)
            out["log_click"] = log_theta.float() + F.logsigmoid(z.float())  # (B,) log θ_u(p) r, float32 under autocast
            out["log_examination"] = log_theta
        if self.training and self.time is not None and self.pp_loss_weight > 0:
            rows = slice(0, min(self.pp_rows, z.shape[0]))
            mask = batch["hist_mask"][rows]  # (R, L)
            if self.mark_feature:  # marks are the real categories; an event of unknown category (code 0) is left out
                codes = batch[f"hist_{self.mark_feature}"][rows]  # (R, L)
                marks, mask = (codes - 1).clamp_min(0), mask & (codes > 0)
            else:
                marks = torch.zeros_like(batch["hist_item"][rows])
            ll = self.time.log_likelihood(marks, batch["hist_ts"][rows], mask,
                                          self.pp_events, self.pp_mc_points,
                                          None if e_u is None else e_u[rows])
            out["pp_log_likelihood"] = ll.mean().detach()
            out["aux_loss"] = -self.pp_loss_weight * ll.mean()
        return out

    def loss(self, batch: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> torch.Tensor:
        """BCE on p(click) = θ·r when the examination model is on, else on the relevance logit."""
        if "log_click" not in out:
            return super().loss(batch, out)
        log_p = out["log_click"].clamp(max=-1e-6)  # (B,) log p, p < 1
        log_not_p = torch.log(-torch.expm1(log_p))  # (B,) log(1 - p), stable near p -> 1
        y = batch["label"]
        loss = -(y * log_p + (1 - y) * log_not_p).mean()
        return loss + out["aux_loss"] if "aux_loss" in out else loss

    @torch.no_grad()
    def examination_curves(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """θ_u(1..P) for the users of `batch`: (B, P)."""
        if self.examination is None:
            raise ValueError(f"position_mode {self.position_mode!r} has no examination curve")
        return self.examination.curves(self.emb.user(batch), batch)
