"""Two-stage online serving: retrieve and pre-rank, then rank with the trained model (issue 5).

  stage 1  `CandidateIndex.retrieve(ts, channel, n)`: every item of the channel, pre-ranked by how
           often it was clicked in this hour of the week (from the log the index is built from: the
           whole log for a live service, the training period for an evaluation) times its online
           CTR; time-slot aware, candidate-cheap, no model. Returns the top n (default 200).
  stage 2  `Ranker.score(...)`: the trained COUPA, DiCycle or DIN with the user's ONLINE features (the
           feature store, folded by the stream). For COUPA, DIN and DiCycle the model is two-part as well:
           `serve_user` computes everything candidate-free once per request, `candidate_logits`
           scores the candidates against it; a test checks this equals one forward pass (1e-5).
           The display position is never an input here: COUPA's relevance tower ranks alone.

`RecommendService` ties stage 1, stage 2, the store and the feedback sink together; `app.py` puts
HTTP in front of it. The request encoding goes through the ONE feature definition
(`FeatureDefinition.user_features`) and the run's own vocabularies, so the served tensors are the
training tensors for the same event (tested against `SampleSet.make_batch`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from edgerec.data.samples import lookup_sorted
from edgerec.errors import EdgerecError
from edgerec.features.definition import (DEFAULT_FUTURE_SKEW_S, HOURS_PER_WEEK, Event, EventError,
                                         FeatureDefinition, cut, hour_of_week)
from edgerec.features.store import counts_of
from edgerec.features.time import local_clock, pack_slots
from edgerec.io import append_jsonl_many, check_writable


class Ranker:
    """Stage 2: a trained CTR model plus the vocabularies its run was trained with."""

    def __init__(self, model: torch.nn.Module, samples, definition: FeatureDefinition):
        if samples.item_ids is None or samples.user_ids is None:
            raise EdgerecError("this run's samples carry no raw id vocabularies; retrain with the current edgerec.")
        self.model = model.eval()
        self.samples = samples
        self.definition = definition
        self.L = samples.spec.max_len
        self.item_ids = samples.item_ids  # raw id of index i at [i - 1], sorted
        self.user_ids = samples.user_ids
        self.two_stage = hasattr(model, "serve_user")
        self.clock = local_clock(samples.spec.tz)  # the model reads local time, as in training

    @classmethod
    def from_run(cls, run_dir: str | Path, definition: FeatureDefinition | None = None) -> "Ranker":
        from edgerec.train.experiment import load_run

        cfg, model, samples = load_run(run_dir)
        d = definition or FeatureDefinition(max_len=samples.spec.max_len, n_positions=max(samples.spec.n_positions, 1),
                                            tz=samples.spec.tz)
        return cls(model, samples, d)

    def item_index(self, raw: np.ndarray) -> np.ndarray:
        """Raw item ids -> the model's 1-based indices; the OOV index for items the model never saw
        (never 0: that is padding, and a masked-in padding slot would be a behaviour of "item 0")."""
        found, at = lookup_sorted(self.item_ids, np.asarray(raw))
        return np.where(found, at + 1, self.samples.spec.oov_item).astype(np.int64)

    def user_index(self, raw: int) -> int:
        """Raw user id -> index; the OOV user for users the run never saw (cold start)."""
        found, at = lookup_sorted(self.user_ids, np.asarray([raw]))
        return int(at[0]) + 1 if found[0] else self.samples.spec.oov_user

    def knows_user(self, raw: int) -> bool:
        return self.user_index(raw) != self.samples.spec.oov_user

    def request_arrays(self, user_id: int, ts: int, feats: dict) -> dict[str, np.ndarray]:
        """Online features (FeatureDefinition.user_features) -> the request in the training layout, as
        numpy (what an exported graph takes, serve/export.py): user (1,), ts (1,) local seconds, and
        the last L clicks, most recent last, left-padded with 0: hist_item, hist_ts, hist_mask
        [, hist_position] (1, L)."""
        L = self.L
        h_item = self.item_index(np.asarray(feats["hist_item"][-L:], dtype=np.int64))
        pad = L - len(h_item)

        def row(x) -> np.ndarray:  # (1, L)
            out = np.zeros((1, L), dtype=np.int64)
            out[0, pad:] = x
            return out

        mask = np.zeros((1, L), dtype=bool)
        mask[0, pad:] = True
        arrays = {"user": np.array([self.user_index(user_id)], dtype=np.int64),
                  "ts": self.clock.local(np.array([ts], dtype=np.int64)),
                  "hist_item": row(h_item),
                  "hist_ts": row(self.clock.local(np.asarray(feats["hist_ts"][-L:], dtype=np.int64))),  # as make_batch
                  "hist_mask": mask}
        if self.samples.store_position is not None:
            arrays["hist_position"] = row(np.asarray(feats["hist_position"][-L:], dtype=np.int64))
        return arrays

    def encode_request(self, user_id: int, ts: int, feats: dict) -> dict[str, torch.Tensor]:
        """`request_arrays` as the batch of 1 a PyTorch model reads: plus the packed time slots and the
        side features of the user and of each behaviour, looked up in the run's code tables."""
        req = {k: torch.from_numpy(v) for k, v in self.request_arrays(user_id, ts, feats).items()}
        mask = req["hist_mask"]
        req["hist_slots"] = torch.where(mask, pack_slots(req["hist_ts"]), 0)
        for name, codes in self.samples.item_feats.items():
            req[f"hist_{name}"] = torch.where(mask, torch.from_numpy(codes)[req["hist_item"]], 0)
        u = int(req["user"][0])
        for name, codes in self.samples.user_feats.items():
            req[f"user_{name}"] = torch.tensor([int(codes[u])])
        return req

    def rank(self, user_id: int, ts: int, feats: dict, items: np.ndarray) -> np.ndarray:
        """Stage 2 of one request (what RecommendService.recommend calls): served relevance (C,) of raw
        item ids `items` for the user's online features `feats` at `ts`."""
        return self.score(self.encode_request(user_id, ts, feats), items)

    def _item_feats(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: torch.from_numpy(codes)[idx] for name, codes in self.samples.item_feats.items()}

    @torch.no_grad()
    def score(self, request: dict[str, torch.Tensor], items: np.ndarray) -> np.ndarray:
        """Served relevance of raw item ids `items` (C,) for one encoded request."""
        idx = torch.from_numpy(self.item_index(np.asarray(items, dtype=np.int64)))  # (C,)
        return torch.sigmoid(self.logits(request, idx)).numpy()

    @torch.no_grad()
    def logits(self, request: dict[str, torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
        """Relevance logits (C,) of candidate item INDICES `idx` (C,): the model's two-stage path (the
        user side once, then the candidates; DIN, DiCycle, COUPA), or one ordinary forward over the
        request repeated C times (`candidate_batch`) for a model without `serve_user`."""
        feats = self._item_feats(idx)
        if self.two_stage:
            return self.model.candidate_logits(self.model.serve_user(request), idx, feats)
        return self.model(candidate_batch(request, idx, feats))["logit"]

    @torch.no_grad()
    def single_pass(self, request: dict[str, torch.Tensor], items: np.ndarray) -> np.ndarray:
        """The same scores from one ordinary forward over C rows (the parity reference)."""
        idx = torch.from_numpy(self.item_index(np.asarray(items, dtype=np.int64)))
        return self.model(candidate_batch(request, idx, self._item_feats(idx)))["y_pred"].numpy()


def candidate_batch(request: dict[str, torch.Tensor], idx: torch.Tensor,
                    item_feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One encoded request (a batch of 1) as a batch of C rows, one per candidate `idx` (C,) with its
    side features: what a CTR model's ordinary forward scores (models without a two-stage path, and
    `Ranker.single_pass`, the parity reference)."""
    C = idx.shape[0]
    batch = {k: v.expand(C, *v.shape[1:]) for k, v in request.items()}  # (C, L) / (C,)
    batch["item"] = idx
    batch.update({f"item_{name}": codes for name, codes in item_feats.items()})
    return batch


@dataclass
class CandidateIndex:
    """Stage 1: the item catalogue with per-item hour-of-week click counts (see `from_dataset`)."""

    item_ids: np.ndarray  # (N,) raw ids
    channel: np.ndarray  # (N,) channel name of each item (the o2o category)
    titles: list[str]
    slot_clicks: np.ndarray  # (N, 168) clicks per local hour of the week
    tz: str = "UTC"  # the catalogue's zone: the hour of the week a request falls in is local
    last_ts: int | None = None  # the newest event of the log it was built from (the console's default time)

    @classmethod
    def from_dataset(cls, ds, until_ts: int | None = None) -> "CandidateIndex":
        """The catalogue and its hour-of-week click counts from the log's clicks before `until_ts`.

        Evaluating a model offline (a bench, a parity test against held-out events) must pass the
        training period's end (`training_cut`), so stage 1 knows nothing of the test period; the live
        service passes None and uses the whole log it was given (docs/design.md, "Serving")."""
        items = ds.items
        if items is None or "item_id" not in items.column_names:
            raise EdgerecError(f"{ds.name}: serving needs an item table (item_id, title, category).")
        ids = items.column("item_id").to_numpy()
        order = np.argsort(ids)
        ids = ids[order]
        cat = (np.asarray(pc.fill_null(pc.cast(items.column("category"), pa.string()), "unknown").to_pylist(),
                          dtype=object)[order]
               if "category" in items.column_names else np.full(len(ids), "all", dtype=object))
        titles = (np.asarray(pc.fill_null(pc.cast(items.column("title"), pa.string()), "").to_pylist(),
                             dtype=object)[order].tolist()
                  if "title" in items.column_names else [str(i) for i in ids])
        ev = ds.events
        clicked = ev.column("label").to_numpy() == 1
        if until_ts is not None:
            clicked &= ev.column("ts").to_numpy() < until_ts
        it = ev.column("item_id").to_numpy()[clicked]
        tz = ds.tz
        how = hour_of_week(ev.column("ts").to_numpy()[clicked], tz)  # (K,) local hour of the week
        counts = np.zeros((len(ids), HOURS_PER_WEEK), dtype=np.float64)
        np.add.at(counts, (np.searchsorted(ids, it), how), 1.0)
        ts = ev.column("ts").to_numpy()
        last = int(ts[ts < until_ts].max(initial=0)) if until_ts is not None else int(ts.max(initial=0))
        return cls(ids, cat, titles, counts, tz, last_ts=last)

    def __post_init__(self) -> None:
        # per request only the 3-hour window changes; the smoothed per-item total is fixed
        self._slot_denominator = self.slot_clicks.sum(1) + HOURS_PER_WEEK / 3  # (N,)
        self._channels = ["all", *sorted(set(self.channel.tolist()))]

    @property
    def channels(self) -> list[str]:
        return list(self._channels)

    def retrieve(self, ts: int, channel: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-n (raw ids, pre-rank scores) for this hour of the week in `channel`."""
        if channel not in self._channels:
            raise UnknownChannel(f"channel {cut(channel)} is unknown; choose one of {self.channels}.")
        h = hour_of_week(ts, self.tz)
        near = self.slot_clicks[:, [(h - 1) % HOURS_PER_WEEK, h, (h + 1) % HOURS_PER_WEEK]].sum(1)  # (N,)
        score = (near + 1.0) / self._slot_denominator  # share of clicks in this slot
        if channel != "all":
            score = np.where(self.channel == channel, score, -np.inf)
        n = min(n, int(np.isfinite(score).sum()))
        top = np.argpartition(-score, n - 1)[:n] if n < len(score) else np.arange(len(score))
        top = top[np.argsort(-score[top], kind="stable")]
        return self.item_ids[top], score[top]


def training_cut(samples) -> int:
    """First timestamp after the training period of an impression-protocol SampleSet (its train /
    validation time cut, rounded up): stage 1's statistics for an evaluation come from strictly
    before it. The online CTR that stage 1 multiplies in is read from the feature store, so a replay
    must also fold only training-period events into the store.

    Leave-last-out (dicycle protocol) has no global training period (each user's evaluation moments
    fall at their own times), so there is no such cut: refused with the reason."""
    import math

    cuts = samples.info.get("split_time_cuts")
    if not cuts:
        raise EdgerecError("--index-period train needs a run on the impression protocol (split by time); a "
                           "leave-last-out (dicycle protocol) run has no single training period to cut at. "
                           "Use --index-period all.")
    return int(math.ceil(cuts[0]))


class UnknownChannel(EdgerecError):
    """A request names a channel the catalogue does not have (the client's mistake: 422)."""


class IdError(EventError):
    """An id of the wrong kind for this service's dataset (text where the dataset has integer ids)."""


class RecommendService:
    """Stage 1 + stage 2 over the online store; feedback goes to the event sink (stream).

    Ids: for an imported dataset the service speaks the user's own ids (text) at its edges and the
    dataset's dense indices inside (the run's id maps, edgerec.data.imports.IdMap); an id the import
    never saw gets a stable hashed index, so a new user's feedback still builds his history."""

    def __init__(self, ranker: Ranker, index: CandidateIndex, store, sink=None,
                 future_skew_s: int | None = DEFAULT_FUTURE_SKEW_S):
        """`future_skew_s`: /feedback refuses events later than this machine's clock plus this many
        seconds (None: no bound), like the stream processor (`run_stream(future_skew_s=...)`)."""
        self.ranker, self.index, self.store, self.sink = ranker, index, store, sink
        self.future_skew_s = future_skew_s
        self._title = dict(zip(index.item_ids.tolist(), index.titles))
        maps = getattr(ranker.samples, "id_maps", None)
        if maps:
            from edgerec.data.imports import IdMap

            self.ids = {"user": IdMap.from_table(maps["id_map_user"]), "item": IdMap.from_table(maps["id_map_item"])}
        else:
            self.ids = None

    def internal_id(self, raw: int | str, kind: str, where: str = "request") -> int:
        """The user's id -> the index the store and the model use (the id itself for bundled data)."""
        if self.ids is not None:
            try:
                return self.ids[kind].encode(raw)
            except ValueError as e:
                raise IdError(f"{where}: {kind}_id {cut(raw)}: {e}", f"{kind}_id") from None
        if isinstance(raw, str):
            raise IdError(f"{where}: {kind}_id {cut(raw)} is text, but this service's dataset has integer ids; "
                          f"send an integer (text ids are for datasets imported with `edgerec data import`)",
                          f"{kind}_id")
        return int(raw)

    def internal_ids(self, event: dict, where: str) -> dict:
        """A wire event with the user's ids -> the same event with internal ids (Event.from_dict next)."""
        out = dict(event)
        for kind in ("user", "item"):
            if out.get(f"{kind}_id") is not None:
                out[f"{kind}_id"] = self.internal_id(out[f"{kind}_id"], kind, where)
        return out

    def external_items(self, items: np.ndarray) -> list:
        """Internal item indices -> the ids the client knows."""
        if self.ids is None:
            return [int(i) for i in items]
        return self.ids["item"].decode(items)

    def recommend(self, user_id: int, ts: int | None = None, channel: str = "all", n_candidates: int = 200,
                  k: int = 20) -> dict:
        """Top-k for a user at time ts (now when None).

        Cold start: a user the model never saw AND with no online history gets stage 1's order as
        it is (popularity in this hour of the week x online CTR; `cold_start: true` in the reply). A
        user the model never saw but with online history is ranked by stage 2 with the OOV user
        index (no user vector) and that history."""
        ts = int(time.time()) if ts is None else int(ts)
        t0 = time.perf_counter()
        raw_user, user_id = user_id, self.internal_id(user_id, "user")
        state = self.store.user(user_id)
        feats = self.ranker.definition.user_features(state, ts)
        t1 = time.perf_counter()
        cand, pre = self.stage1(ts, channel, n_candidates)
        t2 = time.perf_counter()
        cold = not feats["hist_item"] and not self.ranker.knows_user(user_id)
        if cold:
            scores = pre
        else:
            scores = self.ranker.rank(user_id, ts, feats, cand)
            if not np.isfinite(scores).all():  # never serve a NaN ranking: the app answers 503
                raise ScorerFailed(f"stage 2 gave {int((~np.isfinite(scores)).sum())} non-finite scores of "
                                   f"{len(scores)} for user {user_id}")
        order = np.argsort(-scores, kind="stable")[:k]
        t3 = time.perf_counter()
        shown = self.external_items(cand[order])
        return {"user_id": raw_user, "ts": ts, "channel": channel, "n_candidates": int(len(cand)),
                "history_length": len(feats["hist_item"]), "cold_start": cold,
                "items": [{"item_id": shown[r], "score": float(scores[j]), "prerank_score": float(pre[j]),
                           "title": self._title.get(int(cand[j]), "")} for r, j in enumerate(order)],
                "timing_ms": {"features": 1e3 * (t1 - t0), "stage1": 1e3 * (t2 - t1), "stage2": 1e3 * (t3 - t2)}}

    def stage1(self, ts: int, channel: str, n_candidates: int) -> tuple[np.ndarray, np.ndarray]:
        """Stage 1: the top `n_candidates` (internal ids, pre-rank scores), best first. Pre-rank =
        the item's share of clicks in this hour of the week (CandidateIndex) x its online CTR (store)."""
        cand, slot_share = self.index.retrieve(ts, channel, n_candidates)
        ids = cand.tolist()
        counts = getattr(self.store, "item_counts", None)  # a store of one's own may have only `items`
        exposures, clicks = counts(ids) if counts is not None else counts_of(self.store.items(ids))
        pre = slot_share * self.ranker.definition.ctr(clicks=clicks, exposures=exposures)  # slot share x online CTR
        order = np.argsort(-pre, kind="stable")
        return cand[order], pre[order]

    def feedback(self, events: list[Event]) -> int:
        """Hand events to the stream (Kafka or an event file); with no sink, apply them in-process."""
        if isinstance(self.sink, FileEventSink):  # the stream would dead-letter a late event: refuse it here
            from edgerec.features.store import LateGate
            from edgerec.serve.stream import file_source_name

            # the stream's watermark will be at least the store's and the newest event already written
            marks = [w for w in (self.store.watermark(file_source_name(self.sink.path)), self.sink.newest_ts)
                     if w is not None]
            gate = LateGate(max(marks) if marks else None, getattr(self.store, "dedup_window_s", None), on_late=None)
            for e in events:
                gate.admits(e)  # LateEventError (422) naming the event; nothing of the request is written
                gate.applied(e)
        if self.sink is not None:  # Kafka: partitions have their own watermarks; the stream dead-letters late ones
            return self.sink.send(events)
        return self.store.apply(events, self.ranker.definition)


class ScorerFailed(RuntimeError):
    """The model could not score a valid request (not the client's fault: the app answers 503)."""


class FileEventSink:
    """Appends events to the JSON-lines file `edgerec stream --events` consumes (embedded default)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        check_writable(self.path, "--feedback-to")  # at start-up, not at the first /feedback (a 500)
        self.newest_ts: int | None = None  # newest event time this sink wrote (what the stream will see next)

    def send(self, events: list[Event]) -> int:
        append_jsonl_many(self.path, [e.to_dict() for e in events])  # one write and one fsync per request
        if events:
            newest = max(e.ts for e in events)
            self.newest_ts = newest if self.newest_ts is None else max(self.newest_ts, newest)
        return len(events)
