#!/usr/bin/env python3
"""Set-up and entry points for a fresh machine that has only python3.

    python3 dev.py run     # create .venv, install hpcwf, run the default job (inputs/lih.toml)
    python3 dev.py test    # create .venv, install hpcwf + test tools, run the whole test suite

The virtual environment lives in .venv and is reused; versions come from constraints.txt.
Extra arguments after `test` go to pytest, after `run` to `hpcwf run`.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
STAMP = VENV / ".hpcwf-installed"


def sh(*cmd, **kw):
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def setup() -> None:
    if not PY.exists():
        sh(sys.executable, "-m", "venv", VENV)
    wanted = (ROOT / "pyproject.toml").read_bytes() + (ROOT / "constraints.txt").read_bytes()
    if STAMP.exists() and STAMP.read_bytes() == wanted:
        return
    sh(PY, "-m", "pip", "install", "-q", "--upgrade", "pip")
    sh(PY, "-m", "pip", "install", "-q", "-c", ROOT / "constraints.txt", "-e", f"{ROOT}[dev]")
    STAMP.write_bytes(wanted)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("run", "test", "setup"):
        print(__doc__)
        return 2
    setup()
    env = dict(os.environ, OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS", "1"))
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    command, extra = sys.argv[1], sys.argv[2:]
    if command == "run":
        args = extra or ["inputs/lih.toml"]
        return subprocess.run([str(VENV / "bin" / "hpcwf"), "run", *args], cwd=ROOT, env=env).returncode
    if command == "test":
        return subprocess.run([str(PY), "-m", "pytest", "-q", *extra], cwd=ROOT, env=env).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
