"""O2O feed simulator with known ground truth.

Why: real logs never tell us the true relevance of an exposure or a user's true examination curve,
so position debiasing and time-cycle models cannot be scored against the truth on them. The
simulator plants both effects and returns them. It complements real data; it never replaces it.

Generative story (all seeded, vectorized with numpy):
  * Service categories, each with a demand cycle: daily peaks (breakfast at 7, food delivery at 11,
    18 and 21), weekly peaks (coffee on weekday mornings, hot pot on Friday evening, cinema on
    weekend evenings), or relative cycles (taxi 24 h after the last ride, groceries 7 days after
    the last order). Items belong to one category and carry a short text title.
  * Users are interested in 1-3 categories, and each user's cyclic demand is shifted by a personal
    phase of up to +-1 h. Users open the app in sessions (a personal rate, partly at habit hours).
  * At each session a logging ranker (which knows affinities and item quality, but not the time
    demand, plus noise) shows `feed_size` of `candidates_per_request` random items in order; a
    `random_position_frac` share of requests is shown in random order (like Open Bandit's random
    policy).
  * True relevance r = sigmoid(base + affinity(u, c) + demand_strength * active(u, c) * demand_c(u, t)
    + quality(i)). Each user has a personal examination curve theta_u(p) = rho_u ** (p - 1), with
    rho_u drawn around its browsing segment's value. click ~ Bernoulli(r * theta_u(p)).

Ground truth returned: per exposure (true relevance, examination probability, demand), per user
(segment, rho, examination curve, active categories, phase), per category (cycle kind and peaks).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pyarrow as pa

from edgerec.data.schema import EventDataset, make_events
from edgerec.features.time import SECONDS_PER_DAY, SECONDS_PER_HOUR, time_slots


@dataclass(frozen=True)
class Category:
    """A service category and its true demand cycle.

    kind = "daily":    peaks at `hours` every day
    kind = "weekly":   peaks at (weekday, hour) pairs in `week_peaks` (Monday = 0)
    kind = "relative": peaks `period_h`, 2x and 3x period_h after the user's last click in the
                       category, decaying by 0.6 per repeat
    """

    name: str
    kind: str
    nouns: tuple[str, ...]
    hours: tuple[int, ...] = ()
    week_peaks: tuple[tuple[int, int], ...] = ()
    period_h: float = 0.0
    width_h: float = 1.5  # std of each peak, hours


DEFAULT_CATEGORIES: tuple[Category, ...] = (
    Category("coffee", "weekly", ("Coffee", "Espresso Bar", "Cafe", "Coffee Roasters", "Latte House"),
             week_peaks=tuple((d, 8) for d in range(5))),
    Category("breakfast", "daily", ("Breakfast", "Bakery", "Bagels", "Pancake House", "Dumpling Breakfast"),
             hours=(7,)),
    Category("food delivery", "daily", ("Noodle Delivery", "Burger Delivery", "Pizza Delivery",
                                        "Rice Bowl Delivery", "Fried Chicken Delivery"), hours=(11, 18, 21)),
    Category("hot pot", "weekly", ("Hot Pot", "Hotpot Buffet", "Spicy Hot Pot", "Mala Hot Pot"),
             week_peaks=((4, 19),)),
    Category("taxi", "relative", ("Taxi", "Ride Hailing", "Airport Taxi", "Cab Service", "Car Ride"),
             period_h=24.0, width_h=1.5),
    Category("cinema", "weekly", ("Cinema", "Movie Theater", "IMAX Cinema", "Film House"),
             week_peaks=((5, 20), (6, 20))),
    Category("groceries", "relative", ("Grocery", "Supermarket", "Fresh Market", "Fruit Store", "Greengrocer"),
             period_h=168.0, width_h=6.0),
    Category("bubble tea", "daily", ("Bubble Tea", "Milk Tea", "Tea Shop", "Boba Bar"), hours=(15,)),
)

_ADJECTIVES = ("Golden", "Blue", "Corner", "Sunny", "Urban", "Little", "Royal", "Green", "Old Town",
               "Lucky", "Happy", "Red Lantern", "Silver", "Jade", "Maple", "Harbor", "Lotus", "Star")
_PLACES = ("Downtown", "Riverside", "Station", "Market St", "Uptown", "Eastside", "Park Ave", "Harbor",
           "Central", "Westgate", "Airport", "University")
SEGMENTS = ("deep", "medium", "shallow")
DEVICES = ("tablet", "phone", "phone_small")


@dataclass(frozen=True)
class SimConfig:
    n_users: int = 2000
    n_items: int = 500
    n_days: int = 28
    feed_size: int = 10  # positions 1..feed_size
    candidates_per_request: int = 40  # random items the logging ranker chooses from
    sessions_per_day: float = 1.5  # mean sessions per user per day
    random_position_frac: float = 0.1  # share of requests shown in random order
    segment_rho: tuple[float, ...] = (0.92, 0.75, 0.55)  # deep, medium, shallow browsers
    segment_probs: tuple[float, ...] = (0.3, 0.4, 0.3)
    rho_jitter: float = 0.03
    base_logit: float = -2.0
    active_affinity: float = 1.0
    inactive_affinity: float = -1.5
    demand_strength: float = 3.0
    quality_std: float = 0.5
    logging_noise: float = 1.0
    habit_prob: float = 0.6  # share of sessions opened at one of the user's two habit hours
    start_ts: int = 1767571200  # 2026-01-05 00:00 UTC, a Monday
    seed: int = 0
    categories: tuple[Category, ...] = field(default=DEFAULT_CATEGORIES)


PRESETS: dict[str, dict] = {
    "tiny": dict(n_users=200, n_items=120, n_days=14, feed_size=6, candidates_per_request=24),
    "small": dict(n_users=2000, n_items=500, n_days=28),
    "scale3m": dict(n_users=6000, n_items=1000, n_days=28),  # 2.5M events: bench/scale.py's second size
    "scale7m": dict(n_users=7000, n_items=1500, n_days=60),  # 6.3M events: its third
    "medium": dict(n_users=20000, n_items=2000, n_days=60),
    "large": dict(n_users=100000, n_items=5000, n_days=60),
}


def preset(name: str, **overrides) -> SimConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown o2o-sim size {name!r}; choose one of {sorted(PRESETS)}")
    return replace(SimConfig(**PRESETS[name]), **overrides)


@dataclass
class Simulation:
    """The simulated dataset plus everything the model is supposed to recover."""

    dataset: EventDataset
    exposure_truth: pa.Table  # aligned row-by-row with dataset.events
    user_truth: pa.Table  # one row per user
    config: SimConfig

    def examination_curves(self) -> np.ndarray:
        """(n_users, feed_size) true examination probability per position."""
        return np.stack(self.user_truth.column("exam_curve").to_numpy(zero_copy_only=False))


def _circular_bump(x: np.ndarray, centre: np.ndarray, period: float, width: float) -> np.ndarray:
    d = np.abs((x - centre + period / 2) % period - period / 2)
    return np.exp(-0.5 * (d / width) ** 2)


def cycle_demand(cat: Category, hour_of_week: np.ndarray, phase_h: np.ndarray,
                 gap_h: np.ndarray | None = None) -> np.ndarray:
    """True demand in [0, 1] for category `cat`.

    hour_of_week: fractional hours since Monday 00:00 (UTC); phase_h: the user's phase shift;
    gap_h: hours since the user's last click in the category (nan = never), for relative cycles.
    """
    if cat.kind == "daily":
        hod = hour_of_week % 24.0
        return np.max([_circular_bump(hod, h + phase_h, 24.0, cat.width_h) for h in cat.hours], axis=0)
    if cat.kind == "weekly":
        return np.max([_circular_bump(hour_of_week, d * 24 + h + phase_h, 168.0, cat.width_h)
                       for d, h in cat.week_peaks], axis=0)
    if cat.kind == "relative":
        assert gap_h is not None
        g = np.nan_to_num(gap_h, nan=-1e9)
        out = np.zeros_like(g, dtype=np.float64)
        for m in (1, 2, 3):
            out += 0.6 ** (m - 1) * np.exp(-0.5 * ((g - m * cat.period_h - phase_h) / cat.width_h) ** 2)
        return np.minimum(out, 1.0)
    raise ValueError(f"unknown cycle kind {cat.kind!r}")


def simulate(config: SimConfig | None = None, **overrides) -> Simulation:
    """Run the simulator. Same config (and seed) -> identical output."""
    cfg = replace(config or SimConfig(), **overrides)
    if cfg.candidates_per_request < cfg.feed_size:
        raise ValueError("candidates_per_request must be >= feed_size")
    rng = np.random.default_rng(cfg.seed)
    cats = cfg.categories
    n_cat, U, I, K, M = len(cats), cfg.n_users, cfg.n_items, cfg.feed_size, cfg.candidates_per_request

    # ---- items -------------------------------------------------------------------------
    item_cat = np.arange(I) % n_cat
    rng.shuffle(item_cat)
    quality = rng.normal(0.0, cfg.quality_std, I)
    titles = [
        f"{_ADJECTIVES[rng.integers(len(_ADJECTIVES))]} {cats[c].nouns[rng.integers(len(cats[c].nouns))]}"
        f" {_PLACES[rng.integers(len(_PLACES))]}" for c in item_cat
    ]
    # ---- users -------------------------------------------------------------------------
    segment = rng.choice(len(cfg.segment_rho), size=U, p=np.asarray(cfg.segment_probs) / sum(cfg.segment_probs))
    rho = np.clip(np.asarray(cfg.segment_rho)[segment] + rng.normal(0, cfg.rho_jitter, U), 0.05, 0.99)
    n_active = rng.integers(1, 4, U)
    active = np.zeros((U, n_cat), dtype=bool)
    cat_pop = rng.dirichlet(np.full(n_cat, 2.0))  # some categories are more popular
    for k in range(3):
        pick = rng.choice(n_cat, size=U, p=cat_pop)
        active[np.arange(U), pick] |= k < n_active
    affinity = np.where(active, cfg.active_affinity, cfg.inactive_affinity) + rng.normal(0, 0.3, (U, n_cat))
    phase = rng.uniform(-1.0, 1.0, (U, n_cat))
    # observable device correlates with (but does not reveal) the browsing segment
    device = np.where(rng.random(U) < 0.6, segment, rng.integers(0, 3, U))
    exam_curve = rho[:, None] ** np.arange(K)[None, :]
    # ---- sessions ------------------------------------------------------------------------
    rate = cfg.sessions_per_day * rng.lognormal(-0.125, 0.5, U)
    n_sess = rng.poisson(rate * cfg.n_days)
    s_user = np.repeat(np.arange(U), n_sess)
    n_total = len(s_user)
    habit = rng.choice([7.5, 8.5, 12.0, 18.5, 20.5, 22.0], size=(U, 2))
    activity_hours = rng.choice(24, size=n_total, p=_activity_profile())
    hour = np.where(rng.random(n_total) < cfg.habit_prob,
                    habit[s_user, rng.integers(0, 2, n_total)] + rng.normal(0, 0.7, n_total),
                    activity_hours + rng.random(n_total))
    day = rng.integers(0, cfg.n_days, n_total)
    s_ts = cfg.start_ts + day * SECONDS_PER_DAY + np.clip(hour * SECONDS_PER_HOUR, 0, SECONDS_PER_DAY - 1).astype(np.int64)
    order = np.lexsort((s_ts, s_user))
    s_user, s_ts = s_user[order], s_ts[order]
    first = np.concatenate([[0], np.cumsum(n_sess)[:-1]])
    s_rank = np.arange(n_total) - np.repeat(first, n_sess)

    # ---- rounds: every user's k-th session at once, so relative cycles see earlier clicks ---
    last_click_h = np.full((U, n_cat), np.nan)
    rel_cats = [c for c in range(n_cat) if cats[c].kind == "relative"]
    out: dict[str, list[np.ndarray]] = {k: [] for k in
                                        ("req", "user", "item", "ts", "pos", "click", "rel", "exam", "demand")}
    req_ids = np.arange(n_total)
    for k in range(int(s_rank.max()) + 1 if n_total else 0):
        sel = np.flatnonzero(s_rank == k)
        u, t, req = s_user[sel], s_ts[sel], req_ids[sel]
        n = len(sel)
        cand = rng.integers(0, I, (n, M))
        cand.sort(axis=1)
        dup = np.zeros((n, M), dtype=bool)
        dup[:, 1:] = cand[:, 1:] == cand[:, :-1]
        c_cat = item_cat[cand]
        log_score = affinity[u[:, None], c_cat] + quality[cand] + rng.normal(0, cfg.logging_noise, (n, M))
        randomized = rng.random(n) < cfg.random_position_frac
        log_score[randomized] = rng.random((int(randomized.sum()), M))
        log_score[dup] = -np.inf
        top = np.argsort(-log_score, axis=1, kind="stable")[:, :K]  # (n, K) shown, in display order
        shown = np.take_along_axis(cand, top, 1)
        shown_ok = ~np.take_along_axis(dup, top, 1)
        s_cat = item_cat[shown]
        how = time_slots(t)["weekday"] * 24.0 + (t % SECONDS_PER_DAY) / SECONDS_PER_HOUR  # hour of week
        demand = np.zeros((n, K))
        t_h = t / SECONDS_PER_HOUR
        for c in range(n_cat):
            m = s_cat == c
            if not m.any():
                continue
            rows = np.nonzero(m)[0]
            gap = (t_h[rows] - last_click_h[u[rows], c]) if cats[c].kind == "relative" else None
            demand[m] = cycle_demand(cats[c], how[rows], phase[u[rows], c], gap)
        z = (cfg.base_logit + affinity[u[:, None], s_cat]
             + cfg.demand_strength * active[u[:, None], s_cat] * demand + quality[shown])
        rel = 1.0 / (1.0 + np.exp(-z))
        exam = exam_curve[u][:, :K]
        click = rng.random((n, K)) < rel * exam
        for c in rel_cats:
            hit = (click & (s_cat == c)).any(axis=1)
            last_click_h[u[hit], c] = t_h[hit]
        keep = shown_ok.ravel()
        pos = np.broadcast_to(np.arange(1, K + 1), (n, K))
        for key, val in (("req", np.repeat(req, K)), ("user", np.repeat(u, K)), ("item", shown.ravel()),
                         ("ts", np.repeat(t, K)), ("pos", pos.ravel()), ("click", click.ravel()),
                         ("rel", rel.ravel()), ("exam", exam.ravel()), ("demand", demand.ravel())):
            out[key].append(val[keep])
    cols = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in out.items()}
    order = np.lexsort((cols["pos"], cols["req"], cols["ts"]))
    cols = {k: v[order] for k, v in cols.items()}

    events = make_events({
        "user_id": cols["user"].astype(np.int64), "item_id": cols["item"].astype(np.int64),
        "ts": cols["ts"].astype(np.int64), "label": cols["click"].astype(np.int8),
        "position": cols["pos"].astype(np.int16), "request_id": cols["req"].astype(np.int64),
        "category_id": item_cat[cols["item"].astype(np.int64)].astype(np.int16),
    })
    items = pa.table({"item_id": np.arange(I, dtype=np.int64), "title": titles,
                      "category_id": item_cat.astype(np.int16),
                      "category": [cats[c].name for c in item_cat]})
    users = pa.table({"user_id": np.arange(U, dtype=np.int64),
                      "device": [DEVICES[d] for d in device]})
    exposure_truth = pa.table({"true_relevance": cols["rel"].astype(np.float32),
                               "true_examination": cols["exam"].astype(np.float32),
                               "true_demand": cols["demand"].astype(np.float32)})
    user_truth = pa.table({
        "user_id": np.arange(U, dtype=np.int64), "segment": [SEGMENTS[s] for s in segment],
        "rho": rho.astype(np.float32),
        "exam_curve": pa.array(list(exam_curve.astype(np.float32)), pa.list_(pa.float32())),
        "active_categories": pa.array([list(np.flatnonzero(a).astype(np.int16)) for a in active],
                                      pa.list_(pa.int16())),
        "phase_h": pa.array(list(phase.astype(np.float32)), pa.list_(pa.float32())),
    })
    meta = {
        "source": "edgerec O2O simulator (synthetic, seeded)",
        "config": {k: v for k, v in asdict(cfg).items() if k != "categories"},
        "categories": [asdict(c) for c in cats],
        "side_features": {"request_id": "int64 feed request", "category_id": "int16 service category"},
        "item_features": {"title": "short text title", "category_id": "int16", "category": "string"},
        "user_features": {"device": "tablet|phone|phone_small, correlates 60% with browsing segment"},
        "notes": "Ground truth in truth_exposures.parquet (row-aligned) and truth_users.parquet.",
    }
    return Simulation(EventDataset("o2o-sim", events, items=items, users=users, meta=meta),
                      exposure_truth, user_truth, cfg)


def _activity_profile() -> np.ndarray:
    """When people open a local-services app (UTC = local time here): meal times and evening."""
    h = np.arange(24)
    p = (0.2 + np.exp(-0.5 * ((h - 8) / 1.2) ** 2) + 1.2 * np.exp(-0.5 * ((h - 12) / 1.2) ** 2)
         + 1.5 * np.exp(-0.5 * ((h - 19) / 1.8) ** 2) + 0.5 * np.exp(-0.5 * ((h - 22) / 1.0) ** 2))
    p[1:6] *= 0.1
    return p / p.sum()
