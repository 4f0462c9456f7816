"""The wheels `make gpu-check` needs on a GPU machine that has no package index, such as the machines lent to this
project's sessions (a CUDA torch in `python3`, nothing reachable).

    make gpu-wheels                                    # here, with PyPI: .whl/ (ignored by git, ~35 MB)
    python3 benchmarks/gpu_wheels.py install && python3 benchmarks/gpu_check.py     # there, with .whl/ carried along

`download` resolves what the check imports (sf_hf, and `GPU_CHECK_EXTRAS` pinned as setup.cfg's `dev` extra pins
them) for the GPU machine's Python and platform with `uv pip compile`, leaves out the large binary packages such a
machine already holds (`MACHINE_HAS`: torch and its CUDA libraries, numpy, pandas, pyarrow, ...), and fetches the
rest as wheels; a package published as source only is built into a pure-Python wheel here. `install` installs
sf_hf (editable) and the same requirements from that folder alone (`pip --no-index`): pip keeps every installed
package that satisfies them and takes the rest from the folder, and names any requirement neither satisfies.
"""

import argparse
import configparser
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FOLDER = ROOT / ".whl"

# What the GPU check runs beyond sf_hf's own requirements: the ZeRO tests (deepspeed), the optimizer benchmark's
# oracle (schedulefree), the PEFT/TRL paths the trainer tests import, and pytest with its timeout plugin.
GPU_CHECK_EXTRAS = ["deepspeed", "schedulefree", "peft", "trl", "pytest", "pytest-timeout", "psutil"]
# Large binary packages (with what they alone need) that the GPU machine's image holds, at versions sf_hf accepts
# (the lent machines' list: torch 2.11 for CUDA 13, numpy 2.5, pyarrow, pandas, ...). `install` stops, naming the
# package, where one is missing or too old.
MACHINE_HAS = re.compile(
    r"^(torch|triton|nvidia-.*|cuda-.*|numpy|pandas|pyarrow|scipy|sympy|mpmath|networkx|matplotlib|contourpy|"
    r"kiwisolver|fonttools|pillow|grpcio|protobuf|tensorboard|tensorboard-data-server|regex|xxhash|pyyaml|psutil|"
    r"aiohttp|frozenlist|multidict|yarl|propcache|markupsafe|jinja2|setuptools)$"
)
# The GPU machines lent here: CPython 3.12 on x86_64 Linux (glibc >= 2.28).
PLATFORM_TAGS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]


def requirements() -> list[str]:
    """`GPU_CHECK_EXTRAS` as setup.cfg's `dev` extra pins them (one place for the versions tested)."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    pinned = {}
    for line in config["options.extras_require"]["dev"].split():
        pinned[re.split(r"[<>=~!\[]", line, maxsplit=1)[0].lower()] = line
    missing = [name for name in GPU_CHECK_EXTRAS if name not in pinned]
    if missing:
        raise SystemExit(f"setup.cfg's dev extra no longer lists {missing}: update GPU_CHECK_EXTRAS.")
    return [pinned[name] for name in GPU_CHECK_EXTRAS]


def resolve(python_version: str) -> list[tuple[str, str]]:
    """(name, version) of every package sf_hf and `requirements()` need on the GPU machine, less `MACHINE_HAS`."""
    with tempfile.TemporaryDirectory() as tmp:
        wanted = Path(tmp, "gpu_check.in")
        wanted.write_text("\n".join([f"sf_hf @ {ROOT.as_uri()}", *requirements()]) + "\n")
        pinned = subprocess.run(
            [sys.executable, "-m", "uv", "pip", "compile", str(wanted), "--quiet", "--no-header", "--no-annotate",
             "--python-version", python_version, "--python-platform", "x86_64-manylinux_2_28"],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
    packages = [tuple(line.split("==")) for line in pinned.split() if "==" in line]
    return [(name, version) for name, version in packages if not MACHINE_HAS.match(name.lower())]


def fetch(name: str, version: str, folder: Path, python_version: str) -> None:
    """The wheel of `name==version` for the GPU machine, or one built here from its source if it publishes none."""
    platforms = [arg for tag in PLATFORM_TAGS for arg in ("--platform", tag)]
    download = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest",
                str(folder), "--python-version", python_version, "--implementation", "cp", *platforms]  # fmt: skip
    if subprocess.run([*download, f"{name}=={version}"], capture_output=True).returncode == 0:
        return
    before = set(folder.glob("*.whl"))
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(folder)]
    subprocess.run([*build, f"{name}=={version}"], check=True)
    for wheel in set(folder.glob("*.whl")) - before:
        if not wheel.name.endswith("-none-any.whl"):
            wheel.unlink()
            raise SystemExit(f"{name} {version} has no wheel for the GPU machine and builds only for this one.")


def download(folder: Path, python_version: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    packages = resolve(python_version)
    for old in folder.glob("*.whl"):
        old.unlink()
    for number, (name, version) in enumerate(packages, 1):
        print(f"[{number}/{len(packages)}] {name} {version}", flush=True)
        fetch(name, version, folder, python_version)
    size = sum(wheel.stat().st_size for wheel in folder.glob("*.whl"))
    print(f"{len(packages)} wheels, {size / 2**20:.1f} MiB, in {folder}")


def install(folder: Path) -> None:
    if not any(folder.glob("*.whl")):
        raise SystemExit(f"No wheels in {folder}: run `make gpu-wheels` where PyPI is reachable, and bring the folder.")
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(folder),
               "--no-build-isolation", "--editable", str(ROOT), *requirements()]  # fmt: skip
    subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["download", "install"])
    parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER, help="where the wheels go (default .whl/)")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python (download only)")
    args = parser.parse_args()
    if args.command == "download":
        download(args.folder, args.python_version)
    else:
        install(args.folder)


if __name__ == "__main__":
    main()
