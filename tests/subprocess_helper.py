"""Run Python code in a fresh interpreter (for process-wide settings and crashes)."""

import os
import subprocess
import sys
import textwrap


def run_python(code, env=None, timeout=300):
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=full_env, timeout=timeout)
