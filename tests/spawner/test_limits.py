"""Resource limits, enforced for real on this machine's kernel.

The memory, pinning and orphan tests run with whatever mechanism
:meth:`LimitEnforcer.detect` picks here (cgroup v1 as root on the dev machine,
cgroup v2 on a delegated v2 host, RLIMIT_AS otherwise); cgroup-only checks skip
where no cgroup is usable. The cgroup v2 path logic also runs against a fake tree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from desilab.spawner.limits import (
    LimitEnforcer,
    LimitPlan,
    LimitsUnavailable,
    ResourceLimits,
    cgroup_name,
    hierarchies,
)

MiB = 2**20
PARENT = f"desilab-test-{os.getpid()}"
# touch every page: a fresh bytearray may be lazily mapped zero pages, never charged
ALLOC = """
import sys
n = int(sys.argv[1]) * 2**20
try:
    b = bytearray(n)
    b[::4096] = b"x" * len(range(0, n, 4096))
except MemoryError:
    sys.exit(42)
"""
KILLED = (-9, 137, 42)  # SIGKILL by the OOM killer, or MemoryError under RLIMIT_AS


@pytest.fixture
def make_plan():
    """Factory for plans; every plan is released and every parent group removed."""
    plans: list[LimitPlan] = []
    enforcers: list[LimitEnforcer] = []

    def make(name: str, limits: ResourceLimits, mechanism: str = "auto") -> LimitPlan:
        enforcer = LimitEnforcer(cgroup_parent=PARENT, mechanism=mechanism)
        enforcers.append(enforcer)
        plans.append(enforcer.prepare(name, limits))
        return plans[-1]

    yield make
    for plan in plans:
        plan.release()
    for enforcer in enforcers:
        enforcer.cleanup()


@pytest.fixture(scope="module")
def detected() -> dict[str, str]:
    enforcer = LimitEnforcer(cgroup_parent=PARENT)
    try:
        return enforcer.detect()
    finally:
        enforcer.cleanup()


def run(plan: LimitPlan, code: str, *args: str) -> subprocess.CompletedProcess:
    # -S: no site/.pth imports, so the interpreter fits easily in a 100 MiB RLIMIT_AS
    return subprocess.run(
        [sys.executable, "-S", "-c", code, *args],
        preexec_fn=plan.preexec,
        env={**os.environ, **plan.env()},
        capture_output=True,
        text=True,
        timeout=30,
    )


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_detect_reports_a_mechanism(detected):
    assert detected["memory"] in ("cgroup-v2", "cgroup-v1", "rlimit")
    assert detected["cpu"] in ("cgroup-v2-cpuset+affinity", "cgroup-v1-cpuset+affinity", "affinity")


def test_memory_limit_enforced(make_plan, detected):
    plan = make_plan("mem", ResourceLimits(memory_bytes=100 * MiB))
    assert plan.mechanism == detected
    big = run(plan, ALLOC, "300")
    assert big.returncode in KILLED, f"300 MiB under a 100 MiB limit survived: {big}"
    small = run(plan, ALLOC, "20")
    assert small.returncode == 0, small.stderr


def test_pinned_to_core_zero(make_plan, detected):
    plan = make_plan("pin", ResourceLimits(cpus=(0,), memory_bytes=100 * MiB))
    code = "import os; print(sorted(os.sched_getaffinity(0)), os.environ['DESILAB_LIMITS_CPU'])"
    out = run(plan, code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[0]", detected["cpu"]]


def test_no_limits_runs_unconstrained(make_plan):
    plan = make_plan("free", ResourceLimits())
    out = run(plan, "import os; print(sorted(os.sched_getaffinity(0)))")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(sorted(os.sched_getaffinity(0)))
    assert plan.rlimit_as is None
    assert run(plan, ALLOC, "300").returncode == 0


def test_kill_remaining_reaches_grandchild(make_plan):
    plan = make_plan("orphans", ResourceLimits(memory_bytes=100 * MiB))
    code = (
        "import subprocess as s\n"
        "p = s.Popen(['sleep', '60'], start_new_session=True,"
        " stdin=s.DEVNULL, stdout=s.DEVNULL, stderr=s.DEVNULL)\n"
        "print(p.pid)"
    )
    out = run(plan, code)
    assert out.returncode == 0, out.stderr
    grandchild = int(out.stdout)
    assert not gone(grandchild)
    assert grandchild in plan.pids()
    assert plan.kill_remaining() >= 1
    deadline = time.monotonic() + 5
    while not gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert gone(grandchild), "the orphaned grandchild survived kill_remaining"
    assert plan.pids() == []


def test_cgroup_joined_and_released(make_plan, detected):
    if not detected["memory"].startswith("cgroup"):
        pytest.skip(f"no usable cgroup here (memory via {detected['memory']})")
    plan = make_plan("alice/lab", ResourceLimits(cpus=(0,), memory_bytes=100 * MiB))
    assert plan.cgroups and all(Path(g).is_dir() for g in plan.cgroups)
    assert all(Path(g).name == "alice_2flab" for g in plan.cgroups)
    out = run(
        plan,
        "import os; print(os.environ['DESILAB_CGROUP']); print(open('/proc/self/cgroup').read())",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == os.pathsep.join(plan.cgroups)
    assert f"/{PARENT}/alice_2flab" in out.stdout
    plan.release()
    assert not any(Path(g).exists() for g in plan.cgroups)
    plan.release()  # idempotent: the groups are already gone


def test_rlimit_forced(make_plan):
    plan = make_plan("rl", ResourceLimits(cpus=(0,), memory_bytes=100 * MiB), "rlimit")
    assert plan.mechanism == {"memory": "rlimit", "cpu": "affinity"}
    assert plan.cgroups == ()
    assert plan.env()["DESILAB_CGROUP"] == ""
    assert run(plan, ALLOC, "300").returncode == 42
    small = run(plan, ALLOC + "import os; print(sorted(os.sched_getaffinity(0)))", "20")
    assert (small.returncode, small.stdout.strip()) == (0, "[0]"), small.stderr


def test_state_round_trip(make_plan):
    plan = make_plan("state", ResourceLimits(cpus=(0,), memory_bytes=100 * MiB))
    state = json.loads(json.dumps(plan.to_state()))
    assert LimitPlan.from_state(state) == plan
    with pytest.raises(ValueError, match="version"):
        LimitPlan.from_state({**state, "version": 99})
    del state["token"]
    with pytest.raises(ValueError, match="token"):
        LimitPlan.from_state(state)


def test_bad_limits():
    with pytest.raises(ValueError, match="not available to the hub"):
        LimitEnforcer(mechanism="rlimit").prepare("x", ResourceLimits(cpus=(4096,)))
    with pytest.raises(ValueError, match="memory_bytes"):
        ResourceLimits(memory_bytes=0)
    assert ResourceLimits(cpus=(1, 0, 1)).cpus == (0, 1)


def test_cgroup_name_is_injective_and_safe():
    names = ["alice", "alice_2e", "alice.", "alice/x", "alice-x", "a_b", "tasks", "x" * 300]
    escaped = [cgroup_name(n) for n in names]
    assert len(set(escaped)) == len(names)
    assert escaped[:4] == ["alice", "alice_5f2e", "alice_2e", "alice_2fx"]
    assert all("." not in e and "/" not in e and len(e) <= 200 for e in escaped)
    assert cgroup_name("tasks") != "tasks"


# --- cgroup v2 path logic against a fake tree (this machine has no usable v2) ---


def fake_v2(tmp_path: Path, controllers: str = "cpuset cpu io memory pids") -> Path:
    """A cgroup2 mount at tmp/cg with the hub in /hub.slice/hub.service."""
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "mountinfo").write_text(
        f"30 25 0:26 / {tmp_path}/cg rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
    )
    (proc / "cgroup").write_text("0::/hub.slice/hub.service\n")
    own = tmp_path / "cg/hub.slice/hub.service"
    (own / "fake-parent").mkdir(parents=True)
    (own / "cgroup.controllers").write_text(controllers + "\n")
    (own / "cgroup.subtree_control").write_text("")
    # what the kernel would show in the parent group once own enabled them
    (own / "fake-parent/cgroup.controllers").write_text("cpuset memory\n")
    (own / "fake-parent/cgroup.subtree_control").write_text("")
    return own


def test_v2_fake_tree(tmp_path):
    own = fake_v2(tmp_path)
    enforcer = LimitEnforcer(proc_self=str(tmp_path / "proc"), cgroup_parent="fake-parent")
    assert enforcer.detect() == {"memory": "cgroup-v2", "cpu": "cgroup-v2-cpuset+affinity"}
    assert (own / "cgroup.subtree_control").read_text().split() == ["+cpuset", "+memory"]
    plan = enforcer.prepare("bob", ResourceLimits(cpus=(0,), memory_bytes=100 * MiB))
    leaf = own / "fake-parent/bob"
    assert plan.cgroups == (str(leaf),)
    assert (leaf / "memory.max").read_text() == str(100 * MiB)
    assert (leaf / "cpuset.cpus").read_text() == "0"
    assert plan.env()["DESILAB_LIMITS_MEMORY"] == "cgroup-v2"
    (leaf / "cgroup.procs").write_text("")
    assert plan.pids() == []
    plan.release()  # a fake group holds regular files: rmdir fails, which is only logged
    unlimited = enforcer.prepare("carol", ResourceLimits())
    assert (Path(unlimited.cgroups[0]) / "memory.max").read_text() == "max"
    assert not (Path(unlimited.cgroups[0]) / "cpuset.cpus").exists()


def test_v2_fake_tree_without_controllers(tmp_path):
    fake_v2(tmp_path, controllers="io pids")
    proc = str(tmp_path / "proc")
    auto = LimitEnforcer(proc_self=proc, cgroup_parent="fake-parent")
    assert auto.detect() == {"memory": "rlimit", "cpu": "affinity"}
    forced = LimitEnforcer(proc_self=proc, cgroup_parent="fake-parent", mechanism="cgroup-v2")
    with pytest.raises(LimitsUnavailable, match="neither memory nor cpuset"):
        forced.detect()
    v1 = LimitEnforcer(proc_self=proc, cgroup_parent="fake-parent", mechanism="cgroup-v1")
    with pytest.raises(LimitsUnavailable, match="no cgroup v1 hierarchy with the memory"):
        v1.detect()


def test_v2_fake_tree_delegation_refused(tmp_path):
    own = fake_v2(tmp_path)
    (own / "cgroup.subtree_control").unlink()
    (own / "cgroup.subtree_control").mkdir()  # every write to it now fails, like EBUSY
    forced = LimitEnforcer(
        proc_self=str(tmp_path / "proc"), cgroup_parent="fake-parent", mechanism="cgroup-v2"
    )
    with pytest.raises(LimitsUnavailable, match="cannot enable cpuset\\+memory"):
        forced.detect()


def test_hierarchies_honour_mount_root_and_escapes(tmp_path):
    (tmp_path / "cgroup").write_text("4:memory:/docker/abc/x\n3:cpu,cpuacct:/y\n0::/z\n")
    (tmp_path / "mountinfo").write_text(
        "35 31 0:32 /docker/abc /sys/fs/cgroup/mem\\040ory rw - cgroup cgroup rw,memory\n"
        "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "36 31 0:32 /docker/abc /elsewhere rw - cgroup cgroup rw,memory\n"
        "41 31 0:38 /other /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
    )
    found = {(h.version, tuple(sorted(h.controllers))): h.own_dir for h in hierarchies(tmp_path)}
    assert found == {
        (1, ("memory",)): "/sys/fs/cgroup/mem ory/x",
        (1, ("cpu", "cpuacct")): "/sys/fs/cgroup/cpu,cpuacct/y",
    }
    assert hierarchies(tmp_path / "missing") == []
