"""The tuning flow end to end against the emulated arm64 device: `farm up --arm64 1`, `tune
--target arm64`, `compile --target arm64 --tuning-log` checked on the device. Mechanics only: the
timings are qemu's, not a phone's. Skipped unless `make arm64-setup` (or SPARSEC_ARM64_HOME) has
left the emulator's set-up."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("tornado")

from sparsec.cli import main  # noqa: E402
from sparsec.models import conv_layer  # noqa: E402
from sparsec.prune import prune_model, save_masks  # noqa: E402
from sparsec.runtime import farm as farms  # noqa: E402
from sparsec.runtime.emulator import Arm64Setup, default_home  # noqa: E402

pytestmark = [pytest.mark.tvm, pytest.mark.rpc, pytest.mark.arm64]
MISSING = Arm64Setup(default_home()).missing() + ([] if shutil.which("aarch64-linux-gnu-g++") else ["g++ for aarch64"])


@pytest.mark.skipif(bool(MISSING), reason=f"the emulated arm64 device is not set up: {'; '.join(MISSING)}")
def test_tune_and_apply_on_the_emulated_arm64_device(tmp_path, capsys):
    model = conv_layer((1, 16, 12, 12), 16)
    (tmp_path / "layer.onnx").write_bytes(model.SerializeToString())
    save_masks(prune_model(model, keep_kernels=0.5, prune_first_conv=True), tmp_path / "masks.npz")
    state = None
    try:
        state = farms.up(tmp_path / "farm", {"arm64": 1}, threads=1)
        log = tmp_path / "arm64.jsonl"
        args = [str(tmp_path / "layer.onnx"), "--masks", str(tmp_path / "masks.npz"), "--target", "arm64"]
        assert main(["tune", *args, "--tracker", state.tracker, "--key", "arm64", "--trials", "3", "--log", str(log),
                     "--timeout", "120", "--min-repeat-ms", "2", "--repeat", "2", "--builders", "2"]) == 0
        records = [json.loads(line) for line in log.read_text().splitlines()]
        trials = [r for r in records if not r["confirm"]]  # the rest re-measure the best and the default
        assert len(trials) == 3 and all(r["error"] is None and r["target"] == "arm64" for r in records)
        assert main(["compile", *args, "--tuning-log", str(log), "--tracker", state.tracker, "--key", "arm64",
                     "-o", str(tmp_path / "layer.so"), "--check"]) == 0
        captured = capsys.readouterr()
        assert "1 layers tuned for key 'arm64'" in captured.err and "output matches reference" in captured.out
    finally:
        if state is not None:
            farms.stop(state)
