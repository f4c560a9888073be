"""The three notebook widgets in a real JupyterLab behind a real hub, driven by chromium.

A user's server is spawned by ``desilab up`` whose catalog is the shared demo
catalog (a small mock DR1), so DESILAB_DATABASE_URL is that user's own role on a
database with data. A notebook in the user's home shows the Ray cluster widget,
the CatalogQuery widget and the SpectrumExplorer; the browser clicks through
them as a person would, and the test checks what landed where: the dashboard
through the hub's proxy and jupyter-server-proxy, the inspection in
``vi.inspections`` under the user's role, no Ray process after Stop.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import nbformat
import psutil
import psycopg
import pytest
from desilab.desi.roles import role_name
from desilab.extensions.ray_registry import MARKER
from support.browser import ARTIFACTS
from support.hub import start_hub
from support.login import sign_up_and_approve

pytestmark = [pytest.mark.slow, pytest.mark.browser]

USER, PASSWORD = "widget-user", "widget-user-passw0rd"
QUERY = (
    "SELECT targetid, target_ra, target_dec, z, spectype FROM dr1.zpix "
    "WHERE zwarn = 0 ORDER BY targetid LIMIT 120"
)
TARGETS = (
    "SELECT targetid FROM dr1.zpix WHERE spectype = 'QSO' AND zcat_primary "
    "AND targetid IN (SELECT targetid FROM dr1.spectra) ORDER BY targetid LIMIT 5"
)
COMMENT = "broad lines, checked in the browser test"

# 2 cores and 4 GiB: a Ray head with its dashboard, the server and a kernel fit
CONFIG = """
c.Spawner.poll_interval = 1
c.JupyterHub.last_activity_interval = 5
c.ProfileSpawner.profiles = [
    {"slug": "cpu-ray", "display_name": "CPU for Ray", "cpus": 2, "memory": "4G",
     "default": True},
]
"""

CELLS = [
    ("markdown", "# Widgets (browser test)"),
    (
        "code",
        "from desilab.desi import Catalog\n"
        "from desilab.extensions import CatalogQuery, RayClusterWidget, SpectrumExplorer\n\n"
        "ray_widget = RayClusterWidget(status_interval=1.0)\n"
        "ray_widget",
    ),
    ("code", f"query = CatalogQuery(page_size=50)\nquery.editor.value = {QUERY!r}\nquery"),
    (
        "code",
        "catalog = Catalog()\n"
        f"targets = catalog.query({TARGETS!r})\n"
        "explorer = SpectrumExplorer.from_catalog(catalog, targets)\n"
        "explorer",
    ),
]


def write_notebook(home: Path) -> str:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "desilab-cpu", "display_name": "DESI (CPU)"}
    for kind, source in CELLS:
        maker = nbformat.v4.new_code_cell if kind == "code" else nbformat.v4.new_markdown_cell
        nb.cells.append(maker(source))
    path = home / "widgets.ipynb"
    nbformat.write(nb, path)
    owner = home.stat()
    os.chown(path, owner.st_uid, owner.st_gid)  # the user's own file, as if they wrote it
    return path.name


@pytest.fixture(scope="module")
def widgets_hub(homes_root, demo_catalog):
    """A hub whose catalog is the demo catalog (an external database for the hub)."""
    hub = start_hub(
        homes_root / "widgets-hub", env={"DESILAB_DB_URL": demo_catalog.admin_dsn}, config=CONFIG
    )
    yield hub
    assert hub.stop() == 0, hub.log()[-3000:]


def shot(locator, name: str) -> None:
    """A small PNG of one part of the page (a cell's output, not the whole lab)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    locator.screenshot(path=str(ARTIFACTS / f"{name}.png"), animations="disabled")


def button(scope, label: str):
    return scope.locator("button.widget-button", has_text=re.compile(rf"^\s*{label}\s*$")).first


def ray_processes(cluster_id: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["environ"]):
        if (proc.info.get("environ") or {}).get(MARKER) == cluster_id:
            found.append(proc)
    return found


def test_three_widgets_in_jupyterlab_behind_the_hub(widgets_hub, demo_catalog, browser):
    hub = widgets_hub
    sign_up_and_approve(hub, USER, PASSWORD)
    hub.create_user(USER)
    r = hub.spawn(USER, "cpu-ray", timeout=120)
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(USER, timeout=180)
    home = hub.home / "users" / USER
    notebook = write_notebook(home)
    with psycopg.connect(demo_catalog.admin_dsn) as conn:
        second = conn.execute(TARGETS).fetchall()[1][0]

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(90_000)
    cluster_id = ""
    try:
        page.goto(f"{hub.url}/hub/login")
        page.fill("#username_input", USER)
        page.fill("#password_input", PASSWORD)
        page.click("#login_submit")
        page.wait_for_url(f"**/user/{USER}/lab**", timeout=120_000)
        page.goto(f"{hub.url}/user/{USER}/lab/tree/{notebook}")
        page.wait_for_selector(".jp-Toolbar-kernelName:has-text('DESI (CPU)')", timeout=120_000)
        page.wait_for_selector(
            ".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000
        )
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

        cells = page.locator(".jp-NotebookPanel .jp-CodeCell")
        ray_cell, query_cell, spec_cell = cells.nth(0), cells.nth(1), cells.nth(2)
        # the explorer is drawn once every cell above it ran (JupyterLab renders
        # only the cells in view: scroll there first)
        spec_cell.locator(".jp-InputPrompt", has_text="[3]").wait_for(timeout=180_000)
        errors = page.locator(
            ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
        )
        tracebacks = [t for t in errors.all_inner_texts() if "Traceback" in t or "Error" in t]
        assert tracebacks == [], tracebacks
        spec_cell.scroll_into_view_if_needed()
        spec_cell.locator(".desilab-target-info").wait_for(timeout=60_000)

        # Ray: Start, ready, the dashboard link through the hub
        ray_cell.scroll_into_view_if_needed()
        button(ray_cell, "Start").click()
        ray_cell.get_by_text(re.compile(r"ready in [\d.]+ s")).wait_for(timeout=240_000)
        link = ray_cell.locator("a[href*='/desilab/ray/dashboard/']")
        href = link.get_attribute("href")
        port = int(href.rstrip("/").rsplit("/", 1)[1])
        assert href == f"/user/{USER}/desilab/ray/dashboard/{port}"
        assert link.inner_text() == f"/user/{USER}/proxy/{port}/"
        assert "ray.init(address=" in ray_cell.locator("textarea").input_value()
        shot(ray_cell, "widgets-01-ray-ready")
        records = list((home / ".desilab" / "ray").glob("*/spec.json"))
        assert len(records) == 1
        cluster_id = json.loads(records[0].read_text())["id"]

        dash = context.new_page()
        response = dash.goto(hub.url + href)
        assert response is not None and response.status == 200, response
        # the login redirected to the proxied dashboard (whose app adds a #/route)
        assert dash.url.split("#")[0] == f"{hub.url}/user/{USER}/proxy/{port}/", dash.url
        assert dash.title().endswith("Ray Dashboard"), dash.title()  # "Overview | Ray Dashboard"
        # the dashboard's API answers the browser (token cookie, hub and server proxies)
        nodes = context.request.get(f"{hub.url}/user/{USER}/proxy/{port}/api/v0/nodes")
        assert nodes.status == 200, (nodes.status, nodes.text()[:500])
        assert nodes.json()["data"]["result"]["total"] == 1
        dash.wait_for_load_state("networkidle")
        dash.screenshot(path=str(ARTIFACTS / "widgets-02-ray-dashboard.png"))
        dash.close()

        # CatalogQuery: run, then page the result
        query_cell.scroll_into_view_if_needed()
        button(query_cell, "Run").click()
        query_cell.get_by_text(re.compile(r"120 rows in [\d.]+ s")).wait_for()
        query_cell.get_by_text("page 1 of 3").wait_for()
        first_page = query_cell.locator("table.desilab-result tbody tr").first.inner_text()
        button(query_cell, "▶").click()
        query_cell.get_by_text("page 2 of 3").wait_for()
        rows = query_cell.locator("table.desilab-result tbody tr")
        assert rows.count() == 50
        assert rows.first.inner_text() != first_page
        shot(query_cell, "widgets-03-catalog-query")

        # SpectrumExplorer: next target, flag it, save
        spec_cell.scroll_into_view_if_needed()
        info = spec_cell.locator(".desilab-target-info")
        assert "1 of 5" in info.inner_text()
        button(spec_cell, "Next ▶").click()
        spec_cell.locator(".desilab-target-info", has_text="2 of 5").wait_for()
        assert str(second) in info.inner_text()
        spec_cell.locator("button", has_text=re.compile(r"^\s*interesting\s*$")).click()
        spec_cell.get_by_placeholder("comment (optional)").fill(COMMENT)
        button(spec_cell, "Save inspection").click()
        spec_cell.get_by_text(f"interesting for TARGETID {second}").wait_for()
        shot(spec_cell, "widgets-04-spectrum-explorer")
        with psycopg.connect(demo_catalog.admin_dsn) as conn:
            saved = conn.execute(
                "SELECT targetid, inspector, flag, source FROM vi.inspections WHERE comment = %s",
                (COMMENT,),
            ).fetchall()
        assert saved == [(second, role_name(USER), "interesting", "spectrum-explorer")]

        # Ray: Stop, and nothing of the cluster is left
        ray_cell.scroll_into_view_if_needed()
        button(ray_cell, "Stop").click()
        ray_cell.get_by_text(re.compile(r"^stopped: ")).wait_for(timeout=90_000)
        state = json.loads((home / ".desilab" / "ray" / cluster_id / "state.json").read_text())
        assert state["status"] == "stopped"
        assert ray_processes(cluster_id) == []
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "widgets-failure.png"))
        print(page.locator(".jp-NotebookPanel .jp-Notebook").inner_text()[-6000:])
        raise
    finally:
        context.close()
        hub.stop_server(USER)
        if cluster_id:
            deadline = time.monotonic() + 30
            while ray_processes(cluster_id) and time.monotonic() < deadline:
                time.sleep(0.5)
            assert ray_processes(cluster_id) == []
