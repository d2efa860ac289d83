from pathlib import Path

import pytest

from reconciler.core import kubeadm
from reconciler.core.kubeconfig import dump
from reconciler.sandbox.supervisor import ManifestError, command_from_manifest


def test_absolute_flag_paths_map_under_the_node_root_and_the_binary_comes_from_the_cache():
    manifest = dump(kubeadm.scheduler_manifest(kubeadm.ControlPlanePorts(1, 2, 3)))
    argv = command_from_manifest(manifest, node_root=Path("/sb/nodes/n1"), bin_dir=Path("/cache/bin"))
    assert argv[0] == "/cache/bin/kube-scheduler"
    assert "--kubeconfig=/sb/nodes/n1/etc/kubernetes/scheduler.conf" in argv
    assert "--bind-address=127.0.0.1" in argv and "--leader-elect=true" in argv


def test_urls_and_lists_are_left_alone():
    manifest = dump(kubeadm.etcd_manifest("n1", kubeadm.EtcdPorts(2379, 2380)))
    argv = command_from_manifest(manifest, node_root=Path("/r"), bin_dir=Path("/b"))
    assert "--initial-cluster=n1=https://127.0.0.1:2380" in argv
    assert "--data-dir=/r/var/lib/etcd" in argv


@pytest.mark.parametrize("text", ["{", "kind: Pod\nspec: {}\n", "spec:\n  containers:\n  - name: x\n"])
def test_a_broken_manifest_is_reported(text):
    with pytest.raises(ManifestError):
        command_from_manifest(text, node_root=Path("/r"), bin_dir=Path("/b"))
