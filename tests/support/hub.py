"""Start a real ``desilab up`` on loopback ports and talk to it like a user would."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

REPO = Path(__file__).resolve().parents[2]
DESILAB = Path(sys.executable).parent / "desilab"
ADMIN_PASSWORD = "desilab-test-admin-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningHub:
    """A ``desilab up`` process and an admin API token for it."""

    home: Path
    port: int
    proc: subprocess.Popen
    log_path: Path
    admin_token: str = ""
    ports: tuple[int, int, int] = (0, 0, 0)
    tokens: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, method: str, path: str, token: str | None = None, **kw) -> requests.Response:
        headers = {"Authorization": f"token {token or self.admin_token}"}
        return requests.request(
            method,
            f"{self.url}/hub/api{path}",
            headers=headers,
            timeout=kw.pop("timeout", 90),
            **kw,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def create_user(self, name: str, groups: tuple[str, ...] = ()) -> None:
        r = self.api("POST", f"/users/{name}")
        assert r.status_code in (201, 409), r.text
        for group in groups:
            r = self.api("POST", f"/groups/{group}/users", json={"users": [name]})
            assert r.status_code == 200, r.text

    def token_for(self, name: str) -> str:
        if name not in self.tokens:
            r = self.api("POST", f"/users/{name}/tokens", json={"note": "tests"})
            assert r.status_code == 201, r.text
            self.tokens[name] = r.json()["token"]
        return self.tokens[name]

    def spawn(self, name: str, profile: str | None, timeout: float = 90) -> requests.Response:
        """POST a spawn; return the response (not waiting for 202 spawns to finish)."""
        body = {} if profile is None else {"profile": profile}
        return self.api("POST", f"/users/{name}/server", json=body, timeout=timeout)

    def user_model(self, name: str) -> dict:
        r = self.api("GET", f"/users/{name}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_ready(self, name: str, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server = self.user_model(name)["servers"].get("")
            if server and server["ready"]:
                return server
            time.sleep(0.25)
        raise AssertionError(f"{name}'s server not ready in {timeout} s\n{self.log()[-3000:]}")

    def stop_server(self, name: str, timeout: float = 60) -> None:
        r = self.api("DELETE", f"/users/{name}/server")
        assert r.status_code in (202, 204, 400), r.text
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "" not in self.user_model(name)["servers"]:
                return
            time.sleep(0.25)
        raise AssertionError(f"{name}'s server did not stop in {timeout} s")

    def server_pid(self, name: str) -> int:
        for proc in psutil.process_iter(["pid", "environ", "cmdline"]):
            env = proc.info.get("environ") or {}
            cmdline = " ".join(proc.info.get("cmdline") or [])
            if (
                env.get("JUPYTERHUB_USER") == name
                and "jupyterhub.singleuser" in cmdline
                and env.get("HOME", "").startswith(str(self.home))
            ):
                return proc.info["pid"]
        raise AssertionError(f"no server process for {name}")

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"hub ignored SIGTERM for {timeout} s") from None
        return self.proc.returncode


def start_hub(
    home: Path,
    env: dict[str, str] | None = None,
    config: str = "",
    timeout: float = 90,
    admin_password: str | None = ADMIN_PASSWORD,
    ports: tuple[int, int, int] | None = None,
    user: str | None = None,
    extra_args: list[str] | None = None,
) -> RunningHub:
    """Start ``desilab up`` with a fresh or existing home; wait until its API answers.

    With ``env={"DESILAB_ADMIN_PASSWORD": ""}`` the hub generates the admin's
    password; it is read from the log on the first start, and a later start
    on the same home needs ``admin_password=None`` (no admin token). A restart
    that must reach servers still running passes the first hub's ``ports``.
    """
    home.mkdir(parents=True, exist_ok=True)
    if config:
        (home / "desilab_config.py").write_text(config)
    ports = ports or (free_port(), free_port(), free_port())
    port = ports[0]
    full_env = {
        **os.environ,
        "DESILAB_HOME": str(home),
        "DESILAB_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
        **(env or {}),
    }
    log_path = home / f"hub-{port}.log"
    cmd = [
        str(DESILAB),
        "up",
        f"--port={port}",
        f"--hub-port={ports[1]}",
        f"--proxy-api-port={ports[2]}",
        *(extra_args or []),
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            env=full_env,
            cwd=home,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # all three: a process left in group root cannot enter /root (mode 0701)
            user=user,
            group=user,
            extra_groups=[] if user else None,
        )
    hub = RunningHub(home=home, port=port, proc=proc, log_path=log_path, ports=ports)
    generated = full_env["DESILAB_ADMIN_PASSWORD"] == ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"desilab up exited with {proc.returncode}:\n{hub.log()[-4000:]}")
        try:
            r = requests.get(f"{hub.url}/hub/api/", timeout=5)
            if r.status_code == 200 and admin_password is None:
                return hub
            password = admin_password
            if generated:
                found = re.search(r"with password: (\S+)", hub.log())
                password = found.group(1) if found else ""
            r = requests.post(
                f"{hub.url}/hub/api/users/admin/tokens",
                data=json.dumps({"auth": {"username": "admin", "password": password}}),
                timeout=5,
            )
            if r.status_code == 201:
                hub.admin_token = r.json()["token"]
                return hub
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    hub.stop()
    raise AssertionError(f"hub did not answer in {timeout} s:\n{hub.log()[-4000:]}")


def embedded_dsn(home: Path, dbname: str = "desilab") -> str:
    """Superuser DSN of the embedded PostgreSQL of a hub home."""
    pid_lines = (home / "postgres" / "data" / "postmaster.pid").read_text().splitlines()
    password = (home / "secrets" / "postgres-password").read_text().strip()
    return f"host=127.0.0.1 port={pid_lines[3]} user=postgres password={password} dbname={dbname}"


def processes_mentioning(path: Path) -> list[psutil.Process]:
    """Processes whose command line or environment mentions ``path`` (orphans)."""
    found = []
    needle = str(path)
    for proc in psutil.process_iter(["pid", "cmdline", "environ"]):
        if proc.pid == os.getpid():
            continue
        cmdline = " ".join(proc.info.get("cmdline") or [])
        env = proc.info.get("environ") or {}
        if needle in cmdline or any(needle in v for v in env.values()):
            found.append(proc)
    return found
