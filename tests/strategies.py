"""Hypothesis strategies for convolution configurations."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st


@dataclass(frozen=True)
class Case:
    batch: int
    channels: int
    height: int
    width: int
    out_channels: int
    kernel: tuple
    stride: tuple
    padding: tuple  # ((top, bottom), (left, right))
    dilation: tuple
    groups: int

    @property
    def x_shape(self):
        return (self.batch, self.channels, self.height, self.width)

    @property
    def w_shape(self):
        return (self.out_channels, self.channels // self.groups, *self.kernel)

    @property
    def args(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups)


@st.composite
def cases(draw, stride_one=False, max_size=12):
    """Valid configurations, including inputs smaller than the kernel, C = 1,
    M = 1, batch > 1, asymmetric padding, dilation, groups and depthwise."""
    kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (1, 1) if stride_one else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = []
    for k, d in zip(kernel, dilation):
        if draw(st.booleans()):
            # Output as large as the input (any split of the total, as with
            # "same"): the case kn2row-style flat offsets are built for.
            total = d * (k - 1)
            before = draw(st.integers(0, total))
            padding.append((before, total - before))
        else:
            padding.append((draw(st.integers(0, 4)), draw(st.integers(0, 4))))
    padding = tuple(padding)
    sizes = []
    for k, d, (before, after) in zip(kernel, dilation, padding):
        span = d * (k - 1) + 1
        smallest = max(1, span - before - after)  # may well be smaller than the kernel
        sizes.append(draw(st.integers(smallest, max(smallest, max_size))))
    kind = draw(st.sampled_from(["dense", "grouped", "depthwise"]))
    if kind == "dense":
        groups, c_per_group, m_per_group = 1, draw(st.integers(1, 6)), draw(st.integers(1, 6))
    elif kind == "grouped":
        groups, c_per_group, m_per_group = draw(st.integers(2, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    else:
        groups, c_per_group, m_per_group = draw(st.integers(1, 5)), 1, draw(st.sampled_from([1, 1, 2]))
    return Case(
        batch=draw(st.integers(1, 3)),
        channels=groups * c_per_group,
        height=sizes[0],
        width=sizes[1],
        out_channels=groups * m_per_group,
        kernel=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
    )
