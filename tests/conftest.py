import os

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")


@pytest.fixture(scope="session")
def zoo():
    """The real models and images (built offline into the user cache on first use, ~15 s)."""
    from qsens.zoo import build_zoo

    return build_zoo(progress=False)
