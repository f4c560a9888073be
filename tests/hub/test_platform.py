"""`desilab up` as a whole: processes, shutdown, login, metrics, config, failures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import requests
from support.hub import ADMIN_PASSWORD, embedded_dsn, processes_mentioning, start_hub
from support.kernel import run_in_kernel
from support.login import approve, login_session, sign_up

pytestmark = pytest.mark.slow

DESILAB = str(Path(sys.executable).parent / "desilab")


def test_up_runs_postgres_16_and_sigterm_leaves_nothing_behind(hub_home):
    home = hub_home
    hub = start_hub(home, env={"DESILAB_ADMIN_PASSWORD": ""})
    try:
        log = hub.log()
        assert "created the admin account 'admin' with password:" in log
        with psycopg.connect(embedded_dsn(home)) as conn:
            assert conn.execute("SHOW server_version").fetchone()[0].startswith("16.")
            schemas = {r[0] for r in conn.execute("SELECT nspname FROM pg_namespace")}
            assert {"dr1", "results", "vi"} <= schemas
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(embedded_dsn(home).replace("password=", "password=x")).close()
        for secret in (home / "secrets").iterdir():
            assert secret.stat().st_mode & 0o777 == 0o600, secret
        services = hub.api("GET", "/services").json()
        assert "idle-culler" in services and "--timeout=3600" in services["idle-culler"]["command"]
        hub.create_user("alice")
        assert hub.spawn("alice", "cpu-small").status_code in (201, 202)
        hub.wait_ready("alice")
        assert processes_mentioning(home), "the server and postgres run"
    finally:
        rc = hub.stop()
    assert rc == 0, hub.log()[-3000:]
    time.sleep(0.5)
    assert processes_mentioning(home) == [], "no server, proxy, service or postgres left"
    # a second start reuses the data and prints no new password
    hub = start_hub(home, env={"DESILAB_ADMIN_PASSWORD": ""}, admin_password=None)
    try:
        assert "created the admin account" not in hub.log()
    finally:
        assert hub.stop() == 0


def test_login_needs_approval_and_works_by_form_and_api(gpu_hub):
    assert sign_up(gpu_hub, "newbie", "newbie-passw0rd!").status_code == 200
    with pytest.raises(AssertionError, match="login of newbie failed: 200"):
        login_session(gpu_hub, "newbie", "newbie-passw0rd!")
    r = requests.post(
        f"{gpu_hub.url}/hub/api/users/newbie/tokens",
        json={"auth": {"username": "newbie", "password": "newbie-passw0rd!"}},
        timeout=30,
    )
    assert r.status_code == 403, "unapproved users get no token"
    admin = login_session(gpu_hub, "admin", ADMIN_PASSWORD)
    assert admin.get(f"{gpu_hub.url}/hub/authorize/newbie", timeout=30).status_code == 200
    session = login_session(gpu_hub, "newbie", "newbie-passw0rd!")
    assert session.get(f"{gpu_hub.url}/hub/home", timeout=30).status_code == 200
    r = requests.post(
        f"{gpu_hub.url}/hub/api/users/newbie/tokens",
        json={"auth": {"username": "newbie", "password": "newbie-passw0rd!"}},
        timeout=30,
    )
    assert r.status_code == 201
    me = requests.get(
        f"{gpu_hub.url}/hub/api/user",
        headers={"Authorization": f"token {r.json()['token']}"},
        timeout=30,
    )
    assert me.json()["name"] == "newbie"


def test_two_factor_login_needs_the_totp_code(gpu_hub):
    import onetimepass

    page = sign_up(gpu_hub, "careful", "careful-passw0rd!", two_factor=True).text
    found = re.search(r"two factor authentication code is <strong>(\w+)</strong>", page)
    assert found, page[-2000:]
    approve(gpu_hub, "careful")
    with pytest.raises(AssertionError, match="login of careful failed"):
        login_session(gpu_hub, "careful", "careful-passw0rd!")
    with pytest.raises(AssertionError, match="login of careful failed"):
        login_session(gpu_hub, "careful", "careful-passw0rd!", otp="000000")
    session = login_session(
        gpu_hub,
        "careful",
        "careful-passw0rd!",
        otp=str(onetimepass.get_totp(found.group(1))).zfill(6),
    )
    assert session.get(f"{gpu_hub.url}/hub/home", timeout=30).status_code == 200


def test_external_database_url_replaces_the_embedded_one(homes_root, hub_home):
    from desilab.hub.database import EmbeddedPostgres

    external = EmbeddedPostgres(homes_root / "external-db-home")
    (homes_root / "external-db-home").mkdir(exist_ok=True)
    dsn = external.start()
    try:
        hub = start_hub(hub_home, extra_args=[f"--db-url={dsn}"])
        try:
            assert not (hub_home / "postgres").exists(), "no embedded server was started"
            hub.create_user("ext")
            assert hub.spawn("ext", "cpu-small").status_code in (201, 202)
            hub.wait_ready("ext")
            url = run_in_kernel(
                hub.url,
                "ext",
                hub.token_for("ext"),
                "import os; print(os.environ['DESILAB_DATABASE_URL'])",
            )
            assert f"port={external.port}" in url and "user=desi_ext" in url
            assert dsn not in hub.log(), "the admin DSN (with its password) is never logged"
            hub.stop_server("ext")
        finally:
            assert hub.stop() == 0
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'desi_ext'").fetchone()
    finally:
        external.stop()


def test_metrics_are_served_only_to_the_token_holder(gpu_hub):
    url = f"{gpu_hub.url}/hub/metrics"
    assert requests.get(url, timeout=30).status_code == 403
    token = (gpu_hub.home / "secrets" / "metrics-token").read_text().strip()
    r = requests.get(url, headers={"Authorization": f"token {token}"}, timeout=30)
    assert r.status_code == 200
    assert "jupyterhub_active_users" in r.text


def test_generate_config_writes_every_option_with_help(tmp_path):
    out = tmp_path / "desilab_config.py"
    subprocess.run([DESILAB, "generate-config", f"--output={out}"], check=True, timeout=60)
    text = out.read_text()
    for needle in (
        "c.UpApp.port",
        "Port the hub's public proxy listens on.",
        "c.ProfileSpawner.profiles",
        "c.LimitEnforcer.mechanism",
        "c.UpApp.idle_timeout",
    ):
        assert needle in text
    namespace = {"get_config": lambda: type("C", (), {})()}
    exec(compile(text, str(out), "exec"), namespace)  # the file is valid Python
    again = subprocess.run(
        [DESILAB, "generate-config", f"--output={out}"], capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 1 and "pass --force" in again.stderr


def test_a_bad_profile_list_stops_the_start_with_the_reason(hub_home):
    (hub_home / "desilab_config.py").write_text(
        'c.ProfileSpawner.profiles = [{"slug": "cpu-small", "memory": "lots"}]\n'
    )
    result = subprocess.run(
        [DESILAB, "up", "--port=1"],
        env={**os.environ, "DESILAB_HOME": str(hub_home)},
        cwd=hub_home,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "profile 'cpu-small': memory 'lots' is not a size" in result.stderr
    assert not (hub_home / "postgres").exists(), "nothing was started"


CHAOS = """
c.ProfileSpawner.backend_class = "support.backends.ChaosBackend"
c.ChaosBackend.delay = 12
c.UpApp.idle_timeout = 20
c.Spawner.poll_interval = 1
"""


@pytest.fixture(scope="module")
def chaos_hub(homes_root):
    """A hub on a machine without GPUs whose backend fails on demand."""
    hub = start_hub(homes_root / "chaos", env={"DESILAB_GPUS": ""}, config=CHAOS)
    yield hub
    assert hub.stop() == 0


def test_failed_spawns_reach_the_api_as_clear_reasons(chaos_hub):
    chaos_hub.create_user("failing-fay")
    r = chaos_hub.spawn("failing-fay", "cpu-small")
    assert r.status_code == 503, r.text
    assert "injected failure: fork refused" in r.json()["message"]

    chaos_hub.create_user("dying-dan")
    r = chaos_hub.spawn("dying-dan", "cpu-small")
    assert r.status_code == 503, r.text
    message = r.json()["message"]
    assert "exited with status 3 before it was ready" in message
    assert "injected: server crashing" in message, "the log tail is part of the reason"
    assert chaos_hub.user_model("dying-dan")["servers"] == {}


def test_slow_spawns_answer_202_then_become_ready(chaos_hub):
    chaos_hub.create_user("slow-sam")
    r = chaos_hub.spawn("slow-sam", "cpu-small")
    assert r.status_code == 202, r.text
    chaos_hub.wait_ready("slow-sam", timeout=120)
    chaos_hub.stop_server("slow-sam")


def test_without_gpus_the_gpu_profile_is_disabled_with_the_reason(chaos_hub):
    admin = login_session(chaos_hub, "admin", ADMIN_PASSWORD)
    form = admin.get(f"{chaos_hub.url}/hub/spawn", timeout=30).text
    assert 'id="profile-gpu" value="gpu" disabled' in form
    assert "needs 1 GPU(s) and this machine has 0" in form
    chaos_hub.create_user("gpu-wisher")
    r = chaos_hub.spawn("gpu-wisher", "gpu")
    assert r.status_code == 400
    assert r.json()["message"] == (
        "needs 1 GPU(s) and this machine has 0 (inventory source: DESILAB_GPUS); "
        "choose one of: cpu-small, cpu-large"
    )


def test_idle_culler_stops_idle_servers(chaos_hub):
    chaos_hub.create_user("idler")
    assert chaos_hub.spawn("idler", "cpu-small").status_code in (201, 202)
    chaos_hub.wait_ready("idler")
    deadline = time.monotonic() + 90
    while chaos_hub.user_model("idler")["servers"] and time.monotonic() < deadline:
        time.sleep(1)
    assert chaos_hub.user_model("idler")["servers"] == {}, "culled after 20 s idle"
    assert "Culling server idler" in chaos_hub.log() or "culling" in chaos_hub.log().lower()
