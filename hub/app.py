"""``desilab up`` and ``desilab generate-config``."""

from __future__ import annotations

import functools
import getpass
import hashlib
import os
import signal
import sys
import sysconfig
from pathlib import Path
from typing import Any

from traitlets import Bool, Dict, Integer, List, Unicode, default
from traitlets.config import Application, Config

from ..spawner import ProfileSpawner
from ..spawner.accounts import isolation_available, make_traversable
from ..spawner.backends import LocalBackend
from ..spawner.limits import LimitEnforcer
from .auth import DesilabAuthenticator
from .cli import DesilabCommand
from .secretfiles import read_or_create_secret

TEMPLATES = Path(__file__).parent / "templates"


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


class UpApp(DesilabCommand):
    """Run the platform: embedded PostgreSQL, JupyterHub, proxy and hub services."""

    description = """Start desilab: the embedded PostgreSQL 16 (unless --db-url is given),
    JupyterHub with the profile spawner, the proxy, the idle culler and the metrics
    endpoint. Ctrl-C or SIGTERM stops everything it started."""

    ip = Unicode("127.0.0.1", help="Address the hub's public proxy listens on.").tag(config=True)
    port = Integer(8000, help="Port the hub's public proxy listens on.").tag(config=True)
    hub_port = Integer(8081, help="Port of the hub's internal API (loopback).").tag(config=True)
    proxy_api_port = Integer(8001, help="Port of the proxy's REST API (loopback).").tag(config=True)
    proxy_timeout = Integer(
        3600, help="Seconds the proxy waits for a response from the hub or a server."
    ).tag(config=True)
    db_url = Unicode(
        help="""PostgreSQL URL of an external catalog database (superuser or a role that
        may create roles). Empty: run the embedded PostgreSQL 16 under the desilab home.
        Default: $DESILAB_DB_URL.""",
    ).tag(config=True)

    @default("db_url")
    def _db_url_default(self) -> str:
        return os.environ.get("DESILAB_DB_URL", "")

    db_port = Integer(
        0, help="TCP port of the embedded PostgreSQL on 127.0.0.1 (0: any free port)."
    ).tag(config=True)
    demo = Bool(
        False, help="Generate and ingest the demo dataset on start when the catalog is empty."
    ).tag(config=True)
    idle_timeout = Integer(
        3600, help="Seconds of inactivity after which the idle culler stops a server."
    ).tag(config=True)
    metrics_token = Unicode(
        help="""Token a Prometheus scraper sends (Authorization: token ...) to read
        /hub/metrics. Default: $DESILAB_METRICS_TOKEN, else generated once into
        <home>/secrets/metrics-token (0600).""",
    ).tag(config=True)
    groups = Dict(
        default_value={"students": []},
        help="""Groups created on start, as {name: [user, ...]}. Profiles name the groups
        they allow or deny; admins also manage groups on the hub's admin page.""",
    ).tag(config=True)
    statement_timeout = Unicode(
        "10min", help="statement_timeout of each user's database role."
    ).tag(config=True)
    connection_limit = Integer(20, help="Connection limit of each user's database role.").tag(
        config=True
    )
    extra_services = List(
        help="Additional JupyterHub services (dicts), appended to desilab's own."
    ).tag(config=True)

    aliases = {
        **DesilabCommand.aliases,
        "ip": "UpApp.ip",
        "port": "UpApp.port",
        "hub-port": "UpApp.hub_port",
        "proxy-api-port": "UpApp.proxy_api_port",
        "db-url": "UpApp.db_url",
        "db-port": "UpApp.db_port",
        "idle-timeout": "UpApp.idle_timeout",
    }
    flags = {
        "demo": ({"UpApp": {"demo": True}}, "Load the demo dataset when the catalog is empty."),
        "no-demo": ({"UpApp": {"demo": False}}, "Do not load the demo dataset."),
    }

    @property
    def home_path(self) -> Path:
        return Path(self.home)

    def get_metrics_token(self) -> str:
        if self.metrics_token:
            return self.metrics_token
        if os.environ.get("DESILAB_METRICS_TOKEN"):
            return os.environ["DESILAB_METRICS_TOKEN"]
        return read_or_create_secret(self.home_path / "secrets" / "metrics-token", hex_=True)

    def hub_config(self, admin_dsn: str | None) -> Config:
        """The JupyterHub configuration, before the user's config file is merged in."""
        home = self.home_path
        c = Config()
        c.JupyterHub.bind_url = f"http://{self.ip}:{self.port}"
        c.JupyterHub.hub_ip = "127.0.0.1"
        c.JupyterHub.hub_port = self.hub_port
        c.JupyterHub.db_url = f"sqlite:///{home / 'jupyterhub.sqlite'}"
        c.JupyterHub.cookie_secret_file = str(home / "secrets" / "jupyterhub_cookie_secret")
        c.JupyterHub.pid_file = str(home / "run" / "jupyterhub.pid")
        # no jupyterhub_config.py from the current folder: desilab_config.py is the one file
        c.JupyterHub.config_file = str(self.write_placeholder_hub_config())
        c.JupyterHub.template_paths = [str(TEMPLATES)]
        c.JupyterHub.spawner_class = ProfileSpawner
        c.JupyterHub.authenticator_class = DesilabAuthenticator
        c.Authenticator.allow_all = True  # approval by an admin is the gate
        c.NativeAuthenticator.open_signup = False
        c.NativeAuthenticator.allow_2fa = True
        c.ConfigurableHTTPProxy.command = [
            sys.executable,
            "-m",
            "desilab.hub.proxy",
            # the Python proxy otherwise gives up on any request after tornado's 20 s
            f"--proxy-timeout={self.proxy_timeout * 1000}",
        ]
        c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{self.proxy_api_port}"
        c.ConfigurableHTTPProxy.pid_file = str(home / "run" / "proxy.pid")
        c.ProfileSpawner.users_root = str(home / "users")
        # one cgroup parent per installation, so two hubs never share a server's group
        digest = hashlib.sha1(str(home).encode()).hexdigest()[:8]
        c.LimitEnforcer.cgroup_parent = f"desilab-{digest}"
        c.JupyterHub.template_vars = {"desilab_single_account": not self.per_user_accounts()}
        if admin_dsn:
            from ..desi.roles import disable_user_role, ensure_user_role

            c.ProfileSpawner.database_deprovisioner = functools.partial(
                disable_user_role, admin_dsn
            )

            c.ProfileSpawner.database_provisioner = functools.partial(
                ensure_user_role,
                admin_dsn,
                statement_timeout=self.statement_timeout,
                connection_limit=self.connection_limit,
            )
        c.JupyterHub.load_groups = {
            name: {"users": list(users)} for name, users in self.groups.items()
        }
        c.JupyterHub.services = [
            {
                "name": "idle-culler",
                "command": [
                    sys.executable,
                    "-m",
                    "jupyterhub_idle_culler",
                    f"--timeout={self.idle_timeout}",
                ],
            },
            {"name": "prometheus", "api_token": self.get_metrics_token()},
            *self.extra_services,
        ]
        c.JupyterHub.load_roles = [
            {
                "name": "idle-culler",
                "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
                "services": ["idle-culler"],
            },
            {"name": "metrics", "scopes": ["read:metrics"], "services": ["prometheus"]},
        ]
        return c

    def per_user_accounts(self) -> bool:
        """Whether servers run under per-user system accounts (the spawner's setting)."""
        configured = self.config.ProfileSpawner.get("per_user_accounts")
        return bool(configured) if configured is not None else isolation_available()

    def prepare_isolation(self) -> None:
        """Per-user accounts need to reach their homes and Python; else warn loudly."""
        if not self.per_user_accounts():
            self.log.warning(
                "Single-account mode: every user's server runs as %s, so users are NOT "
                "isolated from each other (files, processes, database credentials). "
                "Run desilab up as root for per-user accounts.",
                getpass.getuser(),
            )
            return
        targets = [
            self.home_path / "users",
            Path(sys.executable),
            Path(sys.executable).resolve(),
            Path(sysconfig.get_paths()["stdlib"]),
            Path(__file__).resolve().parents[1],
        ]
        for target in targets:
            for folder in make_traversable(target):
                self.log.info("Made %s traversable (o+x) so user accounts reach %s", folder, target)

    def write_placeholder_hub_config(self) -> Path:
        """JupyterHub insists on a config file; desilab's is desilab_config.py."""
        path = self.home_path / "run" / "jupyterhub_config.py"
        path.write_text("# generated by desilab: put settings in desilab_config.py instead\n")
        return path

    def start_database(self) -> tuple[str, Any]:
        """Return (admin DSN, embedded server or None)."""
        from ..desi.roles import prepare_catalog
        from ..desi.vi import ensure_vi_schema
        from .database import EmbeddedPostgres

        server = None
        if self.db_url:
            dsn = self.db_url
            self.log.info("Using the external PostgreSQL from db_url")
        else:
            server = EmbeddedPostgres(self.home_path, port=self.db_port)
            dsn = server.start()
            self.log.info("Embedded PostgreSQL 16 running on 127.0.0.1:%d", server.port)
        prepare_catalog(dsn)
        ensure_vi_schema(dsn)
        return dsn, server

    def load_demo(self, dsn: str) -> None:
        """Generate and ingest the demo dataset once (when the catalog is empty)."""
        try:
            from ..desi import demo
        except ImportError:
            self.log.warning(
                "--demo: the DR1 data layer (mock generator and ingest) is not part of "
                "this version yet; starting without demo data"
            )
            return
        demo.ensure_demo(dsn, self.home_path / "demo", log=self.log)

    def check_profiles(self) -> None:
        """Refuse to start with a profile list that would fail every spawn."""
        from ..spawner.profiles import parse_profiles

        profiles = self.config.ProfileSpawner.get("profiles")
        if profiles is None:
            return
        try:
            parse_profiles(profiles)
        except ValueError as e:
            self.log.critical("c.ProfileSpawner.profiles is invalid: %s", e)
            self.exit(2)

    def start(self) -> None:
        from jupyterhub.app import JupyterHub

        self.check_profiles()
        signal.signal(signal.SIGTERM, _raise_interrupt)
        for sub in ("run", "secrets", "users"):
            (self.home_path / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.home_path / "secrets", 0o700)
        server = None
        try:
            self.prepare_isolation()
            dsn, server = self.start_database()
            if self.demo:
                self.load_demo(dsn)
            config = self.hub_config(dsn)
            config.merge(self.config)
            # the hub is its own singleton: drop ours so JupyterHub.instance() can exist
            Application.clear_instance()
            hub = JupyterHub.instance(config=config)
            self.log.info("desilab hub at http://%s:%d", self.ip, self.port)
            hub.launch_instance(argv=[])
        except KeyboardInterrupt:
            self.log.info("Interrupted")
        finally:
            if server is not None:
                server.stop()


class GenerateConfigApp(DesilabCommand):
    """Write desilab_config.py with every option, its default and its help text."""

    output = Unicode(
        "desilab_config.py", help="Where to write the file (relative: the current folder)."
    ).tag(config=True)
    force = Bool(False, help="Overwrite an existing file.").tag(config=True)
    aliases = {**DesilabCommand.aliases, "output": "GenerateConfigApp.output"}
    flags = {"force": ({"GenerateConfigApp": {"force": True}}, "Overwrite an existing file.")}

    def config_classes(self) -> list[type]:
        return [UpApp, ProfileSpawner, LocalBackend, LimitEnforcer, DesilabAuthenticator]

    def start(self) -> None:
        path = Path(self.output)
        if path.exists() and not self.force:
            self.log.error("%s exists; pass --force to overwrite it", path)
            self.exit(1)
        header = "# desilab configuration: uncomment and edit; `desilab up` reads this file.\n"
        text = header + self.generate_config_file(classes=self.config_classes())
        path.write_text(text)
        print(f"wrote {path}")

    def generate_config_file(self, classes: list[type] | None = None) -> str:
        lines = ["c = get_config()  # noqa", ""]
        for cls in classes or []:
            lines.append(cls.class_config_section(classes))
        return "\n".join(lines)
