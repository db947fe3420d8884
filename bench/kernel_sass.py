"""One CUDA source compiled as CuPy compiles it for an H100 (sm_90), and what nvcc's outputs say
about each kernel: registers and spills (`ptxas -v`), the warps resident per SM, and every
global load with the other loads issued before its first use (`cuobjdump -sass`). The reading
half of bench/kernel_report.py.

Needs nvcc (CUDA 12 or 13), cuobjdump and the nvdisasm it runs: $CUOBJDUMP / $NVDISASM, PATH,
or the pip packages nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm (the `[dev]` extra).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

ARCH = "sm_90"
CUPY_OPTIONS = ("-ftz=true",)  # what CuPy adds to every RawModule compile
# An H100 SM (compute capability 9.0): registers are allocated per warp in units of 256
# (8 per thread), 64 warps, 32 blocks and 228 KB of shared memory at most
SM_REGISTERS, SM_WARPS, SM_BLOCKS, SM_SHARED = 65536, 64, 32, 228 * 1024
REGISTER_UNIT = 8

# --- SASS: global loads and their first use ---

_REG = re.compile(r"\bR(\d+)(\.64|\.128)?\b")
_NO_DEST = ("ST", "RED", "BRA", "EXIT", "BAR", "BSYNC", "BSSY", "RET", "CALL", "NOP", "WARPSYNC")


def _width(opcode: str) -> int:
    """32-bit registers an access of this opcode moves."""
    return 4 if ".128" in opcode else 2 if ".64" in opcode else 1


def load_bytes(opcode: str) -> int:
    """Bytes one thread's LDG of this opcode reads."""
    if re.search(r"\.[US]8\b", opcode):
        return 1
    if re.search(r"\.[US]16\b", opcode):
        return 2
    return 4 * _width(opcode)


@dataclass
class Instruction:
    opcode: str
    dest: set[int]  # registers written
    reads: set[int]  # registers read


def parse_instruction(text: str) -> Instruction:
    """One SASS instruction (`@P0 LDG.E.U16 R2, desc[UR4][R4.64]`) -> opcode and registers: the
    first operand is the destination (except for stores and branches); an address `R4.64` is
    the pair R4, R5; a load's destination and a store's data span the access's width."""
    text = re.sub(r"^@!?U?P\w+\s+", "", text.strip())
    opcode, _, operands = text.partition(" ")
    dest: set[int] = set()
    reads: set[int] = set()
    for i, part in enumerate(p.strip() for p in operands.split(",") if p.strip()):
        address = "[" in part
        regs: set[int] = set()
        for m in _REG.finditer(part):
            base = int(m.group(1))
            width = {".64": 2, ".128": 4}.get(m.group(2) or "", 1)
            if not address and opcode.startswith(("LDG", "ST")):
                width = _width(opcode)
            regs |= set(range(base, base + width))
        if i == 0 and not address and not opcode.startswith(_NO_DEST):
            dest |= regs
        else:
            reads |= regs
    return Instruction(opcode, dest, reads)


def parse_sass(text: str) -> dict[str, list[Instruction]]:
    """`cuobjdump -sass` output -> each function's instructions in program order."""
    functions: dict[str, list[Instruction]] = {}
    current = None
    for line in text.splitlines():
        if m := re.search(r"Function : (\S+)", line):
            current = functions.setdefault(m.group(1), [])
        elif current is not None and (m := re.search(r"/\*[0-9a-f]{4,}\*/\s+(.*?)\s*;", line)):
            current.append(parse_instruction(m.group(1)))
    return functions


def loads_in_flight(code: list[Instruction]) -> list[tuple[int, int]]:
    """(bytes, other loads issued before its first use) for every global load, in order. The
    first use is the first later instruction that reads a loaded register, or overwrites one."""
    out = []
    for i, ins in enumerate(code):
        if not ins.opcode.startswith("LDG") or not ins.dest:
            continue
        others = 0
        for later in code[i + 1 :]:
            if later.reads & ins.dest:
                break
            if later.opcode.startswith("LDG"):
                others += 1
            if later.dest & ins.dest:
                break
        out.append((load_bytes(ins.opcode), others))
    return out


