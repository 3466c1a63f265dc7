from __future__ import annotations

import re

import pytest

from geode.agents.scrub import scrub


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("RuntimeError: db password=hunter2", "hunter2"),
        ("connect to postgres://app:s3cr3t@db.internal/prod failed", "s3cr3t"),
        ("DB_PASSWORD='hunter2' rejected", "hunter2"),
        ("x-api-key: abcdef123456", "abcdef123456"),
        ("the password is hunter2", "hunter2"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abcdefghijk", "eyJhbGci"),
        ("key sk-proj-abcdefghijklmnopqrstuvwxyz012345 invalid", "sk-proj-abcdefghijklmnop"),
        ("aws AKIAIOSFODNN7EXAMPLE denied", "AKIAIOSFODNN7EXAMPLE"),
        ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789 expired", "ghp_abcdefghijklmnop"),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
            "MIIEpAIBAAKCAQEA",
        ),
    ],
)
def test_secrets_are_removed(text: str, secret: str) -> None:
    out = scrub(text)
    assert secret not in out
    assert "[REDACTED]" in out


@pytest.mark.parametrize(
    "text",
    [
        'File "/usr/lib/python3.11/site-packages/app/db.py", line 12, in connect',
        "FileNotFoundError: [Errno 2] No such file or directory: '/etc/app/config.yaml'",
        "cannot open ~/.ssh/id_rsa",
        r"C:\Users\bob\secrets\keys.txt not found",
    ],
)
def test_paths_are_removed(text: str) -> None:
    out = scrub(text)
    assert not re.search(r"/(usr|etc)/|\.ssh|Users", out), out
    assert "[path]" in out


@pytest.mark.parametrize(
    "text",
    [
        "item 'widget' not found",
        "see https://example.com/docs/a/b for help",
        "ratio 3/4 and a/b",
        "author: Bob; max_tokens=512",
        "invalid arguments for add: a: Field required",
    ],
)
def test_ordinary_text_is_kept(text: str) -> None:
    assert scrub(text) == text


def test_length_is_bounded() -> None:
    out = scrub("x" * 1000, max_chars=100)
    assert out.startswith("x" * 100)
    assert out.endswith("[900 more characters]")


def test_extra_patterns() -> None:
    assert (
        scrub("customer ACME-1234 failed", patterns=(re.compile(r"ACME-\d+"),))
        == "customer [REDACTED] failed"
    )
