"""Events over UDP in faery's t64_x16_y16_on8 format: datagrams decoded with numpy, what cannot
be right counted (never raised), faery's own sender received whole, a port in use one line."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import faery  # in the [dev] extra, so that CI checks the format against it
import numpy as np
import pytest

from dvsgkit.constants import EVENT_DTYPE
from dvsgkit.io.udp import RECORD, Receiver, decode, parse_udp_url, send


def records(t: list[int], x: list[int], y: list[int], on: list[int]) -> bytes:
    r = np.zeros(len(t), RECORD)
    r["t"], r["x"], r["y"], r["on"] = t, x, y, on
    return r.tobytes()


def zero_counts() -> dict[str, int]:
    return dict.fromkeys(("datagrams", "received", "malformed", "off_sensor"), 0)


def test_the_format_is_faerys() -> None:
    assert RECORD.itemsize == 13
    ev = np.zeros(2, faery.EVENTS_DTYPE)
    ev["t"], ev["x"], ev["y"], ev["on"] = [5, 2**40], [1, 345], [2, 259], [True, False]
    assert ev.tobytes() == records([5, 2**40], [1, 345], [2, 259], [1, 0])  # what it sends


def test_decode_counts_what_cannot_be_right() -> None:
    """Datagrams that are not whole 13-byte records (or hold a polarity byte other than 0/1,
    or a time past int64) are dropped whole and counted; events off the sensor are dropped
    and counted; the rest keep their order and each its datagram's arrival time."""
    good = records([10, 11], [0, 345], [0, 259], [0, 1])
    datagrams = [
        (1.0, good),
        (2.0, good[:-1]),  # 25 bytes
        (3.0, b""),
        (4.0, records([12, 13], [1, 2], [1, 2], [1, 7])),  # polarity byte 7
        (5.0, records([2**63], [1], [1], [1])),
        (6.0, records([14, 15, 16], [346, 3, 4], [0, 260, 5], [1, 1, 0])),
    ]
    counts = zero_counts()
    events, arrivals = decode(datagrams, (346, 260), counts)
    assert counts == {"datagrams": 6, "received": 5, "malformed": 4, "off_sensor": 2}
    assert events.dtype == EVENT_DTYPE
    assert events["t"].tolist() == [10, 11, 16] and events["x"].tolist() == [0, 345, 4]
    assert events["p"].tolist() == [0, 1, 0] and arrivals.tolist() == [1.0, 1.0, 6.0]
    assert len(decode([], (346, 260), counts)[0]) == 0


def test_udp_urls() -> None:
    assert parse_udp_url("udp://127.0.0.1:7777") == ("127.0.0.1", 7777)
    assert parse_udp_url("udp://[::1]:7777") == ("::1", 7777)
    assert parse_udp_url("udp://camera.local:9000/") == ("camera.local", 9000)
    for bad in ("127.0.0.1:7777", "udp://host", "udp://host:0", "udp://host:70000", "tcp://a:1"):
        with pytest.raises(ValueError, match=f"--live '{bad}' is not a UDP address; write"):
            parse_udp_url(bad)


def test_a_port_in_use_is_one_line() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(ValueError) as err:
            Receiver("127.0.0.1", port)
    assert str(err.value) == (
        f"cannot listen on udp://127.0.0.1:{port}: Address already in use; give another port, "
        "or stop the program that listens there"
    )


def test_the_receiver_gets_every_datagram_of_faerys_sender(
    faery_replay: Callable[..., int],
) -> None:
    """faery's own sender (paced: see `faery_replay`), and ours at a camera's pace: every event
    arrives, in order; what is still in the kernel's buffer when the receiver closes is
    returned too."""
    n = 20_000
    ev = np.zeros(n, faery.EVENTS_DTYPE)
    ev["t"], ev["x"], ev["y"], ev["on"] = np.arange(n) * 3, np.arange(n) % 346, 7, np.arange(n) % 2
    with Receiver("127.0.0.1", 0) as receiver:
        address = receiver.sock.getsockname()
        sender = threading.Thread(target=faery_replay, args=(ev, (346, 260), address))
        sender.start()
        sender.join()
        got = receiver.take(1.0)
        left = receiver.close()
    assert receiver.dropped in (0, None) and len(got) + len(left) == n // 100
    counts = zero_counts()
    events, _ = decode(got + left, (346, 260), counts)
    assert counts["received"] == n and counts["malformed"] == counts["off_sensor"] == 0
    assert np.array_equal(events["t"], ev["t"]) and np.array_equal(events["p"], ev["on"])
    ours = np.zeros(300, EVENT_DTYPE)
    ours["t"] = np.arange(300) * 1000  # 0.3 s of events
    with Receiver("127.0.0.1", 0) as receiver:
        begin = time.perf_counter()
        sent = send(ours, receiver.sock.getsockname(), per_datagram=50, speed=1)
        took = time.perf_counter() - begin
        time.sleep(0.05)
        arrived = receiver.take(0.5)
    assert took >= 0.299 and len(arrived) == 6  # the last datagram waits for its last event
    # when each datagram left: once its last event (t 49, 99, ... 299 ms) was due
    assert len(sent) == 6 and (sent - begin >= np.arange(49, 300, 50) / 1e3).all()
