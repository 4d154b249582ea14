"""Stage 2 on ONNX Runtime (`edgerec serve --engine onnx`): the run's exported graph (serve/export.py)
scores the candidates; everything else (the request encoding through the one feature definition,
stage 1, the store) is the torch engine's, so both engines rank the same tensors (tested).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from edgerec.errors import EdgerecError
from edgerec.serve.export import (CONTRACT_FILE, EXPORTER, MODEL_FILE, require, export_ranker, request_inputs,
                                   run_weights_sha256)
from edgerec.serve.service import Ranker

ENGINES = ("torch", "onnx")


class OnnxRanker(Ranker):
    """A Ranker whose `score` runs the exported graph on ONNX Runtime (one session per process)."""

    def __init__(self, ranker: Ranker, export_dir: str | Path, threads: int = 1):
        ort = require("onnxruntime")
        super().__init__(ranker.model, ranker.samples, ranker.definition)
        export_dir = Path(export_dir)
        self.contract = read_contract(export_dir)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(export_dir / MODEL_FILE), opts, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]

    def score(self, request, items: np.ndarray) -> np.ndarray:
        """Served relevance (C,) of raw item ids `items`, as Ranker.score, from ONNX Runtime. `request`:
        an encoded request (Ranker.encode_request, torch) or its arrays (Ranker.request_arrays)."""
        idx = self.item_index(np.asarray(items, dtype=np.int64))  # (C,)
        return self.session.run(["score"], request_inputs(request, idx, self.names))[0]

    def rank(self, user_id: int, ts: int, feats: dict, items: np.ndarray) -> np.ndarray:
        """Ranker.rank without torch: the graph takes the request arrays and looks up the side features
        itself, so nothing per request is built twice."""
        return self.score(self.request_arrays(user_id, ts, feats), items)


def read_contract(export_dir: Path) -> dict:
    """export.json, after checking model.onnx is the file it describes (size and sha256)."""
    path, model = export_dir / CONTRACT_FILE, export_dir / MODEL_FILE
    try:
        contract = json.loads(path.read_text())
        want = (int(contract["model_bytes"]), str(contract["model_sha256"]))
    except FileNotFoundError:
        raise EdgerecError(f"{path} is missing: {export_dir} is not an export; run `edgerec export --run RUN "
                           "--format onnx`.") from None
    except (ValueError, KeyError, TypeError):
        raise EdgerecError(f"{path} is damaged (not the JSON an export writes); export again with "
                           "`edgerec export --run RUN --format onnx`.") from None
    if not model.is_file() or model.stat().st_size != want[0] or \
            hashlib.sha256(model.read_bytes()).hexdigest() != want[1]:
        raise EdgerecError(f"{model} is missing or damaged (size or sha256 differs from {path}); export again "
                           "with `edgerec export --run RUN --format onnx`.")
    return contract


def onnx_ranker(ranker: Ranker, run_dir: str | None, threads: int = 1, quiet: bool = False) -> OnnxRanker:
    """The ONNX engine for `ranker`: its run's export (RUN/onnx), made or remade first when it is
    missing or belongs to other weights; an untrained benchmark ranker (no run) is exported to a
    temporary folder."""
    if run_dir is None:
        import atexit
        import shutil
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="edgerec-onnx-"))
        atexit.register(shutil.rmtree, root, True)  # this process's own export: gone when it exits
        folder = root / "onnx"
        export_ranker(ranker, folder, quiet=True)
        return OnnxRanker(ranker, folder, threads)
    folder = Path(run_dir) / "onnx"
    weights = run_weights_sha256(run_dir)
    current = None
    if (folder / CONTRACT_FILE).exists():
        try:
            current = read_contract(folder)
        except EdgerecError:
            current = None  # damaged: exported again below
    if current is None or current.get("weights_sha256") != weights or current.get("exporter") != EXPORTER:
        if not quiet:
            print(f"{run_dir}: no current ONNX export; exporting stage 2 to {folder}")
        export_ranker(ranker, folder, run=str(run_dir), quiet=quiet, weights_sha256=weights)
    return OnnxRanker(ranker, folder, threads)

