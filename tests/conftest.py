"""Test isolation: only fedprune's own plugins load, MLflow never touches the real home."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["fedprune.testing"]

# Third-party fedprune plugins installed in the environment must not change this suite's
# results; names in FEDPRUNE_PLUGINS are still loaded where a test asks for them.
os.environ["FEDPRUNE_DISABLE_PLUGIN_AUTOLOAD"] = "1"
os.environ.pop("FEDPRUNE_PLUGINS", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)


def pytest_sessionfinish(session, exitstatus):
    """``pytest -m slow`` with no slow test selected is a success, not "no tests ran" (5)."""
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and session.config.option.markexpr:
        session.exitstatus = pytest.ExitCode.OK


@pytest.fixture(autouse=True)
def _torch_threads():
    import torch

    torch.set_num_threads(1)  # tiny models: one thread is fastest and never oversubscribes CI
    yield


@pytest.fixture(scope="session")
def digits():
    from fedprune.data.digits import load_digits

    return load_digits()


@pytest.fixture
def pm():
    from fedprune.plugins import get_plugin_manager

    return get_plugin_manager()


TINY = [
    "--rounds", "2", "--clients", "4", "--clients-per-round", "2", "--local-steps", "2",
    "--batch-size", "16", "--eval-every", "1", "-o", "cnn.width=4",
]


@pytest.fixture
def tiny_args():
    """A bench that finishes in about a second on the digits data."""
    return list(TINY)
