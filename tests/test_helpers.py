"""The suite's own rules (tests/helpers.py, tests/conftest.py)."""
from helpers import emulation_skip_reason


def test_emulation_tests_skip_on_hosts_other_than_x86_64_with_the_reason():
    assert emulation_skip_reason("x86_64") is None and emulation_skip_reason("AMD64") is None
    for machine in ("aarch64", "arm64", "ppc64le"):
        assert emulation_skip_reason(machine) == (f"the warp emulator's fiber switch is x86-64 assembly; "
                                                  f"this host is {machine}")
