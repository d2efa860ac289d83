"""`careconcile sandbox up|status|down`: local clusters of real control-plane processes."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from reconciler import sandbox
from reconciler.errors import EXIT_ERROR, EXIT_OK, UsageError
from reconciler.sandbox._paths import SandboxPaths, check_name


def _sandbox_name(value: str) -> str:
    try:
        return check_name(value)
    except UsageError as exc:  # argparse reports ArgumentTypeError as a usage error
        raise argparse.ArgumentTypeError(exc.message) from exc


def register(commands: Any) -> None:
    parser = commands.add_parser("sandbox", help="start, inspect and stop local sandbox clusters")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    up = verbs.add_parser("up", help="start a sandbox and wait until it is ready")
    up.add_argument("--name", default="sandbox", type=_sandbox_name, help="sandbox name (default: sandbox)")
    up.add_argument("--control-planes", type=int, default=1, metavar="K",
                    help="control-plane nodes, each with a kube-apiserver and a stacked etcd member; "
                         "2 or more is the HA case (default: 1)")
    up.add_argument("--workers", type=int, default=3, metavar="W", help="kwok worker nodes (default: 3)")
    up.add_argument("--ssh", action="store_true",
                    help="serve the node directories over SSH (an sshd on 127.0.0.1 installed by "
                         "hack/install-sshd.sh) and write a spec that reaches every node with `access: ssh`")
    up.add_argument("--admin", type=_sandbox_name, metavar="NAME",
                    help="register the new sandbox in the running sandbox NAME, its management cluster, and "
                         "write a spec that reaches it in admin mode (docs/admin-mode.md)")
    up.add_argument("--lease-handover", choices=sandbox.LEASE_HANDOVERS, default="fast",
                    help="fast (default): the controller-manager releases its leader Lease when it stops and "
                         "kwok's node Leases last 6 s; kubeadm: the controller-manager as kubeadm runs it and 15 s "
                         "node Leases, so each restart of them waits about 15 s (docs/sandbox.md)")
    up.add_argument("--workloads", type=int, default=0, metavar="N",
                    help="beside kubeadm's add-ons (kube-proxy, CoreDNS), N namespaces app-1..app-N with a "
                         "Deployment and a PodDisruptionBudget each, and a StatefulSet in app-1 (default: 0)")
    up.add_argument("--extension-apiserver", action="store_true",
                    help="also run k8s.io/sample-apiserver as an aggregated apiserver (APIService "
                         "v1alpha1.wardle.example.com) on the first control-plane node, with an etcd of its own; "
                         "built by hack/build-extension-apiserver.sh (docs/sandbox.md)")
    up.add_argument("--no-loopback-san", dest="loopback_san", action="store_false",
                    help="leave 127.0.0.1 out of the apiservers' serving certificates: every kubeconfig of the "
                         "sandbox reaches them with tls-server-name: kubernetes (docs/sandbox.md)")
    up.add_argument("--output", choices=("text", "json"), default="text")
    up.set_defaults(handler=_up)

    status = verbs.add_parser("status", help="list sandboxes and their health (exit 1 if any is unhealthy)")
    status.add_argument("--name", type=_sandbox_name, help="only this sandbox")
    status.add_argument("--output", choices=("text", "json"), default="text")
    status.set_defaults(handler=_status)

    down = verbs.add_parser("down", help="stop a sandbox's processes and remove it")
    which = down.add_mutually_exclusive_group()
    which.add_argument("--name", type=_sandbox_name, help="sandbox name (default: sandbox)")
    which.add_argument("--all", action="store_true", help="every sandbox")
    down.add_argument("--keep", action="store_true", help="stop the processes but keep the directory")
    down.set_defaults(handler=_down)


def _progress(message: str) -> None:
    print(f"sandbox: {message}", file=sys.stderr, flush=True)


def _up(args: argparse.Namespace) -> int:
    info = sandbox.up(args.name, control_planes=args.control_planes, workers=args.workers, progress=_progress,
                      ssh=args.ssh, admin=args.admin, lease_handover=args.lease_handover, workloads=args.workloads,
                      extension_apiserver=args.extension_apiserver, loopback_san=args.loopback_san)
    if args.output == "json":
        print(json.dumps(info.to_json(), indent=2))
        return EXIT_OK
    print(f'Sandbox "{info.name}" is up: Kubernetes {info.kubernetes_version}, '
          f"{info.control_planes} control plane(s), {info.workers} worker(s), ready in {info.startup_seconds:.1f}s.")
    print(f"  kubeconfig:  {info.kubeconfig}")
    print(f"  spec:        {info.spec}")
    print(f"  nodes:       {info.nodes_dir}")
    if info.ssh is not None:
        print(f"  ssh:         {info.ssh['user']}@{info.ssh['host']}:{info.ssh['port']} serves the nodes "
              f"(key {info.ssh['key_file']})")
    for server in info.apiservers:
        print(f"  apiserver:   {server}")
    for member in info.etcd:
        print(f"  etcd:        {member}")
    workloads = "kube-proxy, coredns" + (f", {info.workloads} sample namespaces (app-1..app-{info.workloads})"
                                         if info.workloads else "")
    print(f"  workloads:   {workloads}" + ("" if info.workers else " (no workers: their pods do not run)"))
    if info.extension_apiserver is not None:
        ext = info.extension_apiserver
        print(f"  aggregated:  APIService {ext['apiservice']} (sample-apiserver on https://127.0.0.1:{ext['port']}, "
              f"its etcd {ext['etcd']})")
    if info.admin is not None:
        print(f"  registered:  in sandbox {info.admin['name']}, namespace {info.admin['namespace']} "
              f"(Secrets {info.name}-ca, {info.name}-kubeconfig; the spec is in admin mode)")
    print(f"Stop it with: careconcile sandbox down --name {info.name}")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    targets = [SandboxPaths.named(args.name)] if args.name else sandbox.list_sandboxes()
    reports = [sandbox.status(paths) for paths in targets]
    if args.output == "json":
        print(json.dumps({"sandboxes": reports}, indent=2))
    elif not reports:
        print("No sandboxes.")
    for report in reports if args.output == "text" else []:
        health = "healthy" if report["healthy"] else "UNHEALTHY"
        nodes = "?" if report["ready_nodes"] is None else report["ready_nodes"]
        print(f"{report['name']}: {health}  apiservers ready {sum(report['apiservers'].values())}"
              f"/{len(report['apiservers'])}, nodes Ready {nodes}/{report['workers']}")
        for key, component in report["components"].items():
            restarts = f", {component['restarts']} restart(s)" if component["restarts"] else ""
            reason = f" (last: {component['last_restart_reason']})" if component["last_restart_reason"] else ""
            print(f"  {key:<48} {component['status']:<8} pid {component['pid']}{restarts}{reason}")
        if report.get("extension_apiserver"):
            ext = report["extension_apiserver"]
            print(f"  APIService {ext['apiservice']}: "
                  + {True: "Available", False: "not Available", None: "unknown"}[ext["available"]])
        for problem in report["problems"]:
            print(f"  problem: {problem}")
    return EXIT_OK if all(report["healthy"] for report in reports) else EXIT_ERROR


def _down(args: argparse.Namespace) -> int:
    if args.all:
        targets = sandbox.list_sandboxes()
    else:
        targets = [SandboxPaths.named(args.name or "sandbox")]
    if args.all and not targets:
        print("No sandboxes.")
    failures = []
    for paths in targets:
        try:
            sandbox.down(paths, keep=args.keep)
        except UsageError:
            raise
        except Exception as exc:  # keep stopping the others; report each failure
            if not args.all:
                raise
            failures.append(f"{paths.name}: {exc}")
            continue
        print(f'Sandbox "{paths.name}" stopped' + (" (directory kept)." if args.keep else " and removed."))
    for failure in failures:
        print(f"careconcile: error: {failure}", file=sys.stderr)
    return EXIT_ERROR if failures else EXIT_OK
