from pathlib import Path

import pytest

from reconciler.core import kubeadm
from reconciler.core.kubeconfig import dump
from reconciler.sandbox.supervisor import STOP_GRACE_SECONDS, ManifestError, launch_from_manifest


def test_absolute_flag_paths_map_under_the_node_root_and_the_binary_comes_from_the_cache():
    manifest = dump(kubeadm.scheduler_manifest(kubeadm.ControlPlanePorts(1, 2, 3)))
    argv = launch_from_manifest(manifest, node_root=Path("/sb/nodes/n1"), bin_dir=Path("/cache/bin")).command
    assert argv[0] == "/cache/bin/kube-scheduler"
    assert "--kubeconfig=/sb/nodes/n1/etc/kubernetes/scheduler.conf" in argv
    assert "--bind-address=127.0.0.1" in argv and "--leader-elect=true" in argv


def test_urls_and_lists_are_left_alone():
    manifest = dump(kubeadm.etcd_manifest("n1", kubeadm.EtcdPorts(2379, 2380)))
    argv = launch_from_manifest(manifest, node_root=Path("/r"), bin_dir=Path("/b")).command
    assert "--initial-cluster=n1=https://127.0.0.1:2380" in argv
    assert "--data-dir=/r/var/lib/etcd" in argv


@pytest.mark.parametrize("text", ["{", "kind: Pod\nspec: {}\n", "spec:\n  containers:\n  - name: x\n"])
def test_a_broken_manifest_is_reported(text):
    with pytest.raises(ManifestError):
        launch_from_manifest(text, node_root=Path("/r"), bin_dir=Path("/b")).command


def test_a_command_missing_from_the_cache_is_looked_up_in_the_extra_directories(tmp_path):
    """The extension apiserver is cached apart from the control-plane binaries."""
    cache, extension_dir = tmp_path / "bin", tmp_path / "extension" / "bin"
    cache.mkdir()
    extension_dir.mkdir(parents=True)
    (cache / "etcd").touch()
    (extension_dir / "sample-apiserver").touch()
    (extension_dir / "etcd").touch()
    manifest = dump(kubeadm.static_pod("x", ["sample-apiserver"]))
    argv = launch_from_manifest(manifest, node_root=Path("/r"), bin_dir=cache,
                                extra_bin_dirs=(extension_dir,)).command
    assert argv == [str(extension_dir / "sample-apiserver")]
    etcd = dump(kubeadm.static_pod("y", ["etcd"]))  # the cache comes first
    assert launch_from_manifest(etcd, node_root=Path("/r"), bin_dir=cache,
                                extra_bin_dirs=(extension_dir,)).command[0] == str(cache / "etcd")
    # Found nowhere: the cache's path, so the start error names where it should be.
    missing = dump(kubeadm.static_pod("z", ["kwok"]))
    assert launch_from_manifest(missing, node_root=Path("/r"), bin_dir=cache,
                                extra_bin_dirs=(extension_dir,)).command[0] == str(cache / "kwok")


def test_env_and_the_grace_period_come_from_the_manifest_as_a_kubelet_reads_them():
    """The load balancer's library path and the apiserver's grace period; 15 s when unset."""
    pod = kubeadm.static_pod("haproxy", ["haproxy", "-f", "/etc/haproxy/haproxy.cfg"], env={"LD_LIBRARY_PATH": "/l"},
                             grace_seconds=4)
    launch = launch_from_manifest(dump(pod), node_root=Path("/r"), bin_dir=Path("/b"))
    # an argument of its own that is an absolute path maps under the node root too
    assert launch.command == ["/b/haproxy", "-f", "/r/etc/haproxy/haproxy.cfg"]
    assert (launch.env, launch.grace_seconds) == ({"LD_LIBRARY_PATH": "/l"}, 4.0)
    plain = launch_from_manifest(dump(kubeadm.static_pod("x", ["x"])), node_root=Path("/r"), bin_dir=Path("/b"))
    assert (plain.env, plain.grace_seconds) == ({}, STOP_GRACE_SECONDS)


@pytest.mark.parametrize("spec_change, problem", [
    ({"terminationGracePeriodSeconds": "30"}, "terminationGracePeriodSeconds must be a whole number"),
    ({"terminationGracePeriodSeconds": True}, "terminationGracePeriodSeconds must be a whole number"),
    ({"terminationGracePeriodSeconds": -1}, "terminationGracePeriodSeconds must be a whole number"),
    ({"env": [{"name": "A", "value": 1}]}, "env must map names to string values"),
    ({"env": [{"value": "x"}]}, "not a static-pod manifest"),
    ({"env": "A=1"}, "not a static-pod manifest"),
], ids=["grace-a-string", "grace-a-bool", "grace-negative", "env-value-a-number", "env-without-name",
        "env-a-string"])
def test_a_bad_env_or_grace_period_is_a_manifest_error(spec_change, problem):
    pod = kubeadm.static_pod("x", ["x"])
    if "env" in spec_change:
        pod["spec"]["containers"][0]["env"] = spec_change["env"]
    else:
        pod["spec"].update(spec_change)
    with pytest.raises(ManifestError, match=problem):
        launch_from_manifest(dump(pod), node_root=Path("/r"), bin_dir=Path("/b"))
