"""Profile parsing, refusal reasons, allocators and the options form."""

import pytest
from desilab.spawner import CoreAllocator, GPUAllocator, NoGPUFree, default_profiles, parse_profiles
from desilab.spawner.form import render_options_form
from desilab.spawner.gpus import GPU
from desilab.spawner.profiles import parse_profile


def test_default_profiles_match_the_documented_limits():
    profiles = {p.slug: p for p in parse_profiles(default_profiles())}
    assert profiles["cpu-small"].cpus == 1 and profiles["cpu-small"].memory == 2 * 1024**3
    assert profiles["cpu-large"].cpus is None and profiles["cpu-large"].memory == 8 * 1024**3
    gpu = profiles["gpu"]
    assert (gpu.gpus, gpu.cpus, gpu.memory) == (1, 4, 16 * 1024**3)
    assert (
        gpu.refusal(["students"]) == "profile 'gpu' is not available to members of group 'students'"
    )
    assert gpu.refusal(["staff"]) is None
    assert profiles["cpu-small"].default


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"slug": "Bad Slug"}, "slug must match"),
        ({"slug": "x", "cpus": 0}, "cpus must be a positive integer"),
        ({"slug": "x", "memory": "lots"}, "is not a size"),
        ({"slug": "x", "gpus": -1}, "gpus must be a non-negative integer"),
        ({"slug": "x", "colour": "red"}, "unknown keys ['colour']"),
    ],
)
def test_bad_profile_config_names_the_problem(entry, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_profile(entry)


def test_duplicate_slugs_and_two_defaults_are_refused():
    with pytest.raises(ValueError, match="duplicate"):
        parse_profiles([{"slug": "a"}, {"slug": "a"}])
    with pytest.raises(ValueError, match="more than one"):
        parse_profiles([{"slug": "a", "default": True}, {"slug": "b", "default": True}])


def test_allowed_groups_restrict_a_profile():
    p = parse_profile({"slug": "staff-only", "groups": ["staff"]})
    assert p.refusal([]) == "profile 'staff-only' is only available to members of group 'staff'"
    assert p.refusal(["staff", "students"]) is None


def test_gpu_allocator_is_exclusive_and_says_who_holds_gpus():
    alloc = GPUAllocator([GPU("0", None, "sim", None), GPU("1", None, "sim", None)])
    assert alloc.allocate("alice", 1) == ["0"]
    assert alloc.allocate("alice", 1) == ["0"], "a retried spawn gets the same GPU back"
    assert alloc.allocate("bob", 1) == ["1"]
    with pytest.raises(NoGPUFree, match=r"no GPU free: all 2 GPUs are in use \(by alice, bob\)"):
        alloc.allocate("carol", 1)
    assert alloc.release("alice") == ["0"]
    assert alloc.allocate("carol", 1) == ["0"]


def test_gpu_claims_after_restart_never_duplicate():
    alloc = GPUAllocator([GPU("0", None, "sim", None)])
    assert alloc.claim("alice", ["0"]) == ["0"]
    assert alloc.claim("bob", ["0"]) == [], "a GPU already held is not handed out twice"
    assert alloc.claim("bob", ["7"]) == [], "a GPU no longer present is dropped"
    with pytest.raises(NoGPUFree):
        alloc.allocate("carol", 1)


def test_no_gpu_machine_refuses_gpu_requests():
    with pytest.raises(NoGPUFree, match="no GPU on this machine"):
        GPUAllocator([]).allocate("alice", 1)


def test_core_allocator_spreads_servers_over_idle_cores():
    cores = CoreAllocator([0, 1, 2, 3])
    assert cores.allocate("a", 1) == (0,)
    assert cores.allocate("b", 1) == (1,)
    assert cores.allocate("c", 2) == (2, 3)
    assert cores.allocate("d", 9) == (0, 1, 2, 3), "capped at the machine"
    cores.release("a")
    cores.release("d")
    assert cores.allocate("e", 1) == (0,)


def test_form_disables_unavailable_profiles_with_the_reason():
    profiles = parse_profiles(default_profiles())
    choices = [(p, "needs 1 GPU(s) and this machine has 0" if p.gpus else None) for p in profiles]
    html = render_options_form(choices, ncores=2, selected=None)
    assert 'id="profile-gpu" value="gpu" disabled' in html
    assert "Unavailable: needs 1 GPU(s) and this machine has 0" in html
    assert 'value="cpu-small" checked' in html
    assert "2 CPUs · 8.0 GiB" in html, "cpus: all is shown as the machine's cores"
