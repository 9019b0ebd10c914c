"""scripts/build_images.py reads the repository's Dockerfile the way Docker does."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_images", ROOT / "scripts" / "build_images.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("build_images", module)
    spec.loader.exec_module(module)
    return module


bi = load()


def test_the_repository_dockerfile_parses_into_known_instructions() -> None:
    instructions = bi.parse_dockerfile((ROOT / "Dockerfile").read_text())
    ops = [i.op for i in instructions]
    assert ops.count("FROM") == 2
    assert set(ops) <= {"ARG", "FROM", "ENV", "RUN", "WORKDIR", "COPY", "LABEL", "USER", "EXPOSE", "CMD"}
    heredocs = [i for i in instructions if i.heredoc]
    assert heredocs and heredocs[0].heredoc.splitlines()[-1] == "PY"
    # A continued line is one instruction, with the backslash-newline removed as Docker does.
    runs = [i.args for i in instructions if i.op == "RUN"]
    assert any("apt-get update" in r and "build_accelerated.py" in r for r in runs)
    assert all("\\\n" not in r for r in runs)


def test_every_from_maps_onto_the_debootstrap_base() -> None:
    args: dict[str, str] = {}
    for inst in bi.parse_dockerfile((ROOT / "Dockerfile").read_text()):
        if inst.op == "ARG":
            args.update(bi.key_values(inst.args, args))
        if inst.op == "FROM":
            ref = bi.expand(inst.args, args).split()[0]
            assert any(re.fullmatch(alias, ref) for alias in bi.BASE_ALIASES), ref


def test_env_values_expand_earlier_values_and_the_existing_environment() -> None:
    env = {"PATH": "/usr/bin"}
    assert bi.key_values("A=1 B=$A PATH=/opt/venv/bin:$PATH", env) == {
        "A": "1",
        "B": "1",
        "PATH": "/opt/venv/bin:/usr/bin",
    }
    assert bi.expand("python:${PYTHON_VERSION}-slim", {"PYTHON_VERSION": "3.11"}) == "python:3.11-slim"


def test_dockerignore_patterns_match_like_docker() -> None:
    patterns = ["**/__pycache__", "**/*.so", "*.egg-info", ".venv"]
    assert bi.ignored("services/x/__pycache__/a.pyc", patterns)
    assert bi.ignored("services/trading_system/matching/core/book.cpython-311-x86_64-linux-gnu.so", patterns)
    assert bi.ignored("trading_system.egg-info/PKG-INFO", patterns)
    assert not bi.ignored("services/trading_system/cli.py", patterns)


def test_copy_sources_are_what_the_image_key_hashes() -> None:
    sources = bi.copy_sources(bi.parse_dockerfile((ROOT / "Dockerfile").read_text()))
    assert sources[:2] == ["pyproject.toml", "README.md"]
    assert {"services", "operator"} <= set(sources)
    assert "/opt/venv" not in sources  # COPY --from reads a stage, not the context


def test_the_rabbitmq_and_postgres_images_build_on_trixie() -> None:
    # The operator's RabbitMQ settings need 4.x and its dev database 17: trixie has both.
    assert bi.from_suites(bi.RABBITMQ_DOCKERFILE) == ["trixie"]
    assert bi.from_suites(bi.POSTGRES_DOCKERFILE) == ["trixie"]
    assert bi.from_suites((ROOT / "Dockerfile").read_text()) == [bi.SUITE]
    with pytest.raises(SystemExit):
        bi.suite_of("alpine:3.20")
