"""A corpus of PII and secrets that redaction must remove, and look-alikes it must leave alone.

Every value is fake but format-valid: card numbers pass Luhn, IBANs pass mod-97, keys have the
shape their issuer uses. Token-shaped strings are assembled from pieces so that secret scanners
reading this file do not flag it.

`PII_CASES` rows are `(label, value, secrets)`: `value` is a string or a dict as it would reach a
log line; `secrets` are the substrings that must not survive redaction.
"""

from __future__ import annotations

from typing import Any


def _tok(prefix: str, body: str, n: int) -> str:
    """`prefix` followed by `body` repeated and cut to `n` characters."""
    return prefix + (body * (n // len(body) + 1))[:n]


JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
JWT_NO_SIG = "eyJhbGciOiJub25lIn0.eyJ1c2VyIjoiYWxpY2UiLCJyb2xlIjoiYWRtaW4ifQ."
OPENAI_KEY = _tok("sk-", "T3BlbkFJx9Qm2Lr8Vw4Zp7", 48)
OPENAI_PROJECT_KEY = _tok("sk-" + "proj-", "Hq7Ld2Xv9Rk4Nw_Bp3-Yt8", 64)
ANTHROPIC_KEY = _tok("sk-" + "ant-api03-", "Zm9vYmFyYmF6cXV4_7-", 80)
AWS_KEY_ID = "AKIA" + "IOSFODNN7EXAMPLE"
AWS_SESSION_KEY_ID = "ASIA" + "Y34FZKBOKMUTVV7A"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "EXAMPLEKEY"
GITHUB_PAT = _tok("gh" + "p_", "a1B2c3D4e5F6g7H8i9J0", 36)
GITHUB_OAUTH = _tok("gh" + "o_", "Zx9Yw8Vu7Ts6Rq5Po4Nm", 36)
GITHUB_FINE = _tok("github" + "_pat_", "11ABCDEFG0_abcdefghij9876", 82)
SLACK_BOT = "xox" + "b-" + "123456789012-1234567890123-" + _tok("", "AbCdEfGhIjKl", 24)
GITLAB = _tok("gl" + "pat-", "xY7_zQ3-wR9v", 20)
GOOGLE = _tok("AI" + "za", "SyD9tSrke72PouQMnMXa7eZ", 35)
STRIPE_SECRET = _tok("sk" + "_live_", "4eC39HqLyjWDarjt", 24)
STRIPE_RESTRICTED = _tok("rk" + "_live_", "51HxYzAbCdEf", 24)
STRIPE_PUBLISHABLE = _tok("pk" + "_live_", "TYooMQauvdEDq54N", 24)
HUGGINGFACE = _tok("hf" + "_", "QwErTyUiOpAsDfGh", 34)
BEARER_HEX = "8f4b2c1e9d7a6b5c4d3e2f1a0b9c8d7e"
BEARER_B64 = "dGhpcy1pcy1hLXRva2VuLXZhbHVlLTEyMzQ1Ng"
BASIC = "dXNlcjpwYXNzd29yZA=="  # user:password
RSA_BODY = "MIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi" + "\nZ2pLtN0bL1cVhjwF2OXAMPLEbase64body+/=="
PEM_RSA = "-----BEGIN RSA PRIVATE KEY-----\n" + RSA_BODY + "\n-----END RSA PRIVATE KEY-----"
PEM_OPENSSH = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtz\n"
    "-----END OPENSSH PRIVATE KEY-----"
)
PGP_BODY = (
    "lQOYBF9x2WgBCADHvT3mKq8ZpLw4Rn7sXy1bUe6fJo0aGd5" + "\nc2VjcmV0LXBncC1rZXktYm9keS1mb3ItdGVzdHM9PQ=="
)
PEM_PGP = (
    "-----BEGIN PGP PRIVATE KEY BLOCK-----\nVersion: GnuPG v2\n\n" + PGP_BODY + "\n=Xq3T\n"
    "-----END PGP PRIVATE KEY BLOCK-----"
)
PEM_PKCS8 = (
    "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----"
)

PII_CASES: list[tuple[str, Any, tuple[str, ...]]] = [
    # e-mail addresses
    ("email plain", "alice@example.com", ("alice@",)),
    ("email plus tag", "bob.smith+billing@mail.example.co.uk", ("bob.smith+billing",)),
    ("email upper case", "CAROL.JONES@EXAMPLE.ORG", ("CAROL.JONES",)),
    ("email in angle brackets", "Dave Lee <dave_lee-99@sub.example.net>", ("dave_lee-99",)),
    ("email unicode local part", "jörg.müller@example.de", ("jörg.mü", "jörg.müller")),
    ("email unicode domain", "kontakt@bücherstube.example", ("kontakt@bücher", "bücherstube")),
    ("email fullwidth at", "erin.w\uff20example.com", ("erin.w\uff20",)),
    # phone numbers
    ("phone E.164 US", "+14155552671", ("4155552671",)),
    ("phone intl spaces", "+1 415 555 2671", ("415 555 2671",)),
    ("phone intl dashes", "+1-415-555-2671", ("415-555-2671",)),
    ("phone US parens", "(415) 555-2671", ("555-2671",)),
    ("phone US dashes", "415-555-2671", ("415-555-2671",)),
    ("phone US dots", "415.555.2671", ("415.555.2671",)),
    ("phone US toll free", "1-800-555-0199", ("800-555-0199",)),
    ("phone UK intl", "+44 20 7946 0958", ("7946 0958",)),
    ("phone UK intl trunk", "+44 (0)20 7946 0958", ("7946 0958",)),
    ("phone UK national", "020 7946 0958", ("7946 0958",)),
    ("phone UK mobile", "07700 900123", ("900123",)),
    ("phone DE mobile", "+4915112345678", ("15112345678",)),
    ("phone FR national", "01 23 45 67 89", ("23 45 67 89",)),
    ("phone FR intl", "+33 1 23 45 67 89", ("23 45 67 89",)),
    ("phone IN intl", "+91 98765 43210", ("98765 43210",)),
    # card numbers (Luhn-valid test numbers)
    ("card visa spaced", "4111 1111 1111 1111", ("4111 1111 1111 1111", "1111 1111 1111")),
    ("card visa dashed", "4111-1111-1111-1111", ("4111-1111-1111-1111",)),
    ("card visa compact", "4012888888881881", ("4012888888881881",)),
    ("card visa 13 digits", "4222222222222", ("4222222222222",)),
    ("card mastercard", "5555 5555 5555 4444", ("5555 5555 5555 4444",)),
    ("card mastercard 2-series", "2223003122003222", ("2223003122003222",)),
    ("card amex grouped", "3782 822463 10005", ("822463",)),
    ("card amex compact", "378282246310005", ("378282246310005",)),
    ("card discover", "6011 0009 9013 9424", ("0009 9013 9424",)),
    ("card jcb", "3530111333300000", ("3530111333300000",)),
    ("card diners", "30569309025904", ("30569309025904",)),
    ("card visa dots", "4111.1111.1111.1111", ("4111.1111.1111.1111", "1111.1111.1111")),
    ("card mastercard no-break spaces", "5555\u00a05555\u00a05555\u00a04444", ("5555\u00a05555\u00a05555",)),
    ("card visa double spaces", "4012  8888  8888  1881", ("8888  8888  1881",)),
    ("card visa fullwidth digits", "\uff14" + "\uff11" * 15, ("\uff11\uff11\uff11\uff11" * 2,)),
    # IBANs (mod-97 valid)
    ("iban GB spaced", "GB82 WEST 1234 5698 7654 32", ("1234 5698 7654",)),
    ("iban GB compact", "GB82WEST12345698765432", ("GB82WEST12345698765432",)),
    ("iban DE", "DE89 3704 0044 0532 0130 00", ("3704 0044 0532",)),
    ("iban FR", "FR14 2004 1010 0505 0001 3M02 606", ("2004 1010 0505",)),
    ("iban NL", "NL91 ABNA 0417 1643 00", ("0417 1643",)),
    ("iban ES", "ES91 2100 0418 4502 0005 1332", ("2100 0418 4502",)),
    ("iban CH", "CH93 0076 2011 6238 5295 7", ("6238 5295",)),
    ("iban GB lower case", "gb82 west 1234 5698 7654 32", ("1234 5698 7654",)),
    ("iban DE dashes", "DE89-3704-0044-0532-0130-00", ("3704-0044-0532",)),
    ("iban NL double spaces", "NL91  ABNA  0417  1643  00", ("0417  1643",)),
    # API keys and tokens
    ("openai key", OPENAI_KEY, (OPENAI_KEY[3:],)),
    ("openai project key", OPENAI_PROJECT_KEY, (OPENAI_PROJECT_KEY[8:],)),
    ("anthropic key", ANTHROPIC_KEY, (ANTHROPIC_KEY[14:],)),
    ("aws access key id", AWS_KEY_ID, (AWS_KEY_ID,)),
    ("aws session key id", AWS_SESSION_KEY_ID, (AWS_SESSION_KEY_ID,)),
    ("aws secret in config", f"aws_secret_access_key = {AWS_SECRET}", (AWS_SECRET,)),
    ("aws secret in env", f"AWS_SECRET_ACCESS_KEY={AWS_SECRET}", (AWS_SECRET,)),
    ("aws secret bare beside its id", f"{AWS_KEY_ID} {AWS_SECRET}", (AWS_KEY_ID, AWS_SECRET)),
    ("aws secret bare in csv", f"deploy-bot,{AWS_KEY_ID},{AWS_SECRET},2026-11-01", (AWS_SECRET,)),
    ("github pat", GITHUB_PAT, (GITHUB_PAT[4:],)),
    ("github oauth", GITHUB_OAUTH, (GITHUB_OAUTH[4:],)),
    ("github fine-grained pat", GITHUB_FINE, (GITHUB_FINE[11:],)),
    ("slack bot token", SLACK_BOT, (SLACK_BOT[5:],)),
    ("gitlab pat", GITLAB, (GITLAB[6:],)),
    ("google api key", GOOGLE, (GOOGLE[4:],)),
    ("stripe secret key", STRIPE_SECRET, (STRIPE_SECRET[8:],)),
    ("stripe restricted key", STRIPE_RESTRICTED, (STRIPE_RESTRICTED[8:],)),
    ("stripe publishable key", STRIPE_PUBLISHABLE, (STRIPE_PUBLISHABLE[8:],)),
    ("huggingface token", HUGGINGFACE, (HUGGINGFACE[3:],)),
    ("jwt", JWT, (JWT[:40], JWT[-43:])),
    ("jwt alg none", JWT_NO_SIG, (JWT_NO_SIG[20:50],)),
    ("bearer header", f"Authorization: Bearer {BEARER_HEX}", (BEARER_HEX,)),
    ("bearer lower case", f"bearer {BEARER_B64}", (BEARER_B64,)),
    ("bearer upper case", f"BEARER {BEARER_B64}", (BEARER_B64,)),
    ("bearer jwt", f"Authorization: Bearer {JWT}", (JWT[40:80],)),
    ("basic auth header", f"Authorization: Basic {BASIC}", (BASIC,)),
    ("drf token header", "Authorization: Token 9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b", ("9944b09199c6",)),
    # passwords in URLs
    ("postgres url password", "postgres://admin:s3cr3tP4ss@db.internal:5432/app", ("s3cr3tP4ss",)),
    ("redis url password", "redis://:hunter2hunter2@redis:6379/0", ("hunter2hunter2",)),
    ("https url password", "https://deploy:gh-Pa55w0rd!@git.example.com/org/repo.git", ("gh-Pa55w0rd!",)),
    ("amqp url password", "amqp://guest:Gu3stPa55@rabbit:5672//", ("Gu3stPa55",)),
    ("url password with at", "mysql://root:p@ssw0rd@10.0.0.5/db", ("ssw0rd",)),
    ("url password with slash", "https://user:hunter/2@host.example", ("hunter/",)),
    ("url password with query chars", "ftp://ops:Pa?b#c/d3@files.example/x", ("Pa?b#c/",)),
    # private keys
    ("pem rsa private key", PEM_RSA, ("MIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi", "OXAMPLEbase64body")),
    ("pem openssh private key", PEM_OPENSSH, ("b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9u",)),
    ("pgp private key block", PEM_PGP, (PGP_BODY[:40], PGP_BODY[-40:])),
    ("pem pkcs8 private key", PEM_PKCS8, ("MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg",)),
    # secrets named by a field, in text
    ("password assignment", "password=hunter2", ("hunter2",)),
    ("password colon quoted", 'password: "correct horse battery staple"', ("correct horse battery",)),
    ("env var password", "DB_PASSWORD=Tr0ub4dor&3x", ("Tr0ub4dor&3x", "&3x")),
    ("password with a backslash", "password=Tr0ub\\4dorX", ("Tr0ub", "4dorX")),
    (
        "api_key query param",
        "https://api.example.com/v1/search?q=cats&api_key=k3yV4lue99&page=2",
        ("k3yV4lue99",),
    ),
    (
        "access_token query param",
        "/callback?access_token=ya29.a0AfH6SMBx12&state=xyz",
        ("ya29.a0AfH6SMBx12",),
    ),
    (
        "client secret json text",
        '{"client_id": "web", "client_secret": "Cl13ntS3cr3tV4lu3"}',
        ("Cl13ntS3cr3tV4lu3",),
    ),
    ("python repr password", "{'user': 'alice', 'password': 'Sup3rS3cret!'}", ("Sup3rS3cret!",)),
    ("escaped json password", '{\\"user\\": \\"alice\\", \\"password\\": \\"hunter2x\\"}', ("hunter2x",)),
    (
        "escaped json token with escapes",
        '{\\"token\\": \\"W4lrus9\\\\ijk\\\\\\"mnop9qr\\"}',
        ("W4lrus9", "mnop9qr"),
    ),
    ("set-cookie header", "Set-Cookie: session=8c1f0e5d2b7a; Path=/; HttpOnly", ("8c1f0e5d2b7a",)),
    ("cookie header", "Cookie: sid=a7b9c2d4e6f8; csrftoken=Zq81Lm", ("a7b9c2d4e6f8", "Zq81Lm")),
    # secrets named by a field, in dicts
    ("dict password", {"user": "alice", "password": "hunter2"}, ("hunter2",)),
    ("dict authorization", {"Authorization": "Token abc"}, ("abc",)),
    ("dict x-api-key header", {"X-Api-Key": "k-7788"}, ("k-7788",)),
    ("dict camelCase token", {"accessToken": "opaque-at-1"}, ("opaque-at-1",)),
    ("dict refresh token", {"refresh_token": "opaque-rt-2"}, ("opaque-rt-2",)),
    ("dict client secret", {"client_secret": "opaque-cs-3"}, ("opaque-cs-3",)),
    ("dict nested credentials", {"db": {"credentials": {"user": "u", "pass": "pw"}}}, ("'pw'",)),
    ("dict cookie list", {"set-cookie": ["a=1", "b=2"]}, ("a=1", "b=2")),
    ("dict private key", {"private_key": "not-pem-but-secret"}, ("not-pem-but-secret",)),
    ("dict sentry dsn", {"dsn": "https://5d1e7b0a@o0.ingest.sentry.io/1"}, ("5d1e7b0a",)),
    ("dict api key int value", {"api_key": 12345678}, ("12345678",)),
    ("dict card as int", {"card": 4111111111111111}, ("4111111111111111",)),
]

# Values that exist only in Python, not in JSON (a dict key that is not a str): logs and Sentry get
# them from code, never from a client, so only the unit tests use them.
PII_OBJECTS: list[tuple[str, Any, tuple[str, ...]]] = [
    ("dict bytes key password", {b"password": "hunter2b", "user": "alice"}, ("hunter2b",)),
    ("dict bytes key api key", {b"X-Api-Key": b"k-77889900"}, ("k-77889900",)),
    ("dict tuple key secret", {("db", "password"): "Tr0ub4dor9"}, ("Tr0ub4dor9",)),
]

NON_PII: list[str] = [
    "2024-01-15T10:30:00Z",
    "2024-01-15T10:30:00.123456+00:00",
    "2024-01-15 10:30:00",
    "started_at=1700000000.123 finished_at=1700000012.456",
    "epoch ms 1700000000000",
    "550e8400-e29b-41d4-a716-446655440000",
    "123E4567-E89B-12D3-A456-426614174000",
    "run 3f2a9c1e5b7d4f6a8c0e2b4d6f8a0c1e",
    "run 01234567890123456789012345678901",
    "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "Celery task a1b2c3d4-e5f6-7890-abcd-ef1234567890 succeeded in 0.532s",
    "agentfleet 0.1.0, celery 5.5.0, Python 3.11.4, v10.15.7",
    "42",
    "step 3 of 25, tool call 2/12",
    "1500 ms",
    "duration_ms=1234 timeout 8000ms, took 2.5 s",
    "https://example.com/api/v1/runs?limit=50&offset=100",
    "redis://127.0.0.1:6379/0",
    "http://localhost:8000/v1/runs/3f2a9c1e5b7d4f6a8c0e2b4d6f8a0c1e?steps=true",
    "card 4111 1111 1111 1112 fails Luhn",
    "4111111111111112",
    "order 4111-1111-1111-1112",
    "iban GB82 WEST 1234 5698 7654 33 fails mod-97",
    "ref ABCD1234EFGH5678, build v1.2.3-rc.4+build.5",
    "The agent finished the run after 12 steps.",
    "rate limit reached for search.read; waiting 200 ms (10/s)",
    "connected to 192.168.1.100 and 10.0.0.1:6379",
    "HTTP/1.1 503 Service Unavailable, Retry-After: 2",
    "usage tokens: 1500, max_tokens=1024 input_tokens=1200 output_tokens=350",
    "Bearer authentication is required",
    "basic information about the password field",
    "ISBN 978-3-16-148410-0, order #12345, total $1,234,567.89",
    "dates 15.01.2024 and 01/15/2024 at 09:30",
    "worker/run/loop.py:123 in run_step",
    "offset +0530 from UTC, +05:30",
    "stop_reason=max_steps outcome=failed tool=http.get",
    # ids whose first characters read like a country code and check digits (an IBAN shape)
    "task ba72854f-3c7b-4a73-af7e-3c12d3a08bbe",
    "task ed72788c-ad75-4afd-ba2a-9c1193561df7",
    "span be50731bdf053481",
    "trace de404d34b36e98a1f44aebd91abe693e",
    "commit 9fceb02d0ae598e95dc970b74d4d6b2ad3d6e7d2",
    "BEARER OF BAD NEWS, the BASIC plan",
    "http://localhost:8000/v1/runs/@me and https://api.example.com:443/u/me@x",
    "Grüße aus München: 3 Läufe, 12 Schritte",
    "version 2024.1105.1230.0001, ratio 1.2345.6789",
]
