"""Kernelspecs per profile and kernel start-up settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from desilab.kernels import THREAD_VARIABLES, apply_profile, kernel_env


def kernelspecs(gpu: bool) -> dict:
    env = {**os.environ, **kernel_env(gpu=gpu, inherited="")}
    out = subprocess.run(
        [sys.executable, "-m", "jupyter", "kernelspec", "list", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)["kernelspecs"]


def test_cpu_profiles_see_only_the_cpu_kernel_and_gpu_profiles_both():
    cpu = kernelspecs(gpu=False)
    assert cpu["desilab-cpu"]["spec"]["display_name"] == "DESI (CPU)"
    assert "desilab-gpu" not in cpu
    gpu = kernelspecs(gpu=True)
    assert gpu["desilab-gpu"]["spec"]["display_name"] == "DESI (GPU)"
    assert "desilab-cpu" in gpu


def test_cpu_kernel_hides_gpus_and_sets_threads():
    env = {"DESILAB_CPU_LIMIT": "3", "DESILAB_GPUS": "1", "CUDA_VISIBLE_DEVICES": "1"}
    apply_profile("cpu", env)
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert all(env[name] == "3" for name in THREAD_VARIABLES)
    env = {"DESILAB_CPU_LIMIT": "4", "DESILAB_GPUS": "1"}
    apply_profile("gpu", env)
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["OMP_NUM_THREADS"] == "4"


def test_kernel_launch_applies_the_profile_in_a_real_kernel(monkeypatch):
    """Start the kernel the way jupyter does and read its settings back."""
    from jupyter_client.manager import start_new_kernel

    monkeypatch.setenv("JUPYTER_PATH", kernel_env(gpu=True, inherited="")["JUPYTER_PATH"])
    env = dict(os.environ)
    env.update({"DESILAB_CPU_LIMIT": "1", "DESILAB_GPUS": "0", "CUDA_VISIBLE_DEVICES": "0"})
    km, kc = start_new_kernel(kernel_name="desilab-gpu", env=env)
    outputs = []
    try:
        reply = kc.execute_interactive(
            "import os; print(os.environ['OMP_NUM_THREADS'], os.environ['CUDA_VISIBLE_DEVICES'],"
            " os.environ['DESILAB_KERNEL_DEVICE'])",
            output_hook=lambda msg: outputs.append(msg),
            timeout=60,
        )
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert reply["content"]["status"] == "ok"
    text = "".join(m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream")
    assert text.split() == ["1", "0", "gpu"]
