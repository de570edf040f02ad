"""Generate the Python protobuf/gRPC code of protos/ into a package directory.

protoc names modules after the .proto paths (``omnirelay.v1``), but the code
ships inside ``omnirelay_client.v1``; the imports are rewritten so the package
imports cleanly from where it is installed. Usage:

    python scripts/gen_protos.py [OUT_DIR]   # default clients/python/omnirelay_client/v1
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
DEFAULT_OUT = ROOT / "clients" / "python" / "omnirelay_client" / "v1"
_IMPORT = re.compile(r"\bfrom omnirelay\.v1 import\b")
_DOTTED = re.compile(r"\bimport omnirelay\.v1\.")
INIT = '"""Generated protobuf and gRPC code for omnirelay.v1 (do not edit; run `make protos`)."""\n'


def generate(out_dir: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "omnirelay" / "v1").glob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        generated = Path(tmp) / "omnirelay" / "v1"
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True)
        for src in sorted(generated.iterdir()):
            text = src.read_text()
            # A proto without services yields an empty *_grpc module; drop it.
            if src.name.endswith(("_grpc.py", "_grpc.pyi")) and "Stub" not in text:
                continue
            text = _IMPORT.sub("from omnirelay_client.v1 import", text)
            text = _DOTTED.sub("import omnirelay_client.v1.", text)
            (out_dir / src.name).write_text(text)
        (out_dir / "__init__.py").write_text(INIT)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    generate(out)
    print(f"generated {len(list(out.iterdir()))} files into {out}")


if __name__ == "__main__":
    main()
