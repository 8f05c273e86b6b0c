"""The README's usage example as a script, on small arrays.

    python examples/quickstart.py
"""

import numba
import numpy as np

import lowmem_numba as ln

x = np.random.rand(2, 16, 28, 28).astype(np.float32)    # N, C, H, W
w = np.random.rand(32, 16, 3, 3).astype(np.float32)     # M, C/groups, kh, kw
b = np.zeros(32, np.float32)
threads = min(2, numba.config.NUMBA_NUM_THREADS)        # the README uses 2

y = ln.conv2d(x, w, b, padding="same")                  # algorithm="auto"
auto = y.copy()
y = ln.conv2d(x, w, b, padding=1, algorithm="kn2row-aa-ab", threads=threads, out=y)
print(f"output {y.shape}; auto chose {ln.plan(x.shape, w.shape, padding='same').algorithm}; "
      f"largest difference between the two: {np.abs(y - auto).max():.2e}")
print(f"workspace of kn2row-aa-ab on {threads} thread(s): "
      f"{ln.workspace_bytes('kn2row-aa-ab', x.shape, w.shape, padding=1, threads=threads)} bytes")
print("algorithms:", ", ".join(ln.algorithms()))
print("kn2row-aa-ab supports stride 2:", ln.supports("kn2row-aa-ab", x.shape, w.shape, stride=2))
