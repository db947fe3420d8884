"""--device strings dvsgkit refuses, with the fix."""

from __future__ import annotations

import pytest

from dvsgkit.device import parse_device


@pytest.mark.parametrize("device", ["mps", "meta", "xpu:0"])
def test_devices_dvsgkit_cannot_train_on_are_refused(device: str) -> None:
    with pytest.raises(ValueError, match=f"--device {device}: dvsgkit runs on cpu, cuda or cuda:N"):
        parse_device(device)
