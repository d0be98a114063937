import os

import pytest

os.environ.setdefault("ATC_IL_PROGRESS", "0")
os.environ.setdefault("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module of tiny models: on a shared 2-core machine spinning OpenMP
    threads next to another busy process made single steps up to 100x slower (measured: 0.6 s to 78 s for
    the same 300-step run); the tests only need a fixed thread count. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def spec() -> dict:
    """A small feature spec with normalisation statistics (tests/helpers.py: model_spec)."""
    from tests.helpers import model_spec
    return model_spec()
