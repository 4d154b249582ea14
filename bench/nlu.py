"""EI-BERT against what a user would deploy instead, per task (issue 6).

    python bench/nlu.py                                   # everything, student seeds 1-3
    python bench/nlu.py --methods cross,kd --seeds 1      # a subset (resumable: --resume)
    python bench/nlu.py --quick                           # smoke: 60 sentences per split, 1 epoch
    python bench/nlu.py --methods kd --out runs/bench/kd.json ...   # in parallel with another run, then:
    python bench/nlu.py --resume --skip-baselines --methods '' --merge runs/bench/kd.json

Rows per task:
  teacher fp32        all-MiniLM-L6-v2 fine-tuned on the task (seed 0; edgerec/compress/teacher.py)
  teacher int8 (ORT)  the same, exported to ONNX and quantized with onnxruntime's quantize_dynamic
  student kd / tinybert / cross   the multi-task EI-BERT student from `edgerec compress`, int8,
                      accuracy of the PACKED file through the numpy runtime
  TF-IDF + LR         word 1-2 grams + character 2-5 grams, logistic regression, C chosen on valid
Each with size in MB, test accuracy (mean ± std over student seeds; the teacher and TF-IDF are
deterministic given the split), single-thread latency per sentence p50/p99 (test sentences as
they come, batch 1), and retention = accuracy / teacher fp32 accuracy. Separately: the numpy
runtime's latency on 32-token sentences (the issue's target: p50 <= 2 ms on one core).
Writes bench/results/nlu.json and its table in docs/results.md.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # single-thread latency
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from edgerec.compress.distill import METHODS  # noqa: E402

torch.set_num_threads(1)


def _lat(fn, items, repeat_warm: int = 5) -> dict:
    for x in items[:repeat_warm]:
        fn(x)
    ts = []
    for x in items:
        t = time.perf_counter()
        fn(x)
        ts.append(1e3 * (time.perf_counter() - t))
    return {"p50_ms": round(float(np.percentile(ts, 50)), 3), "p99_ms": round(float(np.percentile(ts, 99)), 3)}


def tfidf_row(task, n_lat: int) -> dict:
    C, pipe = tfidf_fit(task)
    size = len(pickle.dumps(pipe))
    test = float((pipe.predict(task.text["test"]) == task.y["test"]).mean())
    lat = _lat(lambda x: pipe.predict([x]), task.text["test"][:n_lat])
    return {"acc": [test], "size_mb": size / 1e6, "C": C, **lat}


def tfidf_fit(task):
    """TF-IDF (word 1-2 grams + character 2-5 grams) + logistic regression, C chosen on validation.
    -> (C, fitted pipeline)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    best = None
    for C in (1.0, 3.0, 10.0, 30.0):
        pipe = make_pipeline(make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                                        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True,
                                                        min_df=2)),
                             LogisticRegression(C=C, max_iter=3000))
        pipe.fit(task.text["train"], task.y["train"])
        acc = float((pipe.predict(task.text["valid"]) == task.y["valid"]).mean())
        if best is None or acc > best[0]:
            best = (acc, C, pipe)
    return best[1], best[2]


