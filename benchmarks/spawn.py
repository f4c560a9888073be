"""Spawn latency of ProfileSpawner against JupyterHub's LocalProcessSpawner, and a burst.

Two real hubs run side by side; spawns alternate between them so both see the
same machine load. The comparison uses ``cpu-large`` (every core), because
LocalProcessSpawner does not pin: the ratio is desilab's overhead (limits,
cgroups, database role, templates), not the effect of fewer cores.
Then 30 users spawn ``cpu-small`` at once on the desilab hub.

Usage: python benchmarks/spawn.py [--n 20] [--burst 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import percentile, update_section  # noqa: E402
from support.hub import start_hub  # noqa: E402
from tqdm import tqdm  # noqa: E402

COMMON = f"""
c.Spawner.cmd = [{sys.executable!r}, "-m", "jupyterhub.singleuser"]
"""
BASELINE = (
    COMMON
    + """
import os
c.JupyterHub.spawner_class = "jupyterhub.spawner.SimpleLocalProcessSpawner"
c.SimpleLocalProcessSpawner.home_dir_template = os.environ["DESILAB_HOME"] + "/users/{username}"
c.Spawner.args = ["--allow-root"] if os.geteuid() == 0 else []
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 330  # as ProfileSpawner's defaults
c.Spawner.http_timeout = 120
"""
)


def timed_spawn(hub, user: str, profile: str | None) -> float:
    """Seconds from the spawn request until the hub reports the server ready."""
    start = time.perf_counter()
    r = hub.spawn(user, profile, timeout=900)
    if r.status_code not in (201, 202):
        raise RuntimeError(f"{user}: {r.status_code} {r.text}")
    if r.status_code == 202:
        hub.wait_ready(user, timeout=900)
    return time.perf_counter() - start


def latency(ours, theirs, n: int) -> dict:
    for hub in (ours, theirs):
        hub.create_user("bench")
    times = {"ProfileSpawner": [], "LocalProcessSpawner": []}
    for _ in tqdm(range(n), desc="sequential spawns (pairs)"):
        for name, hub, profile in (
            ("ProfileSpawner", ours, "cpu-large"),
            ("LocalProcessSpawner", theirs, None),
        ):
            times[name].append(timed_spawn(hub, "bench", profile))
            hub.stop_server("bench")
    medians = {k: statistics.median(v) for k, v in times.items()}
    return {
        "n": n,
        "median_s": medians,
        "ratio": medians["ProfileSpawner"] / medians["LocalProcessSpawner"],
        "all_s": times,
    }


def burst(hub, n: int) -> dict:
    users = [f"burst{i}" for i in range(n)]
    for user in users:
        hub.create_user(user)

    def one(user: str) -> float | str:
        try:
            return timed_spawn(hub, user, "cpu-small")
        except Exception as e:  # a failure is a result here
            return str(e)

    start = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, users))
    wall = time.perf_counter() - start
    ok = [r for r in results if isinstance(r, float)]
    for user in users:
        if hub.user_model(user)["servers"]:
            hub.stop_server(user, timeout=120)
    return {
        "n": n,
        "succeeded": len(ok),
        "p50_s": percentile(ok, 50) if ok else None,
        "p95_s": percentile(ok, 95) if ok else None,
        "wall_s": wall,
        "failures": [r for r in results if isinstance(r, str)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--n", type=int, default=20, help="sequential spawns per spawner (0: burst only, no report)"
    )
    parser.add_argument("--burst", type=int, default=30, help="concurrent spawns")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ours = start_hub(Path(tmp) / "ours", config=COMMON)
        theirs = start_hub(Path(tmp) / "theirs", config=BASELINE)
        try:
            lat = latency(ours, theirs, args.n) if args.n else None
            theirs.stop()
            bur = burst(ours, args.burst)
        finally:
            ours.stop()
            theirs.stop()
    results = {"latency": lat, "burst": bur}
    print(json.dumps(results, indent=1))
    if lat is None:
        return  # a quick check: the docs keep the last full run
    m = lat["median_s"]
    nan = float("nan")
    table = "\n".join(
        [
            "## Spawn latency (`benchmarks/spawn.py`)",
            "",
            "| measure | ProfileSpawner | LocalProcessSpawner | ratio | target |",
            "|---|---|---|---|---|",
            f"| median spawn-to-ready, {lat['n']} sequential spawns "
            f"| {m['ProfileSpawner']:.2f} s | {m['LocalProcessSpawner']:.2f} s "
            f"| {lat['ratio']:.2f} | <= 1.15 |",
            "",
            "| concurrent `cpu-small` spawns | succeeded | p50 | p95 | wall | target |",
            "|---|---|---|---|---|---|",
            f"| {bur['n']} on ProfileSpawner | {bur['succeeded']} / {bur['n']} "
            f"| {bur['p50_s'] or nan:.1f} s | {bur['p95_s'] or nan:.1f} s "
            f"| {bur['wall_s']:.1f} s | {bur['n']} of {bur['n']} |",
            "",
            "Spawn-to-ready runs from the REST request to the hub reporting the server ready.",
            "The latency pair uses `cpu-large` (all cores): LocalProcessSpawner does not pin.",
        ]
    )
    update_section("spawn", table, results)


if __name__ == "__main__":
    main()
