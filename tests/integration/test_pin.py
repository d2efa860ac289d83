"""`careconcile pin` on a real sandbox: the live CA lands in a commented spec, nothing else
in the file moves, and nothing on the cluster changes."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from reconciler.core import pki
from reconciler.shell.specfile import load_spec

from reconciler.core.authorities import ETCD_CA, FRONT_PROXY_CA

from .rotation import careconcile, plan_json, record_ca


def _record_of(info, layout):
    """The CA of record of an authority on the first control plane (a single certificate here)."""
    root = Path(info.nodes[0].root)
    return pki.load_certificates((root / layout.record_cert.lstrip("/")).read_bytes(), source=layout.record_cert)[0]

pytestmark = pytest.mark.integration


def _commented_copy(info, tmp_path: Path) -> Path:
    """The sandbox's spec with comments a team would add, as a copy: the shared sandbox's
    own spec stays as the other tests expect it."""
    text = Path(info.spec).read_text()
    for old, new in {
        "kind: CASpec\n": "kind: CASpec   # the format's kind\n",
        "  clusters:\n": "\n  # Every cluster this team runs.\n  clusters:\n",
        "      clusterCA:\n        rotation: 0\n":
            "      clusterCA:\n        rotation: 0   # raise by one to rotate\n        # pinned below by careconcile pin\n",
    }.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    spec = tmp_path / "spec.yaml"
    spec.write_text("# Reviewed by the platform team.\n\n" + text + "\n# end of spec\n")
    spec.chmod(0o640)
    return spec


def test_pin_writes_the_live_ca_and_keeps_every_other_byte(cluster, tmp_path):
    info = cluster
    spec = _commented_copy(info, tmp_path)
    commented = spec.read_bytes()
    workspace = tmp_path / "ws"
    live = pki.fingerprint(record_ca(info).cert)
    etcd, proxy = (pki.fingerprint(_record_of(info, layout)) for layout in (ETCD_CA, FRONT_PROXY_CA))
    observed_before = plan_json(spec, workspace)["clusters"][0]["observed_digest"]

    check = careconcile("pin", str(spec), "--check", workspace=workspace)
    assert check.returncode == 2, check.stdout + check.stderr
    assert check.stdout == (f"cluster {info.name}: would pin {live} (was: none)\n"
                            f"cluster {info.name}: etcdCA would pin {etcd} (was: none)\n"
                            f"cluster {info.name}: frontProxyCA would pin {proxy} (was: none)\n")
    assert spec.read_bytes() == commented  # --check writes nothing

    pinned = careconcile("pin", str(spec), workspace=workspace)
    assert pinned.returncode == 0, pinned.stdout + pinned.stderr
    assert pinned.stdout.splitlines()[0] == f"cluster {info.name}: pinned {live} (was: none)"

    # Only the new lines differ; every comment, blank line and value is the same, byte for byte.
    after = spec.read_bytes()
    diff = [line for line in difflib.ndiff(commented.decode().splitlines(keepends=True),
                                           after.decode().splitlines(keepends=True)) if line[:1] in "+-"]
    assert diff == [f"+         fingerprint: {value}\n" for value in (live, etcd, proxy)]
    assert f"rotation: 0   # raise by one to rotate\n        fingerprint: {live}\n" \
           "        # pinned below by careconcile pin\n" in after.decode()
    assert spec.stat().st_mode & 0o777 == 0o640
    assert load_spec(spec).document.spec.clusters[0].authorities.cluster_ca.fingerprint == live

    # The pinned spec matches the cluster, which pin did not touch.
    plan = careconcile("plan", str(spec), "--detailed-exitcode", workspace=workspace)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "No changes. The clusters match the spec." in plan.stdout
    document = plan_json(spec, workspace)
    assert document["clusters"][0]["operation"] == "none" and document["clusters"][0]["findings"] == []
    assert document["clusters"][0]["observed_digest"] == observed_before

    check = careconcile("pin", str(spec), "--check", workspace=workspace)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.splitlines()[0] == f"cluster {info.name}: pinned {live} (unchanged)"
    assert "etcdCA pinned" in check.stdout and "frontProxyCA pinned" in check.stdout
    again = careconcile("pin", str(spec), "--cluster", info.name, workspace=workspace)
    assert again.returncode == 0 and spec.read_bytes() == after


def test_pin_refuses_an_unknown_cluster_and_writes_nothing(cluster, tmp_path):
    spec = _commented_copy(cluster, tmp_path)
    before = spec.read_bytes()
    result = careconcile("pin", str(spec), "--cluster", "nope", workspace=tmp_path / "ws")
    assert result.returncode == 64, result.stderr
    assert "no cluster named 'nope'" in result.stderr and str(spec) in result.stderr
    assert spec.read_bytes() == before
