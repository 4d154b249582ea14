"""The EI-BERT device model as ONNX with int8 weights: `edgerec export --pack eibert.pack --format onnx`.

Why: a phone app that already ships ONNX Runtime (Mobile) should not need our numpy runtime. The
graph is the same post-LayerNorm BERT (edgerec/models/layers/bert.py, traced by torch.onnx from
the float model the pack dequantizes to), and then every matrix the pack holds as int8 rows goes
back to int8: the float initializer W is replaced by `DequantizeLinear(W_int8, scale, axis=0)`,
which ONNX Runtime's CPU execution provider runs, Mobile included (the file converts to .ort; NNAPI
and CoreML leave these nodes to the CPU). So the file keeps the pack's own integers and per-row
scales (w[r] = q[r] * scale[r], compress/quantize.py), its size is about an int8 pack's, and its
logits equal the numpy runtime's up to float rounding. A pack's int4 word embeddings
(`embedding_bits: 4`) are stored as int8 here, twice their packed bytes (a 965 KB smoke pack gave
a 1.11 MB file; the log line and export.json say whether the 1.91 MB limit holds): as ONNX INT4
(opset 21) ONNX Runtime's default graph optimizations fused them into an approximate gather that
moved logits by 4.8e-3 on a smoke build (exact with optimizations off, which a user's app would
not know to set).

Inputs: `ids` (B, T) int64 WordPiece ids and `mask` (B, T) int64 (1 = token), B and T dynamic,
T <= max_positions (longer is an ONNX Runtime broadcast error); outputs: `logits_<task>` (B, C_task) per task. Beside the graph: vocab.txt
(one piece per line, id = line number - 1, the tokenizer's table) and export.json (tasks with
their label names, max length, sizes, the parity check it passed).

Before anything is written the graph runs on ONNX Runtime against the numpy runtime on fixed
sentences and on random id sequences with random lengths (every task): max |logit difference|
<= 1e-4 and the same argmax, else nothing is written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from edgerec.compress.pipeline import SIZE_LIMIT_BYTES
from edgerec.errors import EdgerecError

OPSET = 17  # DequantizeLinear per axis needs 13+
MODEL_FILE, VOCAB_FILE, CONTRACT_FILE = "eibert.onnx", "vocab.txt", "export.json"
PARITY_ATOL = 1e-4
PARITY_SENTENCES = ["pho noodles near me", "win a free phone now, click here", "what time does the bakery open",
                    "the coffee was cold and the service slow", "cheap flowers delivered tonight", "hotpot for four"]


def _float_model(artifact: dict):
    """The PyTorch EI-BERT whose weights are the pack's dequantized values (heads already merged)."""
    from dataclasses import fields

    from edgerec.compress.pack import QuantizedRows
    from edgerec.compress.pipeline import model_from_weights
    from edgerec.models.eibert import EIBertConfig

    weights = {k: np.asarray(v.dequantized() if isinstance(v, QuantizedRows) else v, np.float32)
               for k, v in artifact["tensors"].items()}
    tasks = {t: len(labels) for t, labels in artifact["tasks"].items()}
    known = {f.name for f in fields(EIBertConfig)} - {"tasks", "dropout", "head_via"}
    config = {k: v for k, v in artifact["config"].items() if k in known}  # the pack's shapes only
    return model_from_weights(EIBertConfig(**config, tasks=tasks, dropout=0.0), weights)


class AllTasks(torch.nn.Module):
    """forward(ids, mask) -> one logits tensor per task, in the pack's task order: the graph's outputs.
    The attribute name `m` is the prefix of every weight's name in the traced graph (_graph_name)."""

    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, ids, mask):  # (B, T), (B, T) -> tuple of (B, C_task)
        return tuple(self.m(ids, mask, t)["logits"] for t in self.m.heads)


def _graph_name(pack_name: str) -> str:
    """A pack tensor's name in the traced graph: AllTasks holds the model as `m`, whose heads are
    `heads.<task>` (the pack says `head.<task>`)."""
    return "m." + ("heads." + pack_name.removeprefix("head.") if pack_name.startswith("head.") else pack_name)


