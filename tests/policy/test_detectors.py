# ruff: noqa: RUF001  # full-width punctuation and digits are part of what is tested
"""Table tests per detector, registry behaviour, and the labelled corpus metrics."""

from __future__ import annotations

import base64
import itertools
import json
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smartflow.core.errors import ConfigError
from smartflow.policy import DetectorSet, Finding
from smartflow.policy.detectors import ScanContext
from smartflow.policy.detectors.financial import iban_is_valid, luhn_is_valid
from tests.policy.corpus import NEGATIVE, POSITIVE, make_iban, make_jwt

DETECTORS = DetectorSet.build()


def found(text: str, detectors: DetectorSet = DETECTORS) -> list[tuple[str, str]]:
    return [(finding.entity, finding.text) for finding in detectors.find(text)]


def check_table(text: str, expected: list[tuple[str, str]] | str | None) -> None:
    """``expected``: the (entity, value) list, one value of the only entity, or None."""
    result = found(text)
    if expected is None:
        assert result == [], f"expected nothing in {text!r}, got {result}"
    elif isinstance(expected, str):
        assert [value for _, value in result] == [expected], f"in {text!r}: {result}"
    else:
        assert result == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to jane.roe@example.org today", "jane.roe@example.org"),
        ("请联系我：zhang.wei@example.cn谢谢", "zhang.wei@example.cn"),
        ("제 이메일은 kim.minji@example.kr입니다", "kim.minji@example.kr"),
        ("courriel : renée.dupont@exemple.fr.", "renée.dupont@exemple.fr"),
        ("<JANE.ROE+tag@EXAMPLE.ORG>", "JANE.ROE+tag@EXAMPLE.ORG"),
        ("a@b.co", "a@b.co"),
        ("user@localhost", None),
        ("icon@2x.png and banner@1.5x.jpg", None),
        ("git clone git@git.example.com:team/repo.git", None),
        ("@property\ndef name(self): ...", None),
        ("npm i react@18.2.0", None),
        ("name@", None),
    ],
)
def test_email_table(text: str, expected: str | None) -> None:
    check_table(text, expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("call (201) 555-0123 now", "(201) 555-0123"),
        ("Tel:+1 415 555 2671", "+1 415 555 2671"),
        ("office 212.555.0147", "212.555.0147"),
        ("連絡先は415-555-0198です", "415-555-0198"),
        ("电话：+86 138 0013 8000。", "+86 138 0013 8000"),
        ("+44 20 7946 0958", "+44 20 7946 0958"),
        ("please call me at 4155550132", "4155550132"),
        ("contact: name=Jane Roe phone=4155550132", "4155550132"),
        ("user=jane tid=4155550132", None),
        ("order 4155550132 shipped", None),
        ("ticket JIRA-415-555-0132", None),
        ("id #4155550132", None),
        ("2024-03-15 10:22:31", None),
        ("meeting room 1234 5678 9012 3456", None),
        ("price $4155550132", None),
        ("10.20.30.40", [("IP_ADDRESS", "10.20.30.40")]),
    ],
)
def test_phone_table(text: str, expected: list[tuple[str, str]] | str | None) -> None:
    check_table(text, expected)


def test_phone_national_number_needs_its_region() -> None:
    text = "東京オフィス：03-1234-5678"
    assert found(text) == []
    with_japan = DetectorSet.build(entities=["PHONE"], phone_regions=("US", "JP"))
    assert found(text, with_japan) == [("PHONE", "03-1234-5678")]


def test_phone_matcher_limit_falls_back_to_shape() -> None:
    detectors = DetectorSet.build(entities=["PHONE"], phone_matcher_limit=2)
    text = "rows: 201-555-0123, 201-555-0124, 123-456-7890, 201-555-0125"
    assert found(text, detectors) == [
        ("PHONE", "201-555-0123"),
        ("PHONE", "201-555-0124"),
        ("PHONE", "123-456-7890"),
        ("PHONE", "201-555-0125"),
    ]
    assert found(text) == [
        ("PHONE", "201-555-0123"),
        ("PHONE", "201-555-0124"),
        ("PHONE", "201-555-0125"),
    ]


