"""A frame store of a custom integrator (SpikingJelly's custom_integrate_function): its spec,
the provenance it records, and the one line for a store that cannot be rebuilt without it."""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any

from dvsgkit.errors import InputError
from dvsgkit.frames import FrameSpec, Integrator


def provenance(fn: Integrator) -> dict[str, Any]:
    """The function's qualified name and the sha256 of its source (None where Python cannot
    see the source: a built-in, an interactive session)."""
    try:
        digest = hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()
    except (OSError, TypeError):
        digest = None
    name = getattr(fn, "__qualname__", getattr(fn, "__name__", repr(fn)))
    return {"function": f"{getattr(fn, '__module__', '?')}.{name}", "source_sha256": digest}


def custom_spec(spec: FrameSpec, fn: Integrator | None) -> tuple[FrameSpec, dict | None]:
    """The spec a build with `integrate=fn` writes (named after fn, as SpikingJelly names its
    folder custom_integrated_frames_dir_name; the spec's size and denoise apply before fn),
    and fn's provenance; `spec` and None without fn."""
    if fn is None:
        return spec, None
    if spec.duration_us or spec.bin_us:
        raise InputError(
            "integrate= cuts the frames itself: drop duration_us / bin_us from the FrameSpec (its "
            "size and denoise_us apply before the function)"
        )
    name = getattr(fn, "__name__", None)
    if spec.integrator not in (None, name):
        raise InputError(f"the FrameSpec names the integrator {spec.integrator!r}, but "
                         f"integrate= is {name!r}; give the function of that name")  # fmt: skip
    custom = FrameSpec(size=spec.size, denoise_us=spec.denoise_us, integrator=name)
    return custom, provenance(fn)


def build_call(target: Path, spec: FrameSpec) -> str:
    """The Python call that builds the custom store `target` of `spec`."""
    return (f"build_frames({str(target.parent)!r}, FrameSpec(size={spec.size}, "
            f"denoise_us={spec.denoise_us}), integrate={spec.integrator})")  # fmt: skip


def refuse_without_function(target: Path, spec: FrameSpec, found: str, why: str) -> str:
    """The line for a custom store that a command without the function would have to build."""
    state = "not built" if found == "absent" else why
    return (
        f"{target} holds frames of the custom integrator {spec.integrator} and is {state}; "
        f"dvsgkit cannot build it without the function: in Python, {build_call(target, spec)}"
    )