def teacher_rows(name, task, n_lat: int) -> tuple[dict, dict]:
    from edgerec.compress.data import accuracy, encode, pad
    from edgerec.compress.teacher import cached_teacher, teacher_tokenizer

    tok = teacher_tokenizer()
    enc = encode(tok, task, 64)
    model, info = cached_teacher(name, len(task.labels), enc, seed=0, epochs=3)
    acc = accuracy(model, enc["test"], name, batch_size=128)
    n_params = sum(p.numel() for p in model.parameters())

    def run(x):
        ids, mask = pad([tok.encode(x, 64)])
        with torch.no_grad():
            model(ids, mask, name)

    fp32 = {"acc": [acc], "size_mb": n_params * 4 / 1e6, **_lat(run, task.text["test"][:n_lat])}
    # ONNX + onnxruntime dynamic int8
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids, mask):
            return self.m(ids, mask, name)["logits"]

    d = Path(tempfile.mkdtemp())
    ids, mask = pad([tok.encode("a sample sentence for export", 64)])
    torch.onnx.export(Wrap(model.eval()), (ids, mask), str(d / "t.onnx"), input_names=["ids", "mask"],
                      output_names=["logits"], dynamic_axes={"ids": {0: "b", 1: "t"}, "mask": {0: "b", 1: "t"}},
                      opset_version=17, dynamo=False)
    quantize_dynamic(str(d / "t.onnx"), str(d / "t8.onnx"), weight_type=QuantType.QInt8)
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(d / "t8.onnx"), so, providers=["CPUExecutionProvider"])
    correct = 0
    for i in range(0, len(enc["test"]), 64):
        ids, mask = pad(enc["test"].ids[i: i + 64])
        pred = sess.run(None, {"ids": ids.numpy(), "mask": mask.numpy()})[0].argmax(-1)
        correct += int((pred == enc["test"].y[i: i + 64]).sum())

    def run8(x):
        ids, mask = pad([tok.encode(x, 64)])
        sess.run(None, {"ids": ids.numpy(), "mask": mask.numpy()})

    int8 = {"acc": [correct / len(enc["test"])], "size_mb": (d / "t8.onnx").stat().st_size / 1e6,
            **_lat(run8, task.text["test"][:n_lat])}
    return fp32, int8


def sentences_32(model, texts: list[str], n: int) -> tuple[list[str], list[np.ndarray]]:
    """Word windows of `texts` that tokenize to exactly 32 pieces ([CLS] ... [SEP]), untruncated:
    (the windows, their ids as (1, 32) arrays)."""
    words = " ".join(texts).split()
    texts32, sents = [], []
    for i in range(n):
        for j in range(1, 60):
            text = " ".join(words[i * 7: i * 7 + j])
            ids = model.tok.encode(text, 10**6)
            if len(ids) >= 32:
                break
        if len(ids) == 32:
            texts32.append(text)
            sents.append(np.asarray(ids)[None, :])
    return texts32, sents


def edge_latency_32(pack: Path, texts: list[str], task: str, n: int = 300, rounds: int = 5) -> dict:
    """numpy runtime on sentences of exactly 32 pieces ([CLS] ... [SEP]), batch 1."""
    from edgerec.serve.edge.runtime import EdgeModel

    m = EdgeModel.load(pack)
    texts32, sents = sentences_32(m, texts, n)
    mask = np.ones((1, 32), dtype=np.int64)

    def run(ids):
        return m.heads[task](m._encode(ids, mask))

    for x in sents[:5]:  # warm-up
        run(x)
    # interleaved, `rounds` passes: slow phases of a shared machine hit both columns alike
    enc_ms, tok_ms = [], []
    for _ in range(rounds):
        m.tok._memo.clear()  # with the tokenizer: words are segmented afresh on first sight, as on a device
        for ids, text in zip(sents, texts32):
            t0 = time.perf_counter()
            run(ids)
            t1 = time.perf_counter()
            m.logits([text], task)
            t2 = time.perf_counter()
            enc_ms.append(1e3 * (t1 - t0))
            tok_ms.append(1e3 * (t2 - t1))

    def pct(v):
        return {"p50_ms": round(float(np.percentile(v, 50)), 3), "p99_ms": round(float(np.percentile(v, 99)), 3)}

    return {"sentences": len(sents), "rounds": rounds, "tokens": 32, "encoder_only": pct(enc_ms),
            "with_tokenizer": pct(tok_ms)}


