"""`dvsgkit predict --live` as a user runs it: a line per window, Ctrl-C ends it with a summary,
bad input is counted or one line, never a traceback."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from dvsgkit.device import cpus_available
from dvsgkit.io.recordings import iter_recording
from dvsgkit.io.udp import send
from dvsgkit.model.inference import for_inference
from dvsgkit.predict.live import LIVE_FILE
from dvsgkit.predict.outputs import to_dict
from dvsgkit.predict.windows import load_checkpoint_net, predict_recording


def test_ctrl_c_ends_a_live_run_with_its_summary_and_bad_input_is_counted(
    trained: tuple[Path, Path], recording: tuple[Path, Path], tmp_path: Path, free_port: int
) -> None:
    """The recording sent to a running `dvsgkit predict --live` (at 100 times its pace: paced,
    so that a busy machine loses nothing), then a datagram too short, one of faery's other
    format (8-byte records), events off the 128 x 128 sensor and events out of order; then
    Ctrl-C. The windows are the offline ones (a line each, and a JSON line each); the bad
    input is said once per kind on stderr and counted in the summary line; exit status 0."""
    _, ckpt = trained
    aedat, _ = recording
    events = np.concatenate(list(iter_recording(aedat)))
    out, address = tmp_path / "out", ("127.0.0.1", free_port)
    args = ["predict", str(ckpt), "--live", f"udp://127.0.0.1:{free_port}", "--sensor", "128x128",
            "--out-dir", str(out), "--device", "cpu"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "dvsgkit_cli.main", *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        listening = proc.stderr.readline()  # once bound (and Ctrl-C handled)
        assert listening.startswith(f"listening on udp://127.0.0.1:{free_port} for a 128x128 ")
        send(events, address, speed=100)
        off, late = events[-7:].copy(), events[:5].copy()
        off["x"] = 200
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"\x01" * 7, address)
            sock.sendto(b"\x00" * 16, address)  # two t32_x16_y15_on1 records
        send(off, address)
        send(late, address)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and len(stderr.splitlines()) == 3, stderr
    assert "(dropped, counted in the summary)" in stderr
    lines = stdout.splitlines()
    net, meta = load_checkpoint_net(ckpt)
    offline = to_dict(predict_recording(for_inference(net, "cpu"), meta, aedat))["windows"]
    live = [json.loads(line) for line in (out / LIVE_FILE).read_text().splitlines()]
    assert len(lines) == len(live) + 2 == len(offline) + 2
    for ours, theirs in zip(live, offline, strict=True):
        ours.pop("latency_ms")
        assert ours == {k: v for k, v in theirs.items() if k != "true_label"}
    first = live[0]
    assert lines[0].split()[:2] == ["0.00-1.50", "s"] and f"{first['events']:,} events" in lines[0]
    received = len(events) + len(off) + len(late)
    datagrams = -(-len(events) // 100) + 2 + 2
    assert lines[-2].startswith(f"udp://127.0.0.1:{free_port}: {len(live)} windows in ") and lines[
        -2
    ].endswith(
        f" from {received:,} events in {datagrams:,} datagrams; "
        f"latency median {lines[-2].split('median ')[1].split(';')[0]}; dropped: 5 events out "
        "of order, 2 malformed datagrams, 7 events off the 128x128 sensor, 0 outside the "
        "region 0,0,128,128, 0 datagrams lost in a full receive buffer"
    )
    assert lines[-1] == f"  jsonl: {out / LIVE_FILE}"


def test_live_options_and_a_port_in_use(
    trained: tuple[Path, Path], recording: tuple[Path, Path], tmp_path: Path, free_port: int,
    run_cli: Callable[..., tuple[int, str]],
) -> None:  # fmt: skip
    """Options that do not go with --live (or need it) are usage errors; a port in use is one
    line; --duration ends a run that got nothing with its summary, and leaves torch's threads
    as they were."""
    _, ckpt = trained
    aedat, _ = recording
    url = f"udp://127.0.0.1:{free_port}"
    base = ["predict", str(ckpt), "--device", "cpu", "--out-dir", str(tmp_path / "out")]
    usage = {
        ("--live", url): "--live needs --sensor WxH",
        ("--live", url, "--sensor", "128x128", str(aedat)): "give no RECORDING, --labels",
        ("--live", url, "--sensor", "128x128", "--windows", "labels"): "give no RECORDING",
        (str(aedat), "--sensor", "128x128"): "--sensor is for --live",
        (str(aedat), "--duration", "2s"): "--duration is for --live",
        (): "give RECORDING(s), or --live udp://HOST:PORT",
    }
    for args, message in usage.items():
        code, output = run_cli(*base, *args)
        assert code == 2 and message in output, (args, output)
    one_line = {
        ("--live", "udp://127.0.0.1", "--sensor", "128x128"): "is not a UDP address",
        ("--live", url, "--sensor", "128"): "--sensor '128' is not a sensor size",
        ("--live", url, "--sensor", "128x128", "--roi", "0,0,129,128"): "lies off its 128x128",
    }
    for args, message in one_line.items():
        code, output = run_cli(*base, *args)
        assert code == 1 and len(output.splitlines()) == 1 and message in output, output
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", free_port))
        code, output = run_cli(*base, "--live", url, "--sensor", "128x128")
    assert code == 1
    assert output == (
        f"Error: cannot listen on {url}: Address already in use; give another port, or stop "
        "the program that listens there\n"
    )
    assert not (tmp_path / "out" / LIVE_FILE).exists()
    before, threads = torch.get_num_threads(), min(2, cpus_available())
    torch.set_num_threads(threads)  # as many as the run may take: it leaves one to its receiver
    try:
        code, output = run_cli(*base, "--live", url, "--sensor", "346x260", "--duration", "0.2s")
        assert torch.get_num_threads() == threads  # and gives it back
    finally:
        torch.set_num_threads(before)
    assert code == 0, output
    assert output.splitlines()[-2] == (
        f"{url}: 0 windows from 0 events in 0 datagrams; dropped: 0 events out of order, 0 "
        "malformed datagrams, 0 events off the 346x260 sensor, 0 outside the region "
        "43,0,260,260, 0 datagrams lost in a full receive buffer"
    )
