"""Shared by the benchmark scripts: machine description and docs/benchmarks.md updates."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
from datetime import date
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def machine() -> str:
    """One line describing where the numbers were measured."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    cores = len(os.sched_getaffinity(0))
    return f"{cores} cores ({cpu}), {mem:.0f} GiB, Python {platform.python_version()}"


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation."""
    return (
        statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]
        if len(values) > 1
        else values[0]
    )


def update_section(name: str, markdown: str, results: dict) -> None:
    """Replace the section between ``<!-- name:start -->`` and ``<!-- name:end -->``."""
    DOC.parent.mkdir(exist_ok=True)
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    block = (
        f"<!-- {name}:start -->\n{markdown.strip()}\n\n"
        f"Measured {date.today().isoformat()} on {machine()}.\n\n"
        f"<details><summary>raw JSON</summary>\n\n```json\n{json.dumps(results, indent=1)}\n```\n"
        f"</details>\n<!-- {name}:end -->"
    )
    pattern = re.compile(rf"<!-- {name}:start -->.*?<!-- {name}:end -->", re.S)
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + block + "\n"
    )
    DOC.write_text(text)
