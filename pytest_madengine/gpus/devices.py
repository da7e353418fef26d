"""GPU detection and the pool of GPU ids a run may use.

Detection never fails a run: a host without GPUs simply has vendor NONE, so
model scripts can be smoke-tested on CPU-only machines.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from pytest_madengine.errors import UsageError

VISIBILITY_VARS = ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")


@dataclass(frozen=True)
class GpuInfo:
    vendor: str  # AMD, NVIDIA or NONE
    ids: tuple[int, ...]
    arch: str = ""
    how: str = ""  # what the detection looked at, for the run header
    # madengine's MAD_SYSTEM_HIP_VERSION (HIP or CUDA version, major.minor) and
    # MAD_SYSTEM_GPU_PRODUCT_NAME; "" when unknown (no GPU, no tool answered)
    hip_version: str = ""
    product: str = ""


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""


def detect() -> GpuInfo:
    if os.path.exists("/dev/kfd"):
        arch = ""
        if shutil.which("rocminfo"):
            found = re.findall(r"\b(gfx[0-9a-f]+)\b", _run(["rocminfo"]))
            arch = found[0] if found else ""
        renders = sorted(n for n in os.listdir("/dev/dri") if n.startswith("renderD")) if os.path.isdir("/dev/dri") else []
        count = len(renders)
        if shutil.which("amd-smi"):
            listed = re.findall(r"^GPU:\s*(\d+)", _run(["amd-smi", "list"]), flags=re.M)
            count = len(listed) or count
        elif shutil.which("rocm-smi"):
            listed = re.findall(r"^GPU\[(\d+)\]", _run(["rocm-smi", "--showid"]), flags=re.M)
            count = len(set(listed)) or count
        return GpuInfo("AMD", tuple(range(count)), arch, "/dev/kfd present",
                       hip_version=amd_hip_version(_run(["hipconfig", "--version"]) if shutil.which("hipconfig") else "",
                                                   _read(os.path.join(os.environ.get("ROCM_PATH") or "/opt/rocm",
                                                                      ".info", "version"))),
                       product=amd_product_name(_run(["amd-smi", "static", "--asic"]) if shutil.which("amd-smi") else "",
                                                _run(["rocm-smi", "--showproductname"]) if shutil.which("rocm-smi") else ""))
    if shutil.which("nvidia-smi"):
        out = _run(["nvidia-smi", "--query-gpu=index,compute_cap", "--format=csv,noheader"])
        rows = [r.split(",") for r in out.strip().splitlines() if r.strip()]
        ids = tuple(int(r[0]) for r in rows if r[0].strip().isdigit())
        arch = f"sm_{rows[0][1].strip().replace('.', '')}" if rows and len(rows[0]) > 1 else ""
        if ids:
            names = _run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]).strip().splitlines()
            return GpuInfo("NVIDIA", ids, arch, "nvidia-smi",
                           hip_version=cuda_version(_run(["nvcc", "--version"]) if shutil.which("nvcc") else "",
                                                    _run(["nvidia-smi"])),
                           product=names[0].strip() if names else "")
    return GpuInfo("NONE", (), "", "no /dev/kfd, no working nvidia-smi")


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read(4096)
    except OSError:
        return ""


def _major_minor(text: str) -> str:
    m = re.search(r"\b(\d+)\.(\d+)", text)
    return f"{m.group(1)}.{m.group(2)}" if m else ""


def amd_hip_version(hipconfig: str, rocm_info_version: str = "") -> str:
    """``hipconfig --version`` (``6.2.41133-dd7f95766``) as madengine passes it on, major.minor
    (``6.2``); the ROCm install's ``.info/version`` when hipconfig is missing."""
    return _major_minor(hipconfig) or _major_minor(rocm_info_version)


