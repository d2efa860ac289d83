"""The fuzz corpus's generated half: cases too big to keep as files, and deterministic
mutations of valid inputs (the example specs in ``specs/`` and a saved plan).

Everything here is a pure function of its arguments and a fixed seed, so a failure names a
case that the next run makes again byte for byte. The hand-made cases are the files beside
this module (specs/, kubeconfigs/, known_hosts/, plans/, inventories/); ``@NAME@`` in them
stands for a path or port that the test fills in (see ``PLACEHOLDERS``)."""

from __future__ import annotations

import copy
import hashlib
import json
import random
import re
from typing import Any, Iterator

# What the test fills in: the kubeconfig that points at a closed loopback port, a node root,
# an SSH key and known_hosts file, that port, and the base64 of a CA certificate.
PLACEHOLDERS = ("@KUBECONFIG@", "@ROOT@", "@KEY@", "@KNOWN_HOSTS@", "@PORT@", "@CA_DATA@")

# The key planted in the corpus: no output may hold any of it, in PEM or base64.
PLANTED_PEM = ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n"
               "-----END PRIVATE KEY-----")
PLANTED_B64 = ("LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0tCk1JSUV2UUlCQURBTkJna3Foa2lHOXcwQkFRRUZBQVNDQktjd2dnU2pB"
               "Z0VBQW9JQkFRQzdWSlRVdDlVczhjS2oKLS0tLS1FTkQgUFJJVkFURSBLRVktLS0tLQo=")
# Other values the corpus plants that must never be printed: a token, a password.
PLANTED_SECRETS = ("s3cr3t",)

SEED = 13
SPEC_MUTATIONS = 8  # per example spec


# Big cases that are valid specs (a fleet of 100 clusters): `validate` accepts them.
VALID_BIG_CASES = {"generated-many-clusters.yaml"}


def big_cases() -> dict[str, dict[str, bytes]]:
    """Cases of a size not worth keeping in git, by kind."""
    cluster = ("    - name: {name}\n      kubeconfig: @KUBECONFIG@\n      nodes:\n        - name: cp\n"
               "          role: control-plane\n          access:\n            local:\n              root: @ROOT@\n")
    head = "apiVersion: careconcile.dev/v1alpha1\nkind: CASpec\nmetadata:\n  name: corpus\nspec:\n  clusters:\n"
    one = head + cluster.format(name="one")
    restart = one.replace("root: @ROOT@\n", "root: @ROOT@\n              kubeletRestart: ["
                          + ", ".join(["x"] * 20_000) + "]\n")
    return {
        "specs": {
            "generated-nesting-unclosed.yaml": ("spec: " + "[" * 100_000 + "\n").encode(),
            "generated-long-name.yaml": one.replace("name: one", "name: " + "a" * 1_000_000).encode(),
            "generated-many-clusters.yaml": (head + "".join(cluster.format(name=f"c{i}") for i in range(100))).encode(),
            "generated-kubelet-restart-huge.yaml": restart.encode(),
            "generated-binary.yaml": bytes(random.Random(SEED).randrange(256) for _ in range(4096)),
            "generated-over-the-size-limit.yaml": b"# x\n" * (1024 * 1024 + 1),
        },
        "known_hosts": {
            "generated-long-line": b"127.0.0.1 ssh-ed25519 " + b"A" * 1_000_000 + b"\n",
        },
        "plans": {
            "generated-deep-arrays.json": ('{"format_version": 3, "clusters": ' + "[" * 100_000 + "]" * 100_000
                                           + "}").encode(),
            "generated-deep-objects.json": ('{"format_version": 3, "x": ' + '{"a":' * 50_000 + "1" + "}" * 50_000
                                            + "}").encode(),
            "generated-many-clusters.json": json.dumps({"format_version": 3, "clusters": [{}] * 30_000}).encode(),
        },
    }


def confined(spec_text: str) -> str:
    """An example spec made safe to run: every kubeconfig at the closed port, every node root
    in the test's directory, every SSH node at 127.0.0.1 and that port."""
    text = re.sub(r"(?m)^(\s*-?\s*kubeconfig:).*$", r"\1 @KUBECONFIG@", spec_text)
    text = re.sub(r"(?m)^(\s*-?\s*root:).*$", r"\1 @ROOT@", text)
    text = re.sub(r"(?m)^(\s*-?\s*host:).*$", r"\1 127.0.0.1", text)
    return re.sub(r"(?m)^(\s*-?\s*port:).*$", r"\1 @PORT@", text)


