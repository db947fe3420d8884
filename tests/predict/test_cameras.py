"""Same answers everywhere: one recording written as AEDAT 3.1, as AEDAT 4 and as EVT 3 (its
events embedded in a larger sensor, among events elsewhere, and brought back by --roi), and
replayed over UDP on 127.0.0.1 by faery's sender, gives identical window predictions."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import faery
import numpy as np
import pytest

from dvsgkit.io.cameras import write_camera
from dvsgkit.io.recordings import iter_recording
from dvsgkit.io.roi import Roi
from dvsgkit.model.inference import for_inference
from dvsgkit.predict.live import LIVE_FILE, predict_live
from dvsgkit.predict.outputs import summary, to_dict
from dvsgkit.predict.windows import Prediction, load_checkpoint_net, predict_recording
from dvsgkit.samples import dataset_dir, list_recordings

SENSOR = (346, 260)  # a DAVIS346
ROI = Roi(150, 70, 128, 128)  # where the DVS128 recording sits on it
ELSEWHERE = 4000  # events outside the region, over the recording's time


@pytest.fixture(scope="module")
def formats(
    trained: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """The trained root's test recording as AEDAT 3.1 (itself), and on a 346 x 260 sensor at
    ROI, with ELSEWHERE events left of it, as AEDAT 4 and EVT 3 (written by faery)."""
    aedat = list_recordings(dataset_dir(trained[0]), "test")[0].aedat
    events = np.concatenate(list(iter_recording(aedat)))
    rng = np.random.default_rng(7)
    noise = np.zeros(ELSEWHERE, events.dtype)
    noise["t"] = np.sort(rng.integers(events["t"][0], events["t"][-1], ELSEWHERE))
    noise["x"], noise["y"] = rng.integers(0, ROI.x, ELSEWHERE), rng.integers(0, 260, ELSEWHERE)
    noise["p"] = rng.integers(0, 2, ELSEWHERE)
    big = events.copy()
    big["x"] += ROI.x
    big["y"] += ROI.y
    big = np.concatenate([big, noise])
    big = big[np.argsort(big["t"], kind="stable")]
    folder = tmp_path_factory.mktemp("formats")
    return {
        "aedat3.1": aedat,
        "aedat4": write_camera(folder / "rec.aedat4", big, SENSOR),
        "evt3": write_camera(folder / "rec.raw", big, SENSOR, "evt3"),
    }


@pytest.fixture(scope="module")
def offline(trained: tuple[Path, Path], formats: dict[str, Path]) -> dict[str, Prediction]:
    net, meta = load_checkpoint_net(trained[1])
    net = for_inference(net, "cpu")
    return {
        kind: predict_recording(net, meta, path, roi=None if kind == "aedat3.1" else ROI)
        for kind, path in formats.items()
    }


def test_aedat_3_1_aedat_4_and_evt_3_give_identical_windows(
    offline: dict[str, Prediction],
) -> None:
    ours = offline["aedat3.1"]
    assert len(ours.starts) > 100 and len(set(ours.preds.tolist())) > 1  # a net that says things
    assert ours.sensor == (128, 128) and ours.outside_roi == 0
    for kind in ("aedat4", "evt3"):
        theirs = offline[kind]
        assert theirs.sensor == SENSOR and theirs.roi == ROI and theirs.outside_roi == ELSEWHERE
        assert theirs.first_t == ours.first_t
        for field in ("starts", "ends", "counts", "rates"):
            assert np.array_equal(getattr(theirs, field), getattr(ours, field)), (kind, field)
        assert to_dict(theirs)["windows"] == to_dict(ours)["windows"]
        assert to_dict(theirs)["outside_roi"] == ELSEWHERE  # dropped, counted and said
        assert (
            f", {ELSEWHERE:,} events outside the region {ROI} of the 346x260 sensor (dropped)"
            in (summary(theirs))
        )


def test_a_replay_over_udp_gives_the_offline_windows(
    trained: tuple[Path, Path], formats: dict[str, Path], offline: dict[str, Prediction],
    tmp_path: Path, free_port: int, faery_replay: Callable[..., int],
) -> None:  # fmt: skip
    """faery replays the AEDAT 4 file's events to 127.0.0.1 (far faster than the recording's
    time, paced so that a busy machine loses nothing: see `faery_replay`); `predict_live`
    receives them, and once the sender has finished and the stop is given, its JSON lines hold
    the very windows of the offline JSON, nothing lost, the events outside the region
    counted."""
    url = f"udp://127.0.0.1:{free_port}"
    stop, lines, sent = threading.Event(), [], []
    events = np.concatenate(list(faery.events_stream_from_file(formats["aedat4"])))

    def replay() -> None:
        try:
            sent.append(faery_replay(events, SENSOR, ("127.0.0.1", free_port)))
        finally:
            stop.set()

    sender = threading.Thread(target=replay)
    summary = predict_live(
        trained[1], url, SENSOR, roi=ROI, out_dir=tmp_path, device="cpu", echo=lines.append,
        note=lambda line: line.startswith("listening") and sender.start(), stop=stop,
        duration_us=300_000_000,  # a bound, should the sender fail
    )  # fmt: skip
    sender.join()
    offline_windows = to_dict(offline["aedat4"])["windows"]
    live = [json.loads(line) for line in (tmp_path / LIVE_FILE).read_text().splitlines()]
    assert len(live) == len(lines) == len(summary.latencies) == len(offline_windows)
    for ours, theirs in zip(live, offline_windows, strict=True):
        assert ours.pop("latency_ms") >= 0
        assert ours == {k: v for k, v in theirs.items() if k != "true_label"}
    assert summary.counts == {"datagrams": sent[0], "received": len(events), "malformed": 0,
                              "off_sensor": 0, "out_of_order": 0,
                              "outside_roi": ELSEWHERE}  # fmt: skip
    assert summary.kernel_drops == 0
