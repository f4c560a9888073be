"""Widget overheads: Ray widget Start-to-ready against a bare ``ray.init``, and the
CatalogQuery widget against a direct psycopg query.

Ray: the widget's controller (``RayClusterController.start(wait=True)``, what the
Start button runs: a supervisor process, ``ray start --head`` with the dashboard,
token auth, the cluster record) against ``ray.init(num_cpus=..., object_store_memory=...)``
in a fresh Python process (ray already imported, dashboard included as ray.init
does when it is installed), with the same CPUs and object store. Runs alternate so
both see the same machine load; the ratio is of the medians.

Catalog: ``CatalogQuery.run()`` of a 1000-row query until the page is rendered
(thread hand-off, history, the result table, the first page's HTML) against the
same SQL through one psycopg connection into an astropy Table. The demo catalog
is generated (a small mock DR1) and ingested into a throw-away embedded PostgreSQL.

Usage: python benchmarks/widgets.py [--ray-n 7] [--query-n 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import percentile, update_section  # noqa: E402

GiB = 1024**3
CPUS = 1
MEMORY = 2 * GiB  # one worker's memory; its object store is 30 % of it
QUERY = (
    "SELECT targetid, target_ra, target_dec, z, zerr, zwarn, spectype, deltachi2 "
    "FROM dr1.zpix ORDER BY targetid LIMIT 1000"
)

BARE = """
import sys, time
import ray
t = time.perf_counter()
ray.init(num_cpus=int(sys.argv[1]), object_store_memory=int(sys.argv[2]),
         include_dashboard=True, configure_logging=False, log_to_driver=False)
print(time.perf_counter() - t, flush=True)
ray.shutdown()
"""


# -- Ray ---------------------------------------------------------------------------------
def widget_start(root: Path):
    """Seconds from Start to ready, and the cluster's object store size."""
    from desilab.extensions import LocalRayBackend, ProfileLimits, RayClusterController

    backend = LocalRayBackend(
        registry_dir=str(root / "registry"),
        token_path=str(root / "auth_token"),
        limits=ProfileLimits("bench", CPUS, MEMORY + GiB, ()),
        idle_timeout=0,
        start_attempts=1,  # a failed start is a result here, not something to hide
        start_timeout=120.0,
    )
    controller = RayClusterController(backend, status_interval=60)
    try:
        info = controller.start(workers=1, cpus=CPUS, memory=MEMORY, wait=True)
        seconds = controller.start_seconds
        store = info.node.object_store_memory
        controller.stop(wait=True)
    finally:
        controller.close()
    return seconds, store


def bare_start(object_store: int, root: Path) -> float:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "TMPDIR": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", BARE, str(CPUS), str(object_store)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr else "failed")
    return float(out.stdout.strip().splitlines()[-1])


def ray_bench(n: int) -> dict:
    from desilab.extensions import ClusterRequest, LocalRayBackend, ProfileLimits

    times: dict[str, list[float]] = {"widget": [], "ray.init": []}
    failures: dict[str, list[str]] = {"widget": [], "ray.init": []}
    plan = LocalRayBackend(limits=ProfileLimits("bench", CPUS, MEMORY + GiB, ())).plan(
        ClusterRequest(cpus=CPUS, memory=MEMORY)
    )
    store = plan.nodes[0].object_store_memory
    with tempfile.TemporaryDirectory(prefix="wbench-", dir="/tmp") as tmp:
        root = Path(tmp)
        for i in range(n + 1):  # the first pair warms the page cache and is not counted
            print(f"ray pair {i}/{n}", file=sys.stderr, flush=True)
            for name, run in (
                ("widget", lambda: widget_start(root)[0]),
                ("ray.init", lambda: bare_start(store, root)),
            ):
                try:
                    seconds = run()
                except Exception as e:  # a start that fails is a result
                    failures[name].append(f"{type(e).__name__}: {e}"[:300])
                    print(f"  {name}: failed: {failures[name][-1]}", file=sys.stderr, flush=True)
                    continue
                print(f"  {name}: {seconds:.2f} s", file=sys.stderr, flush=True)
                if i:
                    times[name].append(seconds)
    med = {k: statistics.median(v) if v else None for k, v in times.items()}
    return {
        "n": n,
        "cpus": CPUS,
        "object_store_memory": store,
        "median_s": med,
        "ratio": med["widget"] / med["ray.init"] if all(med.values()) else None,
        "all_s": times,
        "failures": failures,
    }


