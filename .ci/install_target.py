"""Install this checkout's r3fast into a target directory, as `pip install --no-deps --target DIR .`
would, with no build backend: the GPU machine has no network (no build isolation) and may lack a
setuptools new enough for pyproject.toml. The layout comes from pyproject.toml's own
`[tool.setuptools]` table (`package-dir`, `packages`), so `kernels/` lands as `r3fast/kernels`,
exactly as in the wheel; a minimal dist-info makes `importlib.metadata.version("r3fast")` work.

    python .ci/install_target.py DIR
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def source_dir(package: str, package_dir: dict[str, str]) -> Path:
    """Where setuptools finds `package`: the longest mapped prefix, then the rest as folders."""
    parts = package.split(".")
    for n in range(len(parts), 0, -1):
        head = ".".join(parts[:n])
        if head in package_dir:
            return ROOT / package_dir[head] / Path(*parts[n:])
    return ROOT / package_dir.get("", ".") / Path(*parts)


def install(target: Path) -> list[Path]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    st, project = meta["tool"]["setuptools"], meta["project"]
    files = []
    for package in st["packages"]:
        src, dst = source_dir(package, st.get("package-dir", {})), target / Path(*package.split("."))
        dst.mkdir(parents=True, exist_ok=True)
        for f in sorted(src.glob("*.py")):  # modules only: the wheel has no package data
            shutil.copy2(f, dst / f.name)
            files.append(dst / f.name)
    info = target / f"{project['name']}-{project['version']}.dist-info"
    info.mkdir(exist_ok=True)
    name, version = project["name"], project["version"]
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "INSTALLER").write_text("r3fast .ci/install_target.py\n")
    scripts = "".join(f"{k} = {v}\n" for k, v in project.get("scripts", {}).items())
    (info / "entry_points.txt").write_text(f"[console_scripts]\n{scripts}")
    return files


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python .ci/install_target.py DIR")
    out = install(Path(sys.argv[1]))
    print(f"install_target: {len(out)} modules of r3fast into {sys.argv[1]}")
