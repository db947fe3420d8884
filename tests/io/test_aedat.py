"""AEDAT 3.1 reader: round trips through the writer, packet rules, and every malformed file."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from dvsgkit.constants import EVENT_DTYPE
from dvsgkit.io.aedat import (
    AedatError,
    ReadBuffers,
    decode_words,
    iter_events,
    iter_words,
    read_events,
    read_header,
)
from dvsgkit.io.aedat_writer import AedatWriter, packet_header, write_aedat

HEADER = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#Start-Time: x\r\n#!END-HEADER\r\n"


def make_events(n: int, seed: int = 0, t0: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ev = np.empty(n, dtype=EVENT_DTYPE)
    ev["t"] = t0 + np.cumsum(rng.integers(0, 50, n))
    ev["x"] = rng.integers(0, 128, n)
    ev["y"] = rng.integers(0, 128, n)
    ev["p"] = rng.integers(0, 2, n)
    return ev


def slow_reference(path: Path) -> np.ndarray:
    """One event at a time with struct, straight from docs/reference.md §2: the slow path that the
    vectorised reader must agree with."""
    data = path.read_bytes()
    pos = data.index(b"#!END-HEADER\r\n") + len(b"#!END-HEADER\r\n")
    rows = []
    while pos < len(data):
        etype, _, esize, _, overflow, capacity, number, _ = struct.unpack_from(
            "<HHIIIIII", data, pos
        )
        pos += 28
        if etype == 1:
            for k in range(number):
                word, ts = struct.unpack_from("<II", data, pos + 8 * k)
                if word & 1:
                    rows.append(
                        (
                            ts | overflow << 31,
                            (word >> 17) & 0x7FFF,
                            (word >> 2) & 0x7FFF,
                            (word >> 1) & 1,
                        )
                    )
        pos += capacity * esize
    return np.array(rows, dtype=EVENT_DTYPE)


def polarity_packet(
    events: np.ndarray,
    *,
    overflow: int = 0,
    capacity: int | None = None,
    invalid: tuple[int, ...] = (),
) -> bytes:
    """A hand-made polarity packet; slots past len(events) are filled with junk words."""
    capacity = len(events) if capacity is None else capacity
    words = np.zeros((capacity, 2), dtype="<u4")
    words[:, :] = 0xFFFFFFFF  # junk in unused capacity: must not be read
    words[: len(events), 0] = (
        (events["x"].astype(np.uint32) << 17)
        | (events["y"].astype(np.uint32) << 2)
        | (events["p"].astype(np.uint32) << 1)
        | 1
    )
    words[: len(events), 1] = events["t"] & 0x7FFFFFFF
    for i in invalid:
        words[i, 0] &= ~np.uint32(1)
    head = packet_header(1, 8, capacity, number=len(events), ts_overflow=overflow)
    return head + words.tobytes()


@pytest.mark.parametrize("packet_events", [1, 7, 8192])
def test_round_trip_matches_slow_reference(tmp_path: Path, packet_events: int) -> None:
    ev = make_events(5000)
    path = write_aedat(tmp_path / "a.aedat", ev, packet_events=packet_events)
    got = read_events(path)
    np.testing.assert_array_equal(got, ev)
    np.testing.assert_array_equal(got, slow_reference(path))


def test_sensor_corners_and_polarities_round_trip(tmp_path: Path) -> None:
    ev = np.zeros(8, dtype=EVENT_DTYPE)
    ev["t"] = np.arange(8)
    ev["x"] = [0, 127, 0, 127, 0, 127, 0, 127]
    ev["y"] = [0, 0, 127, 127, 0, 0, 127, 127]
    ev["p"] = [0, 0, 0, 0, 1, 1, 1, 1]
    np.testing.assert_array_equal(read_events(write_aedat(tmp_path / "c.aedat", ev)), ev)


def test_timestamp_overflow_is_applied(tmp_path: Path) -> None:
    ev = make_events(3000)
    ev["t"] += (1 << 31) - int(ev["t"][1500])  # crosses 2^31 in the middle
    ev["t"][2500:] += 3 << 31  # and jumps by several overflows
    path = write_aedat(tmp_path / "o.aedat", ev, packet_events=512)
    got = read_events(path)
    assert got["t"].max() > 4 << 31
    np.testing.assert_array_equal(got, ev)
    np.testing.assert_array_equal(got, slow_reference(path))


def test_chunked_reading_equals_whole(tmp_path: Path) -> None:
    ev = make_events(10_000)
    path = write_aedat(tmp_path / "a.aedat", ev, packet_events=300)
    chunks = list(iter_events(path, chunk_events=1000))
    assert len(chunks) > 5 and all(len(c) <= 1000 + 300 for c in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks), ev)


@pytest.mark.parametrize("chunk_events", [1, 999, 1 << 22])
def test_one_pass_decodes_and_hashes_the_whole_file(tmp_path: Path, chunk_events: int) -> None:
    """Chunks of one packet larger than chunk_events, of several packets, and the whole file:
    the same events, and the digest sees every byte, header included."""
    ev = make_events(30_000)
    path = write_aedat(tmp_path / "a.aedat", ev, packet_events=20_000)  # 160 kB packets
    digest = hashlib.sha256()
    parts = [(t.copy(), d.copy()) for t, d in iter_words(path, chunk_events=chunk_events,
                                                         digest=digest)]  # fmt: skip
    assert digest.hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()
    t = np.concatenate([p[0] for p in parts])
    np.testing.assert_array_equal(t, ev["t"])
    assert len(parts) == (2 if chunk_events < 20_000 else 1)


def test_reused_buffers_serve_files_of_any_size_in_turn(tmp_path: Path) -> None:
    buffers = ReadBuffers()
    for k, n in enumerate([5000, 20, 12_000, 0, 3000]):
        ev = make_events(n, seed=k)
        path = write_aedat(tmp_path / f"{k}.aedat", ev, packet_events=1 + k * 700)
        got = [decode_words(t, d) for t, d in iter_words(path, chunk_events=2000, buffers=buffers)]
        np.testing.assert_array_equal(np.concatenate(got) if got else ev[:0], ev)


def test_other_packet_types_are_skipped_by_declared_size(tmp_path: Path) -> None:
    a, b = make_events(100, 1), make_events(50, 2, t0=10_000)
    path = tmp_path / "mixed.aedat"
    with AedatWriter(path) as w:
        w.write_raw(packet_header(0, 8, 3) + bytes(24))  # special events
        w.write(a)
        w.write_raw(packet_header(2, 12, 5) + b"\x01" * 60)  # frame-like, odd size
        w.write_raw(packet_header(5, 0, 0))  # empty packet
        w.write(b)
    np.testing.assert_array_equal(read_events(path), np.concatenate([a, b]))


def test_unused_capacity_and_invalid_events_are_dropped(tmp_path: Path) -> None:
    ev = make_events(20)
    path = tmp_path / "partial.aedat"
    path.write_bytes(HEADER + polarity_packet(ev, capacity=32, invalid=(3, 7)))
    got = read_events(path)
    np.testing.assert_array_equal(got, np.delete(ev, [3, 7]))
    np.testing.assert_array_equal(got, slow_reference(path))


def test_header_fields(tmp_path: Path) -> None:
    path = write_aedat(tmp_path / "h.aedat", make_events(3), start_time="2017-04-07 10:02:46")
    header = read_header(path)
    assert header.version == "3.1"
    assert header.field("Source 1") == "DVS128"
    assert header.field("Start-Time") == "2017-04-07 10:02:46"
    assert header.lines[0] == "#!AER-DAT3.1" and header.lines[-1] == "#!END-HEADER"
    assert path.read_bytes()[header.data_offset - 14 : header.data_offset] == b"#!END-HEADER\r\n"


def test_header_line_count_and_lf_endings_are_not_assumed(tmp_path: Path) -> None:
    ev = make_events(10)
    head = b"#!AER-DAT3.1\n#Format: RAW\n#Source 1: DVS128\n#extra: 1\n#more\n#!END-HEADER\n"
    path = tmp_path / "lf.aedat"
    path.write_bytes(head + polarity_packet(ev))
    assert len(read_header(path).lines) == 6
    np.testing.assert_array_equal(read_events(path), ev)


def test_empty_recording_reads_as_no_events(tmp_path: Path) -> None:
    path = tmp_path / "e.aedat"
    path.write_bytes(HEADER)
    assert len(read_events(path)) == 0 and read_events(path).dtype == EVENT_DTYPE


def good_file() -> bytes:
    return HEADER + polarity_packet(make_events(10)) + polarity_packet(make_events(10, 1))


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", r"empty file at byte 0"),
        (b"#!AER-DAT2.0\r\n" + good_file()[14:], r"not an AEDAT 3.x file: byte 0"),
        (good_file()[14:], r"not an AEDAT 3.x file: byte 0"),
        (
            b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Sou",
            r"no #!END-HEADER line: the header ends at byte 28",
        ),
        (HEADER.replace(b"#!END-HEADER\r\n", b"") + bytes(28), r"no #!END-HEADER line"),
        (
            good_file()[: len(HEADER) + 116],
            rf"truncated packet header at byte {len(HEADER) + 108}: 8 bytes left",
        ),
        (good_file()[:-5], rf"packet at byte {len(HEADER) + 108} declares 10 x 8 bytes"),
        (
            HEADER + packet_header(1, 4, 2) + bytes(8),
            rf"polarity packet at byte {len(HEADER)} has eventSize 4",
        ),
        (HEADER + packet_header(1, 8, 2, number=3) + bytes(16), r"eventNumber 3 > eventCapacity 2"),
    ],
    ids=[
        "empty",
        "wrong-version",
        "no-version-line",
        "mid-header",
        "no-end-header",
        "mid-packet-header",
        "payload-past-eof",
        "event-size",
        "number-over-capacity",
    ],
)
def test_malformed_files_name_path_and_byte(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "bad.aedat"
    path.write_bytes(content)
    with pytest.raises(AedatError, match=match) as info:
        read_events(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)
