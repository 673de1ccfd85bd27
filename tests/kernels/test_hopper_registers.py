"""The register caps of the autotuning candidates, checked by compiling for Hopper on the CPU.

Triton compiles for any target without a GPU, and its bundled ``ptxas -v`` reports registers
and spills. The caps in ``kernels.triton_backend`` are there so that more programs share an SM
(64 K registers); these tests check that the capped forward tiles compile for sm_90 within the
cap and without spilling (uncapped, triton 3.6 gives them 133-142 registers).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Compiles one kernel config for sm_90 in a fresh process (the test session runs the
# interpreter) and prints {"registers": int, "spill_bytes": int} from ptxas -v.
_SCRIPT = r"""
import json, os, re, subprocess, sys, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import kernels.triton_backend as tb

name, rows, cols, warps, stages, cap = sys.argv[1:7]
fn = getattr(tb, name).fn
pointers = {"Q", "K", "V", "OUT", "LSE", "ROW_START", "ROW_END", "SCHEDULE", "DO", "DQ", "DK",
            "DV", "DELTA"}
fp32_pointers = {"LSE", "DELTA"}
int_pointers = {"ROW_START", "ROW_END", "SCHEDULE"}
row_block, col_block = "BLOCK_M", "BLOCK_N"
if name == "_attn_bwd_dkdv":
    row_block, col_block = col_block, row_block
constexprs = {"HEAD_DIM": 64, "DOT_PRECISION": "tf32", "WHILE_LOOPS": False,
              "NEGATIVE_SCALE": False, row_block: int(rows), col_block: int(cols)}
signature = {}
for arg in fn.arg_names:
    if arg in constexprs:
        signature[arg] = "constexpr"
    elif arg in pointers:
        signature[arg] = ("*fp32" if arg in fp32_pointers else "*i32" if arg in int_pointers
                          else "*fp16")
    elif arg in ("qk_scale", "sm_scale"):
        signature[arg] = "fp32"
    else:
        signature[arg] = "i32"
index = {arg: i for i, arg in enumerate(fn.arg_names)}
source = ASTSource(
    fn=fn, signature=signature,
    constexprs={(index[k],): v for k, v in constexprs.items() if k in index},
    attrs={(index[a],): [["tt.divisibility", 16]] for a in signature
           if signature[a].startswith("*")},
)
options = {"num_warps": int(warps), "num_stages": int(stages)}
if int(cap):
    options["maxnreg"] = int(cap)
kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
with tempfile.TemporaryDirectory() as folder:
    ptx = os.path.join(folder, "k.ptx")
    with open(ptx, "w") as f:
        f.write(kernel.asm["ptx"])
    report = subprocess.run([ptxas, "-v", "-arch=sm_90a", ptx, "-o", ptx + ".cubin"],
                            capture_output=True, text=True, check=True).stderr
registers = int(re.search(r"Used (\d+) registers", report).group(1))
spills = sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", report))
print(json.dumps({"registers": registers, "spill_bytes": spills}))
"""


def _ptxas_available() -> bool:
    try:
        import triton
    except ImportError:
        return False
    return (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists()


def _compile(name: str, config: tuple[int, ...]) -> dict:
    rows, cols, warps, stages, *cap = config
    args = [str(x) for x in (name, rows, cols, warps, stages, cap[0] if cap else 0)]
    env = {**__import__("os").environ, "TRITON_INTERPRET": "0"}
    result = subprocess.run([sys.executable, "-c", _SCRIPT, *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not _ptxas_available(), reason="needs triton's bundled ptxas")
@pytest.mark.parametrize("config", [(128, 64, 8, 3, 128), (64, 64, 4, 2, 128)], ids=str)
def test_capped_forward_tiles_compile_for_hopper_without_spills(config):
    from kernels import triton_backend

    assert config in triton_backend._FWD_CONFIGS[64]
    capped = _compile("_attn_fwd", config)
    assert capped["spill_bytes"] == 0 and capped["registers"] <= config[4]
