"""sparsec's passes: one file per pass, one registry, one default pipeline (see pipeline.py)."""

from sparsec.passes import registry  # noqa: F401 - imports every pass so it registers
from sparsec.passes.base import PASSES, Pass, register
from sparsec.passes.pipeline import (
    PassInstrument,
    default_pipeline,
    parse_pipeline,
    remaining_pipeline,
    run_pipeline,
)

__all__ = ["PASSES", "Pass", "PassInstrument", "default_pipeline", "parse_pipeline", "register", "remaining_pipeline",
           "run_pipeline"]