def main(argv=None) -> dict:
    from bench.docs_tables import replace_block
    from edgerec.compress.distill import DistillConfig
    from edgerec.compress.pipeline import CompressConfig, build
    from edgerec.compress.tasks import TASKS, load_task
    from edgerec.io import write_json_atomic
    from edgerec.serve.edge.runtime import EdgeModel
    from edgerec.train.ledger import git_commit, machine_info

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="kd,tinybert,cross")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--epochs", type=int, default=6, help="distillation epochs (all methods)")
    p.add_argument("--augment", type=int, default=0,
                   help="teacher-labelled perturbed copies per training sentence (edgerec/compress/augment.py); "
                        "its students are separate rows, e.g. 'cross+aug4 lr 0.002'")
    p.add_argument("--augment-replace", type=float, default=0.0,
                   help="with --augment: probability that a single-piece word is swapped for one of its 15 "
                        "nearest words in the teacher's embeddings (TinyBERT-style word replacement); rows get '+wrP'")
    p.add_argument("--augment-tasks", default="",
                   help="with --augment: only these tasks get copies (comma-separated); rows get '@task,...'")
    p.add_argument("--augment-rotate", action="store_true",
                   help="with --augment N: epoch e trains on copy e mod N only, a fresh copy each epoch for "
                        "the cost of one; rows get 'rot', e.g. 'cross+gd+aug6rot+wr0.4@sentiment lr 0.0005'")
    p.add_argument("--general", action="store_true",
                   help="start every student from general distillation on unlabeled text "
                        "(edgerec/compress/general.py; cached, shared by methods and seeds); rows are named '+gd'")
    p.add_argument("--transfer", default="",
                   help="task:N,... unlabeled sentences (in no task split; Hutto snippets, then movie dialogue) that "
                        "the task's teacher labels, soft labels only; rows are named '+trN', e.g. sentiment:12000")
    p.add_argument("--shape", default="",
                   help="student shape hidden,ffn[,emb_dim] instead of the default 128,512 (4 layers, 4 heads); "
                        "rows are named '+hH', e.g. --shape 160,512,80 -> 'cross+h160 lr 0.0005'")
    p.add_argument("--lr", type=float, help="the student's peak learning rate (default: DistillConfig.lr, 5e-4); "
                   "every row's name carries its rate, e.g. 'kd+aug4 lr 0.0005'")
    p.add_argument("--latency-sentences", type=int, default=300)
    p.add_argument("--skip-baselines", action="store_true", help="only the students (teacher/TF-IDF rows kept)")
    p.add_argument("--out")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--baselines-from", help="take the teacher and TF-IDF rows from this result file (e.g. a "
                   "baselines-only run: --methods '' --out F) instead of keeping or measuring them")
    p.add_argument("--merge", default="",
                   help="comma-separated result files of parallel runs (each with its own --out): their student "
                        "rows are added (a (variant, seed) already present is kept), then the table is rewritten")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    methods, seeds = [m for m in a.methods.split(",") if m], [int(s) for s in a.seeds.split(",")]
    try:
        transfer = {t: int(n) for t, n in (x.split(":") for x in a.transfer.split(",") if x)}
    except ValueError:
        p.error(f"--transfer {a.transfer!r}: expected task:N[,task:N], e.g. sentiment:12000")
    bad_shape = f"--shape {a.shape!r}: expected hidden,ffn[,emb_dim], e.g. 160,512,80"
    try:
        dims = [int(x) for x in a.shape.split(",") if x]
    except ValueError:
        p.error(bad_shape)
    if dims and not 2 <= len(dims) <= 3:
        p.error(bad_shape)
    shape = dict(zip(("hidden", "ffn", "emb_dim"), dims))
    aug_tasks = [t for t in a.augment_tasks.split(",") if t]
    if sorted(set(aug_tasks) - set(TASKS)):
        p.error(f"--augment-tasks {a.augment_tasks!r}: unknown task(s) {sorted(set(aug_tasks) - set(TASKS))}; "
                f"tasks are {list(TASKS)}")
    if (a.augment_replace or aug_tasks or a.augment_rotate) and not a.augment:
        p.error("--augment-replace, --augment-tasks and --augment-rotate need --augment N (copies per sentence)")
    if not 0 <= a.augment_replace <= 0.9:
        p.error(f"--augment-replace {a.augment_replace}: a probability in [0, 0.9] (the rest is kept or masked)")
    aug = {"augment": a.augment, **({"augment_replace_p": a.augment_replace} if a.augment_replace else {}),
           **({"augment_tasks": aug_tasks} if aug_tasks else {}),
           **({"augment_rotate": True} if a.augment_rotate else {})} if a.augment else {}
    limit, teacher_epochs, n_lat = None, 3, a.latency_sentences
    if a.quick:
        methods, seeds, a.epochs, limit, teacher_epochs, n_lat = ["cross"], [1], 1, 60, 0, 20
    out = Path(a.out) if a.out else (ROOT / "runs" / "bench" / "nlu_quick.json" if a.quick
                                     else ROOT / "bench" / "results" / "nlu.json")
    report = {"benchmark": "nlu", "git": git_commit(), "machine": machine_info(),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "epochs": a.epochs,
              "baselines": {}, "students": []}
    if a.resume and out.exists():
        old = json.loads(out.read_text())
        report["baselines"], report["students"] = old.get("baselines", {}), old.get("students", [])
    if a.baselines_from:
        report["baselines"] = json.loads(Path(a.baselines_from).read_text())["baselines"]
    for f in filter(None, a.merge.split(",")):
        merge_students(report, json.loads(Path(f).read_text()))
    tasks = {t: load_task(t) for t in TASKS}
    if not a.skip_baselines and not a.quick:
        for t, d in tasks.items():
            if t in report["baselines"]:
                continue
            print(f"baselines: {t} ...", flush=True)
            fp32, int8 = teacher_rows(t, d, n_lat)
            report["baselines"][t] = {"teacher fp32": fp32, "teacher int8 (ORT)": int8, "TF-IDF + LR": tfidf_row(d, n_lat)}
            write_json_atomic(out, report)
    done = {(_variant(s), s["seed"]) for s in report["students"]}
    packs = Path(tempfile.mkdtemp())
    for seed in seeds:  # seed-major: a cut-short run still has every method at the first seeds
        for m in methods:
            variant = variant_name(m, aug, a.lr or DistillConfig.lr, a.general, transfer, shape)
            if (variant, seed) in done:
                continue
            print(f"student {variant} seed {seed} ...", flush=True)
            pack = pack_path(variant, seed) if not a.quick else packs / "q.pack"
            distill = {"epochs": a.epochs, **aug, **({"lr": a.lr} if a.lr else {})}
            r = build(CompressConfig(method=m, seed=seed, teacher_epochs=teacher_epochs, limit_per_split=limit,
                                     distill=distill, general={} if a.general else None, transfer=transfer,
                                     **shape), pack,
                      progress=not a.quick)
            edge = EdgeModel.load(pack)
            lat = {t: _lat(lambda x, t=t: edge.logits([x], t), tasks[t].text["test"][:n_lat]) for t in tasks}
            report["students"].append({"method": m, "variant": variant, "seed": seed, "acc": r["student"]["test_acc_packed_numpy"],
                                       "acc_fp32": r["student"]["test_acc_fp32"], "bytes": r["artifact"]["total"],
                                       "teacher_acc": {t: v["test_acc"] for t, v in r["teacher"].items()},
                                       "init_valid_acc": r["student"]["init_valid_acc"],
                                       "breakdown": {k: r["artifact"][k] for k in ("embeddings", "encoder", "heads",
                                                                                   "vocabulary", "header_and_padding")},
                                       "pruning": r["pruning"], "latency": lat, "seconds": r["seconds"],
                                       "distill": r["student"]["distill"],
                                       "teacher_after_cross": r.get("teacher_after_cross"),
                                       "general": r.get("general"), "transfer": transfer, "shape": shape,
                                       "edge_latency_32": edge_latency_32(pack, tasks["sentiment"].text["test"],
                                                                          "sentiment", n_lat)})
            write_json_atomic(out, report)
    write_json_atomic(out, report)
    shown = headline_variants(report)
    table = markdown(report, shown)
    if len(shown) < len({_variant(s) for s in report["students"]}):
        table += "\n\nOther student settings tried (test accuracy of the packed int8 file):\n\n" + others_markdown(report, shown)
    print(table)
    if not a.quick and not a.out:  # a run with its own --out is merged into the main file later
        replace_block("nlu", table + f"\n\nRaw: bench/results/nlu.json; git {report['git']}.")
        replace_block("nlu_lr", lr_markdown(report))
        replace_block("nlu_paired", paired_markdown(report, shown))
    return report