# -- catalog -----------------------------------------------------------------------------
def query_bench(n: int) -> dict:
    import psycopg
    from astropy.table import Table
    from desilab.desi import Catalog
    from desilab.desi.ingest import ingest
    from desilab.desi.mock import generate_mock
    from desilab.desi.roles import ensure_user_role, prepare_catalog
    from desilab.desi.vi import ensure_vi_schema
    from desilab.extensions import CatalogQuery, QueryHistory
    from desilab.hub.database import EmbeddedPostgres

    with tempfile.TemporaryDirectory(prefix="wbench-db-", dir="/tmp") as tmp:
        os.chmod(tmp, 0o755)  # the embedded server may run as its own account
        server = EmbeddedPostgres(Path(tmp) / "db")
        admin = server.start()
        try:
            prepare_catalog(admin)
            ensure_vi_schema(admin)
            summary = generate_mock(
                Path(tmp) / "mock",
                progress=False,
                workers=1,
                n_qso=300,
                n_galaxy=3000,
                n_star=100,
                seed=1,
            )
            ingest(summary.data_root, admin, progress=False)
            dsn = ensure_user_role(admin, "bench")

            def direct(conn) -> Table:
                cur = conn.execute(QUERY)
                names = [d.name for d in cur.description]
                rows = cur.fetchall()
                return Table(rows=rows, names=names)

            widget = CatalogQuery(
                Catalog(dsn), history=QueryHistory(Path(tmp) / "history.jsonl"), page_size=50
            )
            done = threading.Event()
            widget.model  # noqa: B018 (the model exists before timing)

            def via_widget() -> int:
                done.clear()
                widget.model.run(QUERY, on_done=lambda _: (widget._finished(), done.set()))
                done.wait(60)
                return len(widget.result)

            times: dict[str, list[float]] = {"widget": [], "psycopg": []}
            with psycopg.connect(dsn, autocommit=True) as conn:
                assert len(direct(conn)) == 1000 and via_widget() == 1000  # warm-up
                for _ in range(n):
                    t = time.perf_counter()
                    via_widget()
                    times["widget"].append(time.perf_counter() - t)
                    t = time.perf_counter()
                    direct(conn)
                    times["psycopg"].append(time.perf_counter() - t)
            widget.model.catalog.close()
        finally:
            server.stop()
    med = {k: statistics.median(v) for k, v in times.items()}
    diffs = [a - b for a, b in zip(times["widget"], times["psycopg"], strict=True)]
    return {
        "n": n,
        "rows": 1000,
        "median_s": med,
        "overhead_ms": 1000 * (med["widget"] - med["psycopg"]),
        "paired_overhead_ms": {
            "p50": 1000 * statistics.median(diffs),
            "p95": 1000 * percentile(diffs, 95),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ray-n", type=int, default=7, help="Start/ray.init pairs")
    parser.add_argument("--query-n", type=int, default=200, help="query pairs")
    parser.add_argument("--no-report", action="store_true", help="print only")
    args = parser.parse_args()
    results = {
        "query": query_bench(args.query_n),
        "ray": ray_bench(args.ray_n) if args.ray_n else None,
    }
    print(json.dumps(results, indent=1))
    if args.no_report:
        return
    ray, q = results["ray"], results["query"]
    nan = float("nan")
    ray_row = (
        f"| Ray Start-to-ready, {ray['cpus']} CPU, "
        f"{ray['object_store_memory'] / GiB:.2f} GiB object store, median of "
        f"{len(ray['all_s']['widget'])} / {len(ray['all_s']['ray.init'])} "
        f"(failed starts: {len(ray['failures']['widget'])} / "
        f"{len(ray['failures']['ray.init'])}) "
        f"| {ray['median_s']['widget'] or nan:.2f} s "
        f"| {ray['median_s']['ray.init'] or nan:.2f} s (`ray.init`) "
        f"| ratio {ray['ratio'] or nan:.2f} | <= 1.3 |"
        if ray
        else "| Ray Start-to-ready | not run (`--ray-n 0`) | | | <= 1.3 |"
    )
    table = "\n".join(
        [
            "## Widgets (`benchmarks/widgets.py`)",
            "",
            "| measure | widget | baseline | result | target |",
            "|---|---|---|---|---|",
            ray_row,
            f"| CatalogQuery, 1000 rows, median of {q['n']} "
            f"| {1000 * q['median_s']['widget']:.1f} ms "
            f"| {1000 * q['median_s']['psycopg']:.1f} ms (psycopg) "
            f"| +{q['overhead_ms']:.1f} ms | <= 20 ms |",
            "",
            "Ray: the controller's start (what the Start button runs: a supervisor, "
            "`ray start --head` with the dashboard and token auth, the cluster record) "
            "against `ray.init(num_cpus, object_store_memory)` in a fresh process, "
            "alternating. CatalogQuery: `run()` until the first page is rendered, against "
            "the same SQL through one psycopg connection into an astropy Table.",
        ]
    )
    update_section("widgets", table, results)


if __name__ == "__main__":
    main()
