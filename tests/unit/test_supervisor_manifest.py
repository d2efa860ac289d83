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


def test_a_command_missing_from_the_cache_is_looked_up_in_the_extra_directories(tmp_path):
    """The extension apiserver is cached apart from the control-plane binaries."""
    cache, extension_dir = tmp_path / "bin", tmp_path / "extension" / "bin"
    cache.mkdir()
    extension_dir.mkdir(parents=True)
    (cache / "etcd").touch()
    (extension_dir / "sample-apiserver").touch()
    (extension_dir / "etcd").touch()
    manifest = dump(kubeadm.static_pod("x", ["sample-apiserver"]))
    argv = command_from_manifest(manifest, node_root=Path("/r"), bin_dir=cache, extra_bin_dirs=(extension_dir,))
    assert argv == [str(extension_dir / "sample-apiserver")]
    etcd = dump(kubeadm.static_pod("y", ["etcd"]))  # the cache comes first
    assert command_from_manifest(etcd, node_root=Path("/r"), bin_dir=cache,
                                 extra_bin_dirs=(extension_dir,))[0] == str(cache / "etcd")
    # Found nowhere: the cache's path, so the start error names where it should be.
    missing = dump(kubeadm.static_pod("z", ["kwok"]))
    assert command_from_manifest(missing, node_root=Path("/r"), bin_dir=cache,
                                 extra_bin_dirs=(extension_dir,))[0] == str(cache / "kwok")
