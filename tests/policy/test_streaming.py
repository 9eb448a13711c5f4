# ruff: noqa: RUF001  # full-width punctuation and digits are part of what is tested
"""Tests of the streaming hold-back window and of placeholder restoring across chunks."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smartflow.policy import (
    DetectorSet,
    Finding,
    StreamDetokenizer,
    StreamScanner,
    TokenVault,
    mask,
    redact,
    tokenize,
)
from tests.policy.corpus import AWS_SECRET_KEYS, CARDS, EMAILS, IBANS, PHONES, make_jwt

DETECTORS = DetectorSet.build()
Transform = Callable[[str, Sequence[Finding]], str]


def stream(text: str, cuts: Sequence[int], scanner: StreamScanner | StreamDetokenizer) -> str:
    """Feed ``text`` split at ``cuts`` and return everything released, flush included."""
    out: list[str] = []
    previous = 0
    for cut in [*sorted(cuts), len(text)]:
        out.append(scanner.feed(text[previous:cut]))
        previous = cut
    out.append(scanner.flush())
    return "".join(out)


def test_email_split_in_two_is_redacted() -> None:
    scanner = StreamScanner(64, DETECTORS.find, redact)
    text = "Write to jane.roe@example.org soon. " + "Plenty of filler text follows here. " * 3
    cut = text.index("@exa") + 2
    assert stream(text, [cut], scanner) == redact(text, DETECTORS.find(text))
    assert "jane.roe" not in stream(text, [cut], StreamScanner(64, DETECTORS.find, redact))


def test_card_split_in_three_is_redacted() -> None:
    text = "Charge card 4111 1111 1111 1111 today please, thanks a lot for the help."
    start = text.index("4111")
    cuts = [start + 3, start + 9, start + 16]
    output = stream(text, cuts, StreamScanner(48, DETECTORS.find, redact))
    assert output == "Charge card [CREDIT_CARD] today please, thanks a lot for the help."


def test_text_is_released_beyond_the_window() -> None:
    scanner = StreamScanner(32, DETECTORS.find, redact)
    assert scanner.feed("a" * 20) == ""
    released = scanner.feed(" plain words without any value in them")
    assert released == ("a" * 20 + " plain words without any value in them")[:-32]
    assert scanner.flush() == ("a" * 20 + " plain words without any value in them")[-32:]


def test_finding_crossing_release_point_is_held_whole() -> None:
    scanner = StreamScanner(16, DETECTORS.find, redact)
    released = scanner.feed("mail jane.roe@example.org and more text")
    assert "jane" not in released
    assert released == "mail "
    assert scanner.flush() == "[EMAIL] and more text"


def test_flush_on_empty_scanner_returns_nothing() -> None:
    assert StreamScanner(8, DETECTORS.find, redact).flush() == ""


def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="window_chars must be at least 1"):
        StreamScanner(0, DETECTORS.find, redact)


def test_max_hold_cuts_a_growing_finding() -> None:
    def detect_run(text: str) -> list[Finding]:
        start = text.find("x")
        if start == -1:
            return []
        end = len(text) - len(text[start:].lstrip("x"))
        return [Finding("RUN", start, end, text[start:end])]

    scanner = StreamScanner(4, detect_run, redact, max_hold_chars=10)
    assert scanner.feed("ab" + "x" * 30) == "ab[RUN]"
    assert scanner.flush() == "[RUN]"


def test_detokenizer_restores_split_placeholder() -> None:
    vault = TokenVault()
    vault.placeholder_for("EMAIL", "jane.roe@example.org")
    restorer = StreamDetokenizer(vault)
    assert restorer.feed("Contact <EMA") == "Contact "
    assert restorer.feed("IL_1> today") == "jane.roe@example.org today"
    assert restorer.flush() == ""


def test_detokenizer_releases_non_placeholders_at_once() -> None:
    vault = TokenVault()
    vault.placeholder_for("EMAIL", "jane.roe@example.org")
    restorer = StreamDetokenizer(vault)
    assert restorer.feed("a < b and <b>bold</b>") == "a < b and <b>bold</b>"
    assert restorer.feed(" x <") == " x "
    assert restorer.flush() == "<"


def test_detokenizer_without_vault_passes_through() -> None:
    restorer = StreamDetokenizer(TokenVault())
    assert restorer.feed("<EMA") == "<EMA"
    assert restorer.flush() == ""


# --- property tests -----------------------------------------------------------------

VALUES = (
    EMAILS[0],
    EMAILS[4],
    PHONES[0],
    PHONES[4],
    CARDS[0],
    CARDS[2],
    IBANS[0],
    IBANS[3],
    "203.0.113.45",
    "2001:db8::8a2e:370:7334",
    "sk-proj-aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5bC7dE9",
    "AKIAQ3EGRT7Z2XK5LMNP",
    f"aws_secret_access_key = {AWS_SECRET_KEYS[0]}",
    f"Authorization: Bearer {make_jwt({'sub': 'stream'})}",
    "postgres://app:S3cr3t-Pa55@db.example:5432/orders",
    "born on March 14, 1985",
    "ssn 345-67-8901",
)
FILLERS = (
    "Hello, ",
    "please check this: ",
    "请联系我：",
    "カード番号は",
    "です。",
    " and then ",
    "\n",
    "version 1.2.3 at 2024-03-15T10:22:31Z ",
    "order ORD-2024-000123 ",
    "x",
)
WINDOW = max(len(value) for value in VALUES) + 48


@st.composite
def texts_and_cuts(draw: st.DrawFn) -> tuple[str, list[int]]:
    pieces = draw(st.lists(st.sampled_from(VALUES + FILLERS), min_size=1, max_size=12))
    text = "".join(pieces)
    cuts = draw(st.lists(st.integers(min_value=0, max_value=len(text)), max_size=12))
    return text, cuts


PROPERTY_SETTINGS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.mark.parametrize("transform", [redact, mask], ids=["redact", "mask"])
@PROPERTY_SETTINGS
@given(case=texts_and_cuts())
def test_random_chunking_matches_whole_text(
    transform: Transform, case: tuple[str, list[int]]
) -> None:
    text, cuts = case
    scanner = StreamScanner(WINDOW, DETECTORS.find, transform)
    assert stream(text, cuts, scanner) == transform(text, DETECTORS.find(text))


@PROPERTY_SETTINGS
@given(case=texts_and_cuts())
def test_random_chunking_tokenizes_like_whole_text(case: tuple[str, list[int]]) -> None:
    text, cuts = case
    stream_vault = TokenVault()

    def transform(part: str, findings: Sequence[Finding]) -> str:
        return tokenize(part, findings, stream_vault)[0]

    streamed = stream(text, cuts, StreamScanner(WINDOW, DETECTORS.find, transform))
    whole, whole_vault = tokenize(text, DETECTORS.find(text))
    assert streamed == whole
    assert dict(stream_vault) == dict(whole_vault)

    restored = stream(streamed, cuts, StreamDetokenizer(stream_vault))
    assert restored == text
