"""Fleet specs for the tests and benchmarks: many sandboxes' clusters in one spec file.

`careconcile sandbox up` (and the ``start_sandbox`` fixture) writes a spec with the one
cluster of its sandbox. :func:`merge_specs` puts the clusters of several such specs into
one spec under one ``metadata.name``, in the order given; the other helpers change one
cluster of a fleet spec. Only plain files and YAML: no pytest, so that `benchmarks/`
can use it too.
"""

from __future__ import annotations

import io
import socket
from pathlib import Path
from typing import Any, Iterable

from ruamel.yaml import YAML

from reconciler.core import kubeconfig
from reconciler.shell.specfile import load_spec

HEADER = "# A fleet spec made by tests/integration/fleet.py from: {sources}\n"


def _yaml() -> YAML:
    yaml = YAML()
    yaml.default_flow_style = False
    yaml.width = 4096  # long node paths stay on one line
    return yaml


def _read(path: Path) -> Any:
    return _yaml().load(path.read_text())


def _write(path: Path, document: Any, header: str = "") -> Path:
    out = io.StringIO()
    _yaml().dump(document, out)
    path.write_text(header + out.getvalue())
    load_spec(path)  # never hand a test a spec careconcile would reject
    return path


def merge_specs(specs: Iterable[Path | str], out: Path, *, name: str = "fleet") -> Path:
    """Write ``out``: one spec holding every cluster of ``specs``, in order.

    A relative kubeconfig is made absolute against its own spec's directory, so the merged
    file may live anywhere. Cluster names must be unique across the specs, and the specs'
    ``spec.defaults`` must agree (sandbox specs have none), since the merged spec has one."""
    sources = [Path(spec).absolute() for spec in specs]
    if not sources:
        raise ValueError("merge_specs needs at least one spec")
    clusters: list[Any] = []
    seen: dict[str, Path] = {}
    defaults: Any = None
    for index, source in enumerate(sources):
        document = _read(source)
        body = document["spec"]
        here = body.get("defaults")
        if index and here != defaults:
            raise ValueError(f"{source}: spec.defaults differ from {sources[0]}'s; merge specs with equal defaults")
        defaults = here
        for cluster in body["clusters"]:
            if cluster["name"] in seen:
                raise ValueError(f"cluster {cluster['name']!r} is in both {seen[cluster['name']]} and {source}")
            seen[cluster["name"]] = source
            if cluster.get("kubeconfig") is not None:
                path = Path(cluster["kubeconfig"]).expanduser()
                cluster["kubeconfig"] = str(path if path.is_absolute() else source.parent / path)
            clusters.append(cluster)
    first = _read(sources[0])
    merged: dict[str, Any] = {"apiVersion": first["apiVersion"], "kind": first["kind"], "metadata": {"name": name},
                              "spec": {}}
    if defaults is not None:
        merged["spec"]["defaults"] = defaults
    merged["spec"]["clusters"] = clusters
    return _write(out, merged, HEADER.format(sources=", ".join(str(s) for s in sources)))


def cluster_names(spec: Path) -> list[str]:
    return [cluster["name"] for cluster in _read(spec)["spec"]["clusters"]]


def edit_cluster(spec: Path, cluster: str, out: Path | None = None, **fields: Any) -> Path:
    """Set top-level fields of one cluster (``kubeconfig=...``), writing ``out`` (default:
    ``spec`` itself); every other cluster stays as it is."""
    document = _read(spec)
    [entry] = [c for c in document["spec"]["clusters"] if c["name"] == cluster]
    entry.update(fields)
    return _write(out or spec, document)


def set_cluster_rotation(spec: Path, cluster: str, value: int, out: Path | None = None) -> Path:
    """Set one cluster's clusterCA rotation counter (``rotation.set_rotation`` sets them all)."""
    document = _read(spec)
    [entry] = [c for c in document["spec"]["clusters"] if c["name"] == cluster]
    entry.setdefault("authorities", {}).setdefault("clusterCA", {})["rotation"] = value
    return _write(out or spec, document)


def closed_port() -> socket.socket:
    """A loopback port nothing listens on, kept so while the socket stays open: it is bound
    (nobody else gets it) but not listening, so a connection is refused at once."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def unreachable_copy(spec: Path, cluster: str, port: int, directory: Path) -> Path:
    """A copy of ``spec`` in ``directory`` whose ``cluster`` reaches its API at
    ``https://127.0.0.1:PORT``: its kubeconfig is copied with every server replaced. The
    original spec, kubeconfig and cluster are not touched."""
    [entry] = [c for c in _read(spec)["spec"]["clusters"] if c["name"] == cluster]
    source = Path(entry["kubeconfig"])
    document = kubeconfig.parse(source.read_text(), source=str(source))
    for item in document["clusters"]:
        item["cluster"]["server"] = f"https://127.0.0.1:{port}"
    directory.mkdir(parents=True, exist_ok=True)
    copied = directory / f"{cluster}-unreachable.kubeconfig"
    copied.write_text(kubeconfig.dump(document))
    copied.chmod(0o600)
    return edit_cluster(spec, cluster, directory / f"{spec.stem}-{cluster}-unreachable.yaml", kubeconfig=str(copied))