def merge_students(report: dict, other: dict) -> int:
    """Add `other`'s student rows to `report`; a (variant, seed) already there is kept. -> rows added."""
    have = {(_variant(s), s["seed"]) for s in report["students"]}
    new = [s for s in other.get("students", []) if (_variant(s), s["seed"]) not in have]
    report["students"] += new
    return len(new)


def lr_markdown(r: dict, seed: int = 1) -> str:
    """The learning-rate choice, and every other seed-`seed` setting on validation: accuracy at the best
    epoch by the mean over tasks. ✓ = the chosen rate per method (highest mean among the plain rows:
    no general distillation, perturbed copies or transfer set)."""
    rows, best = [], {}
    for s in r["students"]:
        if s["seed"] != seed or "distill" not in s:
            continue
        c, hist = s["distill"]["config"], s["distill"]["valid_by_epoch"]
        k = int(np.argmax([np.mean(list(h.values())) for h in hist]))
        mean = float(np.mean(list(hist[k].values())))
        setting = _variant(s).split(" lr ")[0][len(s["method"]):] or "—"
        rows.append((s["method"], setting, c["lr"], k + 1, hist[k], mean))
        if setting == "—" and mean > best.get(s["method"], (-1, None))[0]:
            best[s["method"]] = (mean, c["lr"])
    from edgerec.compress.tasks import TASKS

    out = [f"| method | setting | lr | best epoch | {' | '.join(TASKS)} | valid mean | chosen |",
           "|---|---|---|---|" + "---|" * len(TASKS) + "---|---|"]
    for m, setting, lr, ep, h, mean in sorted(rows, key=lambda x: (METHODS.index(x[0]), x[1] != "—", x[1], x[2])):
        n_rates = len({x[2] for x in rows if x[0] == m and x[1] == "—"})
        mark = ("✓" if n_rates > 1 else "only rate tried") if setting == "—" and best.get(m, (0, None))[1] == lr else ""
        out.append(f"| {m} | {setting} | {lr:g} | {ep} | " + " | ".join(f"{h[t]:.4f}" for t in TASKS)
                   + f" | {mean:.4f} | {mark} |")
    return "\n".join(out)