def test_phone_unknown_region_is_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown phone region 'XX'"):
        DetectorSet.build(entities=["PHONE"], phone_regions=("XX",))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("card 4111 1111 1111 1111 exp 12/27", "4111 1111 1111 1111"),
        ("カード番号は4111111111111111です", "4111111111111111"),
        ("カード番号は４１１１１１１１１１１１１１１１です", "４１１１１１１１１１１１１１１１"),
        ("amex 3782 822463 10005", "3782 822463 10005"),
        ("mc 5555-5555-5555-4444.", "5555-5555-5555-4444"),
        ("diners 30569309025904", "30569309025904"),
        ("luhn fails 4111 1111 1111 1112", None),
        ("mixed separators 4111-1111 1111-1111", None),
        ("odd grouping 41111 11111 11111 1", None),
        ("no issuer 1234567812345670", None),
        ("epoch nanos 1710498151123456789", None),
        ("hash e3b0c44298fc1c1494111111111111111afbf4c8996fb924", None),
        ("version 4111111111111111.2", None),
        ("uuid 41111111-1111-1111-1111-111111111111", None),
    ],
)
def test_card_table(text: str, expected: str | None) -> None:
    check_table(text, expected)


def test_luhn_known_values() -> None:
    assert luhn_is_valid("79927398713")
    assert not luhn_is_valid("79927398710")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("IBAN DE89 3704 0044 0532 0130 00 please", "DE89 3704 0044 0532 0130 00"),
        ("IBAN DE89 3704 0044 0532 0130 00 AND MORE", "DE89 3704 0044 0532 0130 00"),
        ("转到GB82WEST12345698765432谢谢", "GB82WEST12345698765432"),
        ("NL91ABNA0417164300.", "NL91ABNA0417164300"),
        ("wrong check DE00 3704 0044 0532 0130 00", None),
        ("too long DE89370400440532013000123", None),
        ("unknown country ZZ89370400440532013000", None),
        ("inside a word XDE89370400440532013000", None),
    ],
)
def test_iban_table(text: str, expected: str | None) -> None:
    check_table(text, expected)


def test_iban_lengths_are_per_country() -> None:
    norway = make_iban("NO", "86011117947")
    assert iban_is_valid(norway)
    assert not iban_is_valid(make_iban("NO", "860111179470"))
    assert len(norway) == 15


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ssn 123-45-6789", "123-45-6789"),
        ("社会保障番号は345-67-8901です", "345-67-8901"),
        ("SSN: 345678901", "345678901"),
        ("social security number 345 67 8901", "345 67 8901"),
        ("account 345678901", None),
        ("code 345 67 8901", None),
        ("000-12-3456", None),
        ("666-12-3456", None),
        ("912-12-3456", None),
        ("123-00-4567", None),
        ("123-45-0000", None),
        ("078-05-1120", None),
        ("part 123-45-6789-0", None),
        ("ORD-123-45-6789", None),
    ],
)
def test_ssn_table(text: str, expected: str | None) -> None:
    check_table(text, expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("blocked 203.0.113.45 overnight", "203.0.113.45"),
        ("服务器地址是10.20.30.40，请检查", "10.20.30.40"),
        ("http://192.0.2.10/api", "192.0.2.10"),
        ("ssh admin@198.51.100.7", "198.51.100.7"),
        ("ping 1.2.3.4", "1.2.3.4"),
        ("version 1.2.3.4", None),
        ("upgrade to 4.0.0.1 tonight", None),
        ("v10.0.0.1 released", None),
        ("Chrome/120.0.0.0 Safari", None),
        ("numpy==10.2.30.4", None),
        ("OID 1.3.6.1.4.1.311", None),
        ("bind 0.0.0.0 and 127.0.0.1", None),
        ("mask 255.255.240.0 bcast 255.255.255.255", None),
        ("999.1.1.1", None),
        ("leading zeros 010.001.002.003", None),
        ("v6 2001:db8::8a2e:370:7334.", "2001:db8::8a2e:370:7334"),
        (
            "[2001:0db8:85a3:0000:0000:8a2e:0370:7334]:443",
            "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
        ),
        ("mapped ::ffff:192.0.2.128 here", "::ffff:192.0.2.128"),
        ("link fe80::1ff:fe23:4567:890a", "fe80::1ff:fe23:4567:890a"),
        ("slice x[1::2] and y[::3]", None),
        ("use a::b; std::vector<int>", None),
        ("MAC 00:1A:2B:3C:4D:5E", None),
        ("at 10:22:31 and 12:00", None),
        ("loopback ::1", None),
    ],
)
def test_ip_address_table(text: str, expected: str | None) -> None:
    check_table(text, expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("born on March 14, 1985", "March 14, 1985"),
        ("DOB: 1979-11-02", "1979-11-02"),
        ("Date of birth 02/29/1988", "02/29/1988"),
        ("生年月日：1985年3月14日", "1985年3月14日"),
        ("1990年5月2日生まれです", "1990年5月2日"),
        ("Geboren am 14. März 1985", "14. März 1985"),
        ("Née le 1er mars 1972 à Lyon", "1er mars 1972"),
        ("fecha de nacimiento: 14 de marzo de 1985", "14 de marzo de 1985"),
        ("생년월일: 1988년 7월 21일", "1988년 7월 21일"),
        ("meeting on March 14, 2024", None),
        ("born in 1985", None),
        ("DOB: 1979-02-30", None),
        ("DOB: 2999-01-01", None),
        ("adobe 1979-11-02", None),
        ("born, as the records of the parish clearly show, on 14 March 1985", None),
    ],
)
def test_date_of_birth_table(text: str, expected: str | None) -> None:
    check_table(text, expected)


