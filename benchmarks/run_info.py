"""What each benchmark's JSON records about its run: date, machine, software, code revision."""

import os
import platform
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_model() -> str:
    """The CPU model name (platform.processor() is empty on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def run_info(**extra) -> dict:
    import jax

    return {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)),
            "device": str(jax.devices()[0].device_kind), "jax": jax.__version__, "load_average": os.getloadavg(),
            "commit": git("rev-parse", "HEAD"), "uncommitted_changes": bool(git("status", "--porcelain", "--", "rl_sharpen", "benchmarks")),
            **extra}
