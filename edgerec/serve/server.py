"""Build the two-stage service from a recipe and run it under uvicorn, with one or more worker processes.

Why a recipe: uvicorn runs several workers by starting fresh processes (spawn) that import the app
by name; nothing built in the parent (model, SQLite connection, Kafka producer) may cross into
them. So every worker rebuilds its own service from the same small, JSON-serialisable
`ServiceRecipe`, handed over in the EDGEREC_SERVE environment variable and read by
`app_from_env` (uvicorn's documented `factory=True` path). One worker runs in-process as before.

Workers share nothing but the feature store, so more than one worker needs a shared store
(`sqlite:PATH` or `redis://`), never `memory`. Each worker runs torch with `threads` intra-op
threads (default 1): on a small machine, processes scale the Python part of a request as well as
the kernels, threads only the kernels.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import uvicorn

from edgerec.errors import EdgerecError
from edgerec.features.definition import DEFAULT_FUTURE_SKEW_S
from edgerec.features.store import DEFAULT_DEDUP_WINDOW_S
from edgerec.serve.app import DEFAULT_MAX_BODY_BYTES

ENV_VAR = "EDGEREC_SERVE"


@dataclass
class ServiceRecipe:
    """Everything a worker needs to build the same service. Either `run` (a trained run folder) or
    `expid` (an experiment of `config` with untrained weights, seeded: for latency benchmarks)."""

    store: str
    run: str | None = None
    expid: str | None = None
    config: str | None = None
    dataset: str | None = None
    feedback_to: str | None = None
    kafka: str | None = None
    topic: str = "edgerec-events"
    threads: int = 1
    seed: int = 0
    index_period: str = "all"  # stage 1's click counts: 'all' (live service) | 'train' (offline evaluation)
    future_skew_s: int | None = DEFAULT_FUTURE_SKEW_S  # /feedback refuses ts > clock + this (None: no bound)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # larger request bodies get 413
    dedup_window_s: int | None = DEFAULT_DEDUP_WINDOW_S  # the stream's window: /feedback refuses what it dead-letters
    engine: str = "torch"  # stage 2 on PyTorch, or 'onnx': the run's exported graph on ONNX Runtime
    edge_pack: str | None = None  # the console's Device view: an EI-BERT file from `edgerec compress`
    ledger: str | None = None  # the console's Runs view: the results ledger

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ServiceRecipe":
        d = json.loads(text)
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise EdgerecError(f"{ENV_VAR}: unknown recipe keys {sorted(unknown)}")
        return cls(**d)


def build_ranker(recipe: ServiceRecipe):
    """The stage-2 Ranker (on the recipe's engine) and the dataset id of its item catalogue."""
    from edgerec.serve.onnx_ranker import ENGINES

    if recipe.engine not in ENGINES:  # before any work
        raise EdgerecError(f"engine must be one of {', '.join(ENGINES)}, got {recipe.engine!r}")
    ranker, dataset = _torch_ranker(recipe)
    if recipe.engine == "onnx":
        from edgerec.serve.onnx_ranker import onnx_ranker

        ranker = onnx_ranker(ranker, recipe.run, recipe.threads)
    return ranker, dataset


def _torch_ranker(recipe: ServiceRecipe):
    """The PyTorch Ranker of a trained run, or of an untrained seeded experiment (benchmarks)."""
    import torch

    from edgerec.features.definition import FeatureDefinition
    from edgerec.serve.service import Ranker

    if recipe.run:
        ranker = Ranker.from_run(recipe.run)
        dataset = recipe.dataset or ranker.samples.info.get("dataset") or _run_dataset(recipe.run)
        return ranker, dataset
    if not (recipe.expid and recipe.config):
        raise EdgerecError("a service needs --run RUN_DIR (a trained run), or an expid and config (untrained, "
                           "for benchmarks)")
    from edgerec.train.config import load_experiment
    from edgerec.train.experiment import build_model, build_samples

    overrides = [f"dataset={recipe.dataset}"] if recipe.dataset else []
    cfg = load_experiment(recipe.config, recipe.expid, overrides)
    samples = build_samples(cfg)
    torch.manual_seed(recipe.seed)  # every worker builds the same untrained weights
    model = build_model(cfg, samples.spec)
    d = FeatureDefinition(max_len=samples.spec.max_len, n_positions=max(samples.spec.n_positions, 1), tz=samples.spec.tz)
    return Ranker(model, samples, d), recipe.dataset or cfg.dataset


def _run_dataset(run_dir: str) -> str:
    cfg = json.loads((Path(run_dir) / "config.json").read_text())
    return cfg["experiment"]["dataset"]


def build_service(recipe: ServiceRecipe, ranker=None, dataset: str | None = None):
    """RecommendService for the recipe: ranker (built unless given), catalogue, store, feedback sink."""
    import torch

    from edgerec.data import registry
    from edgerec.features.store import open_store
    from edgerec.serve.service import CandidateIndex, FileEventSink, RecommendService, training_cut

    if recipe.index_period not in ("all", "train"):  # before any work
        raise EdgerecError(f"index_period must be 'all' or 'train', got {recipe.index_period!r}")
    torch.set_num_threads(recipe.threads)
    store = open_store(recipe.store, dedup_window_s=recipe.dedup_window_s)  # a bad --store fails before the run
    if ranker is None:
        ranker, dataset = build_ranker(recipe)
    from edgerec.features.store import check_zone

    # at start, not at the first feedback; a new store takes the run's zone now, so that a stream
    # folding this service's feedback later (`edgerec stream --events F`, no --tz) uses the same clock
    check_zone(store.claim_zone(ranker.definition.tz), ranker.definition, f"--store {recipe.store}")
    until = training_cut(ranker.samples) if recipe.index_period == "train" else None
    index = CandidateIndex.from_dataset(registry.load(dataset), until_ts=until)
    if recipe.kafka:
        from edgerec.serve.kafka import KafkaEventSink, ensure_topic

        ensure_topic(recipe.kafka, recipe.topic)
        sink = KafkaEventSink(recipe.kafka, recipe.topic)
    elif recipe.feedback_to:
        sink = FileEventSink(recipe.feedback_to)
    else:
        sink = None
    return RecommendService(ranker, index, store, sink, future_skew_s=recipe.future_skew_s)


def app_from_env():
    """uvicorn factory (`edgerec.serve.server:app_from_env`): each worker builds its service here."""
    from edgerec.serve.app import create_app

    text = os.environ.get(ENV_VAR)
    if not text:
        raise EdgerecError(f"{ENV_VAR} is not set: start workers with `edgerec serve --workers N`")
    recipe = ServiceRecipe.from_json(text)
    app = create_app(build_service(recipe), recipe.max_body_bytes, console_options(recipe))
    freeze_startup_objects()
    return app


def console_options(recipe: ServiceRecipe):
    from edgerec.serve.console import ConsoleOptions

    return ConsoleOptions(edge_pack=recipe.edge_pack, ledger=recipe.ledger)


def freeze_startup_objects() -> None:
    """Move everything built so far (model, catalogue, vocabularies: ~240k objects) out of the garbage
    collector's reach. They live as long as the process, yet a full collection rescans them all,
    ~160 ms measured here: a latency spike on whichever request triggers it. (gc.freeze, as the
    Python docs suggest for servers.)"""
    import gc

    gc.collect()
    gc.freeze()


def check_workers(recipe: ServiceRecipe, workers: int) -> None:
    if workers < 1:
        raise EdgerecError(f"--workers must be >= 1, got {workers}")
    if workers > 1 and recipe.store == "memory":
        raise EdgerecError("--workers > 1 needs a store the workers share: --store sqlite:PATH or redis://HOST:PORT/DB "
                           "(each worker would have its own 'memory' store)")


class TCPConfig(uvicorn.Config):
    """uvicorn's multi-worker listener is created with proto 0, so asyncio never sets TCP_NODELAY on
    the accepted connections and every keep-alive response waits ~40 ms for the client's delayed
    ACK (Kludex/uvicorn#3149; measured here: p50 52 ms instead of 13 ms at 50 req/s). Re-wrapping
    the descriptor lets the kernel report the real protocol (IPPROTO_TCP). Module level: the config
    is pickled to the spawned workers."""

    def bind_socket(self) -> socket.socket:
        sock = super().bind_socket()
        tcp = socket.socket(fileno=sock.detach())  # family, type and proto read back from the kernel
        tcp.set_inheritable(True)
        return tcp


def run(recipe: ServiceRecipe, host: str, port: int, workers: int = 1, log_level: str = "warning",
        service=None, app=None) -> None:
    """Serve until stopped. One worker: in this process (`app` or `service` if already built). More:
    uvicorn's multi-process supervisor, each worker building from the recipe."""
    check_workers(recipe, workers)
    if workers == 1:
        from edgerec.serve.app import create_app

        app = app or create_app(service or build_service(recipe), recipe.max_body_bytes, console_options(recipe))
        freeze_startup_objects()
        uvicorn.run(app, host=host, port=port, log_level=log_level)
        return
    from uvicorn.supervisors import Multiprocess

    os.environ[ENV_VAR] = recipe.to_json()  # inherited by the spawned workers
    config = TCPConfig("edgerec.serve.server:app_from_env", factory=True, workers=workers, host=host, port=port,
                       log_level=log_level)
    try:  # what uvicorn.run does for workers > 1, with our listening socket
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    except KeyboardInterrupt:
        pass

