"""Regenerate kvstore/_proto from proto/ (the one command: `make proto`).

With --check, generate into a temporary directory and fail if anything differs from the
committed code; the test suite runs this so stale generated code cannot land.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT_PACKAGE = ROOT / "kvstore" / "_proto"
HEADER = '"""Generated from proto/ by scripts/gen_proto.py; never edit by hand."""\n'


def generate(out_root: Path) -> list[Path]:
    """Run protoc for every .proto file; return the generated files."""
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    package_dir = out_root / "kvstore" / "_proto"
    (package_dir / "__init__.py").write_text(HEADER)
    return sorted(p for p in package_dir.iterdir() if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if generated code is stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
        if args.check:
            def current(f: Path) -> bool:
                committed = OUT_PACKAGE / f.name
                return committed.exists() and filecmp.cmp(f, committed, shallow=False)

            stale = [f.name for f in files if not current(f)]
            committed_names = {p.name for p in OUT_PACKAGE.iterdir() if p.is_file()}
            extra = sorted(committed_names - {f.name for f in files})
            if stale or extra:
                print(f"generated code is stale: {stale + extra}; run `make proto`",
                      file=sys.stderr)
                return 1
            return 0
        OUT_PACKAGE.mkdir(parents=True, exist_ok=True)
        for old in OUT_PACKAGE.iterdir():
            if old.is_file():
                old.unlink()
        for f in files:
            shutil.copy(f, OUT_PACKAGE / f.name)
    print(f"regenerated {len(files)} files in {OUT_PACKAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
