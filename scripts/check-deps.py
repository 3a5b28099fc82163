#!/usr/bin/env python3
"""Dependency policy for the workspace, run by `make check`.

- one TLS/crypto stack: rustls on aws-lc-rs; no ring, openssl or native-tls in the graph;
- no two major versions of any crate the workspace depends on directly.

Reads `cargo metadata` (the resolved graph for all targets), so it needs no extra tool.
"""
import collections
import json
import subprocess
import sys

FORBIDDEN = {"ring", "openssl", "openssl-sys", "native-tls"}

# Duplicates our dependencies force on us and that no choice of ours removes; each with why.
ALLOWED_DUPLICATES = {
    "base64": "hyper-util 0.1.21 uses 0.23; tonic 0.14 and jsonwebtoken 11 use 0.22",
}


def major(version: str) -> str:
    parts = version.split(".")
    # Cargo semver: 0.x.y is its own major per minor.
    return parts[0] if parts[0] != "0" else "0." + parts[1]


def main() -> int:
    meta = json.loads(
        subprocess.check_output(["cargo", "metadata", "--format-version", "1", "--locked", "--filter-platform", "x86_64-unknown-linux-gnu"])
    )
    members = set(meta["workspace_members"])
    packages = {p["id"]: p for p in meta["packages"]}
    # `cargo tree` applies features, so it lists what is really built (cargo metadata's resolve
    # also lists optional dependencies that no feature turns on).
    tree = subprocess.check_output(
        ["cargo", "tree", "--workspace", "--locked", "-e", "normal,build,dev",
         "--prefix", "none", "--format", "{p}", "--target", "x86_64-unknown-linux-gnu"],
        text=True,
    )
    versions = collections.defaultdict(set)
    for line in tree.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[1].startswith("v"):
            versions[fields[0]].add(major(fields[1][1:]))

    direct = set()
    for pid in members:
        for dep in packages[pid]["dependencies"]:
            if dep.get("path") is None:
                direct.add(dep["name"])

    resolved = set(versions)
    problems = []
    for name in sorted(FORBIDDEN & resolved):
        problems.append(f"forbidden crate in the dependency graph: {name} (keep one TLS stack: rustls + aws-lc-rs)")
    for name in sorted(direct):
        if len(versions[name]) > 1 and name not in ALLOWED_DUPLICATES:
            problems.append(
                f"direct dependency {name} resolves to several major versions: {sorted(versions[name])}"
            )
    for p in problems:
        print(f"check-deps: {p}", file=sys.stderr)
    if problems:
        return 1
    print(f"check-deps: ok ({len(direct)} direct dependencies, one version each; no ring/openssl)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
