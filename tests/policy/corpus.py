# ruff: noqa: RUF001  # full-width punctuation and digits are part of what is tested
"""Labelled corpus for the detectors: invented values in prompts, and a negative set.

Every value here is invented: card numbers are network test numbers or seeded Luhn-valid
digits, IBANs get computed check digits, phone numbers sit in fictional or sample ranges,
keys are seeded random strings. Positive samples put each entity type into English prompts
and into Chinese, Japanese, Korean, French and German text, often with no space or
full-width punctuation around the value. Negative samples are code, logs, hashes, UUIDs,
ids, timestamps, versions and ordinary prose that contain no entity.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import uuid
from dataclasses import dataclass

__all__ = ["NEGATIVE", "POSITIVE", "Sample"]


@dataclass(frozen=True)
class Sample:
    """A text and the (entity, value) pairs a detector set must report in it."""

    text: str
    labels: tuple[tuple[str, str], ...] = ()


_rng = random.Random(20240315)
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _pick(alphabet: str, count: int) -> str:
    return "".join(_rng.choice(alphabet) for _ in range(count))


def luhn_complete(prefix: str, length: int) -> str:
    """Return ``prefix`` padded with seeded digits and a Luhn check digit to ``length``."""
    body = prefix + _pick("0123456789", length - len(prefix) - 1)
    for check in "0123456789":
        digits = body + check
        total = sum(int(char) for char in digits[-1::-2])
        total += sum(sum(divmod(2 * int(char), 10)) for char in digits[-2::-2])
        if total % 10 == 0:
            return digits
    raise AssertionError("one check digit always fits")


def make_iban(country: str, bban: str) -> str:
    """Return the IBAN of ``bban`` in ``country`` with computed check digits."""
    numeric = "".join(str(int(char, 36)) for char in bban + country + "00")
    return f"{country}{98 - int(numeric) % 97:02d}{bban}"


def spaced(value: str) -> str:
    return " ".join(value[index : index + 4] for index in range(0, len(value), 4))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(claims: dict[str, object]) -> str:
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64url(json.dumps(claims).encode())
    return f"{header}.{payload}.{_b64url(_rng.randbytes(32))}"


def make_pem(kind: str) -> str:
    body = base64.b64encode(_rng.randbytes(180)).decode()
    lines = "\n".join(body[index : index + 64] for index in range(0, len(body), 64))
    return f"-----BEGIN {kind}-----\n{lines}\n-----END {kind}-----"


# --- values -------------------------------------------------------------------------

EMAILS = (
    "jane.roe@example.org",
    "omar.haddad+billing@example.com",
    "mei_chen@mail.example.cn",
    "l.becker@beispiel.de",
    "amélie.durand@exemple.fr",
    "priya.nair@example.co.in",
    "t.garcia@ejemplo.es",
    "aiko.sato@example.jp",
    "support-team@corp.example.net",
    "zhang.wei@example.cn",
)
PHONES = (
    "(201) 555-0123",
    "+1 415 555 2671",
    "415-555-0198",
    "212.555.0147",
    "+44 20 7946 0958",
    "+49 30 12345678",
    "+33 1 99 00 12 34",
    "+81 3-1234-5678",
    "+86 138 0013 8000",
    "+61 2 5550 1234",
    "+82 10-1234-5678",
    "+1 (617) 555-0134",
)
CARDS = (
    "4111 1111 1111 1111",
    "5555-5555-5555-4444",
    "378282246310005",
    "3782 822463 10005",
    "6011111111111117",
    "3530111333300000",
    "30569309025904",
    spaced(luhn_complete("4", 16)),
    luhn_complete("51", 16),
    luhn_complete("2223", 16),
    luhn_complete("6200", 16),
    luhn_complete("4", 19),
)
IBANS = (
    spaced(make_iban("DE", "370400440532013000")),
    spaced(make_iban("GB", "WEST12345698765432")),
    spaced(make_iban("FR", "20041010050500013M02606")),
    make_iban("NL", "ABNA0417164300"),
    make_iban("ES", "21000418450200051332"),
    spaced(make_iban("IT", "X0542811101000000123456")),
    make_iban("CH", "00762011623852957"),
    spaced(make_iban("BE", "539007547034")),
    make_iban("AT", "1904300234573201"),
    spaced(make_iban("PL", "109010140000071219812874")),
)
SSNS = tuple(
    f"{area:03d}-{_rng.randint(1, 99):02d}-{_rng.randint(1, 9999):04d}"
    for area in (123, 219, 345, 401, 512, 587, 623, 78, 9, 665)
)
IPS = (
    "203.0.113.45",
    "198.51.100.7",
    "192.0.2.10",
    "10.20.30.40",
    "172.16.254.1",
    "192.168.1.20",
    "2001:db8::8a2e:370:7334",
    "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
    "fe80::1ff:fe23:4567:890a",
    "2001:db8:1234:5678::1",
)
SECRETS = (
    ("OPENAI_API_KEY", "sk-proj-" + _pick(_ALNUM + "_-", 64)),
    ("OPENAI_API_KEY", "sk-" + _pick(_ALNUM, 48)),
    ("ANTHROPIC_API_KEY", "sk-ant-api03-" + _pick(_ALNUM + "_-", 80) + "AA"),
    ("AWS_ACCESS_KEY_ID", "AKIA" + _pick("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)),
    ("AWS_ACCESS_KEY_ID", "ASIA" + _pick("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)),
    ("GOOGLE_API_KEY", "AIza" + _pick(_ALNUM + "_-", 35)),
    ("GITHUB_TOKEN", "ghp_" + _pick(_ALNUM, 36)),
    ("GITHUB_TOKEN", "github_pat_" + _pick(_ALNUM + "_", 82)),
    ("SLACK_TOKEN", "xoxb-" + _pick("0123456789", 12) + "-" + _pick(_ALNUM, 24)),
    ("JWT", make_jwt({"sub": "user-1842", "role": "admin"})),
)
AWS_SECRET_KEYS = tuple(
    _pick("ABCDEFGHIJ", 4) + _pick("abcdefghij", 4) + _pick(_ALNUM + "/+", 32) for _ in range(4)
)
BEARER_TOKENS = tuple(_pick(_ALNUM + "-._~", 40) for _ in range(3))
CONNECTION_STRINGS = (
    "postgres://app_user:S3cr3t-Pa55@db.internal.example:5432/orders",
    "mysql://root:hunter2@db.example.test/app",
    "mongodb+srv://svc:pa55w0rd@cluster0.example.net/test",
    "redis://:Redis-Pass-123@cache.example:6379/0",
    "postgres://user:pass@host/db",
)
PRIVATE_KEYS = (make_pem("RSA PRIVATE KEY"), make_pem("PRIVATE KEY"), make_pem("EC PRIVATE KEY"))

# --- templates ----------------------------------------------------------------------

GENERAL = (
    "Please send the report to {v} by Friday.",
    "Contact details: {v}",
    "Can you check why {v} shows up in the audit log?",
    "I typed {v} into the form and it failed.",
    "请联系我：{v}谢谢",
    "連絡先は{v}です。",
    "제 정보는 {v}입니다.",
    "Écrivez-moi, voici : {v}, merci !",
    "Bitte prüfen Sie（{v}）heute.",
    "顧客データ「{v}」を削除してください。",
)
CARD_TEMPLATES = (
    "Charge my card {v} for the renewal.",
    "カード番号は{v}です",
    "信用卡号：{v}，有效期12/27",
    "Ma carte : {v}, expiration 12/27.",
    "Kartennummer {v} bitte belasten.",
    "The customer's card ({v}) was declined.",
)
IBAN_TEMPLATES = (
    "Please wire the refund to IBAN {v} today.",
    "Überweisung an {v} bitte bis Montag.",
    "Virement sur le compte {v} svp.",
    "请把款项转到{v}谢谢",
    "IBAN：{v}。",
)
SSN_TEMPLATES = (
    "My SSN is {v}, please update my file.",
    "Employee record: name=Jane Roe ssn={v}",
    "社会保障番号は{v}です。",
    "Social security number {v} on the W-2.",
)
IP_TEMPLATES = (
    "Blocked login attempts from {v} overnight.",
    "Connect to the server at {v} and restart nginx.",
    "服务器地址是{v}，请检查。",
    "L'adresse IP {v} est bloquée.",
    "ssh admin@{v}",
)
SECRET_TEMPLATES = (
    "Here is my key {v}, why does the request fail?",
    "export API_KEY={v}",
    'config.yaml:\n  api_key: "{v}"\n',
    "キーは{v}です、確認してください。",
    "密钥：{v}。",
)
DOB_SAMPLES = (
    ("Patient was born on {v} in Ohio.", "March 14, 1985"),
    ("DOB: {v}", "1979-11-02"),
    ("Date of birth {v}, male.", "02/29/1988"),
    ("Name: Jane Roe, D.O.B. {v}", "7 July 1990"),
    ("生年月日：{v}", "1985年3月14日"),
    ("{v}生まれです。", "1990年5月2日"),
    ("Geboren am {v} in Köln.", "14. März 1985"),
    ("Né le {v} à Lyon.", "1er mars 1972"),
    ("fecha de nacimiento: {v}", "14/03/1985"),
    ("出生日期：{v}", "1992-08-17"),
    ("생년월일: {v}", "1988년 7월 21일"),
    ("Her birthday is {v}.", "December 3rd, 2001"),
)


def _fill(templates: tuple[str, ...], entity: str, values: tuple[str, ...]) -> list[Sample]:
    return [
        Sample(templates[index % len(templates)].format(v=value), ((entity, value),))
        for index, value in enumerate(values)
    ]


def _positive() -> list[Sample]:
    samples: list[Sample] = []
    samples += _fill(GENERAL, "EMAIL", EMAILS)
    samples += _fill(GENERAL[::-1], "EMAIL", EMAILS[::-1])
    samples += _fill(GENERAL, "PHONE", PHONES)
    samples += _fill(CARD_TEMPLATES, "CREDIT_CARD", CARDS)
    samples += _fill(IBAN_TEMPLATES, "IBAN", IBANS)
    samples += _fill(SSN_TEMPLATES, "US_SSN", SSNS)
    samples += _fill(IP_TEMPLATES, "IP_ADDRESS", IPS)

    samples += [
        Sample(template.format(v=value), (("DATE_OF_BIRTH", value),))
        for template, value in DOB_SAMPLES
    ]
    for index, (entity, value) in enumerate(SECRETS * 2):
        template = SECRET_TEMPLATES[index % len(SECRET_TEMPLATES)]
        samples.append(Sample(template.format(v=value), ((entity, value),)))

    aws_templates = (
        "aws_secret_access_key = {v}",
        "AWS secret key: {v}",
        "AWS_SECRET_ACCESS_KEY={v}",
        '{{"SecretAccessKey": "{v}"}}',
    )
    samples += _fill(aws_templates, "AWS_SECRET_ACCESS_KEY", AWS_SECRET_KEYS)
    bearer_templates = (
        "Authorization: Bearer {v}",
        "curl -H 'Authorization: Bearer {v}' http://127.0.0.1:8080/v1/models",
        "请求头 Authorization: Bearer {v} 无效",
    )
    samples += _fill(bearer_templates, "BEARER_TOKEN", BEARER_TOKENS)
    connection_templates = (
        "DATABASE_URL={v}",
        "接続文字列は{v}です",
        "Use {v} for the tests.",
        "dsn: '{v}'",
        "Connect with {v} please",
    )
    samples += _fill(connection_templates, "CONNECTION_STRING", CONNECTION_STRINGS)
    pem_templates = ("Why does this key not load?\n{v}\n", "鍵はこちら：\n{v}", "{v}")
    samples += _fill(pem_templates, "PRIVATE_KEY", PRIVATE_KEYS)

    samples += _fill(GENERAL[5:] + GENERAL[:5], "PHONE", PHONES[::-1])
    samples += _fill(GENERAL[2:], "CREDIT_CARD", CARDS[::3])
    samples += _fill(GENERAL[1:], "IBAN", IBANS[::3])
    samples += _mixed()
    samples += _edge_cases()
    return samples


def _edge_cases() -> list[Sample]:
    """Single-entity samples in shapes the templates above do not produce."""
    cases = (
        ("CREDIT_CARD", "カード番号は{v}です", "４１１１１１１１１１１１１１１１"),
        ("IP_ADDRESS", "Proxy listens on {v}:8443 now.", "203.0.113.9"),
        ("IP_ADDRESS", "Allow-list [{v}]:443 in the firewall.", "2001:db8:85a3::8a2e:370:7334"),
        ("US_SSN", "SSN: {v}", "345678901"),
        ("EMAIL", "Reply to <{v}> please.", "JANE.ROE@EXAMPLE.ORG"),
        ("EMAIL", "mailto:{v}?subject=hi", "ops@example.io"),
        ("DATE_OF_BIRTH", "He was born 03.04.1975 in Graz.", "03.04.1975"),
        ("PHONE", "電話：{v}（平日のみ）", "+81 90-1234-5678"),
        ("PHONE", "Tel. {v}", "+39 06 4991 2345"),
        ("CONNECTION_STRING", "amqp URL {v}.", "amqp://guest:guest-secret@mq.example:5672/vhost"),
    )
    return [
        Sample(template.format(v=value), ((entity, value),)) for entity, template, value in cases
    ]


def _mixed() -> list[Sample]:
    """Samples that carry several entity types at once."""
    card, iban, email, phone = CARDS[0], IBANS[0], EMAILS[0], PHONES[1]
    return [
        Sample(
            f"Customer Jane Roe ({email}, {phone}) paid with {card}; refund to {iban}.",
            (("EMAIL", email), ("PHONE", phone), ("CREDIT_CARD", card), ("IBAN", iban)),
        ),
        Sample(
            f"用户邮箱{EMAILS[9]}，电话{PHONES[8]}，卡号{CARDS[4]}。",
            (("EMAIL", EMAILS[9]), ("PHONE", PHONES[8]), ("CREDIT_CARD", CARDS[4])),
        ),
        Sample(
            f"Login from {IPS[0]} used key {SECRETS[3][1]} and token {SECRETS[9][1]}",
            (("IP_ADDRESS", IPS[0]), ("AWS_ACCESS_KEY_ID", SECRETS[3][1]), ("JWT", SECRETS[9][1])),
        ),
        Sample(
            f"Please call me at 4155550132 tomorrow, my email is {EMAILS[3]}.",
            (("PHONE", "4155550132"), ("EMAIL", EMAILS[3])),
        ),
        Sample(
            f"Authorization: Bearer {SECRETS[9][1]}",
            (("JWT", SECRETS[9][1]),),
        ),
    ]


# --- negatives ----------------------------------------------------------------------


def _uuids() -> list[str]:
    values = [str(uuid.UUID(int=_rng.getrandbits(128), version=4)) for _ in range(10)]
    values += ["12345678-1234-5678-1234-567812345678", "00000000-0000-0000-0000-000000000000"]
    templates = ("request_id={v} status=200", "Trace {v} failed after retry.", '{{"id": "{v}"}}')
    return [templates[index % 3].format(v=value) for index, value in enumerate(values)]


def _hashes() -> list[str]:
    texts: list[str] = []
    for index, seed in enumerate(("alpha", "beta", "gamma", "delta", "epsilon")):
        data = seed.encode()
        texts.append(f"md5 checksum {hashlib.md5(data).hexdigest()} ok")
        texts.append(f"sha1: {hashlib.sha1(data).hexdigest()}")
        texts.append(f"sha256({seed}.tar.gz)= {hashlib.sha256(data).hexdigest()}")
        texts.append(f"Digest: sha256:{hashlib.sha256(data + bytes([index])).hexdigest()}")
    return texts


def _git() -> list[str]:
    shas = [hashlib.sha1(f"commit-{index}".encode()).hexdigest() for index in range(6)]
    return [
        f"commit {shas[0]}\nAuthor: Dev <dev@localhost>\n",
        f"Merge {shas[1][:7]} into {shas[2][:7]}",
        f"git cherry-pick {shas[3]}",
        f"fixed in {shas[4][:10]}, see build #48213",
        f"HEAD is now at {shas[5][:12]} Bump version",
        "git clone git@git.example.com:team/repo.git",
    ]


TIMESTAMPS = (
    "2024-03-15T10:22:31.123Z request started",
    "2024-03-15 10:22:31,456 INFO worker ready",
    "Last modified: Fri, 15 Mar 2024 10:22:31 GMT",
    "created_at=2023-12-31T23:59:59+01:00",
    "epoch millis 1710498151123 and seconds 1710498151",
    "ts=1710498151123456789 ns",
    "The job ran from 09:15:00 to 17:45:30 yesterday.",
    "Backup 20240315T102231Z completed",
    "cron: 0 3 * * 1-5 at 2024-01-01",
    "duration 00:12:45.250, started 2024/03/15 08:00",
    "snapshot-20240315-102231.tar.gz",
    "Deadline: 2024-06-30. Meeting on 14 March 2024.",
)
VERSIONS = (
    "Upgrade to version 1.2.3.4 before Monday.",
    "Released v2.14.0 and v2.14.1-rc.1 today.",
    "Python 3.11.7 (main, Dec  8 2023) [GCC 12.2.0]",
    "Mozilla/5.0 Chrome/120.0.6099.109 Safari/537.36",
    "Mozilla/5.0 AppleWebKit/537.36 Chrome/120.0.0.0",
    "pip install numpy==1.26.4 pandas>=2.1.0.1",
    "Windows build 10.0.19045.3693",
    "firmware 4.0.0.1 is out",
    "Ubuntu 22.04.3 LTS, kernel 6.5.0-21-generic",
    "OID 1.3.6.1.4.1.311.21.8 in the certificate",
    "npm i left-pad@1.3.0 and react@18.2.0",
    "schema version 3.2.1.0 applied",
)
IDS = (
    "Order ORD-2024-000123 has shipped.",
    "Incident INC0012345 is resolved.",
    "See JIRA-4521 and PROJ-18830.",
    "Ticket #48213 was reopened.",
    "PO 4500012345 approved by finance.",
    "Invoice INV-2024-0042 is overdue.",
    "Tracking number 1Z999AA10123456784.",
    "SKU 884392-001 is out of stock.",
    "Case 00123456 escalated to tier 2.",
    "Customer id cus_9fZk2LmQ8rT1 updated.",
    "Request req_8a7b6c5d4e3f2a1b failed.",
    "ISBN 978-3-16-148410-0 is the second edition.",
    "Build 2024.03.15.7 passed.",
    "Pod api-7d9f8b6c5d-x2x9k restarted 3 times.",
    "Container 3f4e5d6c7b8a exited with code 137.",
    "Account number 000123456 at the branch office.",
)
CODE = (
    "def handler(event, context):\n    return event['values'][1::2]\n",
    "x = arr[::2] + arr[1::3]",
    "std::vector<int> v; std::cout << v.size() << std::endl;",
    "use std::collections::HashMap;\nlet m: HashMap<a::b, c::d> = HashMap::new();",
    "@app.route('/users/<int:user_id>')\ndef get_user(user_id): ...",
    "@property\ndef name(self) -> str:\n    return self._name",
    "for (let i = 0; i < 1000000; i++) { total += i * 1.5; }",
    "SELECT * FROM orders WHERE id IN (1001, 1002, 1003) AND total > 1500.00;",
    "const re = /^\\d{3}-\\d{2}-\\d{4}$/; // SSN format check",
    'if err != nil { return fmt.Errorf("failed: %w", err) }',
    "matrix = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]",
    "PI = 3.14159265358979; E = 2.718281828459045",
    "api_key = os.environ['OPENAI_API_KEY']  # never hard-code sk-...",
    "headers = {'Authorization': f'Bearer {token}'}",
    'curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8080/health',
    "DATABASE_URL=postgres://user:${DB_PASSWORD}@db:5432/app",
    "redis_url = 'redis://localhost:6379/0'",
    "OPENAI_API_KEY=sk-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "AWS_ACCESS_KEY_ID=AKIAXXXXXXXXXXXXXXXX",
    "img = Image.open('logo@2x.png')",
    "bind 0.0.0.0:8080 and 127.0.0.1:9090",
    "ip link set dev eth0 up; netmask 255.255.255.0",
    "MAC address 00:1A:2B:3C:4D:5E on port 3",
    "char *p = (char *)0x7ffee4b8a9c0;",
    "jwt.decode(token, key, algorithms=['HS256'])  # token starts with eyJ",
    "Authorization: Bearer <your-token-here>",
)
LOGS = (
    "2024-03-15T10:22:31Z INFO  pid=48213 tid=139876543210 GC pause 12.5ms heap=512MB",
    "[2024-03-15 10:22:31] ERROR worker-7: timeout after 30000ms (attempt 3/5)",
    "Mar 15 10:22:31 host sshd[12345]: Accepted publickey for deploy",
    "GET /api/v1/orders/123456789 200 12ms 5123 bytes",
    "I0315 10:22:31.123456   12345 controller.go:123] Reconciled 42 objects",
    "WARN memory usage 87.5% (7340032/8388608 KiB)",
    "DEBUG span_id=7a3f9c2e1b4d6f80 trace_id=4bf92f3577b34da6a3ce929d0e0e4736",
    "kernel: [123456.789012] eth0: link up, 1000 Mbps",
    "INFO batch 17/250 processed 10240 rows in 4.2s",
    "ERROR exit status 137 after 2024-03-15 10:22:31",
    'level=info msg="cache hit" key=user:1234567 ttl=3600',
    "Processed 1,234,567 events (99.95% success) in 00:05:12",
)
PROSE = (
    "The meeting is at 10:30 in room 4.12; bring the Q3 numbers.",
    "Revenue grew from $1,299,000 to $1,842,500 this year.",
    "We expect 1500000 visitors and a 12.5% conversion rate.",
    "The office is at 48.8566, 2.3522 near the river.",
    "I was born in 1985 and moved to Berlin in 2010.",
    "The DOB field is required on the signup form.",
    "Please call me back when you have a minute.",
    "Our phone support is open Monday to Friday.",
    "The card was declined, so I paid by bank transfer.",
    "我们下周三下午三点开会，请准时参加。",
    "会議は3月15日の午後2時からです。",
    "La réunion est prévue le 15 mars à 14 h.",
    "Die Lieferung kommt in 3 bis 5 Werktagen.",
    "Scores: 98, 87, 92 and 100 out of 100.",
    "Use 1.5 cups of flour and 2 eggs for 12 muffins.",
    "Version control saved us 40 hours last sprint.",
    "The range 10-20-30 is just an example pattern.",
    "Section 4.2.1 explains the retry policy.",
    "Temperature dropped to -12.5 degrees overnight.",
    "Our team of 7 ships a release every 2 weeks.",
)
TRICKY = (
    "Card 4111 1111 1111 1112 fails the Luhn check.",
    "Order number 1234 5678 9012 3456 is not a card.",
    "IBAN DE00 3704 0044 0532 0130 00 has wrong check digits.",
    "SSN 000-12-3456 and 666-12-3456 are never issued.",
    "The number 900-12-3456 is not an SSN either.",
    "Default gateway 0.0.0.0 and loopback 127.0.0.1.",
    "Broadcast 255.255.255.255, mask 255.255.240.0",
    "Address 999.12.1.1 is not an IPv4 address.",
    "user@localhost is not routable mail.",
    "Retina image: icon@3x.png and banner@1.5x.jpg",
    "Use the token YOUR_API_KEY_GOES_HERE_PLEASE",
    "The header reads: Bearer authentication is required.",
    "Example: sk-ant-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "postgres://localhost/db has no password",
    "Born to run, released 1975.",
    "eyJhbGciOi is truncated and not a token",
    "call the function 3 times",
    "Dial extension 4567 for support.",
    "The meeting code is 845 3921 7760.",
)


def _negative() -> list[Sample]:
    texts: list[str] = []
    texts += _uuids() + _hashes() + _git()
    texts += [*TIMESTAMPS, *VERSIONS, *IDS, *CODE, *LOGS, *PROSE, *TRICKY]
    return [Sample(text) for text in texts]


POSITIVE: tuple[Sample, ...] = tuple(_positive())
NEGATIVE: tuple[Sample, ...] = tuple(_negative())