def _unsigned_token(header: dict[str, str]) -> str:
    encoded = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    return f"{encoded}.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"


OPENAI_KEY = "sk-proj-" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5bC7dE9"
JWT_TOKEN = make_jwt({"sub": "user-7"})
PEM = (
    "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7\n"
    "-----END PRIVATE KEY-----"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"key {OPENAI_KEY}!", [("OPENAI_API_KEY", OPENAI_KEY)]),
        (
            "x-api-key: sk-ant-api03-Ab1Cd2Ef3Gh4Ij5Kl6Mn7Op8Qr9St0Uv",
            [("ANTHROPIC_API_KEY", "sk-ant-api03-Ab1Cd2Ef3Gh4Ij5Kl6Mn7Op8Qr9St0Uv")],
        ),
        ("id=AKIAQ3EGRT7Z2XK5LMNP", [("AWS_ACCESS_KEY_ID", "AKIAQ3EGRT7Z2XK5LMNP")]),
        (
            "aws_secret_access_key = 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",
            [("AWS_SECRET_ACCESS_KEY", "Zq8Lm2Nx/Rt5Vb7Kc9Hd3Fg6Jw1Ys4Pe0Ua/Qi8O")],
        ),
        (
            "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q",
            [("GOOGLE_API_KEY", "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q")],
        ),
        (
            "token ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5",
            [("GITHUB_TOKEN", "ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5")],
        ),
        (
            "xoxb-123456789012-Ab1Cd2Ef3Gh4Ij5Kl6Mn7Op8",
            [("SLACK_TOKEN", "xoxb-123456789012-Ab1Cd2Ef3Gh4Ij5Kl6Mn7Op8")],
        ),
        (f"Authorization: Bearer {JWT_TOKEN}", [("JWT", JWT_TOKEN)]),
        (
            "Authorization: Bearer abc123DEF456ghi789JKL0",
            [("BEARER_TOKEN", "abc123DEF456ghi789JKL0")],
        ),
        (f"key:\n{PEM}\nthanks", [("PRIVATE_KEY", PEM)]),
        (
            "postgres://user:pass@host/db.",
            [("CONNECTION_STRING", "postgres://user:pass@host/db")],
        ),
        (
            "接続はredis://:Redis-Pass-1@cache:6379/0です",
            [("CONNECTION_STRING", "redis://:Redis-Pass-1@cache:6379/0")],
        ),
        ("OPENAI_API_KEY=sk-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", None),
        ("AWS_ACCESS_KEY_ID=AKIAXXXXXXXXXXXXXXXX", None),
        ("task-management and disk-usage", None),
        ("sha1 da39a3ee5e6b4b0d3255bfef95601890afd80709 aws secret", None),
        ("curl -H 'Authorization: Bearer $TOKEN'", None),
        ("Authorization: Bearer short", None),
        ("DATABASE_URL=postgres://user:${DB_PASSWORD}@db/app", None),
        ("postgres://user:<password>@db/app", None),
        ("redis://localhost:6379/0", None),
        (_unsigned_token({"typ": "JWT"}), None),
    ],
)
def test_secret_table(text: str, expected: list[tuple[str, str]] | None) -> None:
    check_table(text, expected)