def _quantized_graph(float_path: Path, artifact: dict):
    """The traced float graph with each int8 / int4 matrix of the pack as an integer initializer
    and a DequantizeLinear node (per row: axis 0) that outputs the name the graph already reads."""
    import onnx
    from onnx import helper, numpy_helper

    from edgerec.compress.pack import QuantizedRows

    g = onnx.load(str(float_path))
    quantized = {_graph_name(k): v for k, v in artifact["tensors"].items() if isinstance(v, QuantizedRows)}
    inits, dq = [], []
    for init in g.graph.initializer:
        rows = quantized.get(init.name)
        if rows is None:
            inits.append(init)
            continue
        name = init.name.removeprefix("m.")
        q = numpy_helper.from_array(np.ascontiguousarray(rows.q, np.int8), init.name + "_q")  # int4 rows arrive unpacked to int8
        inits += [q, numpy_helper.from_array(np.ascontiguousarray(rows.scale, np.float32), init.name + "_scale")]
        dq.append(helper.make_node("DequantizeLinear", [init.name + "_q", init.name + "_scale"], [init.name], axis=0,
                                   name=f"dq/{name}"))
    missing = sorted(set(quantized) - {n.output[0] for n in dq})
    if missing:  # a matrix the trace renamed or folded would stay float: say so rather than ship it
        raise EdgerecError(f"ONNX export: the traced graph has no initializer for {missing[:3]}; the exporter "
                           "and the model disagree (a bug: please report it)")
    del g.graph.initializer[:]
    g.graph.initializer.extend(inits)
    nodes = list(g.graph.node)
    del g.graph.node[:]
    g.graph.node.extend(dq + nodes)
    onnx.checker.check_model(g)
    return g


def _parity(session, edge, rng: np.random.Generator) -> dict:
    """Max |logit difference| and argmax agreement, ONNX Runtime against the numpy runtime (its
    `_encode` and `heads` directly: the same ids and mask go to both, no tokenizer in between)."""
    ids_t, mask_t = edge.tok.batch(PARITY_SENTENCES, edge.max_len)
    batches = [(ids_t, mask_t)]
    vocab = int(edge.config["vocab_size"])
    for b, t in ((1, 1), (3, edge.max_len), (8, 17)):  # random ids, random lengths: the whole graph
        ids = rng.integers(1, vocab, (b, t))  # (b, t)
        mask = (np.arange(t)[None, :] < rng.integers(1, t + 1, (b, 1))).astype(np.int64)  # (b, t): a random length per row
        batches.append((ids * mask, mask))
    worst, agree, n, finite = 0.0, 0, 0, True
    for ids, mask in batches:
        ids, mask = ids.astype(np.int64), mask.astype(np.int64)
        outs = session.run(None, {"ids": ids, "mask": mask})
        pooled = edge._encode(ids, mask)
        for task, got in zip(edge.tasks, outs):
            ref = edge.heads[task](pooled)  # (B, C)
            finite &= bool(np.isfinite(got).all())  # max() would pass a NaN over
            worst = max(worst, float(np.abs(got - ref).max()))
            agree += int((got.argmax(-1) == ref.argmax(-1)).sum())
            n += len(ref)
    return {"max_abs_logit": worst, "argmax_agreement": agree / n, "rows": n,
            "atol": PARITY_ATOL, "passed": finite and worst <= PARITY_ATOL and agree == n}


def _contract(pack: Path, tmp: Path, artifact: dict, opset: int, parity: dict) -> dict:
    """export.json: what an app outside Python needs to feed the graph and read its outputs."""
    size = (tmp / MODEL_FILE).stat().st_size
    kinds = sorted({r["kind"] for r in artifact["table"] if r["kind"] != "f32"})
    return {"format": "onnx", "weights": "int8 QDQ (DequantizeLinear per row)", "pack_matrix_kinds": kinds,
            "opset": opset, "source": str(pack), "pack_bytes": pack.stat().st_size, "model_bytes": size,
            "limit_bytes": SIZE_LIMIT_BYTES, "within_limit": size <= SIZE_LIMIT_BYTES,
            "inputs": {"ids": "int64 (batch, tokens): WordPiece ids of vocab.txt (line number - 1), 0..V-1",
                       "mask": "int64 (batch, tokens): 1 = token, 0 = padding"},
            "tokenizer": "BERT uncased WordPiece over vocab.txt (edgerec/serve/edge/tokenizer.py): [CLS] "
                         "pieces [SEP], at most max_tokens, padded with [PAD] (mask 0)",
            "max_tokens": int(artifact["config"]["max_positions"]),
            "outputs": {f"logits_{t}": artifact["tasks"][t] for t in artifact["tasks"]},
            "parity": parity}


