"""Algorithm families.  Importing this package registers every algorithm, in the
order :func:`lowmem_numba._algorithms` lists them."""

from . import direct, conv1x1, im2col, im2row, mec, kn2row, kn2row_aa  # noqa: F401
from . import ukernel, pixels  # noqa: F401  (own register-tiled micro-kernels)
from . import depthwise, depthwise_blocked  # noqa: F401  (depthwise and channel-multiplier layers)
from . import winograd  # noqa: F401  (fused Winograd on the micro-kernel)