# --- compiling ---


def cuda_tool(name: str) -> str | None:
    """A CUDA tool: $NAME (upper case), PATH, or the bin folder of a pip nvidia-* package
    (`nvidia/cu13/bin` for CUDA 13's wheels, `nvidia/cuda_<tool>/bin` for CUDA 12's)."""
    found = os.environ.get(name.upper()) or shutil.which(name)
    if found:
        return found
    spec = importlib.util.find_spec("nvidia")
    for root in list(spec.submodule_search_locations or []) if spec else []:
        for path in sorted(Path(root).glob(f"*/bin/{name}")):
            return str(path)
    return None


def missing_tools() -> list[str]:
    """The tools the report needs that cannot be found (with the fix), or []."""
    out = []
    if shutil.which("nvcc") is None:
        out.append("nvcc (the CUDA toolkit)")
    for tool in ("cuobjdump", "nvdisasm"):  # cuobjdump -sass runs nvdisasm
        if cuda_tool(tool) is None:
            out.append(f"{tool} (pip install nvidia-cuda-{tool}, or set ${tool.upper()})")
    return out


def disassemble(cubin: Path) -> str:
    """`cuobjdump -sass` of a cubin. cuobjdump looks for nvdisasm beside itself and on PATH;
    NVDISASM_PATH points it at the one found here (e.g. the pip package's beside a toolkit's
    cuobjdump)."""
    env = dict(os.environ)
    nvdisasm = cuda_tool("nvdisasm")
    if nvdisasm and "NVDISASM_PATH" not in env:
        env["NVDISASM_PATH"] = str(Path(nvdisasm).parent)
    done = subprocess.run([cuda_tool("cuobjdump"), "-sass", str(cubin)], capture_output=True,
                          text=True, env=env)  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"cuobjdump -sass failed on {cubin}: {done.stderr.strip()[-2000:]}")
    return done.stdout


@dataclass
class Usage:
    registers: int = 0
    spill_bytes: int = 0
    shared_bytes: int = 0


def parse_ptxas(stderr: str) -> dict[str, Usage]:
    """`ptxas -v` output -> each entry function's registers, spill and shared memory bytes."""
    usage: dict[str, Usage] = {}
    current = None
    for line in stderr.splitlines():
        if m := re.search(r"(?:Compiling entry function|Function properties for) '?(\w+)'?", line):
            current = usage.setdefault(m.group(1), Usage())
        if current is None:
            continue
        if m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line):
            current.spill_bytes = int(m.group(1)) + int(m.group(2))
        if m := re.search(r"Used (\d+) registers", line):
            current.registers = int(m.group(1))
        if m := re.search(r"(\d+) bytes smem", line):
            current.shared_bytes = int(m.group(1))
    return usage


def compile_source(source: str, folder: Path, name: str) -> tuple[dict, dict]:
    """nvcc -cubin as CuPy builds it; -> (ptxas usage, SASS) per kernel."""
    cu, cubin = folder / f"{name}.cu", folder / f"{name}.cubin"
    cu.write_text(source)
    cmd = ["nvcc", "-cubin", f"-arch={ARCH}", *CUPY_OPTIONS, "-Xptxas", "-v", "-o", str(cubin)]
    done = subprocess.run([*cmd, str(cu)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"nvcc failed on {cu}: {done.stderr.strip()[-2000:]}")
    return parse_ptxas(done.stderr), parse_sass(disassemble(cubin))


def resident_warps(registers: int, threads: int, shared: int = 0) -> int:
    """Warps per SM that registers, block size and shared memory allow (occupancy)."""
    per_block = -(-threads // 32)
    regs = -(-max(registers, 1) // REGISTER_UNIT) * REGISTER_UNIT * 32 * per_block
    blocks = min(SM_REGISTERS // regs, SM_WARPS // per_block, SM_BLOCKS)
    if shared:
        blocks = min(blocks, SM_SHARED // shared)
    return blocks * per_block
