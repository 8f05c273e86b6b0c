"""Conv2d: a convolution layer that packs its weights once and keeps its workspace."""

from __future__ import annotations

from typing import Optional

import numpy as np

from .api import choose_algorithm, launch, prepare_call, resolve_algorithm
from .geometry import check_array, check_bias, check_memory_limit, check_threads, make_geometry
from .layout import check_layout, to_nchw_shape
from .registry import FLOAT32_BYTES
from .threads import max_threads
from .workspace import Workspace, check_workspace


class Conv2d:
    """A 2-D convolution layer with prepacked weights and a reusable workspace.

    Parameters
    ----------
    weight : numpy.ndarray, float32
        Kernels, shape (M, C/groups, kh, kw).  Packed (or copied) at
        construction: later changes to the array do not affect the layer.
    bias : numpy.ndarray, float32, optional
        Shape (M,); copied.
    stride, padding, dilation, groups
        As for :func:`lowmem_numba.conv2d`.
    algorithm : str, default "auto"
        A registered name, or "auto": chosen per input shape, once per shape.
        With "auto" the layer keeps a copy of the weights to pack for whichever
        algorithm a new shape gets.
    threads : int, optional
        Threads for every call; default all of Numba's.
    layout : {"NCHW", "NHWC"}, default "NCHW"
        Layout of inputs and outputs.
    workspace : Workspace, optional
        Arena to carve temporary memory from, e.g. one shared by the layers of a
        network (see :meth:`Workspace.for_layers`).  Default: the layer's own,
        growing once to what its calls need.
    input_shape : tuple of int, optional
        Shape of the inputs to come (in ``layout``).  When given, the layer is
        planned and validated for it now and :attr:`workspace_bytes` is known.
    memory_limit : int, optional
        Workspace budget in bytes for "auto" (packed weights are persistent
        and not counted); a named algorithm over it is an error.

    Raises
    ------
    TypeError, ValueError
        As :func:`lowmem_numba.conv2d`, for the arguments given here.

    Examples
    --------
    >>> layer = Conv2d(w, b, padding=1, algorithm="kn2row-aa-ab")
    >>> y = layer(x)                 # sizes the workspace
    >>> y = layer(x, out=y)          # allocates nothing
    """

    def __init__(self, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
                 algorithm="auto", threads=None, layout="NCHW",
                 workspace: Optional[Workspace] = None, input_shape=None, memory_limit=None):
        check_array(weight, "weight")
        if weight.ndim != 4:
            raise ValueError(f"weight must have 4 dimensions (M, C/groups, kh, kw); got shape {weight.shape}")
        check_workspace(workspace)
        self.layout = check_layout(layout)
        self.weight_shape = tuple(weight.shape)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.threads = check_threads(threads, max_threads())
        self.algorithm = algorithm
        self.memory_limit = check_memory_limit(memory_limit)
        self.workspace = workspace if workspace is not None else Workspace()
        # The hyper-parameters are checked now on a nominal input large enough
        # for any kernel (the real shape is checked again at each call).
        m, c_per_group, kh, kw = self.weight_shape
        channels = c_per_group * groups if isinstance(groups, int) and groups > 0 else c_per_group
        nominal = make_geometry((1, channels, 8 * kh * _int_or(dilation, 1), 8 * kw * _int_or(dilation, 1)),
                                self.weight_shape, stride, padding, dilation, groups)
        check_bias(bias, nominal)
        self.bias = None if bias is None else np.array(bias, dtype=np.float32, copy=True)
        self._raw = None
        self._prepared: dict[str, np.ndarray] = {}
        if isinstance(algorithm, str) and algorithm == "auto":
            self._raw = np.array(weight, dtype=np.float32, copy=True).reshape(-1)
        else:
            chosen = resolve_algorithm(algorithm, nominal)
            self._prepared[chosen.name] = chosen.prepare_weights(np.ascontiguousarray(weight).reshape(-1), nominal)
        self._planned_bytes = None
        if input_shape is not None:
            self._planned_bytes = self.workspace_bytes_for(input_shape)
            if self._raw is not None:
                planned, _ = choose_algorithm(algorithm, self._geometry(input_shape), self.threads,
                                              self.layout, memory_limit, prepacked=True)
                self._weights_for(planned, nominal)

    def _geometry(self, x_shape):
        return make_geometry(to_nchw_shape(x_shape, self.layout), self.weight_shape, self.stride,
                             self.padding, self.dilation, self.groups)

    def _weights_for(self, algorithm, geometry):
        weights = self._prepared.get(algorithm.name)
        if weights is None:
            weights = algorithm.prepare_weights(self._raw, geometry)
            self._prepared[algorithm.name] = weights
        return weights

    def __call__(self, x, out=None) -> np.ndarray:
        """Convolve ``x``.

        Parameters
        ----------
        x : numpy.ndarray, float32
            Input in the layer's layout, batched or not (shapes as for
            :func:`lowmem_numba.conv2d`).
        out : numpy.ndarray, float32, optional
            C-contiguous array of the output shape to write into.

        Returns
        -------
        numpy.ndarray, float32
            ``out`` if given.
        """
        call = prepare_call(x, self.weight_shape, self.bias, self.stride, self.padding,
                            self.dilation, self.groups, self.algorithm, self.threads, out,
                            self.layout, self.workspace, {}, self.memory_limit, prepacked=True)
        weights = self._weights_for(call.algorithm, call.geometry)
        self._planned_bytes = FLOAT32_BYTES * call.algorithm.workspace_elements(
            call.geometry, call.threads, call.layout, prepacked=True)
        return launch(call, x, weights, self.bias, prepacked=True)

    def workspace_bytes_for(self, x_shape) -> int:
        """Temporary memory of a call on an input of ``x_shape`` (in the layer's layout).

        Packed weights are not included: they are :attr:`persistent_bytes`.
        """
        geometry = self._geometry(x_shape)
        algorithm, threads = choose_algorithm(self.algorithm, geometry, self.threads, self.layout,
                                              self.memory_limit, prepacked=True)
        return FLOAT32_BYTES * algorithm.workspace_elements(geometry, threads, self.layout, prepacked=True)

    def plan_for(self, x_shape):
        """The scheduler's :class:`lowmem_numba.Plan` for a call on ``x_shape``.

        Raises
        ------
        ValueError
            If the layer runs a named algorithm (there is nothing to plan).
        """
        from .scheduler import plan

        if not (isinstance(self.algorithm, str) and self.algorithm == "auto"):
            raise ValueError(f"this layer always runs {self.algorithm!r}; plan_for is for algorithm=\"auto\"")
        return plan(x_shape, self.weight_shape, self.stride, self.padding, self.dilation, self.groups,
                    memory_limit=self.memory_limit, threads=self.threads, layout=self.layout, prepacked=True)

    @property
    def workspace_bytes(self) -> Optional[int]:
        """Temporary memory of a call on the planned (or latest) input shape;
        None before the layer knows any input shape."""
        return self._planned_bytes

    @property
    def persistent_bytes(self) -> int:
        """Memory the layer keeps across calls for its weights (packed forms,
        plus the copy that "auto" packs from)."""
        raw = 0 if self._raw is None else self._raw.nbytes
        return raw + sum(w.nbytes for w in self._prepared.values())

    def __repr__(self) -> str:
        return (f"Conv2d(weight {self.weight_shape}, stride={self.stride!r}, padding={self.padding!r}, "
                f"dilation={self.dilation!r}, groups={self.groups!r}, algorithm={self.algorithm!r}, "
                f"layout={self.layout!r})")


def _int_or(value, default):
    if isinstance(value, int):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], int):
        return max(value)
    return default
