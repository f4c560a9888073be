"""GPU inventory: which GPUs this machine can hand out to single-user servers.

Sources, in order: the ``DESILAB_GPUS`` variable when it is set (so tests that
simulate devices are deterministic even on a GPU machine), NVML (``pynvml``), the
output of ``nvidia-smi -L``, else no GPUs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

_log = logging.getLogger(__name__)

ENV_VAR = "DESILAB_GPUS"

#: ``GPU 0: NVIDIA H200 (UUID: GPU-...)``; MIG lines are indented and do not match.
_SMI_LINE = re.compile(r"^GPU (?P<index>\d+): (?P<name>.*?)(?: \(UUID: (?P<uuid>[^)]+)\))?\s*$")
_TOKEN = re.compile(r"\d+|(?:GPU|MIG)-[0-9A-Za-z/-]+")


@dataclass(frozen=True)
class GPU:
    """One GPU.

    Attributes
    ----------
    index
        The token put in ``CUDA_VISIBLE_DEVICES``. NVML and nvidia-smi number GPUs
        in PCI bus order, so servers should get ``CUDA_DEVICE_ORDER=PCI_BUS_ID``
        for CUDA to agree.
    uuid
        ``GPU-...`` when known.
    name
        Model name, e.g. ``NVIDIA H200``.
    memory_bytes
        Total memory when known (NVML only).
    """

    index: str
    uuid: str | None
    name: str
    memory_bytes: int | None


@dataclass(frozen=True)
class Inventory:
    """The GPUs found and where the list came from.

    Attributes
    ----------
    gpus
        In index order.
    source
        ``"nvml"``, ``"nvidia-smi"``, ``"DESILAB_GPUS"`` or ``"none"``.
    """

    gpus: tuple[GPU, ...]
    source: str

    @property
    def indices(self) -> list[str]:
        """The ``CUDA_VISIBLE_DEVICES`` tokens of all GPUs."""
        return [g.index for g in self.gpus]


def parse_desilab_gpus(value: str) -> tuple[GPU, ...]:
    """Parse ``DESILAB_GPUS``: a comma list of indices (``"0,1"``) or GPU UUIDs.

    An empty or blank value means no GPUs.

    Raises
    ------
    ValueError
        Naming the variable and the first bad (empty, malformed or repeated) entry.
    """
    if not value.strip():
        return ()
    gpus: list[GPU] = []
    for position, raw in enumerate(value.split(","), start=1):
        token = raw.strip()
        if not _TOKEN.fullmatch(token) or any(g.index == token for g in gpus):
            what = "repeated" if _TOKEN.fullmatch(token) else "bad"
            raise ValueError(
                f"{ENV_VAR}={value!r}: {what} entry {token!r} at position {position}; expected "
                "a comma-separated list of distinct GPU indices or UUIDs, e.g. '0,1'"
            )
        uuid = None if token.isdigit() else token
        gpus.append(GPU(index=token, uuid=uuid, name=f"simulated GPU {token}", memory_bytes=None))
    return tuple(gpus)


def parse_nvidia_smi_list(text: str) -> tuple[GPU, ...]:
    """Parse the output of ``nvidia-smi -L``; lines that describe no GPU are skipped."""
    gpus = []
    for line in text.splitlines():
        m = _SMI_LINE.match(line)
        if m:
            gpus.append(GPU(m["index"], m["uuid"], m["name"].strip(), None))
    return tuple(gpus)


def _from_nvml() -> tuple[GPU, ...] | None:
    """GPUs seen by NVML, or None when NVML is unavailable (no driver, no library)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        _log.debug("NVML unavailable: %s", e)
        return None
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name, uuid = pynvml.nvmlDeviceGetName(handle), pynvml.nvmlDeviceGetUUID(handle)
            # older nvidia-ml-py returned bytes
            name = name.decode() if isinstance(name, bytes) else name
            uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
            total = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
            gpus.append(GPU(str(i), uuid, name, total))
        return tuple(gpus)
    except pynvml.NVMLError as e:
        _log.warning("NVML failed while listing GPUs: %s", e)
        return None
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def _from_nvidia_smi(path: str | None, timeout: float) -> tuple[GPU, ...] | None:
    """GPUs listed by ``nvidia-smi -L``, or None when it is missing, hangs or fails."""
    exe = shutil.which("nvidia-smi", path=path)
    if exe is None:
        return None
    try:
        # own session: a hung driver call is killed with anything it started
        proc = subprocess.Popen(
            [exe, "-L"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    except OSError as e:
        _log.debug("cannot run %s: %s", exe, e)
        return None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        _log.warning("%s -L did not answer within %.1f s; ignoring it", exe, timeout)
        return None
    if proc.returncode != 0:
        _log.debug("%s -L exited %d: %s", exe, proc.returncode, err.strip())
        return None
    return parse_nvidia_smi_list(out)


def discover_gpus(
    environ: Mapping[str, str] | None = None, *, smi_timeout: float = 10.0
) -> Inventory:
    """Find the GPUs this machine can hand out.

    When ``DESILAB_GPUS`` is set in ``environ`` it wins over NVML and nvidia-smi,
    so tests that simulate devices get the same answer on any machine; set it to
    ``""`` to simulate none. Otherwise NVML is asked, then ``nvidia-smi -L`` (found
    on ``environ["PATH"]``), and a machine with neither has no GPUs.

    Parameters
    ----------
    environ
        Environment to read; ``os.environ`` by default.
    smi_timeout
        Seconds to wait for ``nvidia-smi`` before giving up on it.

    Raises
    ------
    ValueError
        When ``DESILAB_GPUS`` is malformed.
    """
    env = os.environ if environ is None else environ
    if ENV_VAR in env:
        return Inventory(parse_desilab_gpus(env[ENV_VAR]), ENV_VAR)
    gpus = _from_nvml()
    if gpus is not None:
        return Inventory(gpus, "nvml")
    gpus = _from_nvidia_smi(env.get("PATH", os.defpath), smi_timeout)
    if gpus is not None:
        return Inventory(gpus, "nvidia-smi")
    return Inventory((), "none")
