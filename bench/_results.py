"""Shared by the benchmarks: the machine's description, a plain table, and RESULTS.md sections."""

from __future__ import annotations

import os
import platform
import re
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    """One line naming the machine the figures came from."""
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory_gib = psutil.virtual_memory().total / 1024**3
    gpu = "no GPU"
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        if count:
            gpu = f"{count} x {pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))}"
        pynvml.nvmlShutdown()
    except Exception:
        pass
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory_gib:.0f} GiB, {gpu}, Python"
        f" {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: list[float]) -> float:
    return statistics.median(values)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (also readable as plain text)."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=False)]
    lines = [
        "| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=False)) + " |",
        "| " + " | ".join("-" * w for w in widths) + " |",
    ]
    for row in rows:
        lines.append(
            "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)) + " |"
        )
    return "\n".join(lines)


def write_section(name: str, command: str, body: str) -> None:
    """Replace (or add) the section `name` in bench/RESULTS.md, keeping the others."""
    stamp = time.strftime("%Y-%m-%d %H:%M")
    section = (
        f"<!-- section:{name} -->\n## {name}\n\n"
        f"Machine: {machine()}. Run {stamp} with `{command}`.\n\n{body.strip()}\n"
        f"<!-- /section:{name} -->\n"
    )
    text = (
        RESULTS.read_text()
        if RESULTS.exists()
        else (
            "# Benchmark results\n\nEach section is written by the benchmark named in it; every figure"
            " stands beside a baseline measured in the same run.\n\n"
        )
    )
    pattern = re.compile(
        rf"<!-- section:{re.escape(name)} -->.*?<!-- /section:{re.escape(name)} -->\n", re.S
    )
    text = (
        pattern.sub(lambda _: section, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + section
    )
    RESULTS.write_text(text)
