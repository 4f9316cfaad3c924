"""The image's pins stay in step with pyproject (no docker needed; runs with the unit tests).

requirements/docker.lock is what the image installs with --no-deps, so a dependency added
to pyproject but not to the lock would only surface as a failed image build.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def read_lock(name: str) -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements" / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            package, sep, version = line.partition("==")
            assert sep, f"{name}: {line!r} is not an exact pin"
            pins[canonicalize_name(package)] = version.strip()
    return pins


def test_every_runtime_dependency_is_pinned_in_a_version_pyproject_allows() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = read_lock("docker.lock")
    wanted = [*project["dependencies"], *project["optional-dependencies"]["fast"]]
    for raw in wanted:
        req = Requirement(raw)
        if req.marker is not None and not req.marker.evaluate({"sys_platform": "linux"}):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is missing: run scripts/docker_build.sh lock"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{req.name}=={pins[name]} does not satisfy {raw}: run scripts/docker_build.sh lock")


def test_build_backend_is_pinned() -> None:
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    pins = read_lock("docker-build.lock")
    for raw in build:
        req = Requirement(raw)
        name = canonicalize_name(req.name)
        assert name in pins and req.specifier.contains(pins[name]), raw
