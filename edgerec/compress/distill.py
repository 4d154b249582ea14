"""Student initialization and three distillation methods at the same size and budget (issue 6).

All three train ONE multi-task student (shared encoder, a head per task) for the same number of
epochs over the same batches (tasks interleaved, seeded). The teacher always reads the STUDENT's
tokenization (the pruned vocabulary's pieces, mapped back to teacher ids): that is what makes
token-level matching possible and is the "student's view" the teacher is put into.

  kd        CE(y) and temperature-scaled KL to the frozen teacher's logits (Hinton et al.).
  tinybert  kd + the last layer's hidden states (through a learned 128 -> 384 map) and the
            head-averaged attention maps of 4 mapped layers (TinyBERT's intermediate-layer loss,
            restricted to what fits a CPU budget; teacher frozen).
  cross     the teacher's fine-tuned task head is INTEGRATED into the student (the student's head
            is H -> 384 -> C with the 384 -> C part copied from the teacher), and teacher and
            student train JOINTLY: the student on CE + KD + matching the teacher's pooled vector in
            the teacher's space; the teacher, at a 25x smaller learning rate (2e-5) on its top 2 layers
            and head, on CE + "in the student's shoes" (its head must classify the student's
            projected representation) + a small KL toward the student's predictions, so it adapts
            to what the student can represent. Its bottom 4 layers stay frozen (their outputs are
            cached once per sentence: the CPU cost of a trainable teacher stays bounded).

Teacher TARGETS (the logits, hidden states and attentions the student is matched against) come from
the teacher in eval mode, dropout off, in all three methods (`teacher_targets`): cached for kd and
tinybert, live for cross (its teacher changes as it trains); only cross's own teacher update runs
with dropout, so the methods differ in the method, not in how noisy their targets are.

Student init [C]: a PCA projection of the teacher. P = the top-H principal directions of the
teacher's word-embedding table; embeddings E·P, each student layer j takes teacher
layer map[j]'s matrices as Pᵀ·W·P (the FFN keeps its 4H rows of largest norm), heads W·P.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from edgerec.compress.data import Encoded, accuracy, batches, pad, warmup_linear
from edgerec.models.eibert import EIBert, EIBertConfig

METHODS = ("kd", "tinybert", "cross")


@dataclass
class DistillConfig:
    method: str = "cross"
    epochs: int = 6
    batch_size: int = 32
    lr: float = 5e-4  # chosen on validation from {2e-4, 5e-4, 1e-3, 2e-3} (docs/results.md, "EI-BERT learning rate")
    teacher_lr: float = 2e-5  # cross: the teacher keeps training, 25x slower than the student
    temperature: float = 2.0
    kd_weight: float = 0.5  # share of the KD term against CE
    hidden_weight: float = 1.0  # tinybert / cross representation matching
    attention_weight: float = 1.0  # tinybert
    shoes_weight: float = 0.5  # cross: teacher head on the student's representation
    mutual_weight: float = 0.1  # cross: teacher KL toward the student
    teacher_trainable_layers: int = 2  # cross
    seed: int = 0
    # teacher-labelled transfer set (edgerec/compress/augment.py): perturbed copies per training
    # sentence, matched on the teacher's soft labels only; built by the pipeline, 0 = off
    augment: int = 0
    augment_mask_p: float = 0.1
    augment_ngram_p: float = 0.25
    augment_replace_p: float = 0.0  # word replacement by embedding neighbours (0 = mask and n-gram only)
    augment_tasks: tuple[str, ...] | None = None  # tasks that get copies; None = all
    # True: epoch e trains on copy e mod `augment` only (a fresh copy each epoch, at the cost of one
    # extra pass); False: on all copies every epoch
    augment_rotate: bool = False

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"distillation method {self.method!r}: choose one of {METHODS}")
        if self.augment_tasks is not None:
            self.augment_tasks = tuple(self.augment_tasks)  # YAML / JSON give lists


LAYER_MAP = {4: [1, 2, 4, 5], 3: [1, 3, 5], 2: [2, 5], 6: [0, 1, 2, 3, 4, 5]}


def init_student(teacher: EIBert, kept_old_ids: np.ndarray, cfg: EIBertConfig) -> EIBert:
    """A student whose weights are the teacher's projected to cfg.hidden dimensions."""
    student = EIBert(cfg)
    te, se = teacher.encoder, student.encoder
    H = cfg.hidden
    E_t = te.word.weight.detach()[torch.from_numpy(kept_old_ids)]  # (V', 384)
    X = te.word.weight.detach()  # principal directions of the WHOLE table: defined even for tiny vocabularies
    _, vecs = torch.linalg.eigh(torch.cov(X.T))  # ascending eigenvalues
    P = vecs[:, -H:].flip(-1).contiguous()  # (384, H): the top-H principal directions
    with torch.no_grad():
        if cfg.emb_dim and cfg.emb_dim != H:  # factorized: the best rank-E split of E_t P (Eckart-Young)
            U, S, Vh = torch.linalg.svd(E_t @ P, full_matrices=False)  # (V', H), (H,), (H, H)
            se.word.weight.copy_(U[:, : cfg.emb_dim] * S[: cfg.emb_dim])  # (V', E)
            se.emb_proj.weight.copy_(Vh[: cfg.emb_dim].T)  # (H, E)
        else:
            se.word.weight.copy_(E_t @ P)
        se.position.weight.copy_(te.position.weight[: cfg.max_positions] @ P)
        se.type0.copy_(te.type0 @ P)
        se.emb_ln.weight.copy_((P ** 2).T @ te.emb_ln.weight)
        se.emb_ln.bias.copy_(P.T @ te.emb_ln.bias)
        for j, i in enumerate(LAYER_MAP.get(cfg.layers, list(range(cfg.layers)))):
            tl, sl = te.layers[i], se.layers[j]
            for name in ("query", "key", "value", "attn_out"):
                getattr(sl, name).weight.copy_(P.T @ getattr(tl, name).weight @ P)
                getattr(sl, name).bias.copy_(P.T @ getattr(tl, name).bias)
            rows = torch.argsort(tl.ffn_in.weight.norm(dim=1), descending=True)[: cfg.ffn]
            sl.ffn_in.weight.copy_(tl.ffn_in.weight[rows] @ P)
            sl.ffn_in.bias.copy_(tl.ffn_in.bias[rows])
            sl.ffn_out.weight.copy_(P.T @ tl.ffn_out.weight[:, rows])
            sl.ffn_out.bias.copy_(P.T @ tl.ffn_out.bias)
            for ln in ("ln1", "ln2"):
                getattr(sl, ln).weight.copy_((P ** 2).T @ getattr(tl, ln).weight)
                getattr(sl, ln).bias.copy_(P.T @ getattr(tl, ln).bias)
    student.projection = P  # kept for heads built later
    return student


