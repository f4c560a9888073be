"""Per-user system accounts: users cannot read or signal each other (hub as root)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from desilab.spawner.accounts import make_traversable
from support.hub import ADMIN_PASSWORD, start_hub
from support.kernel import run_in_kernel
from support.login import login_session

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="per-user accounts need a hub running as root"),
]

PROBE = """
import json, os, signal
from pathlib import Path
other_home, other_pid = Path({home!r}), {pid}
def denied(action):
    try:
        action()
    except PermissionError:
        return True
    return False
templates = Path.home() / "Templates"
print(json.dumps({{
    "uid": os.getuid(),
    "gid": os.getgid(),
    "home": str(Path.home()),
    "list_other_home": denied(lambda: os.listdir(other_home)),
    "read_other_pgpass": denied(lambda: (other_home / ".desilab" / "pgpass").read_text()),
    "read_other_environ": denied(lambda: open(f"/proc/{{other_pid}}/environ").read()),
    "signal_other": denied(lambda: os.kill(other_pid, 0)),
    "edit_template": denied(lambda: open(templates / "research-notebook.ipynb", "a").close()),
    "add_template": denied(lambda: open(templates / "mine.ipynb", "w").close()),
    "read_template": len((templates / "research-notebook.ipynb").read_text()) > 0,
    "pgpass_mode": oct(os.stat(Path.home() / ".desilab" / "pgpass").st_mode & 0o777),
    "pgpass_owner": os.stat(Path.home() / ".desilab" / "pgpass").st_uid,
    "env": dict(os.environ),
}}))
"""

SECRETS = (
    "CONFIGPROXY_AUTH_TOKEN",
    "DESILAB_ADMIN_PASSWORD",
    "DESILAB_METRICS_TOKEN",
    "JPY_COOKIE_SECRET",
)


def probe(hub, user: str, other: str) -> dict:
    other_home = hub.home / "users" / other
    code = PROBE.format(home=str(other_home), pid=hub.server_pid(other))
    return json.loads(run_in_kernel(hub.url, user, hub.token_for(user), code))


def test_users_are_isolated_from_each_other(gpu_hub):
    users = ("iso-a", "iso-b")
    for user in users:
        gpu_hub.create_user(user)
        assert gpu_hub.spawn(user, "cpu-small").status_code in (201, 202)
    try:
        for user in users:
            gpu_hub.wait_ready(user)
        a, b = probe(gpu_hub, "iso-a", "iso-b"), probe(gpu_hub, "iso-b", "iso-a")
        assert a["uid"] != b["uid"] and 0 not in (a["uid"], b["uid"])
        # desilab-iso-a, or with a hash suffix where a stale account of that name exists
        assert pwd.getpwuid(a["uid"]).pw_name.startswith("desilab-iso-a")
        for report, user in ((a, "iso-a"), (b, "iso-b")):
            assert report["home"] == str(gpu_hub.home / "users" / user)
            for check in (
                "list_other_home",
                "read_other_pgpass",
                "read_other_environ",
                "signal_other",
                "edit_template",
                "add_template",
            ):
                assert report[check], f"{user}: {check} was allowed"
            assert report["read_template"]
            assert report["pgpass_mode"] == "0o600" and report["pgpass_owner"] == report["uid"]
            env = report["env"]
            assert not [name for name in SECRETS if name in env], "no hub secret in the server"
            assert env["DESILAB_PROFILE"] == "cpu-small" and env["DESILAB_CPU_LIMIT"] == "1"
            assert f"user=desi_{user.replace('-', '_')}" in env["DESILAB_DATABASE_URL"]
            assert env["PGUSER"] == f"desi_{user.replace('-', '_')}"
        stat = (gpu_hub.home / "users" / "iso-a").stat()
        assert (stat.st_uid, stat.st_mode & 0o777) == (a["uid"], 0o700)
        # the user's own DSN works from inside, with psql-style defaults and no arguments
        out = run_in_kernel(
            gpu_hub.url,
            "iso-a",
            gpu_hub.token_for("iso-a"),
            "import psycopg\n"
            "with psycopg.connect('') as c:\n"
            "    print(c.execute('select current_user').fetchone()[0])",
        )
        assert out.strip() == "desi_iso_a"
    finally:
        for user in users:
            gpu_hub.stop_server(user)


def test_deleted_users_home_is_archived_and_account_never_reused(gpu_hub):
    gpu_hub.create_user("leaver")
    assert gpu_hub.spawn("leaver", "cpu-small").status_code in (201, 202)
    gpu_hub.wait_ready("leaver")
    first_account = json.loads((gpu_hub.home / "accounts.json").read_text())["active"]["leaver"]
    first_uid = pwd.getpwnam(first_account).pw_uid
    pid = gpu_hub.server_pid("leaver")
    r = gpu_hub.api("DELETE", "/users/leaver")
    assert r.status_code == 204, r.text
    assert not Path(f"/proc/{pid}").exists(), "deleting the user stopped the server"
    assert not (gpu_hub.home / "users" / "leaver").exists()
    archived = list((gpu_hub.home / "archive").glob("leaver-*"))
    assert len(archived) == 1 and archived[0].stat().st_uid == 0
    registry = json.loads((gpu_hub.home / "accounts.json").read_text())
    assert first_account in registry["retired"] and "leaver" not in registry["active"]

    gpu_hub.create_user("leaver")  # a different person with the same name
    assert gpu_hub.spawn("leaver", "cpu-small").status_code in (201, 202)
    gpu_hub.wait_ready("leaver")
    try:
        uid = json.loads(
            run_in_kernel(
                gpu_hub.url, "leaver", gpu_hub.token_for("leaver"), "import os; print(os.getuid())"
            )
        )
        assert uid != first_uid
        assert pwd.getpwuid(uid).pw_name.startswith("desilab-leaver")
        assert pwd.getpwuid(uid).pw_name != first_account
    finally:
        gpu_hub.stop_server("leaver")


NONROOT = "desilab-nonroot-test"


@pytest.fixture
def nonroot_home():
    if subprocess.run(["id", NONROOT], capture_output=True).returncode != 0:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", NONROOT], check=True
        )
    for target in (Path(sys.executable), Path(sys.executable).resolve(), Path(__file__).resolve()):
        make_traversable(target)
    folder = Path(tempfile.mkdtemp(prefix="desilab-nonroot-", dir="/tmp"))
    os.chmod(folder, 0o755)
    home = folder / "home"
    home.mkdir()
    shutil.chown(home, NONROOT, NONROOT)
    yield home
    shutil.rmtree(folder, ignore_errors=True)


def test_non_root_hub_runs_single_account_mode_and_says_so(nonroot_home):
    hub = start_hub(nonroot_home, user=NONROOT, env={"HOME": str(nonroot_home)})
    try:
        assert "Single-account mode" in hub.log() and "NOT isolated" in hub.log(), hub.log()[:800]
        admin = login_session(hub, "admin", ADMIN_PASSWORD)
        page = admin.get(f"{hub.url}/hub/home", timeout=30).text
        assert "Users are not isolated on this hub." in page
        hub.create_user("solo")
        assert hub.spawn("solo", "cpu-small").status_code in (201, 202)
        hub.wait_ready("solo")
        uid = run_in_kernel(hub.url, "solo", hub.token_for("solo"), "import os; print(os.getuid())")
        assert int(uid) == pwd.getpwnam(NONROOT).pw_uid
        hub.stop_server("solo")
    finally:
        assert hub.stop() == 0
