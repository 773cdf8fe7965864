"""Regenerate the protobuf (and gRPC) code from every ``.proto`` file under ``proto/``.

Run from anywhere: ``python proto/generate.py``. A file at ``proto/<pkg>/<name>.proto`` becomes
``<pkg>/<name>_pb2.py`` plus its ``.pyi`` stub (mypy-protobuf); files that declare a ``service``
also get ``<name>_pb2_grpc.py`` and its stub. Output goes next to the package sources, so the
generated modules are importable as ``<pkg>.<name>_pb2`` from any working directory.
"""

from __future__ import annotations

import shutil
import sys
from importlib.resources import files
from pathlib import Path

from grpc_tools import protoc

PROTO_DIR = Path(__file__).resolve().parent
REPO = PROTO_DIR.parent


def _plugin(name: str) -> str:
    """Path of a protoc plugin beside this interpreter (works without an activated venv)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: install the dev extra (pip install -e '.[dev]')")
    return found


def main() -> int:
    sources = sorted(PROTO_DIR.rglob("*.proto"))
    if not sources:
        raise SystemExit(f"no .proto files under {PROTO_DIR}")
    with_services = [p for p in sources if "\nservice " in p.read_text(encoding="utf-8")]
    include = str(files("grpc_tools") / "_proto")
    common = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
    ]
    names = [str(p.relative_to(PROTO_DIR)) for p in sources]
    code = protoc.main([*common, f"--python_out={REPO}", f"--mypy_out={REPO}", *names])
    if code == 0 and with_services:
        grpc_names = [str(p.relative_to(PROTO_DIR)) for p in with_services]
        code = protoc.main(
            [
                *common,
                f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
                f"--grpc_python_out={REPO}",
                f"--mypy_grpc_out={REPO}",
                *grpc_names,
            ]
        )
    if code != 0:
        print(f"protoc failed with exit code {code}", file=sys.stderr)
        return 1
    print(f"generated code for {len(names)} proto file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
