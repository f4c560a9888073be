"""GPU inventory: DESILAB_GPUS, nvidia-smi -L parsing, source priority."""

from __future__ import annotations

import os
import shutil
import stat
import time

import pytest
from desilab.spawner.gpus import (
    GPU,
    Inventory,
    discover_gpus,
    parse_desilab_gpus,
    parse_nvidia_smi_list,
)

SMI_OUTPUT = """\
GPU 0: NVIDIA H200 (UUID: GPU-4a3b2c1d-0000-1111-2222-333344445555)
GPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-99999999-8888-7777-6666-555544443333)
  MIG 1g.10gb     Device  0: (UUID: MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee)
GPU 2: Tesla V100-PCIE-16GB (UUID: GPU-01234567-89ab-cdef-0123-456789abcdef)
"""


def _no_gpus_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "DESILAB_GPUS"}


def _nvml_works() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:
        return False


def _fake_smi(tmp_path, body: str) -> str:
    """A directory holding an executable ``nvidia-smi`` running ``body`` (sh)."""
    exe = tmp_path / "nvidia-smi"
    exe.write_text("#!/bin/sh\n" + body + "\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return str(tmp_path)


def test_parse_desilab_gpus():
    assert parse_desilab_gpus("0,1") == (
        GPU("0", None, "simulated GPU 0", None),
        GPU("1", None, "simulated GPU 1", None),
    )
    assert [g.index for g in parse_desilab_gpus(" 2 , 3 ")] == ["2", "3"]
    assert parse_desilab_gpus("") == ()
    assert parse_desilab_gpus("  ") == ()
    (uuid_gpu,) = parse_desilab_gpus("GPU-4a3b2c1d-0000-1111")
    assert uuid_gpu.uuid == uuid_gpu.index == "GPU-4a3b2c1d-0000-1111"


@pytest.mark.parametrize(
    ("value", "bad"),
    [("0,,x y", "''"), ("0,x y", "'x y'"), ("0,1,", "''"), ("-1", "'-1'"), ("0,0", "'0'")],
)
def test_parse_desilab_gpus_rejects(value, bad):
    with pytest.raises(ValueError, match="DESILAB_GPUS") as info:
        parse_desilab_gpus(value)
    assert bad in str(info.value)


def test_parse_nvidia_smi_list():
    gpus = parse_nvidia_smi_list(SMI_OUTPUT)
    assert [g.index for g in gpus] == ["0", "1", "2"]
    assert gpus[0] == GPU("0", "GPU-4a3b2c1d-0000-1111-2222-333344445555", "NVIDIA H200", None)
    assert gpus[1].name == "NVIDIA A100-SXM4-80GB"
    assert parse_nvidia_smi_list("") == ()
    assert parse_nvidia_smi_list("No devices were found\n") == ()
    # a driver that prints no UUID still yields the GPU
    assert parse_nvidia_smi_list("GPU 3: Quadro RTX 8000\n") == (
        GPU("3", None, "Quadro RTX 8000", None),
    )


def test_desilab_gpus_wins(tmp_path):
    path = _fake_smi(tmp_path, f"cat <<'EOF'\n{SMI_OUTPUT}EOF")
    inv = discover_gpus({"PATH": path, "DESILAB_GPUS": "0,1"})
    assert inv.source == "DESILAB_GPUS"
    assert inv.indices == ["0", "1"]
    assert discover_gpus({"PATH": path, "DESILAB_GPUS": ""}) == Inventory((), "DESILAB_GPUS")
    with pytest.raises(ValueError, match="DESILAB_GPUS.*'x y'"):
        discover_gpus({"PATH": path, "DESILAB_GPUS": "0,x y"})


def test_nvidia_smi_used_without_nvml(tmp_path):
    if _nvml_works():
        pytest.skip("NVML works here, so it rightly wins over nvidia-smi")
    path = _fake_smi(tmp_path, f"cat <<'EOF'\n{SMI_OUTPUT}EOF")
    inv = discover_gpus({"PATH": path})
    assert inv.source == "nvidia-smi"
    assert inv.gpus == parse_nvidia_smi_list(SMI_OUTPUT)


def test_nvidia_smi_failing_or_hanging_is_ignored(tmp_path):
    if _nvml_works():
        pytest.skip("NVML works here, so nvidia-smi is never asked")
    failing = _fake_smi(tmp_path, "echo 'NVIDIA-SMI has failed' >&2; exit 9")
    assert discover_gpus({"PATH": failing}) == Inventory((), "none")
    hanging = _fake_smi(tmp_path, "exec sleep 30")
    start = time.monotonic()
    assert discover_gpus({"PATH": hanging}, smi_timeout=0.5) == Inventory((), "none")
    assert time.monotonic() - start < 5


def test_this_machine_without_variable():
    if _nvml_works() or shutil.which("nvidia-smi"):
        pytest.skip("this machine has an NVIDIA driver")
    assert discover_gpus(_no_gpus_env()) == Inventory((), "none")


@pytest.mark.gpu
def test_real_gpus_via_nvml():
    if not _nvml_works():
        pytest.skip("no NVIDIA driver/NVML on this machine")
    inv = discover_gpus(_no_gpus_env())
    assert inv.source == "nvml"
    assert inv.gpus, "NVML initialised but listed no GPU"
    assert all(g.uuid and g.uuid.startswith(("GPU-", "MIG-")) for g in inv.gpus)
    assert all(g.memory_bytes and g.memory_bytes > 2**30 for g in inv.gpus)
