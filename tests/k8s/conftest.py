"""Fixtures for tests/k8s: the Helm engine (helm-python-sdk) and the loaded chart."""

from __future__ import annotations

import pytest
from k8s_helpers import CHART


@pytest.fixture(scope="session")
def helm():
    return pytest.importorskip("helm_python", reason="helm-python-sdk is not installed")


@pytest.fixture(scope="session")
def chart(helm):
    with helm.Chart.load(str(CHART)) as loaded:
        yield loaded
