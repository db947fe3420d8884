"""bench/kernel_report.py and its kernel_sass.py: the SASS reading and occupancy arithmetic on
hand-written input, where the CUDA tools are found, and, where nvcc (and cuobjdump) exist, every
CuPy kernel at T = 16 compiled as CuPy compiles it: no spills, and at least 16 KB in flight per
SM by the Little's-law bound."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _bench_module(name: str):
    """bench/NAME.py as the module NAME (as `python bench/kernel_report.py` imports it)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sass = _bench_module("kernel_sass")  # first: the report imports it
report = _bench_module("kernel_report")

SASS = """
\t\tFunction : k
        /*0000*/                   LDG.E.U16 R2, desc[UR4][R10.64] ;   /* 0x0000000000 */
        /*0010*/              @!P0 LDG.E.64.CONSTANT R4, desc[UR4][R12.64] ;
        /*0020*/                   LDG.E R6, desc[UR4][R14.64] ;
        /*0030*/                   HADD2.F32 R8, -RZ, R2.H0_H0 ;
        /*0040*/                   FADD R9, R5, R6 ;
        /*0050*/                   STG.E.128 desc[UR4][R16.64], R4 ;
        /*0060*/                   LDG.E.128 R20, desc[UR4][R18.64] ;
        /*0070*/                   MOV R21, RZ ;
        /*0080*/                   EXIT ;
"""


def test_loads_in_flight_count_the_loads_issued_before_each_first_use() -> None:
    (name, code), *_ = sass.parse_sass(SASS).items()
    assert name == "k" and len(code) == 9
    assert code[1].opcode == "LDG.E.64.CONSTANT" and code[1].dest == {4, 5}
    assert code[5].dest == set() and code[5].reads == {16, 17, 4, 5, 6, 7}  # a 16-byte store
    # R2: 2 loads before its first read; R4:R5: 1 (R5 read); R6: none; R20..23: overwritten
    assert sass.loads_in_flight(code) == [(2, 2), (8, 1), (4, 0), (16, 0)]


def test_resident_warps_follow_registers_block_size_and_the_sm_limits() -> None:
    assert sass.resident_warps(255, 256) == 8  # 256 registers x 256 threads: one block
    assert sass.resident_warps(120, 128) == 16  # 4 blocks of 4 warps
    assert sass.resident_warps(40, 256) == 48  # 6 blocks of 8 warps
    assert sass.resident_warps(16, 256) == 64  # the SM's 64 warps
    assert sass.resident_warps(16, 32) == 32  # its 32 blocks
    assert sass.resident_warps(32, 256, shared=100 * 1024) == 16  # 2 blocks of shared memory


def test_ptxas_output_gives_registers_and_spills_per_kernel() -> None:
    stderr = """ptxas info    : Compiling entry function 'a' for 'sm_90'
ptxas info    : Function properties for a
    8 bytes stack frame, 12 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 255 registers, used 0 barriers, 1024 bytes smem
ptxas info    : Compiling entry function 'b' for 'sm_90'
ptxas info    : Function properties for b
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 0 barriers
"""
    usage = sass.parse_ptxas(stderr)
    assert usage["a"] == sass.Usage(registers=255, spill_bytes=20, shared_bytes=1024)
    assert usage["b"] == sass.Usage(registers=40, spill_bytes=0, shared_bytes=0)


def test_the_traffic_model_counts_each_kernel_s_reads_and_writes() -> None:
    from dvsgkit.model.kernels import step_traffic

    # fp16 at b16 T16 C128: the conv blocks' outputs hold 16*16*128*(128^2 + ... + 8^2) values
    conv = 16 * 16 * 128 * sum((128 >> i) ** 2 for i in range(5))
    fused_fwd = step_traffic("fused_forward", "lif", "float16", 16)
    assert fused_fwd == conv * 2 + conv // 4 * 2 + 5 * 16 * 128  # y, pooled spikes, bn
    fused_bwd = step_traffic("fused_backward", "lif", "float16", 16)
    windows = conv // 16 // 4
    assert fused_bwd == conv * 2 * 5 + conv // 4 * 2 + 2 * windows * 4 + 5 * 24 * 128
    fc = 16 * 16 * (512 + 110)
    assert step_traffic("lif_forward_w4", "lif", "float16", 16) == 3 * (conv + fc) * 2
    assert step_traffic("lif_forward_w1", "lif", "float16", 16) == 0  # every layer takes w4


@pytest.fixture(scope="module")
def emitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kernel_report")


@pytest.fixture(scope="module")
def rows_t16(emitted: Path) -> list | None:
    """The report's rows at T = 16 (every source compiled once), or None with nvcc alone."""
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc (the CUDA toolkit) is not installed")
    if sass.missing_tools():
        return None
    return report.report(steps_list=(16,), emit=emitted / "cu")


