"""The fuzz corpus (issue 13): every hostile or malformed spec, kubeconfig, known_hosts
file, saved plan and node inventory in tests/corpus, and the generated ones, goes through
`careconcile validate`, `plan`, `show` and `apply` with no cluster (kubeconfigs point at a
loopback port that refuses connections). Each run must end with exit 1 or 64 and a message,
within 5 s and 500 MB, with no traceback and no byte of the key material planted in it.

The command lines run in processes of their own, forked by tests/corpus/runner.py from one
interpreter that imported careconcile once (a fresh interpreter per case would cost about
0.5 s of CPU each)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from tests.corpus import generate

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
EXAMPLES = Path(__file__).resolve().parents[2] / "specs"
CPU_SECONDS = 5.0  # of CPU time: a machine busy with other work must not fail a case
WALL_SECONDS = 60.0  # a case that waits (a FIFO, a socket) uses no CPU time
MEMORY = 500 * 1024 * 1024
WORKERS = 2

# Specs that are valid as specs: what is wrong lies in a file or place they name (a
# kubeconfig, a node root, a key file, the environment), which `validate` does not read.
# `plan` and `apply` must still refuse them.
VALID_AS_SPECS = {
    "in-cluster-no-env.yaml", "kubeconfig-dev-zero.yaml", "kubeconfig-directory.yaml",
    "kubeconfig-is-the-spec.yaml", "kubeconfig-proc-environ.yaml", "long-kubeconfig-path.yaml",
    "root-escapes.yaml", "root-is-a-file.yaml", "ssh-key-dev-zero.yaml", "ssh-key-is-a-cert.yaml",
    "ssh-known-hosts-is-the-key.yaml", "bom-and-crlf.yaml",
    "mixed-line-endings.yaml", "subject-with-pem.yaml", "context-with-pem.yaml",
}


def _closed_port() -> socket.socket:
    """A loopback port bound but not listening: a connection to it is refused at once."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def _ca_certificate() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corpus-ca")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def _fixtures(tmp: Path, port: int) -> dict[str, str]:
    """The good files the cases point at, and the values of the corpus's placeholders."""
    root = tmp / "root"
    root.mkdir()
    ca = _ca_certificate()
    key = ed25519.Ed25519PrivateKey.generate()
    key_file = tmp / "id_ed25519"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    known_hosts = tmp / "known_hosts"
    known_hosts.write_bytes(f"[127.0.0.1]:{port} ".encode() + public + b"\n")
    values = {"@ROOT@": str(root), "@KEY@": str(key_file), "@KNOWN_HOSTS@": str(known_hosts), "@PORT@": str(port),
              "@CA_DATA@": base64.b64encode(ca).decode(), "@KUBECONFIG@": str(tmp / "kubeconfig")}
    (tmp / "kubeconfig").write_bytes(_fill((CORPUS / "kubeconfig.base.yaml").read_bytes(), values))
    return values


def _fill(data: bytes, values: dict[str, str]) -> bytes:
    for placeholder, value in values.items():
        data = data.replace(placeholder.encode(), value.encode())
    return data


def _plan_fixture(tmp: Path, values: dict[str, str]) -> dict:
    """A valid saved plan (the rotation of tests/unit/test_render.py) for a spec of its
    cluster and nodes, each node a directory of its own, the API at the closed port."""
    from reconciler.core import render

    from .test_render import rotation

    plan = json.loads(render.as_json(rotation()))
    nodes = sorted({a["site"]["node"] for a in plan["clusters"][0]["actions"] if "node" in a["site"]})
    text = ("apiVersion: careconcile.dev/v1alpha1\nkind: CASpec\nmetadata: {name: corpus}\nspec:\n  clusters:\n"
            f"    - name: {plan['clusters'][0]['cluster']}\n      kubeconfig: {values['@KUBECONFIG@']}\n"
            "      nodes:\n")
    for node in nodes:
        (tmp / "nodes" / node).mkdir(parents=True)
        text += (f"        - {{name: {node}, role: {'control-plane' if node.startswith('cp') else 'worker'}, "
                 f"access: {{local: {{root: {tmp / 'nodes' / node}}}}}}}\n")
    spec = tmp / "plan-spec.yaml"
    spec.write_text(text)
    plan["spec_path"] = plan["spec_relative_path"] = str(spec)
    plan["spec_digest"] = "sha256:" + hashlib.sha256(spec.read_bytes()).hexdigest()
    plan["spec_text"] = text
    return plan


