"""Entry point of the ``trading-operator`` command.

``trading-operator run`` runs the operator (kopf) against the cluster in KUBECONFIG or the
in-cluster service account; ``trading-operator crd`` prints the CustomResourceDefinition
the chart ships (``charts/trading-system/crds/`` is generated from it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import yaml


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trading-operator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the operator")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable)"
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (default)")
    peering = run.add_mutually_exclusive_group()
    peering.add_argument("--standalone", action="store_true", help="no peering: this replica always acts")
    peering.add_argument("--peering", default=None, help="kopf peering object shared by the replicas")
    run.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority; defaults to the start time, so a newly rolled replica takes over",
    )
    run.add_argument(
        "--peering-lifetime",
        type=int,
        default=60,
        help="seconds a silent peer is presumed alive; the takeover delay after a replica dies",
    )
    run.add_argument("--metrics-port", type=int, default=9090, help="/metrics port, 0 to disable")
    run.add_argument("--liveness-port", type=int, default=8080, help="kopf /healthz port, 0 to disable")
    run.add_argument("--resync-seconds", type=float, default=10.0, help="longest pause between rounds")
    run.add_argument("--log-format", choices=("json", "plain", "full"), default="json")
    run.add_argument("--verbose", action="store_true")
    sub.add_parser("crd", help="print the TradingSystem CustomResourceDefinition as YAML")
    selftest = sub.add_parser("selftest", help="check an installation (what `helm test` runs)")
    selftest.add_argument("--namespace", required=True)
    selftest.add_argument("--metrics-url", required=True)
    return parser


def _ensure_peering(name: str, namespaces: list[str]) -> None:
    """Create the peering object(s) if missing: kopf waits for them rather than creating them,
    and a plain ``kubectl apply -f manifests/`` cannot ship a custom resource in the same
    apply as its CRD."""
    from trading_operator.k8s_io import Kube

    kube = Kube.from_environment()
    try:
        if namespaces:
            for namespace in namespaces:
                meta = {"name": name, "namespace": namespace}
                kube.create({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": meta})
        else:
            kube.create(
                {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}
            )
    finally:
        kube.close()


def _selftest(args: argparse.Namespace) -> int:
    import urllib.request

    from trading_operator import api
    from trading_operator.k8s_io import Kube

    kube = Kube.from_environment()
    try:
        crd = kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, api.CRD_NAME)
        conditions = ((crd or {}).get("status") or {}).get("conditions") or []
        if not any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
            print(f"FAIL: CRD {api.CRD_NAME} is not established", file=sys.stderr)
            return 1
    finally:
        kube.close()
    with urllib.request.urlopen(args.metrics_url, timeout=10) as response:
        body = response.read().decode()
    if "trading_operator_managed_resources" not in body:
        print("FAIL: the operator's /metrics does not serve its metrics", file=sys.stderr)
        return 1
    print(f"ok: CRD {api.CRD_NAME} established, operator metrics served")
    return 0


def _run(args: argparse.Namespace) -> int:
    import kopf

    import trading_operator.handlers  # noqa: F401  (registers the handlers)

    # The handlers read these when kopf calls startup; kopf's own CLI path (KopfRunner in
    # tests) uses the same variables.
    os.environ["TRADING_OPERATOR_METRICS_PORT"] = str(args.metrics_port)
    os.environ["TRADING_OPERATOR_RESYNC_SECONDS"] = str(args.resync_seconds)
    os.environ["TRADING_OPERATOR_PEERING_LIFETIME"] = str(args.peering_lifetime)
    if args.peering:
        _ensure_peering(args.peering, args.namespace)
    formats = {"json": kopf.LogFormat.JSON, "plain": kopf.LogFormat.PLAIN, "full": kopf.LogFormat.FULL}
    kopf.configure(verbose=args.verbose, log_format=formats[args.log_format])
    liveness = f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=tuple(args.namespace),
        standalone=True if args.standalone else None,
        peering_name=args.peering,
        priority=args.priority if args.priority is not None else int(time.time() * 1000) % 2_000_000_000,
        liveness_endpoint=liveness,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "crd":
        from trading_operator.crd import crd

        sys.stdout.write(yaml.safe_dump(crd(), sort_keys=False, width=120))
        return 0
    if args.command == "selftest":
        return _selftest(args)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
