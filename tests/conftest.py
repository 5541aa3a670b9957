"""Keeps the tests hermetic: no test sees the user's fetched Inception weights or stats cache.

``feature_network='auto'`` uses Inception whenever ``python -m gan.metrics.fetch`` has filled
the cache; pointing ``SYMPAD_CACHE`` at a fresh directory makes 'auto' mean the offline network
in every test unless the test itself provides weights.
"""

import pytest


@pytest.fixture(autouse=True)
def _private_sympad_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SYMPAD_CACHE", str(tmp_path_factory.mktemp("sympad_cache")))
