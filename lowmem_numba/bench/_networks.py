"""Convolution layer tables of well-known networks (batch 1, ImageNet input).

Each table is package data (``lowmem_numba/bench/data/<network>.csv``) with one row
per convolution: name, C, H, W, M, kh, kw, stride, padding, groups.  Shapes are
the standard architecture facts; ResNet-50 lists each distinct shape once.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

NETWORKS = ("alexnet", "vgg16", "googlenet", "resnet50", "mobilenet")


@dataclass(frozen=True)
class Layer:
    """One convolution layer of a network table."""

    network: str
    name: str
    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel_h: int
    kernel_w: int
    stride: int
    padding: int
    groups: int

    def x_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        """NCHW input shape."""
        return (batch, self.in_channels, self.height, self.width)

    @property
    def w_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels // self.groups, self.kernel_h, self.kernel_w)

    @property
    def conv_args(self) -> dict:
        """Keyword arguments for conv2d, supports and workspace_bytes."""
        return dict(stride=self.stride, padding=self.padding, groups=self.groups)

    @property
    def label(self) -> str:
        return f"{self.network}/{self.name}"

    def flops(self, batch: int = 1) -> int:
        """Multiply-adds of the layer counted as two flops, for ``batch`` images."""
        out_h = (self.height + 2 * self.padding - self.kernel_h) // self.stride + 1
        out_w = (self.width + 2 * self.padding - self.kernel_w) // self.stride + 1
        return (2 * batch * self.out_channels * (self.in_channels // self.groups) * self.kernel_h
                * self.kernel_w * out_h * out_w)


def check_network(name) -> str:
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; choose from {', '.join(NETWORKS)}")
    return name


@lru_cache(maxsize=None)
def layers(network: str) -> tuple[Layer, ...]:
    """The convolution layers of ``network`` (one of :data:`NETWORKS`).

    Raises
    ------
    ValueError
        For an unknown network name.
    """
    check_network(network)
    text = resources.files("lowmem_numba.bench").joinpath("data", f"{network}.csv").read_text()
    rows = csv.DictReader(text.splitlines())
    return tuple(
        Layer(network, row["name"], *(int(row[key]) for key in
                                      ("C", "H", "W", "M", "kh", "kw", "stride", "padding", "groups")))
        for row in rows
    )
