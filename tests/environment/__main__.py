"""Bring the test environment up by hand for debugging: ``python -m tests.environment up``.

It starts the RabbitMQ cluster, PostgreSQL and the Kubernetes control plane (or a subset),
prints their addresses, writes a state file that pytest reuses when ``TS_TESTENV_STATE``
points at it, and tears everything down on Ctrl-C.

``python -m tests.environment node`` instead starts a control plane without KWOK and a real
kubelet + containerd node with the project's images imported (root only; see the "Real
pods" section of docs/testing.md), prints the kubeconfig and removes it all on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import sys
import threading
from pathlib import Path

from tests.environment.kubernetes import ControlPlane, tools_bin_dir
from tests.environment.node import KubeletNode, build_images, sandbox_image
from tests.environment.postgres import PostgresServer
from tests.environment.rabbitmq import RabbitMQCluster
from tests.environment.session import (
    STATE_ENV,
    default_base_dir,
    new_control_plane,
    new_postgres,
    new_rabbitmq,
    state_of,
)

PARTS = ("rabbitmq", "postgres", "kubernetes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.environment", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the environment and keep it running until Ctrl-C")
    up.add_argument("--only", choices=PARTS, action="append", help="start only these parts")
    up.add_argument("--base-dir", type=Path, default=None)
    node = sub.add_parser("node", help="a control plane and a real kubelet + containerd node, until Ctrl-C")
    node.add_argument("--base-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.command == "node":
        return run_node(args.base_dir)
    parts = set(args.only or PARTS)
    base = args.base_dir or default_base_dir()
    base.mkdir(parents=True, exist_ok=True)

    rabbit = new_rabbitmq(base) if "rabbitmq" in parts else None
    pg = new_postgres(base) if "postgres" in parts else None
    plane = new_control_plane(base) if "kubernetes" in parts else None
    started: list[RabbitMQCluster | PostgresServer | ControlPlane] = []
    try:
        for component in (rabbit, pg, plane):
            if component is not None:
                component.start()
                started.append(component)
        state = state_of(rabbit, pg, plane)
        state_file = base / "state.json"
        state_file.write_text(json.dumps(state, indent=2))
        print(json.dumps(state, indent=2))
        print(f"\nexport {STATE_ENV}={state_file}   # pytest reuses this environment")
        if plane:
            print(f"export KUBECONFIG={plane.kubeconfig} PATH={plane.bin_dir}:$PATH")
        print("Ctrl-C stops everything.", flush=True)
        wait_for_signal()
    finally:
        for component in reversed(started):
            component.stop()
    return 0


def wait_for_signal() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()


def run_node(base_dir: Path | None) -> int:
    base = base_dir or default_base_dir()
    images = build_images()
    plane = ControlPlane(base / "kubernetes", bin_dir=tools_bin_dir(), kwok=False)
    node = KubeletNode(plane, base / "node", sandbox_image=sandbox_image(images))
    try:
        plane.start()
        node.start(images=images.values())
        print(json.dumps({**plane.describe(), **node.describe(), "images": list(images)}, indent=2))
        print(f"\nexport KUBECONFIG={plane.kubeconfig} PATH={plane.bin_dir}:$PATH")
        print("Ctrl-C stops everything.", flush=True)
        wait_for_signal()
    finally:
        try:
            node.stop()
        finally:
            plane.stop()
            if base_dir is None:
                shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