def cuda_version(nvcc: str, nvidia_smi: str = "") -> str:
    """``nvcc --version`` (``release 12.4, V12.4.131``), else the driver's ``CUDA Version: 12.4``."""
    m = re.search(r"release (\d+\.\d+)", nvcc) or re.search(r"CUDA Version:\s*(\d+\.\d+)", nvidia_smi)
    return m.group(1) if m else ""


def amd_product_name(amd_smi_asic: str, rocm_smi_product: str = "") -> str:
    """The first GPU's market name: ``MARKET_NAME: AMD Instinct MI300X`` (``amd-smi static
    --asic``), else rocm-smi's ``Card Series:`` / ``Card model:`` line."""
    m = re.search(r"^\s*MARKET_NAME:\s*(.+?)\s*$", amd_smi_asic, flags=re.M)
    if m and m.group(1).upper() not in ("N/A", "NA"):
        return m.group(1)
    for label in ("Card Series", "Card SKU", "Card model"):
        m = re.search(rf"{label}:\s*(.+?)\s*$", rocm_smi_product, flags=re.M)
        if m and m.group(1).upper() not in ("N/A", "NA"):
            return m.group(1)
    return ""


def parse_ids(spec: str) -> tuple[int, ...]:
    """``0-3,6`` -> (0, 1, 2, 3, 6)."""
    ids: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise UsageError(f"--mad-gpus: cannot read {part!r}; use 'all', 'none' or ids like 0-3,6")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise UsageError(f"--mad-gpus: range {part!r} runs backwards")
        ids.extend(range(lo, hi + 1))
    return tuple(dict.fromkeys(ids))


@dataclass(frozen=True)
class GpuPool:
    """The ids models may take. mode: devices (real GPUs), virtual (ids only), none."""

    vendor: str
    ids: tuple[int, ...]
    mode: str
    note: str

    @property
    def uses_devices(self) -> bool:
        return self.mode == "devices"


def resolve_pool(spec: str, info: GpuInfo, env: Mapping[str, str] | None = None) -> GpuPool:
    env = os.environ if env is None else env
    spec = (spec or "all").strip().lower()
    if spec == "none":
        return GpuPool(info.vendor, (), "none", "--mad-gpus=none: models run without GPU devices, n_gpus is ignored")
    if spec == "all":
        ids = info.ids
    else:
        ids = parse_ids(spec)
    mask = next((env[v] for v in VISIBILITY_VARS if env.get(v, "").strip()), None)
    if mask is not None:
        allowed = set(parse_ids(mask))
        ids = tuple(i for i in ids if i in allowed)
    if info.vendor == "NONE" or not info.ids:
        if spec == "all":
            return GpuPool("NONE", (), "none", "no GPUs detected: models run without GPU devices, n_gpus is ignored")
        return GpuPool("NONE", ids, "virtual", f"virtual GPU pool {list(ids)} (no GPUs on this host: scheduling only, no devices)")
    missing = [i for i in ids if i not in info.ids]
    if missing:
        raise UsageError(f"--mad-gpus: GPU ids {missing} do not exist on this host (found {list(info.ids)})")
    return GpuPool(info.vendor, ids, "devices", f"{info.vendor} GPUs {list(ids)}")


def wanted(n_gpus: int, pool: GpuPool) -> int:
    """How many ids a model takes from the pool; raises when the pool is too small."""
    if pool.mode == "none":
        return 0
    n = len(pool.ids) if n_gpus < 0 else n_gpus
    if n > len(pool.ids):
        raise UsageError(f"needs {n} GPUs but the pool has {len(pool.ids)} ({list(pool.ids)})")
    return n


def visibility_env(vendor: str, ids: tuple[int, ...]) -> dict[str, str]:
    value = ",".join(str(i) for i in ids)
    if vendor == "AMD":
        return {"HIP_VISIBLE_DEVICES": value, "ROCR_VISIBLE_DEVICES": value}
    if vendor == "NVIDIA":
        return {"CUDA_VISIBLE_DEVICES": value}
    return {}