# Replacement values for a mutated scalar: wrong types, extremes, key material, control
# characters, YAML's own traps.
_VALUES = [
    "9" * 400, "-1", "1e400", ".nan", "0x7fffffffffffffffff", "true", "~", "[]", "{}", "[[[[[[]]]]]]",
    f'!secret "{PLANTED_PEM.encode("unicode_escape").decode()}"', f"!!binary {PLANTED_B64}", "*undefined",
    '"\\x1b[2J\\u202e\\x00"', '"../../../../etc/passwd"', "&a [*a]", "'", '"', "{", "- x", "|", ">-",
    "'a: b: c'", "@s3cr3t", "`s3cr3t`", "%s3cr3t", "!!python/name:os.system", "2001-01-01", "1_000",
]


def spec_mutations(name: str, spec_text: str, count: int = SPEC_MUTATIONS) -> Iterator[tuple[str, str]]:
    """``count`` mutations of a confined example spec, each a single edit: a scalar value
    replaced, a line dropped, duplicated or indented wrongly, the text cut short."""
    rng = random.Random(f"{SEED}:{name}")
    lines = spec_text.splitlines(keepends=True)
    values = [i for i, line in enumerate(lines) if re.match(r"^\s*-?\s*[\w.-]+:\s*\S", line) and "#" not in line[:3]]
    for n in range(count):
        edit = n % 5
        mutated = list(lines)
        if edit in (0, 1):  # a value replaced
            i = rng.choice(values)
            key, _, _ = mutated[i].partition(":")
            mutated[i] = f"{key}: {rng.choice(_VALUES)}\n"
            what = f"value-{i + 1}"
        elif edit == 2:
            i = rng.randrange(len(mutated))
            del mutated[i]
            what = f"drop-{i + 1}"
        elif edit == 3:
            i = rng.randrange(len(mutated))
            mutated.insert(i, mutated[i] if rng.random() < 0.5 else " " + mutated[i])
            what = f"repeat-{i + 1}"
        else:
            cut = rng.randrange(1, len(spec_text))
            yield f"{name}-{n:02d}-cut-{cut}", spec_text[:cut]
            continue
        yield f"{name}-{n:02d}-{what}", "".join(mutated)