def variant_name(method: str, augment: int | dict, lr: float, general: bool = False, transfer: dict | None = None,
                 shape: dict | None = None) -> str:
    """A student row's name: its method, '+hH' for a non-default width, '+gd' after general
    distillation, '+augN' with perturbed copies ('rot': one copy per epoch, '+wrP': word replacement
    with probability P, '@tasks': only those tasks), '+trN' with N unlabeled transfer sentences, and
    its peak learning rate. `augment`: the copies, or the DistillConfig augment_* settings."""
    c = augment if isinstance(augment, dict) else {"augment": augment}
    ag = ""
    if c.get("augment"):
        ag = (f"+aug{c['augment']}" + ("rot" if c.get("augment_rotate") else "")
              + (f"+wr{c['augment_replace_p']:g}" if c.get("augment_replace_p") else "")
              + ("@" + ",".join(c["augment_tasks"]) if c.get("augment_tasks") else ""))
    tr = "".join(f"+tr{n}" + ("" if t == "sentiment" else f"{t}") for t, n in (transfer or {}).items())
    h = f"+h{shape['hidden']}" if shape else ""
    return method + h + ("+gd" if general else "") + ag + tr + f" lr {lr:g}"


def _method_of(variant: str) -> str:
    """The method a variant name starts with (inverse of variant_name's prefix)."""
    return variant.split("+")[0].split(" ")[0]


