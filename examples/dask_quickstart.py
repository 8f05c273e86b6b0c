"""The README's Dask example: convolutions over an image set on a local cluster of worker processes."""

import dask.array as da, numpy as np
from distributed import Client, LocalCluster
import lowmem_numba as ln, lowmem_numba.dask as lnd

if __name__ == "__main__":  # workers are spawned processes, which import this file again
    client = Client(LocalCluster(n_workers=2, threads_per_worker=1))  # or Client("tcp://host:8786")
    x = da.random.default_rng(0).standard_normal((64, 32, 56, 56), chunks=(8, -1, -1, -1), dtype=np.float32)
    w1, w2 = (np.random.rand(64, c, 3, 3).astype(np.float32) for c in (32, 64))
    y = lnd.conv2d(x, w1, padding=1, memory_limit=2**20)        # lazy; arguments are checked now
    layers = [ln.Conv2d(w1, padding=1), ln.Conv2d(w2, padding=1)]
    z = lnd.map_layers(x, layers, activation=lambda t: np.maximum(t, 0, out=t))
    print(y.shape, float(z.sum().compute()))