def plan_edits(plan: dict[str, Any]) -> Iterator[tuple[str, Any, bool]]:
    """Edits of a valid saved plan, as a hostile reviewer-bypassing user would make them:
    ``(name, document or raw text, whether show may print it)``. Show prints a plan that
    is consistent in itself (its ids, targets and sites agree) whatever it says, so that a
    reviewer sees it; apply must refuse every one of them."""
    actions = plan["clusters"][0]["actions"]

    def edited(name: str, change) -> tuple[str, Any]:
        document = copy.deepcopy(plan)
        change(document, document["clusters"][0]["actions"])
        return name, document

    def index(kind: str, site_kind: str | None = None) -> int:
        return next(i for i, a in enumerate(actions) if a["kind"] == kind
                    and (site_kind is None or a["site"]["kind"] == site_kind))

    bundle, restart, create, kubeconfig = (index("update-bundle", "node-file"), index("restart"),
                                          index("create-ca"), index("write-kubeconfig"))

    def site_path(path: str, consistent: bool):
        def change(document, acts):
            action = acts[bundle]
            old = action["target"]
            action["site"]["path"] = path
            if consistent:
                action["target"] = f"{action['site']['node']}:{path}"
                action["id"] = action["id"].replace(old, action["target"])
        return change

    def set_in(i: int, *keys_and_value):
        *keys, value = keys_and_value

        def change(document, acts):
            place = acts[i]
            for key in keys[:-1]:
                place = place[key]
            place[keys[-1]] = value
        return change

    def top(key: str, value):
        def change(document, acts):
            document[key] = value
        return change

    yield *edited("path-escapes-inconsistent", site_path("/../../../tmp/careconcile-escape", False)), False
    yield *edited("path-escapes-consistent", site_path("/../../../tmp/careconcile-escape", True)), True
    yield *edited("path-relative", site_path("../../x", True)), True
    yield *edited("path-with-nul", site_path("/etc/kubernetes/\u0000x", True)), True
    yield *edited("path-control-characters", site_path("/etc/\x1b[2J\u202ex", True)), True
    yield *edited("node-edited", set_in(bundle, "site", "node", "evil")), False
    yield *edited("node-path", set_in(bundle, "site", "node", "../../x")), False
    yield *edited("target-edited", set_in(bundle, "target", "cp1:/etc/kubernetes/pki/ca.crt.evil")), False
    yield *edited("target-huge", set_in(bundle, "target", "x" * 1_000_000)), False
    yield *edited("kubeconfig-into-log-directory", set_in(kubeconfig, "site", "path",
                                                          "/workspace/c1/log/admin.conf")), False
    yield *edited("command-set", set_in(restart, "params", "command", "touch /tmp/careconcile-pwned")), True
    yield *edited("command-wrong-type", set_in(restart, "params", "command", ["sh", "-c", "touch x"])), False
    yield *edited("component-other", set_in(restart, "params", "component", "etcd")), False
    yield *edited("rotation-edited", set_in(create, "params", "rotation", 7)), True
    yield *edited("rotation-huge", set_in(create, "params", "rotation", 10 ** 30)), True
    yield *edited("rotation-negative", set_in(create, "params", "rotation", -1)), True
    yield *edited("rotation-boolean", set_in(create, "params", "rotation", True)), False
    yield *edited("rotation-float", set_in(create, "params", "rotation", 1.5)), False
    yield *edited("key-size-huge", set_in(create, "params", "key", "RSA-1000000")), True
    yield *edited("validity-huge", set_in(create, "params", "validity", "99999999999999999999d")), True
    yield *edited("phase-99", set_in(bundle, "phase", 99)), False
    yield *edited("kind-unknown", set_in(bundle, "kind", "exec")), False
    yield *edited("site-kind-unknown", set_in(bundle, "site", "kind", "shell")), False
    yield *edited("change-is-the-key", set_in(create, "change", "after", [PLANTED_PEM])), True
    yield *edited("reason-is-the-key", set_in(create, "reason", PLANTED_PEM)), True
    yield *edited("spec-path-dev-zero", top("spec_path", "/dev/zero")), True
    yield *edited("spec-path-etc-passwd", top("spec_path", "/etc/passwd")), True
    yield *edited("spec-path-missing", top("spec_path", "/nonexistent/spec.yaml")), True
    yield *edited("spec-path-relative", top("spec_path", "../../../../../etc/hostname")), True
    yield *edited("spec-path-nul", top("spec_path", "/tmp/x\u0000.yaml")), True
    yield *edited("spec-path-not-text", top("spec_path", ["x"])), False
    yield *edited("spec-relative-path-dev-zero", top("spec_relative_path", "/dev/zero")), True
    yield *edited("spec-relative-path-escapes", top("spec_relative_path", "../../../../../etc/hostname")), True
    yield *edited("spec-relative-path-nul", top("spec_relative_path", "x\u0000.yaml")), False
    yield *edited("spec-digest-edited", top("spec_digest", "sha256:" + "0" * 64)), False
    yield *edited("spec-digest-not-sha256", top("spec_digest", "md5:" + "0" * 32)), False
    yield *edited("spec-text-edited", lambda d, a: d.update(spec_text=d["spec_text"] + "# edited\n")), False
    yield *edited("spec-text-not-utf8", top("spec_text", "\ud800")), False
    yield *edited("spec-text-huge", top("spec_text", "#" * 2_000_000)), False
    huge = "#" * (4 * 1024 * 1024 + 1)  # over the spec's size limit, with its own digest
    yield *edited("spec-text-over-the-limit", lambda d, a: d.update(
        spec_text=huge, spec_digest="sha256:" + hashlib.sha256(huge.encode()).hexdigest())), False
    yield *edited("operation-rollback", top("operation", "rollback")), True
    yield *edited("operation-unknown", top("operation", "destroy")), False
    yield *edited("format-version-1", top("format_version", 1)), False
    yield *edited("format-version-2", top("format_version", 2)), False
    yield *edited("format-version-4", top("format_version", 4)), False
    yield *edited("format-version-string", top("format_version", "3")), False
    yield *edited("cluster-renamed", lambda d, a: d["clusters"][0].update(cluster="../../x")), False
    yield *edited("cluster-twice", lambda d, a: d["clusters"].append(copy.deepcopy(d["clusters"][0]))), True
    yield *edited("actions-gone", lambda d, a: a.clear()), True
    yield *edited("actions-reversed", lambda d, a: a.reverse()), True
    yield *edited("summary-wrong", top("summary", {"create-ca": -5})), True
    yield *edited("unknown-field", top("run", "touch /tmp/careconcile-pwned")), False
    text = json.dumps(plan)
    yield "cut-short", text[:len(text) // 2], False
    yield "huge-number", text.replace('"format_version": 3', '"format_version": 3, "x": ' + "9" * 5000, 1), False
