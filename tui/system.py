"""What the machine has: workspace disk use, memory, GPU memory (read-only, cheap, no torch import)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def folder_bytes(root: Path) -> int:
    """Bytes of the regular files under ``root`` (links not followed, unreadable entries skipped)."""
    total = 0
    for folder, dirs, files in os.walk(root, onerror=lambda _: None):
        for name in files:
            try:
                st = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            total += st.st_size
    return total


def memory() -> tuple[int, int] | None:
    """(available, total) bytes of RAM from /proc/meminfo; None where it cannot be read."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        return int(fields["MemAvailable"].split()[0]) * 1024, int(fields["MemTotal"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def gpus() -> list[tuple[str, int, int]] | None:
    """[(name, used, total) bytes] per NVIDIA GPU from nvidia-smi; None when there is no nvidia-smi."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=name,memory.used,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = []
    for line in out.strip().splitlines():
        name, used, total = (part.strip() for part in line.rsplit(",", 2))
        found.append((name, int(float(used)) * 1024 ** 2, int(float(total)) * 1024 ** 2))
    return found


def disk_free(root: Path) -> tuple[int, int]:
    """(free, total) bytes of the file system holding ``root``."""
    usage = shutil.disk_usage(root)
    return usage.free, usage.total
