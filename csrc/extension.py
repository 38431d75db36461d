"""Build, cache and load the CUDA extension of the ``cuda`` backend (the sources beside this file).

``cuda_extension()`` compiles it on first use, in two steps: the kernels (``*.cu``, CUDA headers only)
with nvcc into a small shared library that carries the CUDA runtime statically, then the Python binding
(``progan_fast_cuda.cpp``, torch's CPU-side headers only) with ``torch.utils.cpp_extension.load`` and
ninja, linked against that library. Neither step needs torch's CUDA headers, so a CPU-only torch with nvcc
installed builds it too (it then runs nothing, but CI can check that it compiles, links and imports).

The build is cached under ``cache_root()/cuda_extension`` (see `progan_fast.cache`) in a folder named by a
hash of the sources, the torch, nvcc and Python versions and the nvcc flags. A file lock makes concurrent
processes wait for one build, and the build is assembled in a temporary folder renamed into place, so an
interrupted build never leaves a broken cache.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterator, Optional

import torch

from progan_fast import backend
from progan_fast.backend import KERNEL_DTYPES
from progan_fast.cache import CACHE_ENV_VAR, cache_root

# SASS for Ampere (sm_80) and Hopper (sm_90), plus compute_90 PTX that newer GPUs compile when loading.
NVCC_FLAGS = ("-O3", "-std=c++17", "-Xcompiler", "-fPIC",
              "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=[sm_90,compute_90]")
KERNEL_SOURCES = ("bias_act.cu", "minibatch_stddev.cu", "gradient_penalty.cu")
BINDING_SOURCE = "progan_fast_cuda.cpp"
HEADERS = ("common.cuh", "progan_fast_cuda.h")


class CudaExtensionError(RuntimeError):
    """The CUDA extension cannot be built or loaded; the message says what is missing and how to fix it."""


def source_dir() -> Path:
    """The folder of the CUDA sources: this package's own."""
    return Path(__file__).resolve().parent


def find_nvcc() -> str:
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        candidate = Path(os.environ.get(variable) or "/nonexistent") / "bin" / "nvcc"
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("nvcc")
    if found is None:
        raise CudaExtensionError(
            "nvcc (the CUDA compiler) was not found: install the CUDA toolkit 12 or newer "
            "(https://developer.nvidia.com/cuda-downloads, or `conda install -c nvidia cuda-nvcc cuda-cudart-static`) "
            "and put its bin/ folder on PATH or set CUDA_HOME")
    return found


