"""Build hook: generates the protobuf and gRPC code of `crm.v1` from `proto/` at build time.

The generated modules are written beside their `.proto` files (and ignored by git), so that an
editable install imports them from the source tree and a wheel ships them as build artifacts.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


def _plugin(name: str) -> str:
    """Path of a protoc plugin script installed in the build environment."""
    scripts = Path(sysconfig.get_path("scripts"))
    candidate = scripts / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"protoc plugin {name!r} not found; is mypy-protobuf installed?")
    return found


def generate(root: Path) -> list[Path]:
    """Runs protoc over every `.proto` under `proto/`; returns the files it wrote."""
    import grpc_tools

    proto_root = root / "proto"
    sources = sorted(proto_root.rglob("*.proto"))
    if not sources:
        return []
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{well_known}",
        f"--python_out={proto_root}",
        f"--grpc_python_out={proto_root}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--mypy_out={proto_root}",
        f"--mypy_grpc_out={proto_root}",
        *(str(source.relative_to(proto_root)) for source in sources),
    ]
    subprocess.run(command, check=True, cwd=proto_root)
    return sorted(
        path
        for pattern in ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py", "*_pb2_grpc.pyi")
        for path in proto_root.rglob(pattern)
    )


class ProtobufBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "protobuf"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        root = Path(self.root)
        written = generate(root)
        if version == "editable":
            return  # the editable install imports the generated modules from proto/ itself
        for path in written:
            build_data["force_include"][str(path)] = str(path.relative_to(root / "proto"))


if __name__ == "__main__":
    for written in generate(Path(__file__).parent):
        print(written)
