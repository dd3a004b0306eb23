"""Fetch ExecuTorch's C++ runtime for another machine (the lamp's aarch64) from its PyPI wheel.

    python csrc/tools/fetch_executorch_runtime.py build/executorch-aarch64

downloads the executorch wheel for the platform with `pip download` (the version installed here by default:
a .pte is read by the runtime version that wrote it), and unpacks only what a C++ build uses: include/, lib/
(the shared runtime, kernels and delegates with their CMake config) and share/cmake/, plus the licence files.
The result is a CMake prefix for `-DCMAKE_PREFIX_PATH` (its path is the one line printed on stdout), laid out
like the package directory of the installed wheel, so cmake/sdk.cmake reads both the same way.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

#: Wheel members kept, relative to the package directory `executorch/`.
KEPT = ("include/", "lib/", "share/cmake/")
#: ELF e_machine of the platform tags' architectures: the unpacked runtime is checked against the one asked for.
ELF_MACHINES = {"aarch64": 183, "x86_64": 62}


def installed_version() -> str | None:
    try:
        return importlib.metadata.version("executorch")
    except importlib.metadata.PackageNotFoundError:
        return None


def download(version: str, platform: str, python_version: str, into: Path) -> Path:
    """The wheel file, through pip (its cache makes a second fetch free). Binary only: an sdist would build
    the whole of ExecuTorch for the host."""
    command = [
        sys.executable, "-m", "pip", "download", f"executorch=={version}", "--platform", platform,
        "--python-version", python_version, "--only-binary=:all:", "--no-deps", "--quiet", "--dest", str(into),
    ]  # fmt: skip
    subprocess.run(command, check=True, stdout=sys.stderr)
    wheels = list(into.glob("executorch-*.whl"))
    if len(wheels) != 1:
        sys.exit(f"pip download left {len(wheels)} executorch wheels in {into}, expected one")
    return wheels[0]


def unpack(wheel: Path, destination: Path) -> int:
    """Members under KEPT into `destination`, licences into destination/licenses; returns the file count."""
    count = 0
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.infolist():
            name = member.filename
            if member.is_dir():
                continue
            if name.startswith("executorch/") and name.removeprefix("executorch/").startswith(KEPT):
                target = destination / name.removeprefix("executorch/")
            elif ".dist-info/licenses/" in name:
                target = destination / "licenses" / name.split(".dist-info/licenses/", 1)[1]
            else:
                continue
            if not target.resolve().is_relative_to(destination.resolve()):
                sys.exit(f"{wheel.name}: refusing member {name!r}, which leaves the destination")
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, target.open("wb") as sink:
                shutil.copyfileobj(source, sink)
            count += 1
    return count


def elf_machine(library: Path) -> int:
    header = library.read_bytes()[:20]
    if header[:4] != b"\x7fELF" or header[5] != 1:
        sys.exit(f"{library} is not a little-endian ELF file")
    return int.from_bytes(header[18:20], "little")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("destination", type=Path, help="prefix directory to create (replaced if it exists)")
    parser.add_argument("--platform", default="manylinux_2_28_aarch64", help="wheel platform tag (default: %(default)s)")
    parser.add_argument("--version", default=installed_version(), help="executorch version (default: the installed one, %(default)s)")
    parser.add_argument(
        "--python-version", default=f"{sys.version_info.major}.{sys.version_info.minor}",
        help="which CPython's wheel to take; the C++ runtime in it is the same for each (default: %(default)s)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.version is None:
        parser.error("executorch is not installed here: give --version (the one that exported the model)")
    architecture = next((name for name in ELF_MACHINES if args.platform.endswith(name)), None)

    destination = args.destination.resolve()
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent, prefix=f".{destination.name}.") as scratch:
        wheel = download(args.version, args.platform, args.python_version, Path(scratch) / "wheel")
        staged = Path(scratch) / "prefix"
        files = unpack(wheel, staged)
        runtime = staged / "lib" / "libexecutorch.so"
        if not (staged / "share" / "cmake" / "executorch-config.cmake").is_file() or not runtime.is_file():
            sys.exit(f"{wheel.name} carries no C++ runtime (share/cmake/executorch-config.cmake, lib/libexecutorch.so)")
        if architecture and elf_machine(runtime) != ELF_MACHINES[architecture]:
            sys.exit(f"{wheel.name}: lib/libexecutorch.so is ELF machine {elf_machine(runtime)}, not {architecture}")
        # Swapped in whole: an interrupted fetch never leaves a half prefix behind for CMake to find.
        if destination.exists():
            shutil.rmtree(destination)
        staged.rename(destination)
    sys.stderr.write(f"{wheel.name}: {files} files into {destination}\n")
    sys.stdout.write(f"{destination}\n")


if __name__ == "__main__":
    main()