def check_host_toolchain() -> None:
    """The binding needs a C++ compiler, ninja and the Python headers: say which one is missing."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise CudaExtensionError(f"no C++ compiler ({compiler!r}) was found: install one (e.g. `apt install g++`) "
                                 f"or point the CXX environment variable at it")
    from torch.utils import cpp_extension  # imports setuptools: only when building

    if not cpp_extension.is_ninja_available():
        raise CudaExtensionError("ninja was not found: `pip install ninja`")
    include = sysconfig.get_path("include")
    if not (Path(include) / "Python.h").is_file():
        raise CudaExtensionError(f"the Python headers (Python.h) are missing from {include}: install the "
                                 f"development package of this Python (e.g. `apt install python3-dev`)")


def toolkit_error(what: str, code: int, output: str) -> CudaExtensionError:
    return CudaExtensionError(f"{what} failed (exit {code}); the CUDA toolkit may be incomplete or too old (12 or "
                              f"newer is needed), or its host compiler unsupported:\n{output[-4000:]}")


def build_key(sources: Path, nvcc: str) -> str:
    """Hash of everything the build depends on: sources, torch, nvcc, Python and the flags."""
    digest = hashlib.sha256()
    for name in sorted(KERNEL_SOURCES + HEADERS + (BINDING_SOURCE,)):
        digest.update(name.encode() + b"\0" + (sources / name).read_bytes())
    try:
        nvcc_version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        raise CudaExtensionError(f"`{nvcc} --version` failed ({error}); check the CUDA toolkit installation")
    for part in (torch.__version__, nvcc_version, sys.version, sysconfig.get_config_var("EXT_SUFFIX") or "",
                 " ".join(NVCC_FLAGS)):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


def kernel_library(name: str) -> str:
    return f"lib{name}_kernels.so"


def build_kernels(sources: Path, nvcc: str, name: str, folder: Path) -> None:
    """The .cu files, compiled in parallel, linked into one shared library (CUDA runtime inside, hidden)."""
    compiles = [(source, folder / (source + ".o")) for source in KERNEL_SOURCES]
    running = [(source, subprocess.Popen([nvcc, *NVCC_FLAGS, "-c", str(sources / source), "-o", str(obj)],
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
               for source, obj in compiles]
    finished = [(source, process.communicate()[0], process.returncode) for source, process in running]
    for source, output, code in finished:
        if code != 0:
            raise toolkit_error(f"nvcc on {source}", code, output)
    library = kernel_library(name)
    link = subprocess.run([nvcc, "-shared", "-Xlinker", f"-soname={library}", "-Xlinker", "--exclude-libs,ALL",
                           *[str(obj) for _, obj in compiles], "-o", str(folder / library)],
                          capture_output=True, text=True)
    if link.returncode != 0:
        raise toolkit_error("linking the CUDA kernels", link.returncode, link.stdout + link.stderr)


def build_binding(sources: Path, name: str, folder: Path) -> ModuleType:
    from torch.utils import cpp_extension

    try:
        return cpp_extension.load(
            name, [str(sources / BINDING_SOURCE)], extra_cflags=["-O2"], extra_include_paths=[str(sources)],
            extra_ldflags=[str(folder / kernel_library(name))], build_directory=str(folder), verbose=False)
    except Exception as error:  # load() reports compiler failures as RuntimeError/CalledProcessError
        raise CudaExtensionError(f"compiling the CUDA extension's binding ({BINDING_SOURCE}) failed; it needs a "
                                 f"C++17 compiler, ninja and torch's headers:\n{error}") from error


def load_built(folder: Path, name: str) -> ModuleType:
    """Import a finished build: the kernel library first, so that the binding finds it by its soname."""
    ctypes.CDLL(str(folder / kernel_library(name)))
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.so")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on lock_path (POSIX); elsewhere the atomic rename alone keeps builds safe."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_or_load(root: Path) -> ModuleType:
    """The extension built for this machine, from the cache under root or built into it now.

    The returned module has ``build_dir`` (its cache folder) and ``built_now`` (False when it came from
    the cache) attributes; one status line goes to stderr.
    """
    sources, nvcc = source_dir(), find_nvcc()
    key = build_key(sources, nvcc)
    name = f"progan_fast_cuda_{key}"
    final = root / "cuda_extension" / key
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        (final.parent / f"{key}.lock").touch()
    except OSError as error:
        raise CudaExtensionError(f"cannot write the build cache {final.parent} ({error}); set {CACHE_ENV_VAR} to a "
                                 f"writable folder") from error
    start = time.perf_counter()
    with exclusive(final.parent / f"{key}.lock"):
        built_now = not final.is_dir()
        if built_now:
            check_host_toolchain()
            work = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
            try:
                build_kernels(sources, nvcc, name, work)
                ctypes.CDLL(str(work / kernel_library(name)))  # load() imports the binding, which needs it
                module = build_binding(sources, name, work)
                os.rename(work, final)
            except BaseException:
                shutil.rmtree(work, ignore_errors=True)
                raise
        else:
            module = load_built(final, name)
    status = f"built in {time.perf_counter() - start:.0f} s" if built_now else "loaded from cache"
    print(f"progan_fast: CUDA extension {status} ({final})", file=sys.stderr)
    module.build_dir, module.built_now = str(final), built_now
    return module


_extension: Optional[ModuleType] = None


def cuda_extension() -> ModuleType:
    """The compiled CUDA extension of the ``cuda`` backend, built on first use and cached on disk.

    Raises CudaExtensionError saying what is missing (nvcc, a C++ compiler, ninja, headers) and how to fix it.
    """
    global _extension
    if _extension is None:
        _extension = build_or_load(cache_root())
    return _extension


class CudaKernels:
    """The extension's functions, each called with the current CUDA stream of its first tensor appended.
    `dtypes`: the storage types they take (the cuda ops run the torch reference for others)."""

    dtypes = KERNEL_DTYPES

    def __init__(self, module: ModuleType):
        self._module = module

    def __getattr__(self, name: str) -> Callable:
        function = getattr(self._module, name)
        return lambda *args: function(*args, torch.cuda.current_stream(args[0].device).cuda_stream)


@functools.lru_cache(maxsize=None)
def cuda_kernels() -> CudaKernels:
    return CudaKernels(cuda_extension())


@functools.lru_cache(maxsize=None)
def probe() -> Optional[str]:
    """None when the cuda backend can run here, else the reason (answer cached for the process)."""
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch (torch.cuda.is_available() is False)"
    try:
        cuda_extension()
    except CudaExtensionError as error:
        return str(error)
    try:  # one tiny launch: the driver may be older than the toolkit, or the GPU lack a matching kernel image
        one = torch.ones(1, device="cuda")
        cuda_kernels().bias_act_forward(one, None, 0.2, 0)
    except RuntimeError as error:
        return (f"the CUDA extension was built but cannot run on this GPU ({error}); it has kernels for sm_80 and "
                f"sm_90 (newer GPUs compile its compute_90 PTX) and needs a driver as new as the nvcc that built it")
    return None


backend.register_cuda_extension_probe(probe)
