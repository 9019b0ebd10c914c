"""Compile the matching core with mypyc: the same source, about twice as fast.

    .venv/bin/python scripts/build_accelerated.py            # build (or reuse) and install
    .venv/bin/python scripts/build_accelerated.py --clean    # back to pure Python
    .venv/bin/python scripts/build_accelerated.py --status   # which build is importable

The extension modules are written next to the sources in
``services/trading_system/matching/core`` (git-ignored), where Python's import system
prefers them to the ``.py`` files. Builds are cached under
``~/.cache/trading-system/accel/<key>``, the key being a hash of the core's sources, the
mypy (mypyc) version and the Python ABI, so an unchanged core is never compiled twice
and a changed one never runs stale code. A build failure (no C compiler, say) leaves the
pure-Python core in place and exits 0 with a warning unless ``--strict`` is given: the
interpreted core is complete, only slower.

The build in use is reported by ``trading_system.matching.core.BUILD``; the tests check
that both builds emit identical events (tests/unit/matching/test_builds_agree.py).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "services" / "trading_system"
CORE = PACKAGE / "matching" / "core"
# The hot modules; snapshot.py and __init__.py stay interpreted (not on the hot path).
MODULES = ("types.py", "book.py", "validation.py", "engine.py")
GROUP = "trading_system.matching.core._compiled"
EXT_SUFFIX = sysconfig.get_config_var("EXT_SUFFIX") or ".so"

_SETUP = """
from setuptools import setup
from mypyc.build import mypycify
setup(
    name="trading-system-accelerated-core",
    ext_modules=mypycify({paths!r}, group_name={group!r}, opt_level="3"),
    script_args=["build_ext", "--inplace", "-q"],
)
"""


def cache_key() -> str:
    digest = hashlib.sha256()
    for name in MODULES:
        digest.update(name.encode() + b"\0" + (CORE / name).read_bytes())
    digest.update(metadata.version("mypy").encode() + EXT_SUFFIX.encode())
    return digest.hexdigest()[:20]


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "trading-system" / "accel" / cache_key()


def installed() -> list[Path]:
    return sorted(CORE.glob(f"*{EXT_SUFFIX}"))


def clean() -> None:
    for path in installed():
        path.unlink()


def compile_into(target: Path) -> None:
    """Run mypyc on a scratch copy of the package, keep the core's extension modules."""
    with tempfile.TemporaryDirectory(prefix="ts-mypyc-") as scratch:
        work = Path(scratch)
        skip = shutil.ignore_patterns("*.so", "__pycache__")
        shutil.copytree(PACKAGE, work / "trading_system", ignore=skip)
        paths = [f"trading_system/matching/core/{name}" for name in MODULES]
        (work / "setup.py").write_text(_SETUP.format(paths=paths, group=GROUP))
        subprocess.run([sys.executable, "setup.py"], cwd=work, check=True, stdout=subprocess.DEVNULL)
        built = sorted((work / "trading_system" / "matching" / "core").glob(f"*{EXT_SUFFIX}"))
        if len(built) != len(MODULES) + 1:  # one shim per module plus the shared library
            raise RuntimeError(f"mypyc produced {[p.name for p in built]}")
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for path in built:
            shutil.copy2(path, staging / path.name)
        staging.rename(target)  # a cache entry appears whole or not at all


def build(strict: bool) -> int:
    target = cache_dir()
    if not target.is_dir():
        print(f"[accel] compiling the matching core with mypyc into {target} ...", file=sys.stderr)
        try:
            compile_into(target)
        except (subprocess.CalledProcessError, RuntimeError, OSError, ImportError) as exc:
            clean()
            print(f"[accel] WARNING: mypyc build failed ({exc}); the core stays pure Python", file=sys.stderr)
            return 1 if strict else 0
    clean()
    for path in target.iterdir():
        shutil.copy2(path, CORE / path.name)
    print(f"[accel] matching core: compiled (cache {target.name})", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--clean", action="store_true", help="remove the compiled modules")
    group.add_argument("--status", action="store_true", help="print which build is importable")
    parser.add_argument("--strict", action="store_true", help="exit 1 if the build fails")
    args = parser.parse_args(argv)
    if args.clean:
        clean()
        return 0
    if args.status:
        print("compiled" if installed() else "pure-python")
        return 0
    return build(args.strict)


if __name__ == "__main__":
    sys.exit(main())
