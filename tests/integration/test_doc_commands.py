"""The docs' shell samples run as shown: each marked block's commands exit 0 and print what the docs show.

How a block is marked, run and compared is in :mod:`tests.integration.doc_samples`. Homes run in a fresh
folder with their own ``GEODE_HOME``, on the embedded model where the docs use it (the ``localmodel``
tier); a slow home (a compile, the demo app's agent, ingesting the docs) is in ``make test-slow``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.integration.doc_samples import Sample, Walkthrough, homes, output_problems
from tests.tiers import require_tier

from geode.runtime.phoenix import PhoenixStatus

HOMES = homes()
_IMPORTS = {"localmodel": "llama_cpp", "embeddings": "sentence_transformers", "phoenix": "phoenix.server"}


def _params() -> list[object]:
    params: list[object] = []
    for name, blocks in HOMES.items():
        marks = [pytest.mark.slow] if any(b.slow for b in blocks) else []
        marks += [getattr(pytest.mark, t) for t in dict.fromkeys(t for b in blocks for t in b.tiers)]
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def test_the_docs_mark_samples_to_run() -> None:
    # Every command page the README sends a reader to has at least one sample that runs.
    pages = {s.page for blocks in HOMES.values() for s in blocks}
    assert {
        "docs/quickstart.md",
        "docs/phoenix.md",
        "docs/learning-loop.md",
        "docs/serving.md",
        "docs/crystallize.md",
    } <= pages
    assert sum(len(s.commands) for blocks in HOMES.values() for s in blocks) >= 10


@pytest.mark.parametrize("home", _params())
def test_documented_commands_run_as_shown(home: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    blocks: list[Sample] = HOMES[home]
    tiers = list(dict.fromkeys(t for b in blocks for t in b.tiers))
    for tier in tiers:
        require_tier(tier, import_name=_IMPORTS.get(tier, tier))
    # The suite's one Phoenix (tests/integration/conftest.py), started only for a home that needs it.
    phoenix: PhoenixStatus | None = request.getfixturevalue("phoenix") if "phoenix" in tiers else None
    walk = Walkthrough.create(tmp_path, phoenix_url=phoenix.url if phoenix else None)
    try:
        for block in blocks:
            walk.write_files(block.files)
            last = None
            for command in block.commands:
                last = walk.run(command)
                assert last.returncode == 0, (
                    f"{block.where}: `{command}` exited {last.returncode}\n{last.stdout}\n{last.stderr}"
                )
            if block.expected is not None and last is not None:
                problems = output_problems(block.expected, block.expected_lang, last.stdout)
                assert not problems, f"{block.where}: `{last.command}` printed otherwise:\n" + "\n".join(
                    problems
                )
    finally:
        walk.close()