def init_heads(student: EIBert, teachers: dict[str, EIBert]) -> None:
    """Heads that read the student's pooled vector through student.projection P (384, H), the map
    back into the teacher's space: the SVD projection (init_student), or W learnt by general
    distillation (with its bias)."""
    P = student.projection  # (384, H)
    b = getattr(student, "projection_bias", None)
    b = torch.zeros(P.shape[0]) if b is None else b  # (384,)
    with torch.no_grad():
        for task, t in teachers.items():
            th = t.heads[task]
            if student.up is not None:  # cross: integrate the teacher's head
                student.heads[task].weight.copy_(th.weight)
                student.heads[task].bias.copy_(th.bias)
                student.up[task].weight.copy_(P)  # (384, H): back into the teacher's space
                student.up[task].bias.copy_(b)
            else:
                student.heads[task].weight.copy_(th.weight @ P)
                student.heads[task].bias.copy_(th.weight @ b + th.bias)


def _kd(s_logits, t_logits, T):
    return F.kl_div(F.log_softmax(s_logits / T, -1), F.softmax(t_logits / T, -1), reduction="batchmean") * T * T


@torch.no_grad()
def teacher_cache(teacher: EIBert, task: str, enc_t: Encoded, cfg: DistillConfig, n_frozen: int) -> list[dict]:
    """Per sentence: what the frozen part of the teacher produces on the student's tokenization."""
    teacher.eval()
    out: list[dict] = [None] * len(enc_t)  # type: ignore[list-item]
    for idx in batches(enc_t, 128):
        ids, mask = pad([enc_t.ids[i] for i in idx])
        r = teacher(ids, mask, task)
        for b, i in enumerate(idx):
            n = len(enc_t.ids[i])
            item = {"logits": r["logits"][b].clone()}
            if cfg.method == "tinybert":
                item["hidden"] = r["hidden"][b, :n].half().clone()
                item["att"] = [a[b, :, :n, :n].mean(0).half().clone() for a in r["attentions"]]
            if cfg.method == "cross":
                item["mid"] = r["states"][n_frozen][b, :n].half().clone()  # input of the first trainable layer
            out[i] = item
    return out


def _pad_cached(items: list[torch.Tensor], T: int) -> torch.Tensor:
    out = torch.zeros(len(items), T, items[0].shape[-1])
    for b, x in enumerate(items):
        out[b, : x.shape[0]] = x.float()
    return out


