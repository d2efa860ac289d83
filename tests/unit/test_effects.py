"""`show` prints exactly what each action writes, removes and runs, and where: the files of
a pair and of a signer (the CA's key included), a restart's manifest or its command and
marker, API objects, the state store; with the node's root and transport when the spec the
plan was made from is at hand."""

from __future__ import annotations

import json
from pathlib import Path

from reconciler.cli import main
from reconciler.core import render
from reconciler.core.kubeadm import KUBELET_RESTART_MARKER
from reconciler.core.effects import NodePlace, Places, effects, lines
from reconciler.core.plan import Action, RestartParams
from reconciler.core.sites import Component
from reconciler.shell.session import spec_digest
from tests.unit.test_render import document, rotation

PLACES = Places(nodes={("c1", "cp1"): NodePlace("local", "/srv/nodes/cp1", runs_here=True),
                       ("c1", "w1"): NodePlace("ssh deploy@10.0.12.9:2222", "/srv/w1")},
                state={"c1": "Secret kube-system/careconcile-state"},
                keys={"c1": "Secret kube-system/careconcile-keys"})


def _action(plan, kind: str, target: str) -> Action:
    return next(a for c in plan.clusters for a in c.actions if a.kind == kind and a.target == target)


def _kubelet_restart(command: str = "sudo -n systemctl restart kubelet") -> Action:
    return Action(id="c1/2/restart/w1:kubelet", phase=2, kind="restart",
                  site=Component(node="w1", name="kubelet", restart="command"),
                  reason="its files change in this phase",
                  params=RestartParams(component="kubelet", command=command))


def test_a_pair_writes_its_key_then_its_certificate_not_the_label():
    reissue = _action(rotation(), "reissue", "cp1:/etc/kubernetes/pki/apiserver")
    assert [(e.verb, e.node, e.what) for e in effects(reissue, "clusterCA")] == [
        ("writes", "cp1", "/etc/kubernetes/pki/apiserver.key"), ("writes", "cp1", "/etc/kubernetes/pki/apiserver.crt")]
    out = render.text(rotation())
    assert "writes on cp1: /etc/kubernetes/pki/apiserver.key, /etc/kubernetes/pki/apiserver.crt" in out


def test_switching_the_signer_shows_that_the_cas_key_is_written_on_the_node():
    out = render.text(rotation())
    assert ("writes on cp1: /etc/kubernetes/pki/careconcile/clusterCA.key, /etc/kubernetes/pki/careconcile/clusterCA.crt, "
            "/etc/kubernetes/pki/ca.key") in out
    assert ("removes on cp1: /etc/kubernetes/pki/careconcile/clusterCA.crt, /etc/kubernetes/pki/careconcile/clusterCA.key, "
            "/etc/kubernetes/pki/careconcile") in out


def test_restarts_show_the_manifest_or_the_command_and_where_it_runs():
    out = render.text(rotation())
    assert "writes on cp1: /etc/kubernetes/manifests/kube-controller-manager.yaml" in out
    restart = _kubelet_restart()
    assert lines(restart, "c1", "clusterCA", PLACES) == [
        "runs on w1 (ssh deploy@10.0.12.9:2222): sudo -n systemctl restart kubelet",
        f"writes on w1 (ssh deploy@10.0.12.9:2222): /srv/w1{KUBELET_RESTART_MARKER}"]
    # A local node's command runs on this machine, as the operator: the plan says so.
    local = Places(nodes={("c1", "w1"): NodePlace("local", "/srv/nodes/w1", runs_here=True)})
    assert lines(restart, "c1", "clusterCA", local)[0] == \
        "runs on this machine, for w1 (local): sudo -n systemctl restart kubelet"
    base = rotation().clusters[0]
    plan = document(base.model_copy(update={"actions": [*base.actions, restart]}))
    assert "        runs on w1: sudo -n systemctl restart kubelet\n" in render.text(plan)
    assert "`runs on w1: sudo -n systemctl restart kubelet`<br>`writes on w1: /var/lib/kubelet/" in \
        render.markdown(plan)


