"""The schedule knobs chosen for one op's kernel: a frozen mapping printed sorted in the IR text,

    %y : f32[1, 64, 56, 56] = conv2d(%x, @w, @b) {knobs = {channel_block = 0, rows_per_step = 14}, ...}

Which names are legal is the kernel generator's business (its knob space, `sparsec.tuning.space`);
the IR only keeps them: identifiers mapped to integers (or strings, for a choice between kernels).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Knobs(Mapping):
    """name -> value, sorted by name; `Knobs.of({...})` builds one from any mapping."""

    pairs: tuple[tuple[str, int | str], ...] = ()

    def __post_init__(self) -> None:
        names = [name for name, _ in self.pairs]
        if names != sorted(set(names)):
            raise ValueError(f"knob names must be distinct and sorted, got {names}")
        for name, value in self.pairs:
            if not name.isidentifier():
                raise ValueError(f"knob name {name!r} is not an identifier")
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise ValueError(f"knob {name} = {value!r}: knob values are integers or strings")

    @classmethod
    def of(cls, values: Mapping[str, int | str]) -> Knobs:
        return cls(tuple(sorted(values.items())))

    def __getitem__(self, name: str) -> int | str:
        for key, value in self.pairs:
            if key == name:
                return value
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def as_dict(self) -> dict[str, int | str]:
        return dict(self.pairs)