def _wrapper(tmp: Path, kind: str, case: Path, values: dict[str, str]) -> Path:
    """A valid spec that uses ``case`` as its kubeconfig, or as its node's known_hosts file."""
    if kind == "kubeconfigs":
        node = f"access: {{local: {{root: {values['@ROOT@']}}}}}"
        kubeconfig = case
    else:
        node = (f"access: {{ssh: {{host: 127.0.0.1, port: {values['@PORT@']}, user: root, keyFile: {values['@KEY@']},"
                f" knownHostsFile: {case}}}}}")
        kubeconfig = Path(values["@KUBECONFIG@"])
    path = tmp / "wrappers" / f"{kind}-{case.name}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text("apiVersion: careconcile.dev/v1alpha1\nkind: CASpec\nmetadata: {name: corpus}\nspec:\n"
                    f"  clusters:\n    - name: one\n      kubeconfig: {json.dumps(str(kubeconfig))}\n"
                    f"      nodes:\n        - {{name: cp, role: control-plane, {node}}}\n")
    return path


def _cases(tmp: Path, values: dict[str, str], plan: dict) -> list[tuple[str, Path, set[str]]]:
    """Every case as ``(kind, file, commands allowed to succeed)``, written under ``tmp``."""
    cases: list[tuple[str, Path, set[str]]] = []

    def add(kind: str, name: str, data: bytes, may_pass: set[str]) -> None:
        path = tmp / "cases" / kind / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_fill(data, values))
        cases.append((kind, path, may_pass))

    for kind in ("specs", "kubeconfigs", "known_hosts", "plans", "inventories"):
        for source in sorted((CORPUS / kind).iterdir()):
            may_pass = {"validate"} if kind == "specs" and source.name in VALID_AS_SPECS else set()
            add(kind, source.name, source.read_bytes(), may_pass)
    for kind, files in generate.big_cases().items():
        for name, data in files.items():
            add(kind, name, data, {"validate"} if name in generate.VALID_BIG_CASES else set())
    for example in sorted(EXAMPLES.glob("*.yaml")):
        for name, text in generate.spec_mutations(example.stem, generate.confined(example.read_text())):
            add("specs", f"mutated-{name}.yaml", text.encode(), {"validate"})  # a mutation may leave it valid
    for name, document, show_may_print in generate.plan_edits(plan):
        data = document if isinstance(document, str) else json.dumps(document)
        add("plans", f"edited-{name}.json", data.encode(), {"show"} if show_may_print else set())
    return cases


def _jobs(tmp: Path, cases, values: dict[str, str]) -> list[dict]:
    """The command lines of each case, one process each, but ``validate``: every spec, plan
    and inventory of the corpus goes through one ``validate FILE...`` (which reports each
    file and goes on), to save a process per case; ``apply`` of each spec then loads it
    alone, as ``validate`` does, within the case's limits. ``plan SPEC`` loads a spec
    exactly as ``validate`` does (the first thing either does), so a spec goes through
    ``plan`` only when ``validate`` may accept it. A kubeconfig or known_hosts file is read
    only where a spec names it: ``apply`` of such a spec opens the nodes, then reads the
    kubeconfig, as ``plan`` does. An inventory goes through the inventory parser, and
    through ``show`` and ``validate``."""
    workspace = ["--workspace", str(tmp / "workspace")]
    jobs = []

    def job(name: str, command: str, argv: list, may_pass: bool = False, **limits) -> None:
        jobs.append({"id": f"{name} {command}", "argv": [str(a) for a in argv], "cwd": str(tmp / "cwd"),
                     "call": "inventory" if command == "inventory" else "cli", "may_pass": may_pass, **limits})

    # (The big generated plans are big flow-style YAML to the spec loader, as the big specs are.)
    read_alone = [path for kind, path, _ in cases if kind in ("specs", "plans", "inventories")
                  and not (kind == "plans" and path.name.startswith("generated-"))]
    job("all", "validate", ["validate", *read_alone], cpu=60.0, wall=300.0)
    for kind, path, may_pass in cases:
        name = f"{kind}/{path.name}"
        if kind in ("specs", "plans", "inventories"):
            job(name, "show", ["show", path], "show" in may_pass)
        if kind == "inventories":
            job(name, "inventory", [path])
            continue
        subject = path if kind in ("specs", "plans") else _wrapper(tmp, kind, path, values)
        if kind == "specs" and "validate" in may_pass:
            job(name, "plan", ["plan", subject, *workspace])
        if path.name.startswith("edited-") and "show" not in may_pass:
            continue  # a plan that show refuses: apply loads it as show does, and refuses it the same way
        job(name, "apply", ["apply", subject, "--auto-approve", *workspace])
    return jobs


def _leaks(text: str, values: dict[str, str], key_file: Path) -> list[str]:
    secrets = ["PRIVATE KEY", generate.PLANTED_B64[:24], generate.PLANTED_B64[40:72], "MIIEvQIBADANBgkqhkiG9w0B",
               *generate.PLANTED_SECRETS]
    ssh_key_body = "".join(key_file.read_text().splitlines()[1:-1])
    secrets += [ssh_key_body[i:i + 24] for i in range(0, len(ssh_key_body) - 24, 24)]
    return [secret for secret in secrets if secret in text]