def test_with_the_specs_places_paths_carry_the_node_root_and_transport():
    out = render.text(rotation(), PLACES)
    assert ("writes on cp1 (local): /srv/nodes/cp1/etc/kubernetes/pki/apiserver.key, "
            "/srv/nodes/cp1/etc/kubernetes/pki/apiserver.crt") in out
    assert "writes on w1 (ssh deploy@10.0.12.9:2222): /srv/w1/etc/kubernetes/pki/ca.crt" in out
    # the new CA's key goes to the keys Secret, not to the public record drift may read
    assert "writes to Secret kube-system/careconcile-keys: the new CA's key" in out
    assert "writes to Secret kube-system/careconcile-state: rotation state (no key)" in out
    assert ("replaces through the cluster's API: /api/v1/namespaces/kube-system/configmaps/"
            "extension-apiserver-authentication (client-ca-file)") in out
    assert "writes on this machine: /workspace/c1/c1-kubeconfig" in out
    # Markdown, sized for a comment: node paths in the rows, each node's root once per cluster,
    # and "writes the target" where the target is the one file written.
    markdown = render.markdown(rotation(), places=PLACES)
    assert "| writes, runs |" in markdown
    assert "| w1 | `ssh deploy@10.0.12.9:2222` | `/srv/w1` |" in markdown
    assert "| cp1 | `local` | `/srv/nodes/cp1` |" in markdown
    row = next(line for line in markdown.splitlines() if "| `w1:/etc/kubernetes/pki/ca.crt` |" in line)
    assert row.endswith("| the target |")
    row = next(line for line in markdown.splitlines() if "| `cp1:/etc/kubernetes/pki/apiserver` |" in line)
    assert row.endswith("| `writes on cp1: /etc/kubernetes/pki/apiserver.key, /etc/kubernetes/pki/apiserver.crt` |")


def test_every_action_but_a_check_says_what_it_does():
    plan = rotation()
    for action in plan.actions():
        assert bool(effects(action, "clusterCA")) == (action.kind != "verify"), action.id


SPEC = """\
apiVersion: careconcile.dev/v1alpha1
kind: CASpec
metadata: {name: show}
spec:
  clusters:
  - name: c1
    kubeconfig: c1.kubeconfig
    nodes:
    - name: cp1
      role: control-plane
      access: {local: {root: /srv/nodes/cp1}}
    - name: w1
      role: worker
      access:
        ssh:
          host: 10.0.12.9
          port: 2222
          user: deploy
          keyFile: id_ed25519
          hostKey: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl
          root: /srv/w1
"""


def _saved(tmp_path: Path) -> tuple[Path, Path]:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    plan = rotation().model_copy(update={"spec_path": str(spec), "spec_relative_path": str(spec),
                                         "spec_digest": spec_digest(spec), "spec_text": SPEC})
    saved = tmp_path / "rotate.plan.json"
    saved.write_text(render.as_json(plan))
    return spec, saved


def test_show_prints_the_paths_on_the_nodes_from_the_spec_the_plan_was_made_from(tmp_path, capsys):
    _, saved = _saved(tmp_path)
    assert main(["show", str(saved)]) == 0
    out, err = capsys.readouterr()
    assert "writes on cp1 (local): /srv/nodes/cp1/etc/kubernetes/pki/careconcile/clusterCA.key" in out
    assert "writes on w1 (ssh deploy@10.0.12.9:2222): /srv/w1/etc/kubernetes/kubelet.conf" in out
    assert err == ""
    assert main(["show", str(saved), "--format", "markdown"]) == 0
    out, err = capsys.readouterr()
    assert "| cp1 | `local` | `/srv/nodes/cp1` |" in out and "| w1 | `ssh deploy@10.0.12.9:2222` | `/srv/w1` |" in out
    assert err.startswith("Spec: embedded (sha256:")  # markdown stays what `plan --format markdown` prints
    assert main(["show", str(saved), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["spec_digest"].startswith("sha256:")


def test_markdown_says_once_where_nodes_laid_out_alike_are():
    base = rotation()
    same = Places(nodes={("c1", node): NodePlace("local", f"/tmp/sbx/nodes/{node}", runs_here=True)
                         for node in ("cp1", "w1")})
    markdown = render.markdown(base, places=same)
    assert "Each of the 2 nodes is reached by `local`; the node paths below are under its root " \
           "`/tmp/sbx/nodes/<node>`." in markdown
    assert "| node | reached by | root |" not in markdown


def test_show_of_a_plan_whose_spec_file_changed_shows_the_plans_own_spec_and_says_so(tmp_path, capsys):
    """The plan holds its spec: show prints the node roots of that spec, not of the file now
    at the spec's place, and says the file there is another spec."""
    spec, saved = _saved(tmp_path)
    spec.write_text(SPEC.replace("/srv/nodes/cp1", "/elsewhere/cp1"))
    assert main(["show", str(saved)]) == 0
    out, err = capsys.readouterr()
    assert "writes on cp1 (local): /srv/nodes/cp1/etc/kubernetes/pki/careconcile/clusterCA.key" in out
    assert "/elsewhere" not in out and err == ""
    assert f"resolves them against {tmp_path} " in out
    assert "the spec file is there but another spec (apply refuses the plan as stale)" in out
