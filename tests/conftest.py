"""Test-suite settings.

Under CI (``CI`` set in the environment) hypothesis runs derandomized, so a run is reproducible;
locally it explores new examples each run. Test-specific ``@settings`` still set the example counts.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

# The tests use small tensors: one intra-op thread is faster, and it keeps parallel test
# workers (and other processes on a 2-core machine) from oversubscribing the cores.
import torch  # noqa: E402

torch.set_num_threads(1)
