from __future__ import annotations

import re
import time

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


# Inputs that made the old path pattern backtrack exponentially ('/' + 'a' * 26 + '!' took ~4 s), and
# other shapes that are worst cases for the name=value and URL patterns. A tool name the model invents,
# a tool error or a tool argument can be any of them.
_ADVERSARIAL = [
    "/" + "a" * 24 + "!",
    "/" + "a/" * 5_000 + "!",
    "~" + "a" * 5_000 + "!",
    "a-" * 50_000 + "=",
    "x://" + "a" * 20_000 + ":" + "b" * 20_000,
    "password" + " " * 50_000 + "x",
    "/" + "a" * 1_000_000,
]


@pytest.mark.parametrize("text", _ADVERSARIAL, ids=lambda t: f"{t[:12]!r}...{len(t)}")
def test_adversarial_input_is_scrubbed_in_bounded_time(text: str) -> None:
    start = time.perf_counter()
    out = scrub(text)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.25, f"scrub took {elapsed:.3f} s on {len(text)} characters"
    assert len(out) < 600


def test_long_input_is_cut_before_the_patterns_without_leaking_a_cut_secret() -> None:
    # The patterns read the first 2,048 characters here. A redacted key block shrinks the text, pulling
    # what lay near that edge into the result; a secret straddling the edge must be dropped whole, not
    # left as a prefix too short for its pattern ("sk-aaaaa").
    block = "-----BEGIN RSA PRIVATE KEY-----\n" + "A" * 1_900 + "\n-----END RSA PRIVATE KEY-----"
    text = block + " " * (2_040 - len(block)) + "sk-" + "a" * 40
    out = scrub(text, max_chars=100)
    assert "sk-" not in out and "A" * 10 not in out
    assert out.startswith("[REDACTED]")
    assert scrub("x" * 5_000, max_chars=100).endswith("[4900 more characters]")
