"""Fuzzing span redaction (plan row T14's secret half): no secret survives, in bounded time.

Must hold: a secret of any shape Geode promises to redact (provider keys, AWS ids, GitHub/Slack/Google/
Hugging Face tokens, JWTs, bearer tokens, URL passwords, private keys, ``name=value`` and JSON
``"name": "value"`` pairs with a secret's name), set in any surrounding text, is absent from the cleaned
text; the export path's shortcut (:func:`may_hold_secret` deciding whether to scan at all) never lets one
through; any text cleans in time linear in its length.
"""

from __future__ import annotations

import pytest
from tests.tiers import require_tier

from geode.runtime.tracing.redaction import SpanRedactor, may_hold_secret

from .conftest import Timings

pytestmark = pytest.mark.fuzz
require_tier("fuzz", import_name="hypothesis")

from hypothesis import assume, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

REDACTOR = SpanRedactor(max_attribute_length=1_000_000)
ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
UPPER_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _token(alphabet: str, low: int, high: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=alphabet, min_size=low, max_size=high)


# (secret as written, the part of it that must not survive)
@st.composite
def secrets(draw: st.DrawFn) -> tuple[str, str]:
    kind = draw(
        st.sampled_from(
            ["provider", "aws", "github", "github_pat", "slack", "google", "hf", "jwt", "bearer", "url",
             "pem", "name_value", "json_pair"]
        )
    )  # fmt: skip
    body = draw(_token(ALNUM, 24, 48))
    if kind == "provider":
        value = draw(st.sampled_from(["sk-", "sk-proj-", "pk-", "rk-"])) + body
        return value, body
    if kind == "aws":
        value = "AKIA" + draw(_token(UPPER_DIGITS, 16, 16))
        return value, value[4:]
    if kind == "github":
        return draw(st.sampled_from(["ghp_", "gho_", "ghs_"])) + body, body
    if kind == "github_pat":
        return "github_pat_" + body, body
    if kind == "slack":
        return "xoxb-" + body, body
    if kind == "google":
        value = "AIza" + draw(_token(ALNUM, 35, 35))
        return value, value[4:]
    if kind == "hf":
        value = "hf_" + draw(_token(ALNUM, 34, 34))
        return value, value[3:]
    if kind == "jwt":
        parts = [draw(_token(ALNUM, 10, 30)) for _ in range(2)]
        value = "eyJ" + parts[0] + "." + parts[1] + "." + body
        return value, body
    if kind == "bearer":
        return draw(st.sampled_from(["Bearer ", "bearer ", "BEARER\t"])) + body, body
    if kind == "url":
        password = draw(_token(ALNUM, 8, 24))
        return f"https://user:{password}@db.example.com/x", password
    if kind == "pem":
        return f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----", body
    name = draw(
        st.sampled_from(
            ["password", "db_password", "api_key", "x-api-key", "aws_secret_access_key", "client_secret",
             "auth_token", "SESSION_ID", "Authorization", "private-key", "apikey"]
        )
    )  # fmt: skip
    if kind == "name_value":
        sep = draw(st.sampled_from(["=", ": ", " = ", ":"]))
        return f"{name}{sep}{body}", body
    return f'"{name}": "{body}"', body


# Text around a secret; the separators are what ends a token in every format that carries one (a secret
# glued to a word, "xsk-...", is a different string and not promised).
surrounding = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=300)
separators = st.sampled_from([" ", "\n", "\t", ", ", "; ", "(", ")", '"', "'", "[", "]", "{", "}", "|"])


@given(
    before=surrounding, left=separators, secret=secrets(), right=separators, after=surrounding
)  # fmt: skip
def test_no_secret_survives_in_any_surrounding_text(
    before: str, left: str, secret: tuple[str, str], right: str, after: str
) -> None:
    written, core = secret
    assume(core not in before + left and core not in right + after)  # the same string outside the secret
    text = before + left + written + right + after
    assert may_hold_secret(text), written
    cleaned = REDACTOR.clean_text(text)
    assert written not in cleaned
    assert core not in cleaned, (written, cleaned)


def test_any_text_cleans_in_linear_time_and_the_shortcut_never_changes_the_result() -> None:
    timings = Timings("SpanRedactor.clean_text (per 10,000 chars)")
    pieces = st.sampled_from(
        ["sk-", "AKIA", "eyJ", "password=", '"token": "', "://", "a:b@", "Bearer ", "-----BEGIN ", "x" * 50,
         "=", ":", " ", "@", "ghp_", "\n"]
    )  # fmt: skip

    @given(chunks=st.lists(pieces | surrounding, max_size=40), repeat=st.integers(1, 400))
    def check(chunks: list[str], repeat: int) -> None:
        text = "".join(chunks) * repeat
        with timings.measure(lambda: f"{len(text)} chars starting {text[:30]!r}"):
            cleaned = REDACTOR.clean_text(text, scan=may_hold_secret(text))
        if len(text) >= 10_000:  # time per 10,000 chars; shorter texts are noise
            timings.seconds[-1] *= 10_000 / len(text)
        else:
            timings.seconds.pop()
        assert cleaned == REDACTOR.clean_text(text)

    check()
    timings.report(0.5)
