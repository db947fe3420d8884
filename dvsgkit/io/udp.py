"""Events over UDP in faery's format `t64_x16_y16_on8`, as `faery input camera output udp`
sends them: packed 13-byte little-endian records (t uint64 µs, x uint16, y uint16, on uint8),
as many as a datagram holds. A receiving thread, and datagrams -> EVENT_DTYPE events."""

from __future__ import annotations

import errno
import os
import queue
import re
import socket
import threading
import time
from collections.abc import Sequence

import numpy as np

from dvsgkit.constants import EVENT_DTYPE
from dvsgkit.errors import InputError

RECORD = np.dtype([("t", "<u8"), ("x", "<u2"), ("y", "<u2"), ("on", "u1")])  # 13 bytes, packed
RECEIVE_BUFFER = 8 << 20  # bytes asked of the kernel for the socket (it caps at rmem_max)
_URL = re.compile(r"^udp://(\[[0-9a-fA-F:.]+\]|[^:/\[\]]+):(\d{1,5})/?$")
Datagram = tuple[float, bytes]  # (time.perf_counter() at its arrival, its bytes)


def parse_udp_url(text: str) -> tuple[str, int]:
    """ "udp://HOST:PORT" ("udp://[::1]:PORT" for IPv6) -> (host, port)."""
    match = _URL.match(str(text).strip())
    if match is None or not 0 < int(match[2]) < 65536:
        raise InputError(
            f"--live {text!r} is not a UDP address; write udp://HOST:PORT, e.g. "
            "udp://127.0.0.1:7777 (udp://0.0.0.0:7777 listens on every interface)"
        )
    return match[1].strip("[]"), int(match[2])


class Receiver:
    """A UDP socket bound to (host, port) and a thread that moves each datagram, stamped with
    its arrival time, into a queue as soon as it comes: the kernel's buffer is emptied
    whatever the reader is busy with (a datagram that finds it full is lost)."""

    def __init__(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            self.sock.bind((host, port))
        except OSError as exc:
            self.sock.close()
            fix = {
                errno.EADDRINUSE: "give another port, or stop the program that listens there",
                errno.EACCES: "give a port above 1023",
            }.get(exc.errno or 0, "give an address of this machine, e.g. udp://0.0.0.0:PORT")
            cause = exc.strerror or str(exc)
            raise InputError(f"cannot listen on udp://{host}:{port}: {cause}; {fix}") from None
        self.sock.settimeout(0.05)
        self.queue: queue.SimpleQueue[Datagram] = queue.SimpleQueue()
        self.running = True
        self.dropped: int | None = None  # by the kernel, known once closed (`close`)
        self.thread = threading.Thread(target=self._receive, name="udp-receiver", daemon=True)
        self.thread.start()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _receive(self) -> None:
        buf = bytearray(65536)  # the largest datagram
        while self.running:
            try:
                n = self.sock.recv_into(buf)
            except TimeoutError:
                continue
            except OSError:  # the socket was closed under us
                return
            self.queue.put((time.perf_counter(), bytes(buf[:n])))

    def take(self, timeout: float, gather: float = 0.0) -> list[Datagram]:
        """Every datagram received so far, waiting up to `timeout` seconds for a first one, then
        `gather` seconds for more (fewer, larger batches for the reader)."""
        try:
            out = [self.queue.get(timeout=timeout)]
        except queue.Empty:
            return []
        if gather > 0:
            time.sleep(gather)
        while True:
            try:
                out.append(self.queue.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> list[Datagram]:
        """Stop receiving; return the datagrams not yet taken, those still in the kernel's
        buffer included, note in `dropped` those the kernel dropped, and close the socket."""
        if self.sock.fileno() < 0:
            return []
        self.running = False
        self.thread.join()
        left = self.take(0)
        self.sock.setblocking(False)
        while True:
            try:
                left.append((time.perf_counter(), self.sock.recv(65536)))
            except OSError:  # BlockingIOError: the buffer is empty
                break
        self.dropped = self._kernel_drops()
        self.sock.close()
        return left

    def _kernel_drops(self) -> int | None:
        """Datagrams the kernel dropped for this socket (its buffer full), from /proc/net/udp
        (Linux); None where that cannot be read."""
        inode = str(os.fstat(self.sock.fileno()).st_ino)
        for table in ("/proc/net/udp", "/proc/net/udp6"):
            try:
                with open(table) as f:
                    for line in f:
                        fields = line.split()
                        if len(fields) > 12 and fields[9] == inode:
                            return int(fields[-1])
            except OSError:
                continue
        return None


def decode(
    datagrams: Sequence[Datagram], sensor: tuple[int, int], counts: dict[str, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Datagrams -> (EVENT_DTYPE events in arrival order, float64 arrival time of each). A
    datagram that is not whole records (its length not a multiple of 13, a polarity byte other
    than 0/1, a time past int64) is dropped and counted in counts["malformed"]; events off the
    (width, height) sensor are dropped and counted in counts["off_sensor"]; counts["datagrams"]
    and counts["received"] (events) count what came."""
    size = RECORD.itemsize
    good = [(arrival, data) for arrival, data in datagrams if data and len(data) % size == 0]
    counts["datagrams"] += len(datagrams)
    counts["malformed"] += len(datagrams) - len(good)
    raw = np.frombuffer(b"".join(data for _, data in good), RECORD)
    lengths = np.array([len(data) // size for _, data in good], np.int64)
    which = np.repeat(np.arange(len(good)), lengths)  # [n] datagram of each record
    broken = np.bincount(which[(raw["on"] > 1) | (raw["t"] > np.iinfo(np.int64).max)],
                         minlength=len(good)) > 0  # fmt: skip
    counts["malformed"] += int(broken.sum())
    keep = ~broken[which]
    counts["received"] += int(keep.sum())
    width, height = sensor
    off = keep & ((raw["x"] >= width) | (raw["y"] >= height))
    counts["off_sensor"] += int(off.sum())
    raw, which = raw[keep & ~off], which[keep & ~off]
    events = np.empty(len(raw), EVENT_DTYPE)
    events["t"], events["x"], events["y"], events["p"] = raw["t"], raw["x"], raw["y"], raw["on"]
    arrivals = np.array([arrival for arrival, _ in good], np.float64)
    return events, arrivals[which]


def send(
    events: np.ndarray,
    address: tuple[str, int],
    per_datagram: int = 100,
    speed: float | None = None,
) -> np.ndarray:
    """Send EVENT_DTYPE `events` to `address` in this format, `per_datagram` events a datagram
    (faery's default). `speed` None: as fast as the socket takes them; 1: each datagram once
    its last event has happened, counting from the first event's time (as a camera sends
    them); 100: a hundred times faster than that. For tests and benchmarks: returns when each
    datagram left (float64 [D], time.perf_counter(), the one monotonic clock of every
    process)."""
    records = np.empty(len(events), RECORD)
    records["t"], records["x"], records["y"] = events["t"], events["x"], events["y"]
    records["on"] = events["p"]
    due = (events["t"] - events["t"][:1]) / 1e6 / (speed or 1)  # [n] s after the first event
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sent = np.empty(-(-len(records) // per_datagram))  # [D]
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        begin = time.perf_counter()
        for d, i in enumerate(range(0, len(records), per_datagram)):
            part = records[i : i + per_datagram]
            if speed:
                delay = begin + due[i + len(part) - 1] - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            sock.sendto(part.tobytes(), address)
            sent[d] = time.perf_counter()
    return sent
