"""The command line's hub probe: offline mode only when the hub does not answer and the
user has not chosen (remix_rft/apps/hub.py)."""

from __future__ import annotations

import os
import socket

import pytest

from remix_rft.apps.hub import OFFLINE_VARIABLES, hub_reachable, offline_unless_hub_reachable


@pytest.fixture
def clean_env(monkeypatch):
    for name in (*OFFLINE_VARIABLES, "HF_ENDPOINT"):
        monkeypatch.setenv(name, "")  # recorded, so that what the probe sets is undone
        monkeypatch.delenv(name)
    return monkeypatch


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens on it once closed


def test_an_unreachable_hub_turns_offline_mode_on(clean_env):
    clean_env.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    assert not hub_reachable()
    assert offline_unless_hub_reachable() is True
    assert all(os.environ[name] == "1" for name in OFFLINE_VARIABLES)


def test_a_reachable_hub_leaves_the_environment_alone(clean_env):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        clean_env.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert offline_unless_hub_reachable() is False
    assert not any(name in os.environ for name in OFFLINE_VARIABLES)


@pytest.mark.parametrize("value, offline", [("0", False), ("1", True)])
def test_the_users_choice_wins(clean_env, value, offline):
    clean_env.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    clean_env.setenv("HF_HUB_OFFLINE", value)
    assert offline_unless_hub_reachable() is offline
    assert os.environ["HF_HUB_OFFLINE"] == value and "HF_DATASETS_OFFLINE" not in os.environ
