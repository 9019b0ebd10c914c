"""The pod runner points paths inside a pod's volumes at its local copies, and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.k8s.e2e.runner import env_in_volumes

pytestmark = pytest.mark.unit


def test_paths_in_volumes_go_to_the_pods_copy_but_path_stays() -> None:
    mounts = {"/tmp": Path("/work/pod/tmp"), "/etc/trading-system": Path("/work/pod/config")}
    env = {
        "TMPDIR": "/tmp",
        "TRADING_SYSTEM_CONFIG": "/etc/trading-system/config.json",
        # A checkout under /tmp: its virtualenv is this machine's, not the pod's /tmp volume.
        "PATH": "/tmp/checkout/.venv/bin:/usr/bin",
        "OTHER": "/tmpfoo/x",
    }
    assert env_in_volumes(env, mounts) == {
        "TMPDIR": "/work/pod/tmp",
        "TRADING_SYSTEM_CONFIG": "/work/pod/config/config.json",
        "PATH": "/tmp/checkout/.venv/bin:/usr/bin",
        "OTHER": "/tmpfoo/x",
    }
