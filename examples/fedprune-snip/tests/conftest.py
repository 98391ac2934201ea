import pytest

pytest_plugins = ["fedprune.testing"]


@pytest.fixture
def fedprune_plugins():
    """Load the plugin through its installed entry point: tests the packaging too."""
    return ["snip"]