def test_no_kernel_spills_at_t16(rows_t16: list | None, tmp_path: Path) -> None:
    spilled = {f"{r.kernel} {r.unit}": r.spill_bytes for r in rows_t16 or [] if r.spill_bytes}
    # without cuobjdump: ptxas alone, every kernel as CuPy compiles it
    for unit in report.units(steps_list=(16,)) if rows_t16 is None else []:
        src = tmp_path / f"{unit.name}.cu"
        src.write_text(unit.source)
        cmd = ["nvcc", "-cubin", f"-arch={sass.ARCH}", *sass.CUPY_OPTIONS, "-Xptxas", "-v"]
        done = subprocess.run([*cmd, "-o", str(tmp_path / "k.cubin"), str(src)],
                              capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr
        usage = sass.parse_ptxas(done.stderr)
        assert len(usage) == (4 if unit.family == "unfused" else 2), done.stderr
        spilled.update(
            {f"{unit.name}:{k}": u.spill_bytes for k, u in usage.items() if u.spill_bytes}
        )
    assert spilled == {}


def test_every_training_kernel_keeps_16_kb_in_flight_per_sm(
    rows_t16: list | None, emitted: Path, tmp_path: Path
) -> None:
    if rows_t16 is None:
        pytest.skip(f"kernel_report needs {sass.missing_tools()}")
    assert len(rows_t16) == 2 * 3 * 6  # LIF and PLIF x 3 dtypes x (4 unfused + 2 fused)
    short = {f"{r.kernel} {r.neuron} {r.dtype}": r.bytes_in_flight_per_sm for r in rows_t16
             if not r.meets_target}  # fmt: skip
    assert short == {}, f"under {report.TARGET_BYTES_IN_FLIGHT} bytes in flight (or spilling)"
    assert all(r.loads > 0 and r.step_mb is not None for r in rows_t16)
    # --emit-cu: each source alone compiles to a cubin
    sources = sorted((emitted / "cu").glob("*.cu"))
    assert len(sources) == 2 * 3 * 2  # unfused and fused sources
    done = subprocess.run(["nvcc", "-cubin", f"-arch={sass.ARCH}", "-o",
                           str(tmp_path / "one.cubin"), str(sources[0])],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("folder", ["cu13", "cuda_cuobjdump"])  # CUDA 13's and 12's wheels
def test_the_tools_are_found_in_the_pip_packages(
    folder: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tool = tmp_path / "site" / "nvidia" / folder / "bin" / "cuobjdump"
    tool.parent.mkdir(parents=True)
    tool.write_text("")
    monkeypatch.delenv("CUOBJDUMP", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no cuobjdump there
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert sass.cuda_tool("cuobjdump") == str(tool)
    monkeypatch.setenv("CUOBJDUMP", "/opt/cuda/bin/cuobjdump")  # the variable comes first
    assert sass.cuda_tool("cuobjdump") == "/opt/cuda/bin/cuobjdump"


def test_cuobjdump_runs_the_nvdisasm_found_here_wherever_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a toolkit's cuobjdump (here: a copy alone in a folder, as $CUOBJDUMP) with no nvdisasm
    # beside it or on PATH still disassembles with the one the report found (the pip package's)
    if sass.missing_tools():
        pytest.skip(f"needs nvcc, cuobjdump and nvdisasm: {sass.missing_tools()}")
    alone = tmp_path / "toolkit" / "cuobjdump"
    alone.parent.mkdir()
    shutil.copy2(sass.cuda_tool("cuobjdump"), alone)
    nvdisasm = Path(sass.cuda_tool("nvdisasm"))
    monkeypatch.setenv("CUOBJDUMP", str(alone))
    monkeypatch.setenv("NVDISASM", str(nvdisasm))
    monkeypatch.delenv("NVDISASM_PATH", raising=False)
    path = tmp_path / "bin"  # PATH: nvcc and its host compiler alone
    path.mkdir()
    for name in ("nvcc", "gcc", "g++"):
        if shutil.which(name):
            (path / name).symlink_to(shutil.which(name))
    monkeypatch.setenv("PATH", str(path))
    source = 'extern "C" __global__ void k(const float* x, float* y) { y[0] = x[0] * 2.0f; }'
    usage, code = sass.compile_source(source, tmp_path, "k")
    assert set(usage) == set(code) == {"k"}
    assert [b for b, _ in sass.loads_in_flight(code["k"])] == [4]


def test_the_dev_extra_installs_the_tools_the_report_runs() -> None:
    # CI installs `.[dev]`: with these the report's compiled checks run there instead of skipping
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    dev = pyproject["project"]["optional-dependencies"]["dev"]
    names = {re.split(r"[<>=!~;\s\[]", spec, maxsplit=1)[0] for spec in dev}
    assert {"nvidia-cuda-cuobjdump", "nvidia-cuda-nvdisasm"} <= names
