"""Shared fixtures: the offline tokenizers and models of ``posttrain.testing``.

Fixtures are cached on disk by ``posttrain.testing.fixture_path``; tests point that cache at a
per-session temporary directory so they never depend on (or pollute) the user's cache.
"""

from __future__ import annotations

import os

import pytest

from posttrain import testing


@pytest.fixture(scope="session", autouse=True)
def _fixture_cache(tmp_path_factory):
    if "POSTTRAIN_FIXTURES" not in os.environ:
        os.environ["POSTTRAIN_FIXTURES"] = str(tmp_path_factory.mktemp("fixtures"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    yield


@pytest.fixture(scope="session")
def tokenizers():
    """One in-memory tokenizer per kind: ``tokenizers["chatml"]`` etc."""
    return {kind: testing.build_tokenizer(kind) for kind in testing.TOKENIZER_KINDS}


@pytest.fixture(scope="session")
def chatml(tokenizers):
    return tokenizers["chatml"]


@pytest.fixture(scope="session")
def model_path():
    """``model_path("llama")`` / ``model_path("qwen2-small")``: a saved fixture directory."""
    return lambda name: str(testing.fixture_path(name))