def pack_path(variant: str, seed: int) -> Path:
    """Where a student's packed file is kept (bench/nlu_latency.py reads it from here)."""
    return ROOT / "runs" / "eibert" / f"{variant.replace(' ', '_')}-seed{seed}.pack"


def _variant(student: dict) -> str:
    """The name of a stored row, from the distillation settings it ran with (rows written before the
    learning rate was in the name read correctly too)."""
    if "distill" in student:
        c = student["distill"]["config"]
        return variant_name(student["method"], c, c["lr"], bool(student.get("general")),
                            student.get("transfer"), student.get("shape"))
    return student.get("variant", student["method"])


def _ms(v: list[float]) -> str:
    v = np.asarray(v, dtype=np.float64)
    return f"{v.mean():.4f} ± {v.std(ddof=1):.4f}" if len(v) > 1 else f"{v.mean():.4f} (1 seed)"


def headline_variants(r: dict) -> list[str]:
    """The rows the headline table shows: ONE student setting for every method, so the methods are
    compared at the same size and budget. The setting (a variant name without its method and rate)
    that covers the most methods, then has the most seeds for its worst-covered method, then the
    higher mean validation accuracy (best epoch) over all its rows; never the test split. Per
    method, its rate with the most seeds at that setting (ties: validation). Only the default student
    shape competes; '+hH' rows are others. A method without that setting shows its own best."""
    runs: dict[str, list[float]] = {}  # variant -> best-epoch mean validation per seed
    for s in r["students"]:
        if s.get("shape"):  # a non-default width
            continue
        hist = s.get("distill", {}).get("valid_by_epoch") or [{"_": 0.0}]
        runs.setdefault(_variant(s), []).append(max(float(np.mean(list(h.values()))) for h in hist))

    def setting(v: str) -> str:
        return v.split(" lr ")[0][len(_method_of(v)):]

    def pick(vs: list[str]) -> str:
        return max(vs, key=lambda v: (len(runs[v]), float(np.mean(runs[v]))))

    by_method: dict[str, dict[str, list[str]]] = {}
    for v in runs:
        by_method.setdefault(_method_of(v), {}).setdefault(setting(v), []).append(v)
    scores = {}
    for st in {setting(v) for v in runs}:
        chosen = [pick(vs[st]) for vs in by_method.values() if st in vs]
        scores[st] = (len(chosen), min(len(runs[v]) for v in chosen),
                      float(np.mean([x for v in chosen for x in runs[v]])))
    if not scores:
        return []
    top = max(scores, key=scores.get)
    return [pick(vs[top]) if top in vs else pick([v for x in vs.values() for v in x]) for vs in by_method.values()]


def headline_variant(method: str, path: Path = ROOT / "bench" / "results" / "nlu.json") -> str:
    """The row name the headline table of `path` shows for `method` (the default pack of the
    latency and significance benchmarks)."""
    r = json.loads(path.read_text())
    return next(v for v in headline_variants(r) if _method_of(v) == method)