@pytest.mark.timeout(600)
def test_every_case_of_the_corpus_fails_cleanly_within_its_limits(tmp_path):
    sock = _closed_port()
    try:
        values = _fixtures(tmp_path, sock.getsockname()[1])
        (tmp_path / "cwd").mkdir()
        plan = _plan_fixture(tmp_path, values)
        cases = _cases(tmp_path, values, plan)
        jobs = _jobs(tmp_path, cases, values)
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("KUBERNETES_", "KUBECONFIG", "CARECONCILE_"))}
        env["HOME"] = str(tmp_path / "cwd")
        plan_fixture = tmp_path / "fixture.plan.json"
        plan_fixture.write_text(json.dumps(plan))
        good_spec = _wrapper(tmp_path, "kubeconfigs", Path(values["@KUBECONFIG@"]), values)
        ssh_spec = _wrapper(tmp_path, "known_hosts", Path(values["@KNOWN_HOSTS@"]), values)
        warm = [{"argv": [str(a) for a in argv], "cwd": str(tmp_path / "cwd")} for argv in (
            ["validate", good_spec], ["plan", good_spec, "--workspace", tmp_path / "workspace"], ["show", plan_fixture],
            ["apply", plan_fixture, "--auto-approve", "--workspace", tmp_path / "workspace"],
            ["apply", ssh_spec, "--auto-approve", "--workspace", tmp_path / "workspace"])]
        start = time.monotonic()
        finished = subprocess.run([sys.executable, str(CORPUS / "runner.py")], capture_output=True, text=True,
                                  input=json.dumps({"jobs": jobs, "warm": warm, "workers": WORKERS, "cpu": CPU_SECONDS, "wall": WALL_SECONDS,
                                                    "memory": MEMORY}),
                                  env=env, timeout=540)
        elapsed = time.monotonic() - start
        if os.environ.get("CORPUS_REPORT"):
            Path(os.environ["CORPUS_REPORT"] + ".json").write_text(finished.stdout)
    finally:
        sock.close()
    assert finished.returncode == 0, finished.stderr[-3000:]
    results = json.loads(finished.stdout)
    assert len(results) == len(jobs), f"the runner answered {len(results)} of {len(jobs)} runs"
    failures = []
    for job, result in zip(jobs, results):
        out, err, code = result["stdout"], result["stderr"], result["code"]
        problems = []
        if result["timed_out"] or result["cpu_seconds"] > job.get("cpu", CPU_SECONDS):
            problems.append(f"took {result['cpu_seconds']} s of CPU, {result['seconds']} s in all")
        if result["maxrss_kib"] * 1024 > MEMORY:
            problems.append(f"used {result['maxrss_kib']} KiB")
        if "Traceback" in out + err or "MemoryError" in err or "RecursionError" in err:
            problems.append("a traceback: " + err.strip().splitlines()[-1] if err.strip() else "a traceback")
        if code not in (1, 64) and not (code == 0 and job["may_pass"]):
            problems.append(f"exit {code}")
        if code != 0 and "error" not in err:
            problems.append(f"no message on stderr ({err[-200:]!r})")
        leaked = _leaks(out + err, values, Path(values["@KEY@"]))
        if leaked:
            problems.append(f"printed {leaked}")
        if problems:
            failures.append(f"{job['id']}: {'; '.join(problems)}\n    {err.strip()[-300:]!r}")
    for planted in ("/tmp/careconcile-pwned", "/tmp/careconcile-escape"):
        assert not os.path.exists(planted), f"a case made {planted}"
    slowest = max(results, key=lambda r: r["cpu_seconds"])
    print(f"{len(jobs)} runs of {len(cases)} cases in {elapsed:.1f} s; slowest {slowest['id']} "
          f"{slowest['cpu_seconds']} s of CPU; {sum(r['cpu_seconds'] for r in results):.1f} s of CPU in all; most memory {max(r['maxrss_kib'] for r in results)} KiB")
    (Path(os.environ.get("CORPUS_REPORT", os.devnull))).write_text("\n".join(failures))
    assert not failures, f"{len(failures)} of {len(jobs)} runs failed:\n" + "\n".join(failures)
    # One validate for all: each file is reported, as valid (stdout) or with its problems.
    ((together_argv, together),) = [(job["argv"], result) for job, result in zip(jobs, results)
                                    if job["id"] == "all validate"]
    unreported = [path for path in map(Path, together_argv[1:]) if f"{path}:" not in together["stdout"] + together["stderr"]]
    assert unreported == [], f"validate did not report {unreported}"
    valid = {line.split(": valid")[0] for line in together["stdout"].splitlines()}
    assert {Path(path).name for path in valid if "/cases/specs/" in path
            and not Path(path).name.startswith(("mutated-", "generated-"))} == VALID_AS_SPECS
    assert not [path for path in valid if "/cases/specs/" not in path], "validate accepted a plan or an inventory"
