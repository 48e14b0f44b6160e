"""Convolution shape arithmetic shared by the kernel generators and the cost model (no TVM)."""

from __future__ import annotations

from dataclasses import dataclass


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class ConvShape:
    """One convolution's shapes (NCHW input, OIHW weight); all compile-time integers. Kernel
    geometries extend it with their tiling."""

    n: int
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right (ONNX order)
    dilations: tuple[int, int]
    groups: int

    @property
    def oh(self) -> int:
        return conv_output_size(self.h, self.pads[0], self.pads[2], self.kh, self.strides[0], self.dilations[0])

    @property
    def ow(self) -> int:
        return conv_output_size(self.w, self.pads[1], self.pads[3], self.kw, self.strides[1], self.dilations[1])

    @property
    def cg(self) -> int:
        """Input channels per group."""
        return self.c // self.groups

    @property
    def og(self) -> int:
        """Filters per group."""
        return self.o // self.groups


def conv_output_size(size: int, pad_before: int, pad_after: int, kernel: int, stride: int = 1,
                     dilation: int = 1) -> int:
    """Output positions of a convolution (or pooling window) along one axis, ONNX semantics (floor)."""
    return (size + pad_before + pad_after - (kernel - 1) * dilation - 1) // stride + 1
