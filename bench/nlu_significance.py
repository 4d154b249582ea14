"""Is the headline student ahead of TF-IDF + LR by more than the test set's own noise? (issue 6)

The issue's bar is "beyond the seed spread": the student's mean minus one seed std above TF-IDF.
That spread is over training seeds on ONE test set; a second question is how much the gap would
move with another draw of test sentences. This paired bootstrap answers it: per student seed, the
student's and TF-IDF's correctness on the same test sentences, resampled 10,000 times.

    python bench/nlu_significance.py                      # the headline cross students, seeds 1-3
    python bench/nlu_significance.py --variant 'kd+gd lr 0.0005'

Writes bench/results/nlu_significance.json.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n: int = 10_000, seed: int = 0) -> dict:
    """a, b: 0/1 correctness of two models on the same sentences. -> mean difference, its 95 %
    interval and the share of resamples where a is not ahead."""
    d = a.astype(np.float64) - b.astype(np.float64)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n, len(d)))].mean(1)
    return {"diff": round(float(d.mean()), 4), "ci95": [round(float(x), 4) for x in np.percentile(means, [2.5, 97.5])],
            "p_not_ahead": round(float((means <= 0).mean()), 4), "sentences": int(len(d))}


def main(argv=None) -> dict:
    from bench.nlu import headline_variant, pack_path, tfidf_fit
    from edgerec.compress.tasks import load_task
    from edgerec.io import write_json_atomic
    from edgerec.serve.edge.runtime import EdgeModel
    from edgerec.train.ledger import git_commit, machine_info

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", help="student row name (default: the headline cross row of bench/results/nlu.json)")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--tasks", default="sentiment,trec")
    a = p.parse_args(argv)
    variant = a.variant or headline_variant("cross")
    out = {"benchmark": "nlu_significance", "variant": variant, "git": git_commit(), "machine": machine_info(),
           "tasks": {}}
    for t in a.tasks.split(","):
        task = load_task(t)
        C, pipe = tfidf_fit(task)
        base = pipe.predict(task.text["test"]) == task.y["test"]
        rows = {"tfidf_C": C, "tfidf_acc": round(float(base.mean()), 4), "seeds": {}}
        for s in (int(x) for x in a.seeds.split(",")):
            pack = pack_path(variant, s)
            if not pack.is_file():
                p.error(f"{pack}: no such packed file; run bench/nlu.py for {variant!r} seed {s} first")
            edge = EdgeModel.load(pack)
            texts = task.text["test"]
            pred = np.concatenate([edge.logits(texts[i: i + 64], t).argmax(-1) for i in range(0, len(texts), 64)])
            rows["seeds"][s] = {"student_acc": round(float((pred == task.y["test"]).mean()), 4),
                                **paired_bootstrap(pred == task.y["test"], base, seed=s)}
            print(t, s, rows["seeds"][s], flush=True)
        out["tasks"][t] = rows
    write_json_atomic(ROOT / "bench" / "results" / "nlu_significance.json", out)
    return out


if __name__ == "__main__":
    main()
