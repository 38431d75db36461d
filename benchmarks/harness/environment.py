"""The first stage of the staged run: facts about the machine and the CUDA extension build.

``python -m benchmarks.harness.environment FILE [--dry-run]`` writes, as JSON and again after each part (so a
part that hangs leaves the earlier ones): the device facts (versions, GPU, NVML clocks), every field of the
device properties, the output of nvidia-smi, which backends can run, the two ceilings (device copy and bf16
matmul; in a dry run at small sizes on the CPU with the host clock), and the CUDA extension build (built or
loaded, seconds, or the error). A dry run compiles, links and imports the extension without a GPU.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import time
from typing import Dict, List, Optional

import torch

from progan_fast.backend import ACCELERATED, unavailable_reason

from .cases import SWEEPS, Sweep
from .device import device_facts
from .timing import measure_ceilings


def device_properties(device) -> Dict[str, object]:
    """Every public field of torch.cuda.get_device_properties (name, SM count, memory, L2, ...)."""
    props = torch.cuda.get_device_properties(device)
    fields = {name: getattr(props, name) for name in dir(props) if not name.startswith("_")}
    return {name: value if isinstance(value, (bool, int, float, str)) else str(value)
            for name, value in fields.items() if not callable(value)}


def nvidia_smi(timeout: float = 30.0) -> str:
    try:
        result = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"nvidia-smi did not run: {error}"
    return result.stdout + result.stderr


def extension_build() -> Dict[str, object]:
    """Build (or load from the cache) the CUDA extension; its status and the seconds it took. Without nvcc
    (a CPU machine without the CUDA toolkit) there is nothing to build: status "no nvcc", not a failure."""
    from progan_fast import CudaExtensionError, cuda_extension
    from progan_fast.csrc.extension import find_nvcc

    try:
        find_nvcc()
    except CudaExtensionError as error:
        return {"status": "no nvcc", "seconds": 0.0, "error": str(error)}
    start = time.perf_counter()
    try:
        module = cuda_extension()
    except CudaExtensionError as error:
        return {"status": "failed", "seconds": round(time.perf_counter() - start, 1), "error": str(error)[-2000:]}
    return {"status": "built" if module.built_now else "loaded from cache",
            "seconds": round(time.perf_counter() - start, 1), "build_dir": module.build_dir}


def collect(path: pathlib.Path, sweep: Sweep) -> Dict[str, object]:
    """Gather the facts into `path`, rewriting it after each part; return them."""
    facts: Dict[str, object] = {}

    def part(name: str, value) -> None:
        facts[name] = value
        path.write_text(json.dumps(facts, indent=1, default=str) + "\n")

    device = torch.device(sweep.device)
    part("facts", device_facts())
    part("nvidia_smi", nvidia_smi())
    if device.type == "cuda":
        part("device_properties", device_properties(device))
    part("backends", {name: unavailable_reason(name, device) or "available" for name in ACCELERATED})
    # The new API: the legacy allow_tf32 getters raise once it has been used to set ops apart.
    part("precision", {"cudnn.conv.fp32_precision": torch.backends.cudnn.conv.fp32_precision,
                       "cuda.matmul.fp32_precision": torch.backends.cuda.matmul.fp32_precision})
    start = time.perf_counter()
    ceilings = measure_ceilings(device, *sweep.ceiling_sizes, host_clock=sweep.dry)
    part("ceilings", {**{key: float(f"{value:.3g}") for key, value in ceilings.items()},  # a CPU: < 0.05 TFLOP/s
                      "seconds": round(time.perf_counter() - start, 1)})
    part("cuda_extension", extension_build())
    return facts


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.harness.environment", description=__doc__)
    parser.add_argument("file", type=pathlib.Path, help="the JSON file to write")
    parser.add_argument("--dry-run", action="store_true", help="CPU, small ceilings, host clock")
    args = parser.parse_args(argv)
    facts = collect(args.file, SWEEPS["dry" if args.dry_run else "quick"])
    build = facts["cuda_extension"]
    print(f"{facts['facts'].get('device')}: ceilings {facts['ceilings']}; CUDA extension {build['status']} "
          f"in {build['seconds']} s" + (f": {build['error']}" if build.get("error") else ""))
    if build["status"] == "failed":
        raise SystemExit(1)


if __name__ == "__main__":
    main()
