"""ProfileSpawner: JupyterHub spawner that places each server on a configured profile."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, ClassVar

from jupyterhub.spawner import Spawner
from jupyterhub.utils import random_port
from tornado import web
from traitlets import Bool, Callable, Enum, Float, Instance, List, Type, Unicode, default

from ..desi.roles import database_client_env
from ..extensions import server_env
from ..kernels import THREAD_VARIABLES, kernel_env
from .accounts import Account, SystemAccounts, isolation_available
from .allocators import CoreAllocator, GPUAllocator, NoGPUFree
from .backends import Backend, LaunchRequest, LocalBackend
from .form import render_options_form
from .gpus import Inventory, discover_gpus
from .profiles import Profile, ProfileError, default_profiles, machine_cores, parse_profiles


class SpawnRefused(web.HTTPError):
    """A spawn that cannot proceed; JupyterHub shows ``message`` to the user and API."""

    def __init__(self, status: int, message: str):
        super().__init__(status, "%s", message)
        self.jupyterhub_message = message

    def __str__(self) -> str:
        return self.jupyterhub_message


class ProfileSpawner(Spawner):
    """Spawn each user's server on a CPU or GPU profile chosen in a form or the REST API.

    ``user_options = {"profile": slug}``. Limits are enforced by the backend;
    GPUs are assigned exclusively and persisted in the spawner state so a hub
    restart neither loses nor duplicates an allocation.
    """

    profiles = List(
        default_value=default_profiles(),
        help="""Profiles users choose from. Each is a dict with keys: slug, display_name,
        description, cpus (int or "all"), memory (bytes or "2G"), gpus (int), groups
        (allowed groups; empty: everyone), denied_groups, default (bool), environment
        (dict of extra variables), kubespawner_override (dict, kubernetes backend).""",
    ).tag(config=True)

    backend_class = Type(
        LocalBackend,
        klass=Backend,
        help="The backend that runs servers: local processes (default) or kubernetes.",
    ).tag(config=True)

    users_root = Unicode(
        help="""Folder holding each user's home (<users_root>/<name>, mode 0700).
        Default: <DESILAB_HOME>/users.""",
    ).tag(config=True)

    @default("users_root")
    def _users_root_default(self) -> str:
        from ..hub.cli import default_home

        return str(default_home() / "users")

    templates_dir = Unicode(
        "",
        help="""Shared notebook templates, published read-only as ~/Templates in every
        server. Empty: the templates shipped with desilab.""",
    ).tag(config=True)

    database_provisioner = Callable(
        None,
        allow_none=True,
        help="""Called as f(username) -> DSN in a thread at spawn; the DSN reaches the
        server as DESILAB_DATABASE_URL. Set by `desilab up` to create the user's
        PostgreSQL login role.""",
    ).tag(config=True)

    per_user_accounts = Bool(
        help="""Run each user's server under a system account of its own (desilab-<name>),
        so users cannot read each other's files, environments or credentials.
        Default: on when the hub runs as root (the only way it can switch accounts).""",
    ).tag(config=True)

    @default("per_user_accounts")
    def _per_user_default(self) -> bool:
        return isolation_available()

    home_on_delete = Enum(
        ["archive", "keep"],
        default_value="archive",
        help="""What happens to a deleted user's home: "archive" moves it to
        <users_root>/../archive/<name>-<time> (root only), "keep" leaves it in place.
        The user's system account is retired either way and never reused.""",
    ).tag(config=True)

    database_deprovisioner = Callable(
        None,
        allow_none=True,
        help="Called as f(username) in a thread when a hub user is deleted.",
    ).tag(config=True)

    accounts = Instance(SystemAccounts)

    @default("accounts")
    def _accounts_default(self) -> SystemAccounts:
        registry = Path(self.users_root).parent / "accounts.json"
        return SystemAccounts(parent=self, log=self.log, registry=str(registry))

    ready_timeout = Float(
        300.0,
        help="""Seconds to wait for the server to listen before the spawn fails. Generous
        because a class logging in at once starts many servers on few cores.""",
    ).tag(config=True)

    @default("start_timeout")
    def _start_timeout_default(self) -> int:
        return int(self.ready_timeout) + 30

    @default("http_timeout")
    def _http_timeout_default(self) -> int:
        return 120

    backend = Instance(Backend)

    @default("backend")
    def _backend_default(self) -> Backend:
        return self.backend_class(parent=self, log=self.log)

    @default("cmd")
    def _cmd_default(self) -> list[str]:
        # an absolute interpreter: the hub's PATH need not contain the venv
        return [sys.executable, "-m", "jupyterhub.singleuser"]

    @default("apply_user_options")
    def _apply_user_options_default(self):
        # checked before start(), so a bad request never reaches the backend
        def check_profile(spawner: ProfileSpawner, user_options: dict) -> None:
            try:
                spawner.profile = spawner.resolve_profile(user_options)
            except ProfileError as e:
                raise SpawnRefused(400, str(e)) from e

        return check_profile

    @default("default_url")
    def _default_url_default(self) -> str:
        return "/lab"

    # one inventory and one set of allocators per hub process, shared by all spawners
    _gpu_allocator: ClassVar[GPUAllocator | None] = None
    _core_allocator: ClassVar[CoreAllocator | None] = None
    _inventory: ClassVar[Inventory | None] = None

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.profile: Profile | None = None
        self.cores: tuple[int, ...] = ()
        self.gpu_ids: list[str] = []

    # -- shared state ---------------------------------------------------------
    @classmethod
    def inventory(cls) -> Inventory:
        """The GPU inventory, discovered once per hub process."""
        if cls._inventory is None:
            cls._inventory = discover_gpus()
        return cls._inventory

    @classmethod
    def gpu_allocator(cls) -> GPUAllocator:
        if cls._gpu_allocator is None:
            cls._gpu_allocator = GPUAllocator(cls.inventory().gpus)
        return cls._gpu_allocator

    @classmethod
    def core_allocator(cls) -> CoreAllocator:
        if cls._core_allocator is None:
            cls._core_allocator = CoreAllocator(machine_cores())
        return cls._core_allocator

    @property
    def owner(self) -> str:
        """Allocation key: ``user`` or ``user/server``."""
        return f"{self.user.name}/{self.name}" if self.name else self.user.name

    # -- profiles -------------------------------------------------------------
    def parsed_profiles(self) -> list[Profile]:
        return parse_profiles(self.profiles)

    def user_groups(self) -> list[str]:
        return [g.name for g in getattr(self.user, "groups", [])]

    def unavailable_reason(self, profile: Profile) -> str | None:
        """Why this user can't start ``profile`` now, or None."""
        refusal = profile.refusal(self.user_groups())
        if refusal:
            return refusal
        if profile.gpus:
            inv = self.inventory()
            if len(inv.gpus) < profile.gpus:
                return (
                    f"needs {profile.gpus} GPU(s) and this machine has {len(inv.gpus)} "
                    f"(inventory source: {inv.source})"
                )
            allocator = self.gpu_allocator()
            if len(allocator.free()) + len(allocator.held_by(self.owner)) < profile.gpus:
                return "no GPU free right now: every GPU is in use"
        return None

    def resolve_profile(self, options: dict[str, Any] | None) -> Profile:
        """The profile named by ``options`` (or the default), or :class:`ProfileError`."""
        profiles = self.parsed_profiles()
        options = options or {}
        unknown_keys = set(options) - {"profile"}
        if unknown_keys:
            raise ProfileError(
                f"unknown option(s) {sorted(unknown_keys)}; the only option is 'profile'"
            )
        slug = options.get("profile")
        if slug is None:
            slug = next((p.slug for p in profiles if p.default), profiles[0].slug)
        by_slug = {p.slug: p for p in profiles}
        if not isinstance(slug, str) or slug not in by_slug:
            available = [p.slug for p in profiles if self.unavailable_reason(p) is None]
            raise ProfileError(
                f"unknown profile {str(slug)[:64]!r}; available: {', '.join(available) or 'none'}"
            )
        profile = by_slug[slug]
        reason = profile.refusal(self.user_groups())
        if reason is None and profile.gpus and not self.inventory().gpus:
            reason = self.unavailable_reason(profile)
        if reason is not None:
            alternatives = [
                p.slug for p in profiles if p.slug != slug and self.unavailable_reason(p) is None
            ]
            raise ProfileError(f"{reason}; choose one of: {', '.join(alternatives) or 'none'}")
        return profile

    # -- form -----------------------------------------------------------------
    @default("options_form")
    def _options_form_default(self):
        return self.render_form

    def render_form(self, spawner: Spawner | None = None) -> str:
        last = (self.orm_spawner.user_options or {}).get("profile") if self.orm_spawner else None
        choices = [(p, self.unavailable_reason(p)) for p in self.parsed_profiles()]
        default = next((p.slug for p in self.parsed_profiles() if p.default), None)
        return render_options_form(choices, len(machine_cores()), last or default)

    def options_from_form(self, formdata: dict[str, list[str]]) -> dict[str, Any]:
        values = formdata.get("profile") or [None]
        options = {"profile": values[0]}
        try:
            self.resolve_profile(options)
        except ProfileError as e:
            raise SpawnRefused(400, str(e)) from e
        return options

    # -- environment ----------------------------------------------------------
    @property
    def home(self) -> Path:
        return Path(self.users_root) / self.user.name

    def profile_env(self, profile: Profile, cores: tuple[int, ...], gpus: list[str]) -> dict:
        """The DESILAB_* variables, thread counts and devices for a server."""
        env = {
            "DESILAB_PROFILE": profile.slug,
            "DESILAB_CPU_LIMIT": str(len(cores)),
            "DESILAB_CPUS": ",".join(map(str, cores)),
            "DESILAB_MEM_LIMIT": str(profile.memory),
            "DESILAB_GPUS": ",".join(gpus),
            # CPU profiles hide every GPU, so nobody uses a device they weren't given
            "CUDA_VISIBLE_DEVICES": ",".join(gpus),
            # NVML and nvidia-smi number GPUs in PCI order; make CUDA agree
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        }
        env.update({name: str(len(cores)) for name in THREAD_VARIABLES})
        env.update(profile.environment)
        return env

    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        env["HOME"] = str(self.home)
        env["USER"] = self.user.name
        env.update(kernel_env(gpu=bool(self.gpu_ids)))
        env.update(server_env())
        if self.profile is not None:
            env.update(self.profile_env(self.profile, self.cores, self.gpu_ids))
        return env

    def get_args(self) -> list[str]:
        args = super().get_args()
        args.append(f"--ServerApp.root_dir={self.home}")
        if os.geteuid() == 0 and not self.per_user_accounts:
            args.append("--allow-root")
        return args

    def prepare_home(self) -> Account | None:
        """Create the user's home (0700, owned by their account) and publish templates.

        Returns the user's system account, or None in single-account mode.
        """
        from ..extensions.templates import publish_templates

        self.home.mkdir(parents=True, exist_ok=True)
        account = None
        if self.per_user_accounts:
            account = self.accounts.account_for(self.user.name, self.home)
            os.chown(self.home, account.uid, account.gid)
        self.home.chmod(0o700)
        private = self.home / ".desilab"
        private.mkdir(exist_ok=True)
        private.chmod(0o700)
        if account is not None:
            os.chown(private, account.uid, account.gid)
        publish_templates(self.home, self.templates_dir or None)
        return account

    def write_private(self, path: Path, text: str, account: Account | None) -> None:
        """Write a file only its owner (the user) can read: credentials, logs."""
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        if account is not None:
            os.chown(path, account.uid, account.gid)

    # -- lifecycle ------------------------------------------------------------
    def _release(self) -> None:
        self.gpu_allocator().release(self.owner)
        self.core_allocator().release(self.owner)
        self.gpu_ids = []

    async def start(self) -> str:
        try:
            profile = self.resolve_profile(self.user_options)
        except ProfileError as e:
            raise SpawnRefused(400, str(e)) from e
        try:
            self.gpu_ids = self.gpu_allocator().allocate(self.owner, profile.gpus)
        except NoGPUFree as e:
            raise SpawnRefused(409, str(e)) from e
        self.profile = profile
        self.cores = self.core_allocator().allocate(
            self.owner, profile.effective_cpus(len(machine_cores()))
        )
        self.mem_limit = profile.memory
        self.cpu_limit = float(len(self.cores))
        try:
            return await self._launch(profile)
        except BaseException as e:
            await self.backend.stop(now=True)
            self.backend.clear_state()
            self._release()
            if isinstance(e, Exception) and not isinstance(e, web.HTTPError):
                # never a bare 500: say what failed
                raise SpawnRefused(503, f"could not start the server for {self.owner}: {e}") from e
            raise

    async def _launch(self, profile: Profile) -> str:
        account = await asyncio.to_thread(self.prepare_home)
        if self.port == 0:
            self.port = random_port()
        env = self.get_env()
        if self.database_provisioner is not None:
            dsn = await asyncio.to_thread(self.database_provisioner, self.user.name)
            client_env, pgpass = database_client_env(dsn)
            env.update(client_env, DESILAB_DATABASE_URL=dsn)
            env["PGPASSFILE"] = str(self.home / ".desilab" / "pgpass")
            self.write_private(Path(env["PGPASSFILE"]), pgpass, account)
        log_path = self.home / ".desilab" / "server.log"
        self.write_private(log_path, "", account)
        request = LaunchRequest(
            owner=self.owner,
            username=self.user.name,
            cmd=self.cmd + self.get_args(),
            env=env,
            cwd=str(self.home),
            ip=self.ip or "127.0.0.1",
            port=self.port,
            cpus=self.cores,
            memory_bytes=profile.memory,
            gpus=list(self.gpu_ids),
            log_path=log_path,
            profile=profile.slug,
            overrides=dict(profile.kubespawner_override),
            uid=account.uid if account else None,
            gid=account.gid if account else None,
        )
        url = await self.backend.start(request)
        await self._wait_listening(request, log_path)
        return url

    async def _wait_listening(self, request: LaunchRequest, log_path: Path) -> None:
        """Return once the server accepts connections; fail clearly if it died."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout
        while loop.time() < deadline:
            status = await self.backend.poll()
            if status is not None:
                raise SpawnRefused(
                    503,
                    f"the server for {self.owner} exited with status {status} before it "
                    f"was ready. Last lines of {log_path}:\n{tail(log_path)}",
                )
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(request.ip, request.port), timeout=1
                )
                writer.close()
                return
            except (OSError, TimeoutError):
                await asyncio.sleep(0.05)
        raise SpawnRefused(
            503,
            f"the server for {self.owner} did not listen within {self.ready_timeout:.0f} s. "
            f"Last lines of {log_path}:\n{tail(log_path)}",
        )

    async def poll(self) -> int | None:
        status = await self.backend.poll()
        if status is not None:
            self._release()
        return status

    async def stop(self, now: bool = False) -> None:
        await self.backend.stop(now=now)
        self._release()

    async def delete_forever(self) -> None:
        """The hub user is deleted: archive or keep the home, retire the account."""
        if self.name:  # named servers share the user's home and account
            return
        await asyncio.to_thread(self._retire_user)

    def _retire_user(self) -> None:
        if self.home.exists() and self.home_on_delete == "archive":
            stamp = time.strftime("%Y%m%dT%H%M%S")
            archive = Path(self.users_root).parent / "archive" / f"{self.user.name}-{stamp}"
            archive.parent.mkdir(mode=0o700, exist_ok=True)
            shutil.move(str(self.home), archive)
            if isolation_available():
                os.chown(archive, 0, 0)
            archive.chmod(0o700)
            self.log.info("Archived the home of deleted user %s to %s", self.user.name, archive)
        if self.per_user_accounts:
            self.accounts.retire(self.user.name)
        if self.database_deprovisioner is not None:
            self.database_deprovisioner(self.user.name)

    # -- state ----------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        state.update(self.backend.get_state())
        if self.profile is not None:
            state["profile"] = self.profile.slug
            state["cores"] = list(self.cores)
            state["gpus"] = list(self.gpu_ids)
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.backend.load_state(state)
        slug = state.get("profile")
        if slug:
            self.profile = next((p for p in self.parsed_profiles() if p.slug == slug), None)
            self.cores = self.core_allocator().claim(self.owner, state.get("cores", []))
            self.gpu_ids = self.gpu_allocator().claim(self.owner, state.get("gpus", []))

    def clear_state(self) -> None:
        super().clear_state()
        self.backend.clear_state()
        self._release()
        self.profile = None
        self.cores = ()


def tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a text file ('' if unreadable)."""
    try:
        with open(path, errors="replace") as f:
            return "".join(deque(f, maxlen=lines))
    except OSError:
        return ""
