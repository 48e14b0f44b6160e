"""`sparsec opt` records the passes it ran in the IR text and reports their times."""

from __future__ import annotations

import re

from sparsec.cli import main
from sparsec.ir.files import read_module
from sparsec.models import tiny_cnn
from sparsec.prune import prune_model, save_masks


def test_opt_records_passes_and_prints_timings(tmp_path, capsys):
    model = tiny_cnn(resolution=16, num_classes=4)
    (tmp_path / "t.onnx").write_bytes(model.SerializeToString())
    save_masks(prune_model(model, keep_kernels=0.5), tmp_path / "m.npz")
    assert main(["import", str(tmp_path / "t.onnx"), "--masks", str(tmp_path / "m.npz"), "-o",
                 str(tmp_path / "t.sir")]) == 0
    code = main(["opt", str(tmp_path / "t.sir"), "-p", "fold-batchnorm,analyze-sparsity", "--timings",
                 "-o", str(tmp_path / "o.sir")])
    err = capsys.readouterr().err
    assert code == 0
    assert [line.split()[1] for line in err.splitlines()] == ["fold-batchnorm", "analyze-sparsity"]
    assert all(re.fullmatch(r"pass \S+ +\d+\.\d ms", line) for line in err.splitlines())
    assert (tmp_path / "o.sir").read_text().splitlines()[1] == 'passes ["fold-batchnorm", "analyze-sparsity"]'
    assert read_module(tmp_path / "o.sir").passes == ("fold-batchnorm", "analyze-sparsity")