def paired_markdown(r: dict, shown: list[str]) -> str:
    """Differences paired by seed (test accuracy of the packed file): the headline methods against
    each other, and each headline row against every other setting of its method that shares at
    least 2 seeds. Mean over the four tasks, and sentiment alone; mean ± std over the shared seeds."""
    from edgerec.compress.tasks import TASKS

    acc: dict[str, dict[int, dict]] = {}
    for s in r["students"]:
        acc.setdefault(_variant(s), {})[s["seed"]] = s["acc"]
    head = {_method_of(v): v for v in shown}
    pairs = [(head[a], head[b]) for a, b in (("cross", "kd"), ("cross", "tinybert"), ("tinybert", "kd"))
             if a in head and b in head]
    for m in METHODS:
        if m in head:
            pairs += [(head[m], v) for v in sorted(acc) if _method_of(v) == m and v != head[m]]
    out = ["| A − B | seeds | mean over 4 tasks | per seed | sentiment |", "|---|---|---|---|---|"]
    for a, b in pairs:
        seeds = sorted(set(acc[a]) & set(acc[b]))
        if len(seeds) < 2:
            continue
        d = [float(np.mean([acc[a][k][t] - acc[b][k][t] for t in TASKS])) for k in seeds]
        ds = [acc[a][k]["sentiment"] - acc[b][k]["sentiment"] for k in seeds]
        sd = lambda v: f"{np.mean(v):+.4f} ± {np.std(v, ddof=1):.4f}"  # noqa: E731
        out.append(f"| {a.split(' lr ')[0]} − {b.split(' lr ')[0]} | {','.join(map(str, seeds))} | {sd(d)} | "
                   + ", ".join(f"{x:+.3f}" for x in d) + f" | {sd(ds)} |")
    return "\n".join(out)


def others_markdown(r: dict, exclude: list[str]) -> str:
    """Test accuracy of every other student setting tried (a row per setting, mean over its seeds)."""
    from edgerec.compress.tasks import TASKS

    out = [f"| student setting | seeds | {' | '.join(TASKS)} | mean |", "|---|---|" + "---|" * len(TASKS) + "---|"]
    for v in sorted(dict.fromkeys(_variant(s) for s in r["students"])):
        if v in exclude:
            continue
        runs = [s for s in r["students"] if _variant(s) == v]
        acc = [float(np.mean([s["acc"][t] for s in runs])) for t in TASKS]
        out.append(f"| {v} | {','.join(str(s['seed']) for s in runs)} | " + " | ".join(f"{a:.4f}" for a in acc)
                   + f" | {np.mean(acc):.4f} |")
    return "\n".join(out)


def markdown(r: dict, variants: list[str] | None = None) -> str:
    """The per-task table: teacher, teacher int8, TF-IDF and the students (`variants`; default all)."""
    rows = ["| task | model | size MB | test accuracy | retention | latency p50 / p99 ms (1 thread) |",
            "|---|---|---|---|---|---|"]
    from edgerec.compress.tasks import TASKS

    for t in TASKS:
        base = r["baselines"].get(t, {})
        ref = base.get("teacher fp32", {}).get("acc", [np.nan])[0]
        for name, row in base.items():
            rows.append(f"| {t} | {name} | {row['size_mb']:.2f} | {_ms(row['acc'])} | "
                        f"{np.mean(row['acc']) / ref:.1%} | {row['p50_ms']:.2f} / {row['p99_ms']:.2f} |")
        for m in sorted(variants or dict.fromkeys(_variant(s) for s in r["students"]), key=lambda v: (METHODS.index(_method_of(v)), v)):
            runs = [s for s in r["students"] if _variant(s) == m]
            if not runs:
                continue
            acc = [s["acc"][t] for s in runs]
            lat = runs[0]["latency"][t]
            rows.append(f"| {t} | student {m} (int8, packed, numpy) | {runs[0]['bytes'] / 1e6:.3f} | {_ms(acc)} | "
                        f"{np.mean(acc) / ref:.1%} | {lat['p50_ms']:.2f} / {lat['p99_ms']:.2f} |")
    e = [s["edge_latency_32"]["encoder_only"]["p50_ms"] for s in r["students"]]
    if e:
        rows += ["", f"numpy runtime, 32-token sentence, batch 1, one core, encoder p50 over the {len(e)} student rows: "
                     f"{min(e):.2f}–{max(e):.2f} ms, each taken under whatever ran beside it (bench/nlu_latency.py "
                     "measures it on an idle machine)."]
    return "\n".join(rows)


if __name__ == "__main__":
    main()
