"""Where a benchmark ran: CPU, threads, GPU and driver, Jetson power mode, backend versions.

Latencies from different environments are not comparable; `compare` refuses them unless told
otherwise. The fingerprint is a hash of the fields that change latency (`FINGERPRINT_FIELDS`);
everything else is information for the reader.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from typing import Any

# Dotted paths into the environment dict.
FINGERPRINT_FIELDS = (
    "cpu.model", "cpu.class", "cpu.features", "cpu.logical_cores", "threads", "gpu.name", "gpu.driver", "jetson.power_mode",
    "versions.onnxruntime", "versions.tensorrt", "versions.torch", "versions.cuda",
)


def _gpu() -> dict[str, Any] | None:
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        major, minor = torch.cuda.get_device_capability()
        gpu: dict[str, Any] = {
            "name": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}",
            "memory_mib": torch.cuda.get_device_properties(0).total_memory // 2**20,
        }
    except Exception:  # a broken driver: the benchmark says less rather than failing
        return None
    from tldeploy.runtime.host import run_query

    driver = run_query(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    gpu["driver"] = driver.splitlines()[0].strip() if driver else None
    return gpu


def collect_environment(threads: int | None) -> dict[str, Any]:
    import numpy as np

    from tldeploy.runtime.host import cpu_info, jetson_info, tool_versions

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    env: dict[str, Any] = {
        "cpu": {"model": (cpu := cpu_info())["name"], "class": cpu["class"], "features": cpu["features"],
                "logical_cores": os.cpu_count(), "usable_cores": usable},
        "threads": threads,
        "gpu": _gpu(),
        "jetson": jetson_info(),
        "versions": {**tool_versions(), "numpy": np.__version__, "python": platform.python_version()},
        "platform": platform.platform(),
    }
    env["fingerprint"] = fingerprint(env)
    return env


def _get(env: dict[str, Any], dotted: str) -> Any:
    value: Any = env
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def fingerprint(env: dict[str, Any]) -> str:
    key = {f: _get(env, f) for f in FINGERPRINT_FIELDS}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def environment_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """'field: a -> b' for each fingerprint field that differs."""
    return [f"{f}: {_get(a, f)} -> {_get(b, f)}" for f in FINGERPRINT_FIELDS if _get(a, f) != _get(b, f)]