def _pad_att(items: list[torch.Tensor], T: int) -> torch.Tensor:
    out = torch.zeros(len(items), T, T)
    for b, x in enumerate(items):
        n = x.shape[0]
        out[b, :n, :n] = x.float()
    return out


def _teacher_top(teacher: EIBert, task: str, cached: list[dict], mask: torch.Tensor,
                 n_frozen: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cross: the teacher's trainable top layers and head from the cached frozen part, in whatever
    mode (train / eval) and grad state the caller has set. -> (pooled (B, 384), logits (B, C))."""
    x = _pad_cached([c["mid"] for c in cached], mask.shape[1])  # (B, T, 384)
    bias = (1.0 - mask[:, None, None, :].float()) * -1e4  # (B, 1, 1, T)
    for layer in teacher.encoder.layers[n_frozen:]:
        x, _ = layer(x, bias)  # (B, T, 384)
    m = mask.unsqueeze(-1).float()  # (B, T, 1)
    pooled = (x * m).sum(1) / m.sum(1)  # (B, 384)
    return pooled, teacher.heads[task](teacher.drop(pooled))  # (B, 384), (B, C)


@torch.no_grad()
def teacher_targets(teacher: EIBert, task: str, cached: list[dict], mask: torch.Tensor, method: str,
                    n_frozen: int, att_layers: Sequence[int] = ()) -> dict:
    """What the student is matched against, for every method from the teacher in EVAL mode (no
    dropout), so kd, tinybert and cross compare methods, not target noise. kd / tinybert: the
    frozen teacher's cached outputs (teacher_cache runs it in eval mode); cross: a live forward of
    the co-trained top layers (its teacher changes every step), in eval mode, the mode restored after.
    -> logits (B, C); tinybert: hidden (B, T, 384), att [(B, T, T) for teacher layer i in att_layers];
    cross: pooled (B, 384)."""
    if method == "cross":
        was_training = teacher.training
        teacher.eval()
        pooled, logits = _teacher_top(teacher, task, cached, mask, n_frozen)  # (B, 384), (B, C)
        teacher.train(was_training)
        return {"logits": logits, "pooled": pooled}
    out = {"logits": torch.stack([c["logits"] for c in cached])}  # (B, C)
    if method == "tinybert":
        T = mask.shape[1]
        out["hidden"] = _pad_cached([c["hidden"] for c in cached], T)  # (B, T, 384)
        out["att"] = [_pad_att([c["att"][i] for c in cached], T) for i in att_layers]  # (B, T, T) each
    return out


def epoch_rows(enc: Encoded, epoch: int) -> np.ndarray | None:
    """Rotating copies: the rows of an augmented set that epoch `epoch` trains on, the copy
    epoch mod (number of copies) plus every row of group -1 (transfer sentences); None = all rows
    (no copy groups)."""
    g = enc.group
    if g is None or not (g >= 0).any():
        return None
    return np.flatnonzero((g == epoch % (int(g.max()) + 1)) | (g < 0))


def distill(student: EIBert, teachers: dict[str, EIBert], data_s: dict[str, dict[str, Encoded]],
            data_t: dict[str, dict[str, Encoded]], cfg: DistillConfig, log=print, progress: bool = True) -> dict:
    """Train `student` in place. data_s[task][split]: student ids; data_t: the same sentences as
    teacher ids (the student's pieces mapped to the teacher vocabulary). An optional split
    "augmented" (labels -1) is trained on the teacher's soft labels only: the KD term at full weight,
    no cross-entropy, and (cross) no teacher update. With cfg.augment_rotate, epoch e uses only its
    rows whose `group` is e mod the number of copies (or -1, transfer sentences: every epoch)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng([cfg.seed, 17])
    tasks = list(teachers)
    n_layers_t = len(next(iter(teachers.values())).encoder.layers)
    n_frozen = n_layers_t - cfg.teacher_trainable_layers
    t0 = time.time()
    splits = {t: [s for s in ("train", "augmented") if len(data_s[t].get(s, ()))] for t in tasks}
    caches = {(t, s): teacher_cache(teachers[t], t, data_t[t][s], cfg, n_frozen) for t in tasks for s in splits[t]}
    cache_s = time.time() - t0
    params = list(student.parameters())
    extra = nn.ModuleDict()
    if cfg.method == "tinybert":
        extra["hid"] = nn.Linear(student.config.hidden, teachers[tasks[0]].config.hidden)
        if getattr(student, "projection_bias", None) is not None:  # general distillation learnt this map
            with torch.no_grad():
                extra["hid"].weight.copy_(student.projection)
                extra["hid"].bias.copy_(student.projection_bias)
        params += list(extra.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    t_opts = {}
    if cfg.method == "cross":
        for t in tasks:
            tp = [p for layer in teachers[t].encoder.layers[n_frozen:] for p in layer.parameters()]
            tp += list(teachers[t].heads.parameters())
            t_opts[t] = torch.optim.AdamW(tp, lr=cfg.teacher_lr, weight_decay=0.01)
    def rows(t: str, s: str, ep: int) -> np.ndarray | None:
        return epoch_rows(data_s[t][s], ep) if s == "augmented" and cfg.augment_rotate else None

    def n_rows(t: str, s: str, ep: int) -> int:
        r = rows(t, s, ep)
        return len(data_s[t][s]) if r is None else len(r)

    steps_per_epoch = sum((n_rows(t, s, 0) + cfg.batch_size - 1) // cfg.batch_size for t in tasks for s in splits[t])
    total = cfg.epochs * steps_per_epoch
    sched = warmup_linear(opt, total, 0.05)
    smap = LAYER_MAP.get(student.config.layers, list(range(student.config.layers)))
    history = []
    best, best_state = -1.0, None
    for ep in range(cfg.epochs):
        student.train()
        plan = [(t, s, idx) for t in tasks for s in splits[t]
                for idx in batches(data_s[t][s], cfg.batch_size, rng, subset=rows(t, s, ep))]
        rng.shuffle(plan)
        it = plan
        if progress:
            from tqdm import tqdm

            it = tqdm(plan, desc=f"{cfg.method} epoch {ep + 1}/{cfg.epochs}", leave=False)
        for task, split, idx in it:
            enc = data_s[task][split]
            soft = split == "augmented"  # teacher-labelled only: no gold label, no teacher update
            kd_weight = 1.0 if soft else cfg.kd_weight
            ids, mask = pad([enc.ids[i] for i in idx])
            y = torch.from_numpy(enc.y[idx])
            cached = [caches[task, split][i] for i in idx]
            out = student(ids, mask, task)
            teacher = teachers[task]
            tgt = teacher_targets(teacher, task, cached, mask, cfg.method, n_frozen, smap)  # eval mode, no grad
            loss = out["logits"].new_zeros(()) if soft else (1 - cfg.kd_weight) * F.cross_entropy(out["logits"], y)
            loss = loss + kd_weight * _kd(out["logits"], tgt["logits"], cfg.temperature)
            if cfg.method == "tinybert":
                m = mask.unsqueeze(-1).float()  # (B, T, 1)
                th = tgt["hidden"]  # (B, T, 384)
                loss = loss + cfg.hidden_weight * (((extra["hid"](out["hidden"]) - th) ** 2) * m).sum() / (m.sum() * th.shape[-1])
                mm = (mask.unsqueeze(1) * mask.unsqueeze(2)).float()  # (B, T, T)
                for j, ta in enumerate(tgt["att"]):  # ta (B, T, T): teacher layer smap[j]
                    sa = out["attentions"][j].mean(1)  # (B, T, T)
                    loss = loss + cfg.attention_weight * (((sa - ta) ** 2) * mm).sum() / mm.sum()
            if cfg.method == "cross":
                loss = loss + cfg.hidden_weight * F.mse_loss(out["up"], tgt["pooled"])  # (B, 384) vs (B, 384)
            if cfg.method == "cross" and not soft:  # the teacher's own update: train mode (dropout), with grad
                teacher.train()
                _, t_logits = _teacher_top(teacher, task, cached, mask, n_frozen)  # (B, C)
                shoes = F.cross_entropy(teacher.heads[task](out["up"].detach()), y)
                mutual = F.kl_div(F.log_softmax(t_logits, -1), F.softmax(out["logits"].detach(), -1),
                                  reduction="batchmean")
                t_loss = F.cross_entropy(t_logits, y) + cfg.shoes_weight * shoes + cfg.mutual_weight * mutual
                t_opts[task].zero_grad()
                t_loss.backward()
                t_opts[task].step()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
        accs = {t: accuracy(student, data_s[t]["valid"], t) for t in tasks}
        mean = float(np.mean(list(accs.values())))
        history.append(accs)
        log(f"  {cfg.method} epoch {ep + 1}: valid " + " ".join(f"{t} {a:.4f}" for t, a in accs.items()))
        if mean > best:
            best, best_state = mean, {k: v.clone() for k, v in student.state_dict().items()}
    student.load_state_dict(best_state)
    return {"config": asdict(cfg), "valid_by_epoch": history, "best_epoch": int(np.argmax(
        [np.mean(list(h.values())) for h in history])) + 1, "teacher_cache_seconds": round(cache_s, 1),
        "seconds": round(time.time() - t0, 1)}