def test_jwt_with_alg_none_is_found() -> None:
    token = _unsigned_token({"alg": "none"})
    assert found(f"token {token}") == [("JWT", token)]


def test_private_key_without_end_line_is_found() -> None:
    truncated = (
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo\n"
        "4lgOEePzNm0tRgeLezV6"
    )
    assert found(f"{truncated}\n\nwhat is wrong?") == [("PRIVATE_KEY", truncated)]


def test_private_key_in_json_string_is_found() -> None:
    escaped = PEM.replace("\n", "\\n")
    assert found(json.dumps({"key": PEM})) == [("PRIVATE_KEY", escaped)]


def test_custom_pattern_reports_value_group() -> None:
    detectors = DetectorSet.build(
        entities=[], custom_patterns={"employee_id": r"employee (?:id|no)[: ]+(?P<value>E\d{6})"}
    )
    assert found("employee id: E123456 joined", detectors) == [("EMPLOYEE_ID", "E123456")]
    assert found("E123456 alone", detectors) == []


def test_word_list_matches_whole_words_any_case() -> None:
    detectors = DetectorSet.build(entities=[], word_lists={"codename": ["Bluebird", "凤凰"]})
    assert found("Project BLUEBIRD starts", detectors) == [("CODENAME", "BLUEBIRD")]
    assert found("bluebirds are birds", detectors) == []
    assert found("项目凤凰计划", detectors) == [("CODENAME", "凤凰")]


