"""A phone in the feed loop: raw behaviour stays here, only aggregates leave (issue 5 §6).

`Device` holds the user's raw events (item, title, time, position) in memory, like the app's local
store. From them it computes real-time features the cloud cannot see yet (what the user clicked in
the last minutes, and in which categories), runs the EI-BERT edge model (numpy runtime, packed file)
on item titles and on the user's typed query, and re-ranks the list the cloud returned:

    score'(i) = cloud_score(i) + w_intent · P(category(i) | query) + w_recent · share of the user's
                clicks in the last `window_s` seconds whose titles EI-BERT puts in category(i)

Categories come from the edge model's `item_category` head: the cloud never sends categories, the
device reads titles. `upload()` returns what leaves the device: counts and histograms only (clicks
per display position, clicks per category, session length), never an item id, a title or a
timestamp: a test checks it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from edgerec.serve.edge.runtime import EdgeModel

TASK = "item_category"


@dataclass
class DeviceEvent:
    item_id: int
    title: str
    ts: int
    kind: str  # exposure | click
    position: int | None = None


@dataclass
class Device:
    user_id: int
    model: EdgeModel
    window_s: int = 1800
    w_intent: float = 0.5
    w_recent: float = 0.3
    events: list[DeviceEvent] = field(default_factory=list)
    _cat_cache: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        if TASK not in self.model.tasks:
            raise ValueError(f"the edge model has no {TASK!r} head (it has {sorted(self.model.tasks)})")
        self.labels = self.model.tasks[TASK]

    # ---- on-device features -----------------------------------------------------------------
    def record(self, ev: DeviceEvent) -> None:
        self.events.append(ev)

    def record_clicks(self, state, titles: dict, before_ts: int | None = None) -> None:
        """Load a user's clicks from the online store's state (recent_item/_ts/_position), those
        before `before_ts` when given: what the phone would hold at that moment (demo, console)."""
        for item, ts, pos in zip(state.recent_item, state.recent_ts, state.recent_position):
            if before_ts is None or ts < before_ts:
                self.record(DeviceEvent(int(item), titles.get(int(item), ""), int(ts), "click", pos or None))

    def category_probs(self, titles: list[str]) -> np.ndarray:
        """(n, C) EI-BERT category distribution per title (cached: titles repeat in a feed)."""
        todo = [t for t in dict.fromkeys(titles) if t not in self._cat_cache]
        if todo:
            z = self.model.logits(todo, TASK)
            p = np.exp(z - z.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            self._cat_cache.update(zip(todo, p))
        return np.stack([self._cat_cache[t] for t in titles]) if titles else np.zeros((0, len(self.labels)))

    def recent_category_share(self, now: int) -> np.ndarray:
        clicks = [e for e in self.events if e.kind == "click" and now - self.window_s <= e.ts < now]
        if not clicks:
            return np.zeros(len(self.labels))
        return self.category_probs([e.title for e in clicks]).mean(0)

    # ---- re-ranking -------------------------------------------------------------------------
    def rerank(self, items: list[dict], now: int, query: str | None = None) -> list[dict]:
        """`items`: the cloud's response items (item_id, score, title). Returns them re-ordered, each
        with `edge_score`, `edge_category` and the two boosts that moved it."""
        if not items:
            return []
        P = self.category_probs([it["title"] for it in items])  # (n, C)
        recent = self.recent_category_share(now)  # (C,)
        intent = self.category_probs([query])[0] if query else np.zeros(len(self.labels))
        out = []
        for it, p in zip(items, P):
            b_intent = float(p @ intent)
            b_recent = float(p @ recent)
            out.append({**it, "edge_category": self.labels[int(p.argmax())], "intent_boost": b_intent,
                        "recent_boost": b_recent,
                        "edge_score": it["score"] + self.w_intent * b_intent + self.w_recent * b_recent})
        return sorted(out, key=lambda x: -x["edge_score"])

    # ---- what leaves the device -------------------------------------------------------------
    def upload(self) -> dict:
        clicks = [e for e in self.events if e.kind == "click"]
        pos = Counter(e.position for e in clicks if e.position)
        cats = Counter(self.labels[int(p.argmax())] for p in self.category_probs([e.title for e in clicks])) \
            if clicks else Counter()
        return {"user_id": self.user_id, "exposures": sum(e.kind == "exposure" for e in self.events),
                "clicks": len(clicks), "clicks_by_position": {str(k): v for k, v in sorted(pos.items())},
                "clicks_by_category": dict(sorted(cats.items()))}
