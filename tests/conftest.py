import os
import tempfile

from hypothesis import HealthCheck, settings

# Calibration and measured plans go to a cache of the test run's own, never the
# user's; tests that need a particular cache state set their own directory.
os.environ.setdefault("LOWMEM_NUMBA_CACHE_DIR", tempfile.mkdtemp(prefix="lowmem-numba-test-cache-"))

settings.register_profile(
    "default",
    deadline=None,  # the first example of each kernel includes JIT compilation
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", parent=settings.get_profile("default"), max_examples=400)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
