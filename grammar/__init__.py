"""The grammar of sparsec's IR text form, shipped inside the installed package."""

from pathlib import Path

GRAMMAR_PATH = Path(__file__).with_name("sparsec.lark")
