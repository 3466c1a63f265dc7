"""Every Python sample in the README and docs runs, and the docs build with strict link checking."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_BLOCK = re.compile(r"(?P<skip><!-- skip-test: [^>]+ -->\s*\n)?```python\n(?P<code>.*?)```", re.DOTALL)


def _samples() -> list[tuple[str, str]]:
    samples: list[tuple[str, str]] = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for index, match in enumerate(_BLOCK.finditer(page.read_text())):
            if match.group("skip"):
                continue
            samples.append((f"{page.relative_to(ROOT)}#{index}", match.group("code")))
    return samples


@pytest.mark.parametrize(("where", "code"), _samples(), ids=[w for w, _ in _samples()])
def test_python_sample_runs(where: str, code: str, tmp_path: Path) -> None:
    # Each sample runs in a fresh interpreter in an empty folder, as a reader would paste it.
    env = {**os.environ, "GEODE_HOME": str(tmp_path / ".geode")}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{where} failed:\n{result.stdout}\n{result.stderr}"


def test_docs_build_strict(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
