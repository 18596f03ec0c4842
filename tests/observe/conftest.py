"""Every observation test runs on both request paths (compiled and pure Python): see ``hot_path``."""

import pytest


@pytest.fixture(autouse=True)
def _both_hot_paths(hot_path: str) -> str:
    return hot_path
