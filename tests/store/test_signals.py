"""BuildSignals: a signal during a build is noted, raised only at the next check."""

from __future__ import annotations

import os
import signal

import pytest

from dvsgkit.store.signals import BuildSignals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_is_raised_at_the_next_check_only(sig: signal.Signals) -> None:
    before = signal.getsignal(sig)
    with BuildSignals() as signals:
        signals.check()  # nothing yet
        os.kill(os.getpid(), sig)  # delivered to this (main) thread before kill returns
        assert signals.received == sig  # noted, and nothing raised inside the handler
        with pytest.raises(KeyboardInterrupt, match=f"interrupted by {sig.name}"):
            signals.check()
    assert signal.getsignal(sig) is before  # the caller's handler is back
