"""The installed layout: every source package is listed in pyproject.toml, so a wheel ships it."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).parent.parent.parent
# Top-level folders that install inside the `sparsec` package (pyproject's package-dir mapping).
MAPPED = {"passes": "sparsec.passes", "runtime": "sparsec.runtime", "grammar": "sparsec.grammar"}


def _source_packages() -> set[str]:
    found = set()
    for init in ROOT.glob("sparsec/**/__init__.py"):
        found.add(".".join(init.parent.relative_to(ROOT).parts))
    for folder, name in MAPPED.items():
        for init in (ROOT / folder).glob("**/__init__.py"):
            found.add(".".join((name, *init.parent.relative_to(ROOT / folder).parts)))
    return found


def test_every_package_is_listed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(config["packages"]) == _source_packages()
    assert config["package-dir"] == {"sparsec": "sparsec", **{v: k for k, v in MAPPED.items()}}
    assert config["package-data"] == {"sparsec.grammar": ["*.lark"],
                                      "sparsec.runtime": ["qemu/*.py", "qemu/*.sh", "qemu/*.c"]}