def _check_task_names(pack: Path, tasks) -> None:
    """Task names become PyTorch module names while tracing: refuse what nn.ModuleDict would."""
    bad = [t for t in tasks if not t or "." in t or not t.isidentifier() or hasattr(torch.nn.Module, t)]
    if bad:
        raise EdgerecError(f"{pack}: task name(s) {bad} cannot be exported to ONNX (a name must be an identifier "
                           "without '.', and not a torch Module attribute such as 'train'); rebuild the pack with "
                           "other --task names")


def export_edge_onnx(pack: str | Path, out: str | Path | None = None, log=print, seed: int = 0) -> dict:
    """Write OUT/eibert.onnx, OUT/vocab.txt and OUT/export.json for the pack (module docstring);
    the folder appears whole or not at all. -> the export.json contents."""
    from edgerec.compress.pack import read_artifact
    from edgerec.serve.edge.runtime import EdgeModel
    from edgerec.serve.export import check_replaceable, require, swap_in

    ort, onnx = require("onnxruntime", "to export the device model"), require("onnx", "to export the device model")
    pack = Path(pack)
    out = Path(out) if out else pack.with_name(pack.stem + "_onnx")
    check_replaceable(out, {MODEL_FILE, VOCAB_FILE, CONTRACT_FILE}, CONTRACT_FILE)  # before any work
    artifact = read_artifact(pack, dequantize=False)  # ArtifactError names the file and what is wrong
    _check_task_names(pack, artifact["tasks"])
    edge = EdgeModel(artifact, str(pack))
    model = AllTasks(_float_model(artifact))
    tasks = list(artifact["tasks"])
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".onnx-", dir=out.parent))  # beside OUT: the final rename is atomic
    except OSError as e:
        raise EdgerecError(f"--out {out}: cannot write there ({e.strerror or e}); choose a folder you can write "
                           "with --out DIR") from None
    try:
        ids = torch.ones(2, 8, dtype=torch.long)  # (B, T): any sizes, both axes are dynamic
        dynamic = {"ids": {0: "batch", 1: "tokens"}, "mask": {0: "batch", 1: "tokens"},
                   **{f"logits_{t}": {0: "batch"} for t in tasks}}
        try:
            torch.onnx.export(model, (ids, torch.ones_like(ids)), str(tmp / "float.onnx"), input_names=["ids", "mask"],
                              output_names=[f"logits_{t}" for t in tasks], dynamic_axes=dynamic, opset_version=OPSET,
                              dynamo=False, do_constant_folding=False)  # no folding: the weights keep their names
            graph = _quantized_graph(tmp / "float.onnx", artifact)
            onnx.save(graph, str(tmp / MODEL_FILE))
            (tmp / "float.onnx").unlink()
            opts = ort.SessionOptions()
            opts.log_severity_level = 3  # errors only
            session = ort.InferenceSession(str(tmp / MODEL_FILE), opts, providers=["CPUExecutionProvider"])
            parity = _parity(session, edge, np.random.default_rng(seed))
        except EdgerecError:
            raise
        except Exception as e:  # an op or shape the exporter or the runtime does not handle
            raise EdgerecError(f"cannot export {pack} to ONNX ({type(e).__name__}: {str(e)[:200]}); nothing was "
                               "written. The numpy runtime (EdgeModel.load) still reads the pack; please report "
                               "this with the pack.") from None
        if not parity["passed"]:
            raise EdgerecError(f"ONNX export of {pack}: ONNX Runtime disagrees with the edge runtime "
                               f"(max |logit difference| {parity['max_abs_logit']:.2e}, argmax agreement "
                               f"{parity['argmax_agreement']:.4f}); nothing written")
        (tmp / VOCAB_FILE).write_text("\n".join(artifact["vocab"]) + "\n", encoding="utf-8")
        meta = _contract(pack, tmp, artifact, graph.opset_import[0].version, parity)
        (tmp / CONTRACT_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private; the folder is an artifact to hand on
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    limit = "within" if meta["within_limit"] else "OVER"
    log(f"wrote {out}/{MODEL_FILE} ({meta['model_bytes']:,} bytes, {limit} the {SIZE_LIMIT_BYTES:,}-byte limit; the "
        f"pack is {meta['pack_bytes']:,}), {VOCAB_FILE}, {CONTRACT_FILE}; parity with the edge runtime: max |logit "
        f"difference| {parity['max_abs_logit']:.1e}, argmax agreement {parity['argmax_agreement']:.0%} on "
        f"{parity['rows']} rows")
    return meta
