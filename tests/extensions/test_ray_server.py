"""The shipped server config, in a real jupyter server under a hub-like prefix:
jupyter-server-proxy reaches loopback ports, the Ray dashboard login sets the token
cookie for that proxy path only, and the Dask panel makes clusters bounded by the
profile with proxied dashboard links."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests
from desilab.extensions import server_env
from desilab.extensions.ray_cluster import GiB
from desilab.extensions.ray_registry import free_port, identity, write_json

pytestmark = pytest.mark.slow

TOKEN = "test-token-1234"
PREFIX = "/user/alice/"


class Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[dict] = []

    def do_GET(self):  # noqa: N802
        Recorder.seen.append({"path": self.path, "cookie": self.headers.get("Cookie", "")})
        body = b"<html>fake dashboard</html>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def dashboard():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


@pytest.fixture(scope="module")
def jupyter():
    # not under pytest's tmp_path: concurrent pytest runs of the same account rotate it
    tmp_path = Path(tempfile.mkdtemp(prefix="desilab-server-test-", dir="/tmp"))
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    env = dict(os.environ)
    env.update(server_env())
    env.update(
        HOME=str(home),
        JUPYTERHUB_SERVICE_PREFIX=PREFIX,
        DESILAB_PROFILE="cpu-small",
        DESILAB_CPU_LIMIT="1",
        DESILAB_MEM_LIMIT=str(2 * GiB),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        JUPYTER_DATA_DIR=str(tmp_path / "data"),
    )
    env.pop("DASK_DISTRIBUTED__DASHBOARD__LINK", None)
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 (closed at teardown)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter_server",
            "--no-browser",
            "--allow-root",
            f"--port={port}",
            "--ip=127.0.0.1",
            f"--ServerApp.base_url={PREFIX}",
            f"--IdentityProvider.token={TOKEN}",
            f"--ServerApp.root_dir={home}",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=home,
    )
    url = f"http://127.0.0.1:{port}{PREFIX}"
    s = requests.Session()
    s.headers["Authorization"] = f"token {TOKEN}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if s.get(url + "api/status", timeout=5).status_code == 200:
                break
        except requests.RequestException:
            pass
        assert proc.poll() is None, (tmp_path / "server.log").read_text()
        time.sleep(0.5)
    yield url, s, home
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    shutil.rmtree(tmp_path, ignore_errors=True)


def fake_cluster(home, port):
    """A registry record of a running cluster whose dashboard is ``port``."""
    folder = home / ".desilab" / "ray" / "abcd1234"
    folder.mkdir(parents=True)
    token = home / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text(TOKEN)
    write_json(
        folder / "spec.json",
        {"id": "abcd1234", "created": time.time(), "token_path": str(token), "nodes": []},
    )
    write_json(folder / "supervisor.json", identity())
    write_json(
        folder / "state.json",
        {"status": "ready", "dashboard_port": port, "workers": 1, "address": "127.0.0.1:1"},
    )


def test_dashboard_login_and_proxy_under_the_users_prefix(jupyter, dashboard):
    url, s, home = jupyter
    r = s.get(url + f"desilab/ray/dashboard/{dashboard}", allow_redirects=False, timeout=30)
    assert r.status_code == 404 and "no running Ray cluster of yours" in r.text
    fake_cluster(home, dashboard)
    r = s.get(url + f"desilab/ray/dashboard/{dashboard}", allow_redirects=False, timeout=30)
    assert r.status_code == 302, r.text
    assert r.headers["Location"] == f"{PREFIX}proxy/{dashboard}/"
    cookie = r.headers["Set-Cookie"]
    assert f"ray-authentication-token={TOKEN}" in cookie
    assert f"Path={PREFIX}proxy/{dashboard}/" in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    r = s.get(url + f"proxy/{dashboard}/", timeout=30)
    assert r.status_code == 200 and "fake dashboard" in r.text
    assert f"ray-authentication-token={TOKEN}" in Recorder.seen[-1]["cookie"]


def test_dask_panel_makes_clusters_bounded_by_the_profile(jupyter):
    url, s, _ = jupyter
    r = s.put(url + "dask/clusters", timeout=120)
    assert r.status_code == 200, r.text
    model = r.json()
    try:
        assert model["workers"] == 1 and model["cores"] == 1
        assert model["memory"] == "1.00 GiB"
        assert model["dashboard_link"].startswith(f"{PREFIX}proxy/")
        assert model["dashboard_link"].endswith("/status")
        listed = s.get(url + "dask/clusters", timeout=30).json()
        assert [c["id"] for c in listed] == [model["id"]]
    finally:
        s.delete(url + f"dask/clusters/{model['id']}", timeout=60)
    assert json.loads(s.get(url + "dask/clusters", timeout=30).text) == []


def test_real_ray_dashboard_behind_the_proxy_needs_and_gets_the_token(jupyter):
    """A real cluster: without the cookie the dashboard's API refuses (token auth);
    one visit to the login URL and the browser's requests get through the proxy."""
    from desilab.extensions import ClusterRequest, LocalRayBackend, ProfileLimits
    from desilab.extensions.ray_registry import sweep

    url, _, home = jupyter
    backend = LocalRayBackend(
        registry_dir=str(home / ".desilab" / "ray"),
        token_path=str(home / ".ray" / "auth_token"),
        limits=ProfileLimits("cpu-test", 1, 3 * GiB, ()),
        service_prefix=PREFIX,
        start_timeout=300.0,
    )
    info = backend.start(backend.plan(ClusterRequest()))
    try:
        origin = url[: -len(PREFIX)]
        browser = requests.Session()  # cookies only, as a browser behind the hub
        assert browser.get(url + f"api/status?token={TOKEN}", timeout=30).ok
        page = browser.get(origin + info.dashboard_url, timeout=30)
        assert page.status_code == 200 and "./static/js/" in page.text
        api = origin + info.dashboard_url + "api/v0/nodes"
        assert browser.get(api, timeout=30).status_code == 401
        r = browser.get(origin + info.dashboard_login_url, timeout=30)
        assert r.status_code == 200 and r.url == origin + info.dashboard_url
        nodes = browser.get(api, timeout=30)
        assert nodes.status_code == 200 and nodes.json()["data"]["result"]["total"] == 1
    finally:
        backend.stop(info.id)
        sweep(info.id, timeout=10)
