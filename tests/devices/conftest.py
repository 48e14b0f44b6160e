"""The devices tier: real aarch64 code on the emulated arm64 device (qemu user-mode). Needs
`make arm64-setup` (`make test` runs it first); without it these tests are skipped, saying so."""

from __future__ import annotations

import shutil

import pytest

from sparsec.runtime.emulator import Arm64Setup, EmulatedDevice, default_home
from sparsec.target import ARM64_CC


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/devices/" in str(item.fspath):
            item.add_marker(pytest.mark.arm64)


@pytest.fixture(scope="session")
def arm64_setup() -> Arm64Setup:
    setup = Arm64Setup(default_home())
    missing = setup.missing() + ([ARM64_CC] if shutil.which(ARM64_CC) is None else [])
    if missing:
        pytest.skip(f"the emulated arm64 device is not set up (missing {'; '.join(missing)}): run make arm64-setup")
    return setup


def _device(setup: Arm64Setup, qemu_cpu: str):
    with EmulatedDevice(qemu_cpu, key=f"sparsec-test-{qemu_cpu}", setup=setup) as device:
        yield device


@pytest.fixture(scope="session")
def a53(arm64_setup):
    """One emulated cortex-a53 (the baseline) for the session."""
    yield from _device(arm64_setup, "cortex-a53")


@pytest.fixture(scope="session")
def a76(arm64_setup):
    yield from _device(arm64_setup, "cortex-a76")
