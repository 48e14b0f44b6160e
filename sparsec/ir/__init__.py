"""sparsec's IR: frozen types, one class per op, a module, its verifier and its text form."""

from sparsec.ir.activation import Activation
from sparsec.ir.module import Module, Param, Weight
from sparsec.ir.ops import OPS, Op
from sparsec.ir.parser import parse_module
from sparsec.ir.printer import print_module
from sparsec.ir.types import CSR, FKW, LAYOUTS, Dense, Layout, Masked, Pattern, TensorType
from sparsec.ir.verify import verify

__all__ = [
    "Activation", "CSR", "Dense", "FKW", "LAYOUTS", "Layout", "Masked", "Module", "OPS", "Op",
    "Param", "Pattern", "TensorType", "Weight", "parse_module", "print_module", "verify",
]