@pytest.mark.parametrize(
    ("custom_patterns", "word_lists", "message"),
    [
        ({"bad name!": "x"}, None, "invalid entity name"),
        ({"ok": "(unclosed"}, None, "invalid regular expression"),
        (None, {"9lives": ["x"]}, "invalid entity name"),
    ],
)
def test_custom_config_errors(
    custom_patterns: dict[str, str] | None, word_lists: dict[str, list[str]] | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        DetectorSet.build(custom_patterns=custom_patterns, word_lists=word_lists)


def test_entity_groups_select_detectors() -> None:
    secrets_only = DetectorSet.build(entities=["secrets"])
    text = f"jane.roe@example.org uses {OPENAI_KEY}"
    assert found(text, secrets_only) == [("OPENAI_API_KEY", OPENAI_KEY)]
    pii_only = DetectorSet.build(entities=["pii"])
    assert found(text, pii_only) == [("EMAIL", "jane.roe@example.org")]
    assert "EMAIL" not in secrets_only.entities
    assert "JWT" not in pii_only.entities


def test_unknown_entity_is_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown entity 'PASSPORT'"):
        DetectorSet.build(entities=["PASSPORT"])


def test_findings_sorted_and_disjoint() -> None:
    text = f"mysql://root:pw-123@10.0.0.5/app and jane@example.org and {JWT_TOKEN}"
    findings = DETECTORS.find(text)
    assert [finding.entity for finding in findings] == ["CONNECTION_STRING", "EMAIL", "JWT"]
    for left, right in itertools.pairwise(findings):
        assert left.end <= right.start
    for finding in findings:
        assert text[finding.start : finding.end] == finding.text


def test_finding_repr_hides_value() -> None:
    finding = Finding("CREDIT_CARD", 0, 16, "4111111111111111")
    assert "4111" not in repr(finding)
    assert "CREDIT_CARD" in repr(finding)


class _ShoutDetector:
    """A stand-in for a deeper recogniser plugged in through ``extra_detectors``."""

    entities = frozenset({"SHOUT"})
    keywords = {"shout": ("hey",)}
    anchors: dict[str, tuple[str, ...]] = {}

    def find(self, scan: ScanContext) -> list[Finding]:
        return [
            Finding("SHOUT", start, end, scan.text[start:end])
            for start, end in scan.keyword_hits("shout")
        ]


def test_extra_detector_uses_keyword_index() -> None:
    detectors = DetectorSet.build(entities=[], extra_detectors=[_ShoutDetector()])
    assert found("HEY there, hey!", detectors) == [("SHOUT", "HEY"), ("SHOUT", "hey")]
    assert detectors.entities == frozenset({"SHOUT"})


def test_empty_text_has_no_findings() -> None:
    assert DETECTORS.find("") == []


# Characters that drive the detectors into their edge cases: digits of two widths,
# separators, "@", ":", letters that start secret prefixes, CJK and a character whose
# lower-case form is two characters long.
_FUZZ_ALPHABET = "0123456789４１ -.()+:/@#=_akisAKISxoeyJBEGIN-né生年月日İ\n"
_FUZZ_FRAGMENTS = ("sk-", "AKIA", "eyJ", "://", "born ", "Bearer ", "-----BEGIN ", "::", "DE89")


@settings(max_examples=300, deadline=None)
@given(
    text=st.lists(
        st.text(alphabet=_FUZZ_ALPHABET, max_size=12) | st.sampled_from(_FUZZ_FRAGMENTS),
        max_size=20,
    ).map("".join)
)
def test_random_text_findings_are_consistent(text: str) -> None:
    findings = DETECTORS.find(text)
    for finding in findings:
        assert 0 <= finding.start < finding.end <= len(text)
        assert text[finding.start : finding.end] == finding.text
    for left, right in itertools.pairwise(findings):
        assert left.end <= right.start


# --- corpus -------------------------------------------------------------------------

CHECKSUMMED = ("CREDIT_CARD", "IBAN")


def _score() -> tuple[Counter[str], Counter[str], Counter[str], list[str]]:
    true_positives: Counter[str] = Counter()
    false_negatives: Counter[str] = Counter()
    false_positives: Counter[str] = Counter()
    errors: list[str] = []
    for sample in POSITIVE + NEGATIVE:
        expected = set()
        for entity, value in sample.labels:
            start = sample.text.index(value)
            expected.add((entity, start, start + len(value)))
        got = {(f.entity, f.start, f.end) for f in DETECTORS.find(sample.text)}
        for entity, _, _ in expected & got:
            true_positives[entity] += 1
        for entity, start, end in expected - got:
            false_negatives[entity] += 1
            errors.append(f"missed {entity} {sample.text[start:end]!r} in {sample.text[:80]!r}")
        for entity, start, end in got - expected:
            false_positives[entity] += 1
            errors.append(f"spurious {entity} {sample.text[start:end]!r} in {sample.text[:80]!r}")
    return true_positives, false_negatives, false_positives, errors


def test_corpus_recall_and_precision() -> None:
    assert len(POSITIVE) >= 150
    assert len(NEGATIVE) >= 150
    true_positives, false_negatives, false_positives, errors = _score()
    tp, fn, fp = (
        sum(counter.values()) for counter in (true_positives, false_negatives, false_positives)
    )
    recall = tp / (tp + fn)
    precision = tp / (tp + fp)
    lines = [f"corpus: {len(POSITIVE)} positive, {len(NEGATIVE)} negative samples"]
    for entity in sorted(set(true_positives) | set(false_negatives) | set(false_positives)):
        lines.append(
            f"  {entity:22} tp={true_positives[entity]:3} fn={false_negatives[entity]:2} "
            f"fp={false_positives[entity]:2}"
        )
    lines.append(f"  recall={recall:.3f} precision={precision:.3f}")
    lines.extend(f"  {error}" for error in errors)
    print("\n" + "\n".join(lines))  # noqa: T201  # the metrics are part of the test output
    for entity in CHECKSUMMED:
        assert true_positives[entity] > 0
        assert false_negatives[entity] == 0, f"{entity} recall below 1.0"
    assert recall >= 0.98
    assert precision >= 0.97
