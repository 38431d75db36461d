"""Facts about the machine a benchmark ran on (date, software versions, GPU name, memory, clocks and power limit
from NVML), and whether it has the GPU that the benchmarks need."""
from __future__ import annotations

import datetime
import importlib.util
import platform
from typing import Dict, Optional

import torch


def gpu_skip_reason() -> Optional[str]:
    if not torch.cuda.is_available():
        build = f"torch built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build of torch"
        return f"GPU benchmarks need an NVIDIA GPU; CUDA is not available here ({build})"
    return None


def l2_cache_bytes(device) -> int:
    """The GPU's L2 cache size; 0 for the CPU of a dry run (no input rotation)."""
    if torch.device(device).type != "cuda":
        return 0
    return getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 * 2 ** 20)


def device_facts(device=None) -> Dict[str, object]:
    """Date, software versions and, on a GPU, the device's name, memory, clocks and power limit (NVML)."""
    facts: Dict[str, object] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(), "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "triton": _package_version("triton")}
    if not torch.cuda.is_available():
        facts["device"] = "cpu (no CUDA device)"
        return facts
    device = torch.device(device or "cuda")
    props = torch.cuda.get_device_properties(device)
    facts.update(device=props.name, compute_capability=f"{props.major}.{props.minor}",
                 sm_count=props.multi_processor_count, memory_GiB=round(props.total_memory / 2 ** 30, 1),
                 l2_cache_MiB=l2_cache_bytes(device) / 2 ** 20)
    facts.update(_nvml_facts(props, device))
    return facts


def _package_version(name: str) -> Optional[str]:
    if importlib.util.find_spec(name) is None:
        return None
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _nvml_facts(props, device) -> Dict[str, object]:
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception as error:  # NVML missing or no driver: the torch facts still stand
        return {"nvml": f"unavailable ({error})"}
    try:
        try:
            handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{props.uuid}")
        except Exception:  # older torch without props.uuid, or another UUID spelling
            handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        return {"driver": pynvml.nvmlSystemGetDriverVersion(),
                "nvml_name": pynvml.nvmlDeviceGetName(handle),
                "max_sm_clock_MHz": pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM),
                "max_memory_clock_MHz": pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM),
                "sm_clock_MHz_at_report": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
                "power_limit_W": pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000}
    except Exception as error:
        return {"nvml": f"query failed ({error})"}
    finally:
        pynvml.nvmlShutdown()
