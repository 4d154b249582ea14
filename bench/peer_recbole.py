"""One RecBole 1.2.1 training run, for bench/peer.py. Runs in the peer venv (RecBole and its pinned
dependencies), so it imports nothing from edgerec.

    <peer-venv>/bin/python bench/peer_recbole.py MODEL SEED EPOCHS THREADS OUT.json

Data: ml-100k.inter from the installed recbole package (user, item, timestamp; no side features).
Protocol, the closest RecBole has to edgerec's `dicycle` protocol: each user's interactions in time
order, the last one is the test target and the one before the validation target (`LS:
valid_and_test`, `order: TO`); every earlier interaction is a training target with the interactions
before it as history (RecBole's sequential augmentation), at most 50; one uniformly drawn negative per
positive in training and in evaluation (`uni1`); test AUC. Unlike edgerec, RecBole orders
interactions of the same second by file order and counts the earlier ones as history (bench/peer.py).

Settings changed from RecBole's defaults, and why:
- `torch.autograd.set_detect_anomaly(False)` after import: RecBole's sine.py switches anomaly
  detection on for every model when recbole.model is imported; it checks every backward op for NaN and
  is a debugging aid, not part of training.
- DIN: embedding_size 64 (RecBole's default is 10), pointwise BCE with one sampled negative.
- SASRec and GRU4Rec: loss_type BPR with one sampled negative (their default, CE, is a softmax over all
  items, a different objective from edgerec's CTR formulation).
- show_progress off, no checkpoint, worker 0 (the default), the seed per run.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path


def main(model: str, seed: int, epochs: int, threads: int, out: str) -> None:
    import torch

    import recbole
    import recbole.model.sequential_recommender.sine  # noqa: F401 (switches anomaly detection on at import)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    torch.autograd.set_detect_anomaly(False)
    work = tempfile.mkdtemp(prefix="recbole-")
    cfg = {
        "data_path": str(Path(recbole.__file__).parent / "dataset_example"), "dataset": "ml-100k",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]}, "MAX_ITEM_LIST_LENGTH": 50,
        "epochs": epochs, "train_batch_size": 2048, "learning_rate": 1e-3, "eval_batch_size": 4096,
        "seed": seed, "reproducibility": True, "worker": 0, "show_progress": False,
        "checkpoint_dir": work, "save_dataset": False, "save_dataloaders": False, "log_wandb": False,
        "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1},
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "uni1"},
        "metrics": ["AUC"], "valid_metric": "AUC",
    }
    if model == "DIN":
        cfg["embedding_size"] = 64
    else:
        cfg["loss_type"] = "BPR"
    config = Config(model=model, config_dict=cfg)
    torch.set_num_threads(threads)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    net = get_model(config["model"])(config, train._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    epoch_s = []
    for epoch in range(epochs):
        t = time.perf_counter()
        trainer._train_epoch(train, epoch, show_progress=False)
        epoch_s.append(time.perf_counter() - t)
    t = time.perf_counter()
    result = trainer.evaluate(test, load_best_model=False, show_progress=False)
    eval_s = time.perf_counter() - t
    positives = len(train.dataset)
    rows = positives * (2 if model == "DIN" else 1)  # DIN: a positive and a negative row; BPR: one (pos, neg) row
    Path(out).write_text(json.dumps({
        "framework": f"RecBole {recbole.__version__}", "model": model, "seed": seed, "epochs": epochs,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "train_positives": positives, "train_rows_per_epoch": rows, "epoch_seconds": [round(s, 2) for s in epoch_s],
        "rows_per_s": round(rows * epochs / sum(epoch_s), 1), "positives_per_s": round(positives * epochs / sum(epoch_s), 1),
        "test_auc": round(float(result["auc"]), 4), "eval_seconds": round(eval_s, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "params": sum(p.numel() for p in net.parameters())}))


if __name__ == "__main__":
    m, s, e, th, o = sys.argv[1:6]
    main(m, int(s), int(e), int(th), o)
