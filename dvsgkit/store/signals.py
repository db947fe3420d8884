"""Ctrl-C and kill during a store build: noted when they arrive, acted on between steps."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any


class BuildSignals:
    """SIGINT (Ctrl-C) and SIGTERM (kill) during a build, noted by the handler and acted on by
    `check` between steps, which raises KeyboardInterrupt so the build's cleanup runs. Raising
    from the handler itself is not safe: it can fire inside a weakref callback (h5py and zarr run
    many), where Python prints the exception and carries on, and the build would complete.
    Outside the main thread (where handlers cannot be installed) it does nothing."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous: dict[int, Any] = {}
        self.pid = os.getpid()

    def __enter__(self) -> BuildSignals:
        if threading.current_thread() is threading.main_thread():  # else signal() would raise
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._note)
        return self

    def _note(self, signum: int, frame: object) -> None:
        if os.getpid() != self.pid:
            # A pool worker forked during the build, before its initializer restored the default
            # action: the signal (the pool stopping it) must end it, not be noted and ignored,
            # or the pool waits for it forever.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signum

    def check(self) -> None:
        """Raise KeyboardInterrupt naming the signal if one has arrived."""
        if self.received is not None:
            raise KeyboardInterrupt(f"interrupted by {signal.Signals(self.received).name}")

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
