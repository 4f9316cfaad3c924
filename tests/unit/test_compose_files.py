"""The compose files, read without docker (issue 17): every published port binds to
127.0.0.1 unless KV_BIND says otherwise, and the cluster runs the Raft group on its first
three nodes. The e2e tests run the files; they set KV_BIND explicitly, so the default is
checked here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML comes with the test extra")
ROOT = Path(__file__).resolve().parents[2]
FILES = sorted(ROOT.glob("docker-compose*.yml"))


def services(path: Path) -> dict[str, dict]:
    return yaml.safe_load(path.read_text()).get("services") or {}


def test_every_published_port_binds_to_loopback_by_default() -> None:
    published = 0
    for path in FILES:
        for name, service in services(path).items():
            for port in service.get("ports", []):
                assert isinstance(port, str), (path.name, name, port)  # the short syntax
                assert re.fullmatch(r"\$\{KV_BIND:-127\.0\.0\.1\}:\$\{KV_\w+:-\d+\}:\d+",
                                    port), f"{path.name} {name}: {port} (opt in with KV_BIND)"
                published += 1
    assert published >= 10  # n1..n5, grpc and metrics


def test_the_first_three_nodes_are_the_raft_voters() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name in ("n1", "n2", "n3", "n4", "n5"):
        env = compose["services"][name]["environment"]
        assert env["KV_RAFT_VOTERS"] == "${KV_RAFT_VOTERS-n1,n2,n3}", name
        assert env["KV_RAFT_BOOTSTRAP"] == "${KV_RAFT_BOOTSTRAP:-}", name  # only when asked
    assert all(s.get("profiles") == ["five"] for n, s in compose["services"].items()
               if n in ("n4", "n5"))
