#!/usr/bin/env python3
"""Generate the labelled redaction corpus (deterministic).

    python3 crates/sam-capture/scripts/gen_redaction_corpus.py > crates/sam-capture/tests/data/redaction_corpus.jsonl

`SEED=N` draws another corpus of the same shape (the committed one is the
default seed): a check that the redactor holds on values it was not tuned on.
Write it outside the project and point the test at it:

    SEED=7 python3 crates/sam-capture/scripts/gen_redaction_corpus.py > /tmp/corpus-7.jsonl
    SAM_REDACTION_CORPUS=/tmp/corpus-7.jsonl cargo test -p sam-capture --test redaction_corpus -- --nocapture

Each line is one snippet of code, configuration, log, diff or prose:

  {"id": 7, "label": "secret" | "clean", "family": "...", "context": "code" | "config" | "log" | "diff" | "prose",
   "text": "...",
   "secrets": [{"kind": "email", "value": "...", "span": [start, end], "must_not_contain": ["..."]}]}

"secret" rows plant one or more secrets or personal values (all fake, but well
formed: Luhn-valid cards, mod-97-valid IBANs, SSNs in valid ranges, provider
tokens with the right prefixes, alphabets and lengths); `span` is the byte
range of the planted value in the UTF-8 text (`spans`: every occurrence),
`family` the kind planted.
"clean" rows hold nothing to redact; their `family` names the lookalike class
they exercise (a name that is not a value, public keys and certificates,
versions and dates, commit SHAs, lockfile integrity hashes, checksums, UUIDs,
data URIs, placeholders, ...). The text around a planted secret is clean too,
so any other finding in a row is a false positive.
"""
import base64
import json
import os
import random
import string

R = random.Random(int(os.environ.get("SEED", "20261201")))

FIRST = ["alice", "bob", "carol", "dmitri", "elena", "farid", "grace", "hiro", "ines", "jamal", "kofi", "lena",
         "marta", "nikhil", "olga", "pedro", "quinn", "rosa", "sven", "tanvi", "umar", "vera", "wei", "ximena",
         "yusuf", "zoe"]
LAST = ["smith", "garcia", "nakamura", "okafor", "muller", "rossi", "kowalski", "dubois", "silva", "chen", "patel",
        "johansson", "novak", "haddad", "oconnor", "fischer"]
DOMAINS = ["gmail.com", "acme-corp.io", "fastmail.fm", "uni-heidelberg.de", "globex.co.uk", "initech.com",
           "proton.me", "contoso.org", "hooli.dev", "example-mail.net", "posteo.de", "outlook.com"]
UPPER, LOWER, DIGITS = string.ascii_uppercase, string.ascii_lowercase, string.digits
ALNUM = UPPER + LOWER + DIGITS
B64 = ALNUM + "+/"
URLSAFE = ALNUM + "-_"
HEX = "0123456789abcdef"


def rnd(alphabet, n):
    return "".join(R.choice(alphabet) for _ in range(n))


def mixed(alphabet, n):
    """Random, with upper case, lower case and digits (as real tokens have)."""
    while True:
        s = rnd(alphabet, n)
        if any(c.isupper() for c in s) and any(c.islower() for c in s) and any(c.isdigit() for c in s):
            return s


def name():
    return R.choice(FIRST), R.choice(LAST)


def full_name():
    f, l = name()
    return f"{f.title()} {l.title()}"


def uuid():
    h = rnd(HEX, 32)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


def sha(n=40):
    return rnd(HEX, n)


def version():
    return R.choice([
        lambda: f"{R.randint(0, 20)}.{R.randint(0, 40)}.{R.randint(0, 30)}",
        lambda: f"v{R.randint(0, 9)}.{R.randint(0, 40)}.{R.randint(0, 30)}",
        lambda: f"{R.randint(1, 4)}.{R.randint(0, 12)}.{R.randint(0, 9)}-rc.{R.randint(1, 5)}",
    ])()


def date():
    return f"20{R.randint(15, 26)}-{R.randint(1, 12):02d}-{R.randint(1, 28):02d}"


def ts():
    return f"{date()}T{R.randint(0, 23):02d}:{R.randint(0, 59):02d}:{R.randint(0, 59):02d}Z"


def host():
    return R.choice(["db.internal", "api.internal", "cache.internal", "db-prod-1.eu-west-1.rds.amazonaws.com",
                     "mq.internal", "cluster0.mongodb.net", "localhost"])


# ---------------------------------------------------------------- values

def email():
    f, l = name()
    local = R.choice([f"{f}.{l}", f"{f}_{l}{R.randint(1, 99)}", f"{f[0]}{l}", f"{f}+{R.choice(['dev', 'news', 'git'])}",
                      f"{l}.{f}"])
    return f"{local}@{R.choice(DOMAINS)}"


def phone():
    d = lambda n: "".join(str(R.randint(0, 9)) for _ in range(n))
    nanp = lambda: f"{R.randint(2, 9)}{d(2)}"
    return R.choice([
        lambda: f"+1 {nanp()}-{nanp()}-{d(4)}",
        lambda: f"+1 ({nanp()}) {nanp()}-{d(4)}",
        lambda: f"+1.{nanp()}.{nanp()}.{d(4)}",
        lambda: f"+1{nanp()}{nanp()}{d(4)}",
        lambda: f"({nanp()}) {nanp()}-{d(4)}",
        lambda: f"{nanp()}-{nanp()}-{d(4)}",
        lambda: f"{nanp()}.{nanp()}.{d(4)}",
        lambda: f"+44 20 {d(4)} {d(4)}",
        lambda: f"+44 7{d(3)} {d(6)}",
        lambda: f"+44.20.{d(4)}.{d(4)}",
        lambda: f"+49 30 {d(8)}",
        lambda: f"+49 151 {d(8)}",
        lambda: f"+49{R.randint(151, 179)}{d(8)}",
        lambda: f"+33 1 {d(2)} {d(2)} {d(2)} {d(2)}",
        lambda: f"+33.6.{d(2)}.{d(2)}.{d(2)}.{d(2)}",
        lambda: f"+81 3-{d(4)}-{d(4)}",
        lambda: f"+91 98{d(3)} {d(5)}",
        lambda: f"+61 2 {d(4)} {d(4)}",
        lambda: f"+55 11 9{d(4)}-{d(4)}",
        lambda: f"+34 6{d(2)} {d(3)} {d(3)}",
        lambda: f"+1-{nanp()}-{nanp()}-{d(4)}",
        lambda: f"+353 87 {d(3)} {d(4)}",
    ])()


def ssn():
    area = R.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{R.randint(1, 99):02d}-{R.randint(1, 9999):04d}"


def luhn_complete(prefix, length):
    digits = [int(c) for c in prefix] + [R.randint(0, 9) for _ in range(length - len(prefix) - 1)]
    for check in range(10):
        ds = digits + [check]
        if luhn_ok("".join(map(str, ds))):
            return "".join(map(str, ds))
    raise AssertionError


def luhn_ok(num):
    total = 0
    for i, c in enumerate(reversed(num)):
        x = int(c)
        if i % 2 == 1:
            x *= 2
            if x > 9:
                x -= 9
        total += x
    return total % 10 == 0


def group_card(num, sep):
    if len(num) == 15:
        parts = [num[:4], num[4:10], num[10:]]
    else:
        parts = [num[i:i + 4] for i in range(0, len(num), 4)]
    return sep.join(parts)


def card():
    prefix, length = R.choice([("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15), ("6011", 16),
                               ("65", 16), ("3530", 16), ("4", 19)])
    return group_card(luhn_complete(prefix, length), R.choice([" ", "-", "", " "]))


def ipv4():
    while True:
        a = R.choice([R.randint(11, 223), 10, 172, 192, 100])
        if a == 127:
            continue
        if a == 172:
            return f"172.{R.randint(16, 31)}.{R.randint(0, 255)}.{R.randint(1, 254)}"
        if a == 192:
            return f"192.168.{R.randint(0, 255)}.{R.randint(1, 254)}"
        return f"{a}.{R.randint(0, 255)}.{R.randint(0, 255)}.{R.randint(1, 254)}"


def ipv6():
    import ipaddress
    groups = [R.randint(0, 0xFFFF) for _ in range(8)]
    groups[0] = R.choice([0x2001, 0x2a00, 0x2606, 0xfe80, 0x2400, 0x2a02])
    if R.random() < 0.6:
        for i in range(R.randint(2, 5), 7):
            groups[i] = 0
    addr = ipaddress.IPv6Address(":".join(f"{g:x}" for g in groups))
    return addr.compressed if R.random() < 0.75 else addr.exploded


IBAN_SPECS = {"DE": "8n10n", "GB": "4a6n8n", "FR": "10n11c2n", "NL": "4a10n", "ES": "20n", "IT": "1a10n12c",
              "CH": "5n12c", "BE": "12n", "AT": "16n", "PL": "24n", "SE": "20n", "IE": "4a6n8n", "PT": "21n",
              "DK": "14n", "NO": "11n", "FI": "14n"}


def iban():
    import re
    country = R.choice(sorted(IBAN_SPECS))
    bban = ""
    for num, t in re.findall(r"(\d+)([nac])", IBAN_SPECS[country]):
        bban += rnd({"n": DIGITS, "a": UPPER, "c": UPPER + DIGITS}[t], int(num))
    n = int("".join(str(int(c, 36)) for c in bban + country + "00"))
    compact = f"{country}{98 - n % 97:02d}{bban}"
    if R.random() < 0.5:
        return " ".join(compact[i:i + 4] for i in range(0, len(compact), 4))
    return compact


def aws_key():
    return R.choice(["AKIA", "ASIA"]) + rnd(UPPER + "234567", 16)


def aws_secret():
    return mixed(B64, 40)


def aws_session_token():
    return R.choice(["IQoJb3JpZ2luX2Vj", "FwoGZXIvYXdzE"]) + mixed(B64, R.choice([220, 300, 360]))


def azure_key():
    return R.choice([
        lambda: ("storage", mixed(B64, 86) + "=="),
        lambda: ("sas", mixed(ALNUM, 43) + "%3D"),
        lambda: ("ad", rnd(ALNUM, 3) + str(R.randint(0, 9)) + "Q~" + mixed(URLSAFE + "~.", 34)),
        lambda: ("shared", mixed(B64, 43) + "="),
    ])()


def gcp_credential():
    return R.choice([
        lambda: ("key_id", sha(40)),
        lambda: ("client_secret", "GOCSPX-" + mixed(URLSAFE, 28)),
        lambda: ("access_token", "ya29." + mixed(URLSAFE, R.choice([60, 120]))),
    ])()


def github_token():
    if R.random() < 0.35:
        return "github_pat_" + mixed(ALNUM, 22) + "_" + mixed(ALNUM, 59)
    return R.choice(["ghp_", "gho_", "ghs_", "ghu_", "ghr_"]) + mixed(ALNUM, 36)


def gitlab_token():
    return R.choice([
        lambda: "glpat-" + mixed(URLSAFE, 20),
        lambda: "glpat-" + mixed(ALNUM, 27) + "." + rnd(LOWER + DIGITS, 2) + rnd(LOWER + DIGITS, 7),
        lambda: "gldt-" + mixed(ALNUM, 20),
        lambda: "glrt-" + mixed(ALNUM, 20),
        lambda: "glptt-" + sha(40),
        lambda: "GR1348941" + mixed(URLSAFE, 20),
    ])()


def hf_token():
    return "hf_" + rnd(UPPER + LOWER, 34)


def npm_token():
    return "npm_" + mixed(ALNUM, 36)


def pypi_token():
    return "pypi-AgEIcHlwaS5vcmc" + mixed(URLSAFE, R.choice([70, 120, 160]))


def slack_token():
    if R.random() < 0.3:
        return (f"https://hooks.slack.com/services/T{rnd(UPPER + DIGITS, 8)}/B{rnd(UPPER + DIGITS, 10)}/"
                f"{mixed(ALNUM, 24)}")
    return R.choice([
        lambda: f"xoxb-{R.randint(10**10, 10**12)}-{R.randint(10**11, 10**13)}-{mixed(ALNUM, 24)}",
        lambda: f"xoxp-{R.randint(10**10, 10**12)}-{R.randint(10**10, 10**12)}-{R.randint(10**11, 10**13)}-{rnd(HEX, 32)}",
        lambda: f"xapp-1-A{rnd(UPPER + DIGITS, 10)}-{R.randint(10**12, 10**13)}-{rnd(HEX, 64)}",
    ])()


def stripe_key():
    return R.choice(["sk_live_", "rk_live_", "sk_test_", "whsec_"]) + mixed(ALNUM, R.choice([24, 32, 99]))


def sendgrid_key():
    return "SG." + mixed(URLSAFE, 22) + "." + mixed(URLSAFE, 43)


def twilio_key():
    return R.choice([lambda: "SK" + rnd(HEX, 32), lambda: ("auth", rnd(HEX, 32))])()


def openai_key():
    return R.choice([
        lambda: "sk-proj-" + mixed(URLSAFE, 58) + "T3BlbkFJ" + mixed(URLSAFE, 58),
        lambda: "sk-" + mixed(ALNUM, 20) + "T3BlbkFJ" + mixed(ALNUM, 20),
        lambda: "sk-svcacct-" + mixed(URLSAFE, 74) + "T3BlbkFJ" + mixed(URLSAFE, 74),
        lambda: "sk-" + mixed(ALNUM, 48),
    ])()


def anthropic_key():
    return R.choice(["sk-ant-api03-", "sk-ant-admin01-"]) + mixed(URLSAFE, 93) + "AA"


def google_key():
    return "AIza" + mixed(URLSAFE, 35)


def b64url(obj):
    return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).decode().rstrip("=")


def jwt():
    header = b64url({"alg": R.choice(["HS256", "RS256", "ES256"]), "typ": "JWT"})
    payload = b64url({"sub": str(R.randint(10**6, 10**9)), "name": full_name(), "iat": R.randint(1_600_000_000, 1_800_000_000)})
    return f"{header}.{payload}.{mixed(URLSAFE, R.choice([43, 86]))}"


def private_key():
    kind = R.choice(["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY", "ENCRYPTED PRIVATE KEY",
                     "DSA PRIVATE KEY", "PGP PRIVATE KEY BLOCK"])
    lines = [rnd(B64, 64) for _ in range(R.randint(3, 8))] + [rnd(B64, R.randint(8, 60)) + "=="]
    if kind == "RSA PRIVATE KEY" and R.random() < 0.4:
        lines = ["Proc-Type: 4,ENCRYPTED", f"DEK-Info: AES-128-CBC,{rnd(HEX.upper(), 32)}", ""] + lines
    return f"-----BEGIN {kind}-----\n" + "\n".join(lines) + f"\n-----END {kind}-----"


SHELL_SPECIAL = "!@#$%^&*()<>|;~`"
WORDS = ["tiger", "Sunset", "maple", "Orbit", "falcon", "Quartz", "river", "Velvet", "copper", "Nimbus"]


def password(style="plain"):
    """A password that can be written in `style` (plain: no quoting needed)."""
    safe_specials = {"plain": "!@#%^*+=~.:,_-", "single": SHELL_SPECIAL + "\"\\ =+", "double": "!@#%^&*()<>|;~+= ",
                     "url": "!*~_-.", "yaml": "!@%^*+=~_-", "json": SHELL_SPECIAL + "' =+"}[style]
    while True:
        p = R.choice([
            lambda: R.choice(WORDS) + str(R.randint(10, 9999)) + R.choice(safe_specials),
            lambda: rnd(ALNUM + safe_specials, R.randint(10, 18)),
            lambda: f"{R.choice(WORDS)}{R.choice(safe_specials)}{R.choice(WORDS)}{R.randint(1, 99)}",
            lambda: R.choice(WORDS).lower() + str(R.randint(100, 999)),
            lambda: mixed(ALNUM, R.randint(12, 20)),
        ])()
        p = p.strip()
        if style == "yaml" and (p[0] in "!@%*&-?|>~{[,'\"#" or ": " in p or " #" in p):
            continue
        if style == "double" and ("$" in p or "`" in p or '"' in p or "\\" in p):
            continue
        if style == "url" and any(c in p for c in "@:/?#[]%"):
            continue
        if len(p) >= 6 and any(c.isalpha() for c in p) and any(c.isdigit() or not (c.isalnum() or c == " ") for c in p):
            return p


def secret_value():
    return R.choice([
        lambda: mixed(ALNUM, R.choice([24, 32, 40, 48])),
        lambda: rnd(HEX, R.choice([32, 40, 64])),
        lambda: "django-insecure-" + rnd(LOWER + DIGITS + "!@#%^&*(-_=+)", 50),
        lambda: mixed(B64, 44) + "=",
        lambda: "tok_" + mixed(ALNUM, 28),
    ])()


def high_entropy():
    return mixed(ALNUM, R.choice([24, 32, 40, 48]))


def home_path():
    f, l = name()
    u = R.choice([f, f"{f[0]}{l}", f"{f}.{l}", f"{f}{l[0]}"])
    return R.choice([f"/home/{u}", f"/Users/{u}", f"C:\\Users\\{u}", f"C:/Users/{u}", f"/var/home/{u}",
                     f"/mnt/c/Users/{u}"]), u


# ---------------------------------------------------------------- secret templates
# A template is (context, text) with {v} for the planted value. Other fields:
# {name}, {first}, {uuid}, {sha}, {ver}, {date}, {ts}, {n}, {host}.

def diff(path, lines, hunk=None):
    hunk = hunk or f"@@ -{R.randint(1, 80)},{R.randint(2, 9)} +{R.randint(1, 80)},{R.randint(2, 9)} @@"
    return f"--- a/{path}\n+++ b/{path}\n{hunk}\n" + "\n".join(lines)


T = {
    "email": [
        ("code", "# Maintainer: {v}\n__version__ = \"{ver}\""),
        ("log", "{ts} INFO  auth: login ok user={v} request_id={uuid}"),
        ("prose", "Hi team, please send the invoices to {v} before Friday. Thanks!"),
        ("code", "const ADMIN_CONTACT = \"{v}\";\nexport default ADMIN_CONTACT;"),
        ("config", "[user]\n    name = {name}\n    email = {v}"),
        ("log", "commit {sha}\nAuthor: {name} <{v}>\nDate:   Tue Mar 5 14:02:11 2024 +0100\n\n    Fix flaky retry test"),
        ("code", "send_mail(to=[\"{v}\"], subject=\"Build {n} failed\")"),
        ("code", "<a href=\"mailto:{v}\">Contact us</a>"),
        ("diff", diff("AUTHORS", [" {name} (maintainer)", "+{name} <{v}>"])),
        ("prose", "Reported-by: {name} <{v}>\nSigned-off-by: {name} <{v2}>"),
        ("config", "maintainers:\n  - name: {name}\n    email: \"{v}\""),
        ("log", "GET /api/v1/users?email={v}&page=2 200 14ms"),
    ],
    "phone": [
        ("prose", "Call me at {v} if the deploy fails again."),
        ("code", "customer = Customer(name=\"{name}\", phone=\"{v}\", tier=\"gold\")"),
        ("log", "{ts} WARN sms: delivery failed to={v} provider=twilio attempt=3"),
        ("prose", "On-call this week: {name}, mobile {v}."),
        ("config", "  contact:\n    phone: \"{v}\"\n    timezone: Europe/Berlin"),
        ("prose", "Support hotline ({name}): {v} (weekdays 9-17 CET)"),
        ("diff", diff("contacts.csv", [" name,role,phone", "+{name},oncall,{v}"])),
        ("code", "{{\"id\": {n}, \"phone_number\": \"{v}\", \"verified\": true}}"),
        ("prose", "Tel. {v} / Fax on request"),
    ],
    "ssn": [
        ("code", "employee = {{\"name\": \"{name}\", \"ssn\": \"{v}\", \"dept\": \"R&D\"}}"),
        ("log", "ERROR payroll: validation failed for record {n}: ssn={v} already exists"),
        ("prose", "Her SSN is {v}, please update the W-2 form."),
        ("code", "INSERT INTO people (name, ssn) VALUES ('{name}', '{v}');"),
        ("diff", diff("fixtures/people.yml", ["   name: {name}", "+  ssn: {v}"])),
        ("prose", "social security number: {v}"),
    ],
    "credit_card": [
        ("code", "charge = stripe.Charge.create(amount=2000, card_number=\"{v}\")"),
        ("log", "{ts} DEBUG checkout: card={v} exp=09/27 amount=49.99"),
        ("prose", "Use my card {v} for the team lunch order."),
        ("code", "{{\"order\": {n}, \"pan\": \"{v}\", \"currency\": \"EUR\"}}"),
        ("diff", diff("tests/test_payments.py", ["     def test_charge(self):", "+        card = \"{v}\""])),
        ("config", "payment:\n  card_number: {v}\n  cvv: 123"),
        ("prose", "Visa ending ... actually the full number is {v}"),
    ],
    "ipv4": [
        ("code", "ssh deploy@{v} -p 2222"),
        ("log", "{ts} ERROR upstream timed out (110) while connecting to upstream, client: {v}, server: api"),
        ("code", "ALLOWED_HOSTS = [\"localhost\", \"{v}\"]"),
        ("prose", "The staging box is at {v}, ask ops for access."),
        ("config", "  - name: DB_HOST\n    value: \"{v}\""),
        ("log", "X-Forwarded-For: {v}, 127.0.0.1"),
        ("diff", diff("inventory.ini", [" [web]", "+{v} ansible_user=deploy"])),
        ("log", "{v} - - [02/May/2024:10:14:07 +0000] \"GET /health HTTP/1.1\" 200 2"),
        ("config", "server {{\n    listen {v}:443 ssl;\n}}"),
    ],
    "ipv6": [
        ("code", "ping6 {v}"),
        ("config", "listen [{v}]:443 ssl;"),
        ("log", "{ts} INFO peer connected addr={v} proto=quic"),
        ("prose", "Our office egress is {v}, whitelist it please."),
        ("diff", diff("firewall.rules", [" # office", "+allow from {v}"])),
        ("log", "Connection from {v} port 51234 on ::1 port 22"),
    ],
    "iban": [
        ("prose", "Please transfer the deposit to IBAN {v} (account holder {name})."),
        ("code", "payout = Payout(iban=\"{v}\", amount=Decimal(\"120.00\"))"),
        ("log", "{ts} INFO sepa: mandate created iban={v} ref={n}"),
        ("config", "IBAN: {v}\nBIC: DEUTDEFFXXX"),
        ("diff", diff("billing/fixtures.json", ["   \"holder\": \"{name}\",", "+  \"iban\": \"{v}\""])),
    ],
    "aws_key": [
        ("config", "AWS_ACCESS_KEY_ID={v}\nAWS_DEFAULT_REGION=eu-west-1"),
        ("code", "s3 = boto3.client(\"s3\", aws_access_key_id=\"{v}\")"),
        ("config", "[default]\naws_access_key_id = {v}\nregion = us-east-1"),
        ("prose", "Found the leaked key {v} in the CI logs, rotating now."),
        ("diff", diff("deploy/env.sh", [" export AWS_REGION=eu-west-1", "+export AWS_ACCESS_KEY_ID={v}"])),
        ("log", "{ts} ERROR InvalidClientTokenId: The security token included in the request is invalid (key {v})"),
    ],
    "aws_secret": [
        ("config", "[default]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\naws_secret_access_key = {v}"),
        ("config", "export AWS_SECRET_ACCESS_KEY={v}"),
        ("code", "session = boto3.Session(aws_secret_access_key=\"{v}\")"),
        ("diff", diff(".env", [" AWS_REGION=us-east-1", "+AWS_SECRET_ACCESS_KEY=\"{v}\""])),
        ("config", "aws:\n  secret_access_key: {v}"),
    ],
    "aws_session_token": [
        ("config", "[temp]\naws_session_token = {v}"),
        ("config", "export AWS_SESSION_TOKEN={v}"),
        ("code", "creds = {{\"SessionToken\": \"{v}\", \"Expiration\": \"{ts}\"}}"),
        ("log", "{ts} DEBUG sts: assumed role, token {v}"),
    ],
    "azure_key": [
        ("config", "AZURE_STORAGE_CONNECTION_STRING=\"DefaultEndpointsProtocol=https;AccountName=acmedata;AccountKey={v};EndpointSuffix=core.windows.net\""),
        ("code", "conn = \"Endpoint=sb://acme.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey={v}\""),
        ("log", "GET https://acmedata.blob.core.windows.net/backups/db.bak?sv=2022-11-02&ss=b&srt=o&sp=r&se=2025-01-01T00:00:00Z&sig={v} 200"),
        ("config", "AZURE_CLIENT_SECRET={v}"),
    ],
    "gcp_credential": [
        ("config", "{{\n  \"type\": \"service_account\",\n  \"project_id\": \"acme-prod\",\n  \"private_key_id\": \"{v}\",\n  \"client_id\": \"{n}\"\n}}"),
        ("config", "GOOGLE_CLIENT_SECRET={v}"),
        ("log", "{ts} DEBUG oauth: Authorization: Bearer {v}"),
    ],
    "github_token": [
        ("code", "git clone https://{v}@github.com/acme/infra.git"),
        ("config", "export GITHUB_TOKEN={v}"),
        ("config", "      - uses: actions/checkout@v4\n        with:\n          token: {v}"),
        ("code", "headers = {{\"Authorization\": f\"token {v}\"}}"),
        ("prose", "I pasted my token {v} in the chat by mistake, revoke it."),
        ("diff", diff(".github/workflows/release.yml", ["       env:", "+        GH_TOKEN: {v}"])),
        ("code", "url = \"https://x-access-token:{v}@github.com/acme/app.git\""),
    ],
    "gitlab_token": [
        ("config", "GITLAB_TOKEN={v}"),
        ("code", "git push https://oauth2:{v}@gitlab.com/acme/api.git main"),
        ("config", "[[runners]]\n  url = \"https://gitlab.com/\"\n  token = \"{v}\""),
        ("prose", "use {v} for the registry login"),
    ],
    "huggingface_token": [
        ("config", "HF_TOKEN={v}"),
        ("code", "login(token=\"{v}\")"),
        ("prose", "huggingface-cli login --token {v}"),
        ("diff", diff("train.sh", [" set -e", "+export HUGGING_FACE_HUB_TOKEN={v}"])),
    ],
    "npm_token": [
        ("config", "//registry.npmjs.org/:_authToken={v}"),
        ("config", "NPM_TOKEN={v}"),
        ("diff", diff(".npmrc", [" registry=https://registry.npmjs.org/", "+//registry.npmjs.org/:_authToken={v}"])),
    ],
    "pypi_token": [
        ("config", "[pypi]\n  username = __token__\n  password = {v}"),
        ("code", "twine upload -u __token__ -p {v} dist/*"),
        ("config", "TWINE_PASSWORD={v}"),
    ],
    "slack_token": [
        ("config", "SLACK_BOT_TOKEN={v}"),
        ("code", "requests.post(\"{v}\", json={{\"text\": \"deploy done\"}})"),
        ("code", "app = App(token=\"{v}\")"),
        ("prose", "webhook/token for #alerts: {v}"),
        ("diff", diff("config/notify.yml", [" channel: \"#deploys\"", "+token: {v}"])),
    ],
    "stripe_key": [
        ("config", "STRIPE_SECRET_KEY={v}"),
        ("code", "stripe.api_key = \"{v}\""),
        ("code", "Stripe::setApiKey('{v}');"),
        ("diff", diff("config/stripe.js", [" module.exports = {{", "+  secret: '{v}',"])),
    ],
    "sendgrid_key": [
        ("config", "SENDGRID_API_KEY={v}"),
        ("code", "sg = SendGridAPIClient(\"{v}\")"),
        ("log", "{ts} DEBUG mail: Authorization: Bearer {v}"),
    ],
    "twilio_key": [
        ("config", "TWILIO_API_KEY={v}"),
        ("code", "client = Client(\"{v}\", api_secret, account_sid)"),
        ("config", "TWILIO_AUTH_TOKEN={v}"),
    ],
    "openai_key": [
        ("config", "OPENAI_API_KEY={v}"),
        ("code", "client = OpenAI(api_key=\"{v}\")"),
        ("code", "const openai = new OpenAI({{ apiKey: '{v}' }});"),
        ("prose", "my key is {v} but it says quota exceeded"),
        ("diff", diff("notebooks/demo.py", [" import openai", "+openai.api_key = \"{v}\""])),
    ],
    "anthropic_key": [
        ("config", "ANTHROPIC_API_KEY={v}"),
        ("code", "client = anthropic.Anthropic(api_key=\"{v}\")"),
        ("code", "curl https://api.anthropic.com/v1/messages -H \"x-api-key: {v}\""),
        ("diff", diff(".env.local", [" MODEL=claude", "+ANTHROPIC_API_KEY={v}"])),
    ],
    "google_api_key": [
        ("config", "GOOGLE_MAPS_KEY={v}"),
        ("code", "<script src=\"https://maps.googleapis.com/maps/api/js?key={v}&callback=initMap\"></script>"),
        ("code", "const firebaseConfig = {{ apiKey: \"{v}\", projectId: \"demo-app\" }};"),
        ("prose", "restrict the key {v} to our referrers"),
    ],
    "private_key": [
        ("config", "{v}"),
        ("config", "ssh_key: |\n  {v_indented}"),
        ("config", "{{\"type\": \"service_account\", \"private_key\": \"{v_json}\\n\", \"client_id\": \"{n}\"}}"),
        ("prose", "Here's the deploy key, don't share it:\n{v}\n"),
        ("diff", "--- /dev/null\n+++ b/deploy/id_rsa\n@@ -0,0 +1,{n} @@\n{v_diff}"),
    ],
    "jwt": [
        ("log", "Authorization: Bearer {v}"),
        ("code", "curl -H 'Authorization: Bearer {v}' https://api.internal/v1/me"),
        ("log", "{ts} DEBUG session cookie={v}"),
        ("code", "localStorage.setItem(\"jwt\", \"{v}\");"),
        ("log", "redirecting to https://app.internal/callback?token={v}"),
        ("prose", "decode this for me: {v}"),
    ],
    "password": [
        ("config", "DATABASE_URL=postgres://app:{v_url}@{host}:5432/app"),
        ("config", "MYSQL_URL=mysql://root:{v_url}@{host}:3306/shop"),
        ("config", "MONGO_URI=mongodb+srv://admin:{v_url}@cluster0.mongodb.net/prod?retryWrites=true"),
        ("config", "REDIS_URL=redis://:{v_url}@cache.internal:6379/0"),
        ("config", "AMQP_URL=amqp://guest:{v_url}@rabbit.internal:5672/vhost"),
        ("code", "password = \"{v_double}\""),
        ("config", "db:\n  user: app\n  password: {v_yaml}"),
        ("config", "{{\"username\": \"{first}\", \"password\": \"{v_json}\"}}"),
        ("code", "mysql --user=root --password={v} -h {host}"),
        ("code", "mysql -u root -p'{v_single}' -h {host} shop"),
        ("code", "mysql -uroot -p{v} shop < dump.sql"),
        ("code", "psql \"host={host} user=app dbname=app\" --password={v}"),
        ("prose", "The wifi password is {v} btw."),
        ("code", "conn = psycopg2.connect(host=\"db\", user=\"app\", password=\"{v_double}\")"),
        ("config", "DB_PASSWORD={v}"),
        ("config", "export PGPASSWORD='{v_single}'"),
        ("config", "spring.datasource.password={v}"),
        ("config", "[database]\nuser = \"app\"\npassword = \"{v_double}\""),
        ("config", "[mysqld]\nuser=app\npassword={v}"),
        ("config", "jdbc:postgresql://{host}:5432/app?user=app&password={v_url}&ssl=true"),
        ("config", "Server={host};Database=app;User Id=sa;Password={v};TrustServerCertificate=true"),
        ("code", "<password>{v}</password>"),
        ("code", "$password = '{v_single}';"),
        ("code", "config.password = '{v_single}'"),
        ("code", "sshpass -p '{v_single}' ssh deploy@bastion"),
        ("code", "docker login -u ci -p {v} registry.internal"),
        ("code", "curl -u admin:{v} https://jenkins.internal/api/json"),
        ("diff", diff("docker-compose.yml", ["     environment:", "+      POSTGRES_PASSWORD: {v_yaml}"])),
        ("diff", diff("settings.py", [" DATABASES = {{", "+    'PASSWORD': '{v_single}',"])),
        ("code", "$pw = ConvertTo-SecureString \"{v_double}\" -AsPlainText -Force"),
        ("config", "requirepass {v}"),
        ("config", "apiVersion: v1\nkind: Secret\nstringData:\n  password: \"{v_double}\""),
        ("code", "Password: \"{v_double}\","),
        ("code", "CREATE USER app WITH PASSWORD '{v_single}';"),
        ("code", "CREATE USER 'app'@'%' IDENTIFIED BY '{v_single}';"),
        ("config", "machine api.heroku.com\n  login ci-bot\n  password {v}"),
        ("code", "redis-cli -h cache.internal -a {v} ping"),
        ("code", "docker run -e POSTGRES_PASSWORD={v} -p 5432:5432 postgres:16"),
        ("code", "os.environ[\"DB_PASSWORD\"] = \"{v_double}\""),
    ],
    "secret": [
        ("code", "SECRET_KEY = \"{v}\""),
        ("config", "client_secret: {v}"),
        ("config", "API_TOKEN={v}"),
        ("code", "config.auth_token = '{v}'"),
        ("config", "{{\"webhook_secret\": \"{v}\"}}"),
        ("log", "GET https://api.internal/v1/data?api_key={v}&format=json 200"),
        ("code", "curl -H \"X-Api-Key: {v}\" https://api.internal/v1/items"),
        ("config", "[auth]\ntoken = \"{v}\""),
        ("config", "jwt_secret={v}"),
        ("diff", diff("config/secrets.yml", [" production:", "+  secret_key_base: {v}"])),
        ("log", "Authorization: Basic {basic}"),
        ("code", "SESSION_SECRET=\"{v}\" node server.js"),
        ("code", "headers = {{\"Authorization\": \"Bearer {v}\"}}"),
    ],
    "high_entropy": [
        ("log", "{ts} INFO signed upload url issued sig={v} expires=3600"),
        ("code", "curl -H \"X-Signature: {v}\" https://hooks.internal/ingest"),
        ("prose", "The recovery code is {v}, store it somewhere safe."),
        ("code", "const seed = \"{v}\";"),
        ("log", "{ts} DEBUG cache: set session:{v} ttl=900"),
        ("diff", diff("tests/fixtures.rs", [" const USER: &str = \"ana\";", "+const NONCE_SEED: &str = \"{v}\";"])),
    ],
    "home_path": [
        ("log", "Traceback (most recent call last):\n  File \"{v}/projects/app/main.py\", line 12, in <module>\n    main()"),
        ("log", "error[E0425]: cannot find value `x` in this scope\n --> {v}/code/sam/src/lib.rs:10:5"),
        ("code", "cd {v}/Downloads && tar xzf release.tar.gz"),
        ("config", "PYTHONPATH={v}/venvs/ml/lib/python3.11/site-packages"),
        ("diff", diff("Cargo.toml", [" [dependencies]", "+regex = {{ path = \"{v}/rust/regex\" }}"])),
        ("prose", "it works on my machine ({v}/src/app), not in CI"),
    ],
}

GEN = {
    "email": email, "phone": phone, "ssn": ssn, "credit_card": card, "ipv4": ipv4, "ipv6": ipv6, "iban": iban,
    "aws_key": aws_key, "aws_secret": aws_secret, "aws_session_token": aws_session_token,
    "github_token": github_token, "gitlab_token": gitlab_token, "huggingface_token": hf_token,
    "npm_token": npm_token, "pypi_token": pypi_token, "slack_token": slack_token, "stripe_key": stripe_key,
    "sendgrid_key": sendgrid_key, "openai_key": openai_key, "anthropic_key": anthropic_key,
    "google_api_key": google_key, "private_key": private_key, "jwt": jwt, "secret": secret_value,
    "high_entropy": high_entropy,
}


def fill(tpl, **kw):
    f, l = name()
    base = dict(name=f"{f.title()} {l.title()}", first=f, n=R.randint(100, 99999), uuid=uuid(), sha=sha(),
                ver=version(), date=date(), ts=ts(), host=host(), dom=R.choice(["corp.invalid"]))
    base.update(kw)
    return tpl.format(**base)


def spans_of(text, value):
    """Byte spans of every occurrence of `value` in `text`."""
    tb, vb = text.encode(), value.encode()
    out, i = [], tb.find(vb)
    while i >= 0:
        out.append([i, i + len(vb)])
        i = tb.find(vb, i + 1)
    return out


def secret(kind, value, text, pieces=None, shown=None):
    shown = shown if shown is not None else value
    spans = spans_of(text, shown)
    assert spans, (kind, shown, text)
    return {"kind": kind, "value": value, "span": spans[0], "spans": spans, "must_not_contain": pieces or [value]}


def secret_row(kind, i):
    ctx, tpl = T[kind][i % len(T[kind])]
    if kind == "password":
        styles = {"v": "plain", "v_url": "url", "v_double": "double", "v_single": "single", "v_yaml": "yaml",
                  "v_json": "json"}
        key = next(k for k in ("v_url", "v_double", "v_single", "v_yaml", "v_json", "v") if "{" + k + "}" in tpl)
        v = password(styles[key])
        shown = v.replace("\\", "\\\\").replace('"', '\\"') if key == "v_json" else v
        text = fill(tpl, **{key: shown})
        return ctx, text, [secret(kind, v, text, [shown], shown)]
    if kind == "home_path":
        base, user = home_path()
        text = fill(tpl, v=base)
        return ctx, text, [secret(kind, user, text, [base], user)]
    if kind == "private_key":
        v = private_key()
        body = [l for l in v.split("\n") if l and not l.startswith("-----") and ":" not in l]
        text = fill(tpl, v=v, v_indented=v.replace("\n", "\n  "), v_json=v.replace("\n", "\\n"),
                    v_diff="\n".join("+" + l for l in v.split("\n")), n=len(v.split("\n")))
        return ctx, text, [secret(kind, v, text, body, v.split("\n")[0])]
    if kind == "jwt":
        v = jwt()
        text = fill(tpl, v=v)
        return ctx, text, [secret(kind, v, text, v.split("."))]
    if kind == "email":
        v, v2 = email(), email()
        text = fill(tpl, v=v, v2=v2)
        out = [secret(kind, v, text)]
        if "{v2}" in tpl:
            out.append(secret(kind, v2, text))
        return ctx, text, out
    if kind in ("azure_key", "gcp_credential", "twilio_key"):
        # Values whose template depends on their form.
        for _ in range(100):
            v = {"azure_key": azure_key, "gcp_credential": gcp_credential, "twilio_key": twilio_key}[kind]()
            form, v = v if isinstance(v, tuple) else ("sk", v)
            want = {
                ("azure_key", "storage"): 0, ("azure_key", "shared"): 1, ("azure_key", "sas"): 2, ("azure_key", "ad"): 3,
                ("gcp_credential", "key_id"): 0, ("gcp_credential", "client_secret"): 1,
                ("gcp_credential", "access_token"): 2, ("twilio_key", "sk"): [0, 1], ("twilio_key", "auth"): 2,
            }[(kind, form)]
            if i % len(T[kind]) in (want if isinstance(want, list) else [want]):
                break
        text = fill(tpl, v=v)
        return ctx, text, [secret(kind, v, text)]
    if kind == "secret" and "{basic}" in tpl:
        cred = f"{R.choice(FIRST)}:{password('plain')}"
        v = base64.b64encode(cred.encode()).decode()
        text = fill(tpl, basic=v)
        return ctx, text, [secret(kind, v, text)]
    v = GEN[kind]()
    # In a URL or a header, a value is URL-safe.
    while kind == "secret" and any(k in tpl for k in ("http", "Bearer", "X-Api")) and not v.replace("_", "").isalnum():
        v = GEN[kind]()
    if kind == "iban" and ctx == "config" and " " in v:
        v = v.replace(" ", "")
    text = fill(tpl, v=v)
    return ctx, text, [secret(kind, v, text)]


# ---------------------------------------------------------------- mixed rows: several families in one file

def mixed_rows():
    rows = []
    for i in range(40):
        choice = i % 5
        if choice == 0:
            a, s, p = aws_key(), aws_secret(), password("plain")
            text = (f"# deploy/.env ({date()})\nAPP_VERSION={version()}\nAWS_ACCESS_KEY_ID={a}\n"
                    f"AWS_SECRET_ACCESS_KEY={s}\nDB_PASSWORD={p}\nREQUEST_ID={uuid()}\n")
            secrets = [secret("aws_key", a, text), secret("aws_secret", s, text), secret("password", p, text)]
        elif choice == 1:
            e, ip, t = email(), ipv4(), github_token()
            text = (f"commit {sha()}\nAuthor: {full_name()} <{e}>\nDate: {date()}\n\n    ci: push from runner\n\n"
                    f"--- a/ci.sh\n+++ b/ci.sh\n@@ -3,2 +3,3 @@\n ssh ci@{ip} 'make deploy'\n+export GH_TOKEN={t}\n")
            secrets = [secret("email", e, text), secret("ipv4", ip, text), secret("github_token", t, text)]
        elif choice == 2:
            j, ph = jwt(), phone()
            text = (f"{ts()} INFO  req={uuid()} user-agent=curl/{version()} auth=Bearer {j}\n"
                    f"{ts()} WARN  sms fallback to {ph} (attempt 2)\n")
            secrets = [secret("jwt", j, text, j.split(".")), secret("phone", ph, text)]
        elif choice == 3:
            k, ib = stripe_key(), iban()
            text = (f"Hi {R.choice(FIRST).title()},\n\nthe refund for order #{R.randint(1000, 9999)} goes to {ib}; "
                    f"our Stripe key for the script is {k} (rotate after). Changelog: {version()} ({date()}).\n")
            secrets = [secret("iban", ib, text), secret("stripe_key", k, text)]
        else:
            base, user = home_path()
            o = openai_key()
            text = (f"$ python {base}/bench/run.py --model gpt-4o --key {o}\nRunning {version()} on {date()}\n"
                    f"saved to {base}/bench/out-{sha(8)}.json\n")
            secrets = [secret("home_path", user, text, [base], user), secret("openai_key", o, text)]
        rows.append({"label": "secret", "family": "mixed", "context": "mixed", "text": text, "secrets": secrets})
    return rows


# ---------------------------------------------------------------- clean lookalikes, by class

def bad_card():
    while True:
        prefix, length = R.choice([("4", 16), ("51", 16), ("37", 15), ("6011", 16)])
        num = luhn_complete(prefix, length)
        num = num[:-1] + str((int(num[-1]) + R.randint(1, 9)) % 10)
        if not luhn_ok(num):
            return group_card(num, R.choice([" ", "-", ""]))


def ssh_pub():
    return R.choice([
        lambda: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI" + rnd(B64, 43),
        lambda: "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQ" + rnd(B64, 200),
        lambda: "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBB" + rnd(B64, 88) + "=",
    ])()


def pem(label):
    return f"-----BEGIN {label}-----\n" + "\n".join(rnd(B64, 64) for _ in range(R.randint(3, 6))) + \
        f"\n{rnd(B64, 20)}==\n-----END {label}-----"


CLEAN = {
    "name-not-value": [
        lambda: "fn login(user: &str, password: &str) -> Result<Session, AuthError> {\n    let hash = hash_password(password)?;",
        lambda: "password = os.environ[\"DB_PASSWORD\"]\nuser = os.environ.get(\"DB_USER\", \"app\")",
        lambda: "DB_PASSWORD = os.getenv('DB_PASSWORD')\nAPI_KEY = os.getenv(\"API_KEY\", None)",
        lambda: "def login(username: str, password: str) -> Token:\n    token = issue_token(username)\n    return token",
        lambda: "interface Credentials {\n  username: string;\n  password: string;\n  token?: string;\n}",
        lambda: "type Config struct {\n\tPassword string `json:\"password\"`\n\tAPIKey   string `json:\"api_key\"`\n}",
        lambda: "private String password;\npublic void setPassword(String password) { this.password = password; }",
        lambda: "const { username, password } = req.body;\nconst user = await db.users.findOne({ username });",
        lambda: "db = psycopg2.connect(host=host, user=user, password=password, dbname=name)",
        lambda: "pub struct Login {\n    pub user: String,\n    pub password: SecretString,\n}",
        lambda: "  password:\n    valueFrom:\n      secretKeyRef:\n        name: db-credentials\n        key: password",
        lambda: "parser.add_argument(\"--token\", help=\"API token (or set API_TOKEN)\")\nparser.add_argument(\"--password\", required=False)",
        lambda: "<input type=\"password\" name=\"password\" placeholder=\"Password\" autocomplete=\"current-password\">",
        lambda: "{\n  \"login.password\": \"Mot de passe\",\n  \"login.forgot\": \"Mot de passe oublié ?\"\n}",
        lambda: "password_hash = bcrypt.hashpw(password.encode(), bcrypt.gensalt())",
        lambda: "ALTER TABLE users ADD COLUMN password_hash VARCHAR(255) NOT NULL;",
        lambda: f"PASSWORD_MIN_LENGTH = {R.randint(8, 16)}\nTOKEN_TTL_SECONDS = {R.randint(60, 86400)}",
        lambda: f"max_tokens = {R.choice([256, 512, 1024, 4096])}\ntoken_type = \"bearer\"\ntemperature = 0.{R.randint(1, 9)}",
        lambda: "let token = tokenizer.encode(\"fn main\", true)?;\nlet n_tokens = token.len();",
        lambda: "if password == \"\" {\n    return Err(Error::EmptyPassword);\n}",
        lambda: "secret_name = \"prod/db/credentials\"\nregion_name = \"eu-central-1\"",
        lambda: "Set `password` in the `[database]` section, or pass `--password` on the command line.",
        lambda: "Error: password is required",
        lambda: "if (token === undefined) { throw new Error(\"missing token\"); }",
        lambda: "auth = HTTPBasicAuth(username, password)\nresp = session.get(url, auth=auth)",
        lambda: "password: &str,\n    token: Option<&str>,",
        lambda: "self.password = kwargs.get(\"password\")\nself.api_key = config.api_key",
        lambda: "export DB_PASSWORD=$(vault kv get -field=password secret/db)",
        lambda: f"- name: api\n  env:\n    - name: API_KEY\n      valueFrom: {{secretKeyRef: {{name: api, key: key}}}}",
        lambda: "public_key = load_pem_public_key(data)\nverify(public_key, signature, message)",
    ],
    "placeholder": [
        lambda: "DB_PASSWORD=${DB_PASSWORD}\nAPI_TOKEN=${API_TOKEN:-}",
        lambda: "      env:\n        DB_PASSWORD: ${{ secrets.DB_PASSWORD }}\n        API_TOKEN: ${{ secrets.API_TOKEN }}",
        lambda: "api_key = \"<your-api-key>\"  # get one at https://platform.example.com",
        lambda: "OPENAI_API_KEY=sk-...\nANTHROPIC_API_KEY=sk-ant-...",
        lambda: "export OPENAI_API_KEY=\"sk-your-key-here\"",
        lambda: "password: \"{{ .Values.db.password }}\"\ntoken: {{ .Values.token | quote }}",
        lambda: "GITHUB_TOKEN=ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        lambda: "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\nAWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        lambda: "password: ********\napi_key: [REDACTED]",
        lambda: "DATABASE_URL=postgres://user:password@localhost:5432/mydb",
        lambda: "set PASSWORD=%DB_PASSWORD%\nset TOKEN=%API_TOKEN%",
        lambda: "stripe.api_key = \"sk_test_YOUR_SECRET_KEY\"",
        lambda: "curl -H \"Authorization: Bearer $API_TOKEN\" https://api.internal/v1/me",
        lambda: "curl -H \"Authorization: Bearer <token>\" https://api.example.com/v1/models",
        lambda: "password = \"changeme\"  # default, change on first login",
        lambda: "SLACK_WEBHOOK_URL=https://hooks.slack.com/services/XXX/YYY/ZZZ",
        lambda: "token: <YOUR_TOKEN_HERE>\nsecret: \"REPLACE_ME\"",
        lambda: "mysql -u root -p mydb   # prompts for the password",
        lambda: "ssh-keygen -t ed25519 -C \"work laptop\" -f ~/.ssh/id_ed25519",
        lambda: "The key file starts with -----BEGIN OPENSSH PRIVATE KEY----- and must be chmod 600.",
        lambda: "    environment:\n      - DATABASE_PASSWORD=/run/secrets/db-password\n      - API_KEY_FILE=/run/secrets/api-key",
        lambda: "    healthcheck:\n      test: ['CMD-SHELL', 'mysqladmin ping -h 127.0.0.1 --password=\"$$(cat /run/secrets/db-password)\" --silent']",
        lambda: "- Username: $POSTGRES_USER (see .env)\n- Password: $POSTGRES_PW (see .env)",
        lambda: "POSTGRES_USER=yourUser\nPOSTGRES_PW=changeit\nPGADMIN_MAIL=your@email.com",
        lambda: "ssl_key_password = \"./secrets/key-password.txt\"\ntoken_path = \"~/.config/app/token\"",
    ],
    "public-key": [
        lambda: f"{ssh_pub()} {R.choice(FIRST)}@laptop",
        lambda: f"github.com {ssh_pub()}",
        lambda: pem("PUBLIC KEY"),
        lambda: pem("CERTIFICATE"),
        lambda: pem("RSA PUBLIC KEY"),
        lambda: pem("PGP PUBLIC KEY BLOCK"),
        lambda: f"[Peer]\nPublicKey = {mixed(B64, 43)}=\nAllowedIPs = 10.8.0.2/32",
        lambda: f"recipient: age1{rnd(LOWER + DIGITS, 58)}",
        lambda: f"STRIPE_PUBLISHABLE_KEY=pk_live_{mixed(ALNUM, 24)}",
        lambda: f"ssl_certificate_key /etc/ssl/private/site.key;\nssl_certificate /etc/ssl/certs/site.pem;",
        lambda: f"{{\"kty\":\"RSA\",\"e\":\"AQAB\",\"use\":\"sig\",\"kid\":\"{sha(16)}\",\"n\":\"{mixed(URLSAFE, 342)}\"}}",
        lambda: f"-----BEGIN PGP SIGNATURE-----\n\niQEzBAABCAAdFiEE{rnd(B64, 56)}\n{rnd(B64, 64)}\n={rnd(B64, 4)}\n-----END PGP SIGNATURE-----",
    ],
    "version-date": [
        lambda: f"{version()} ({date()})\n==================",
        lambda: f"## [{version()}] - {date()}\n### Fixed\n- crash on empty input",
        lambda: diff("CHANGELOG.md", [f"-{R.randint(0, 15)}.{R.randint(0, 9)}.{R.randint(0, 9)} (TBD)", "-============",
                                      f"+{R.randint(10, 15)}.{R.randint(0, 9)}.{R.randint(0, 9)} ({date()})", "+==================="],
                     hunk="@@ -1,2 +1,2 @@"),
        lambda: diff("CHANGELOG.md", [f"+{R.randint(0, 9)}.{R.randint(0, 9)}.{R.randint(0, 9)} ({date()})", "+==================",
                                      "+This is a minor release with bug fixes."], hunk="@@ -0,0 +1,3 @@"),
        lambda: f"Upgraded tokio from {version()} to {version()} and serde to {version()}.",
        lambda: f"[assembly: AssemblyVersion(\"{R.randint(1, 9)}.{R.randint(0, 9)}.{R.randint(0, 9)}.{R.randint(0, 9)}\")]",
        lambda: f".\\\" Automatically generated by Pandoc {R.randint(1, 3)}.{R.randint(0, 19)}.{R.randint(0, 9)}.{R.randint(1, 9)}",
        lambda: f"OS build 10.0.{R.randint(19041, 22631)}.{R.randint(1000, 3000)}",
        lambda: f"The meeting is at {R.randint(9, 17)}:{R.choice(['00', '15', '30', '45'])} on {date()}.",
        lambda: f"Released on {R.randint(1, 28):02d}.{R.randint(1, 12):02d}.20{R.randint(15, 26)} and {R.randint(1, 12):02d}/{R.randint(1, 28):02d}/20{R.randint(15, 26)}",
        lambda: f"\"engines\": {{ \"node\": \">={R.randint(14, 20)}.0.0 <{R.randint(21, 23)}.0.0\" }}",
        lambda: f"See section {R.randint(1, 9)}.{R.randint(1, 9)}.{R.randint(1, 9)}.{R.randint(1, 9)} of RFC {R.randint(1000, 9999)}.",
        lambda: f"OID {R.choice(['1.3.6.1.4.1.311.21.8', '2.5.4.3', '1.2.840.113549.1.1.11'])} is sha256WithRSAEncryption",
        lambda: f"@@ -{R.randint(1, 900)},{R.randint(1, 9)} +{R.randint(1, 900)},{R.randint(1, 9)} @@ fn main() {{",
        lambda: f"Processed {R.randint(1000, 99999):,} rows in {R.randint(1, 99)}.{R.randint(0, 99)}s (+{R.randint(1, 40)}.{R.randint(0, 9)}%, +{R.randint(1, 9)},{R.randint(100, 999)} since {date()})",
        lambda: f"uptime {R.randint(1, 99)} days, {R.randint(0, 23)}:{R.randint(10, 59)}, load average: 0.{R.randint(10, 99)}",
        lambda: f"regex = \"{R.randint(1, 1)}.{R.randint(0, 11)}\"\nserde = {{ version = \"{version()}\", features = [\"derive\"] }}",
        lambda: f"ISBN 978-{R.randint(0, 9)}-{R.randint(100, 999)}-{R.randint(10000, 99999)}-{R.randint(0, 9)}",
        lambda: f"ticket JIRA-{R.randint(100, 9999)}: bump python to 3.{R.randint(8, 13)}.{R.randint(0, 9)} ({date()})",
        lambda: f"order_id={R.randint(10**9, 10**10)} created_at={R.randint(1_600_000_000, 1_800_000_000)} total=129.90",
        lambda: f"Copyright (c) 2014-20{R.randint(18, 26)}, ripgrep authors. Version {version()} built {ts()}",
        lambda: f"+{R.randint(1, 9)}.{R.randint(0, 9)}.{R.randint(0, 9)} ({date()})\n+------------------",
        lambda: f"v{R.randint(1, 9)}.{R.randint(0, 9)}.{R.randint(0, 9)}.{R.randint(0, 9)} shipped on {date()}",
        lambda: f"latency p50={R.randint(1, 99)}ms p99={R.randint(100, 999)}ms window={R.randint(2019, 2024)}-{R.randint(2025, 2026)}",
    ],
    "commit-sha": [
        lambda: f"commit {sha()}\nMerge: {sha(7)} {sha(7)}",
        lambda: f"[1] https://github.com/{R.choice(['RazrFalcon/memmap2-rs', 'BurntSushi/ripgrep', 'rust-lang/regex'])}/commit/{sha()}",
        lambda: f"Fixes https://github.com/BurntSushi/ripgrep/issues/{R.randint(1, 3000)}, PR https://github.com/BurntSushi/ripgrep/pull/{R.randint(1, 3000)}",
        lambda: f"      - uses: actions/checkout@{sha()}  # v4.1.{R.randint(0, 9)}",
        lambda: f"$ git rev-parse HEAD\n{sha()}",
        lambda: f"This reverts commit {sha()}.",
        lambda: f"* {sha(7)} (HEAD -> main, origin/main) docs: fix typo",
        lambda: f"Cherry-picked from {sha(12)} on {date()}",
        lambda: f"diff --git a/src/lib.rs b/src/lib.rs\nindex {sha(7)}..{sha(7)} 100644",
        lambda: f"git-tree-sha1 = \"{sha()}\"",
    ],
    "integrity": [
        lambda: f"\"resolved\": \"https://registry.npmjs.org/lodash/-/lodash-4.17.21.tgz\",\n\"integrity\": \"sha512-{rnd(B64, 86)}==\"",
        lambda: f"github.com/stretchr/testify v1.8.4 h1:{rnd(B64, 43)}=\ngithub.com/stretchr/testify v1.8.4/go.mod h1:{rnd(B64, 43)}=",
        lambda: f"[[package]]\nname = \"regex\"\nversion = \"{version()}\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\nchecksum = \"{sha(64)}\"",
        lambda: f"lodash@^4.17.21:\n  version \"4.17.21\"\n  resolved \"https://registry.yarnpkg.com/lodash/-/lodash-4.17.21.tgz#{sha()}\"\n  integrity sha512-{rnd(B64, 86)}==",
        lambda: f"<script src=\"https://cdn.example.com/lib.min.js\" integrity=\"sha384-{rnd(B64, 64)}\" crossorigin=\"anonymous\"></script>",
        lambda: f"requests==2.31.0 \\\n    --hash=sha256:{sha(64)}",
        lambda: f"  src = fetchurl {{\n    url = \"https://example.org/pkg.tar.gz\";\n    hash = \"sha256-{rnd(B64, 43)}=\";\n  }};",
        lambda: f"/lodash/4.17.21:\n    resolution: {{integrity: sha512-{rnd(B64, 86)}==}}",
        lambda: f"\"content-hash\": \"{sha(32)}\",",
    ],
    "checksum": [
        lambda: f"{sha(64)}  release-{version()}.tar.gz",
        lambda: f"docker pull ghcr.io/acme/api@sha256:{sha(64)}",
        lambda: f"cache key: {sha(32)} (md5 of Cargo.lock)",
        lambda: f"ETag: \"{sha(32)}\"\nDigest: sha-256={rnd(B64, 43)}=",
        lambda: f"oid sha256:{sha(64)}\nsize {R.randint(1000, 9999999)}",
        lambda: f"SHA256 fingerprint: {':'.join(rnd('0123456789ABCDEF', 2) for _ in range(32))}",
        lambda: f"The key fingerprint is SHA256:{rnd(B64, 43)} {R.choice(FIRST)}@laptop",
        lambda: f"crc32={R.randint(10**8, 4 * 10**9)} xxh3={sha(16)}",
    ],
    "uuid": [
        lambda: f"{ts()} INFO  http: GET /api/v1/items/{uuid()} 200 12ms",
        lambda: f"const user = await db.users.findOne({{ id: \"{uuid()}\" }});",
        lambda: f"[Guid(\"{uuid().upper()}\")]\npublic interface IPlugin {{}}",
        lambda: f"request_id={uuid()} trace_id={sha(32)} span_id={sha(16)}",
        lambda: f"ulid {rnd('0123456789ABCDEFGHJKMNPQRSTVWXYZ', 26)} created",
        lambda: f"{{\"_id\": {{\"$oid\": \"{sha(24)}\"}}, \"order\": \"ch_{mixed(ALNUM, 24)}\", \"customer\": \"cus_{mixed(ALNUM, 14)}\"}}",
        lambda: f"pod web-{sha(10)}-{rnd(LOWER + DIGITS, 5)} restarted",
        lambda: f"Volume {{{uuid()}}} mounted at /data",
    ],
    "data-uri": [
        lambda: "<img src=\"data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==\">",
        lambda: f"@font-face {{ src: url(data:font/woff2;base64,{rnd(B64, 120)}) format(\"woff2\"); }}",
        lambda: "icon = \"data:image/svg+xml;base64," + base64.b64encode(b'<svg xmlns="http://www.w3.org/2000/svg"/>').decode() + "\"",
        lambda: f"fetch(\"data:application/octet-stream;base64,{rnd(B64, 96)}\")",
        lambda: f"background: url('data:image/gif;base64,{rnd(B64, 60)}=') no-repeat;",
    ],
    "url": [
        lambda: f"See https://docs.rs/regex/{version()}/regex/struct.RegexSet.html#method.matches for details.",
        lambda: f"https://www.youtube.com/watch?v={mixed(URLSAFE, 11)}&t={R.randint(10, 999)}s",
        lambda: f"https://drive.google.com/file/d/1{mixed(URLSAFE, 32)}/view?usp=sharing",
        lambda: f"https://github.com/BurntSushi/ripgrep/blob/{sha()}/crates/core/main.rs#L{R.randint(1, 400)}",
        lambda: f"https://stackoverflow.com/questions/{R.randint(10**6, 10**8)}/how-to-escape-a-regex-in-rust",
        lambda: f"git clone git@github.com:acme/{R.choice(['api', 'web', 'infra'])}.git && cd {R.choice(['api', 'web', 'infra'])}",
        lambda: f"ssh://git@github.com/acme/api.git and https://gitlab.com/acme/api/-/merge_requests/{R.randint(1, 999)}",
        lambda: f"https://s3.eu-west-1.amazonaws.com/acme-public/releases/app-{version()}.zip",
        lambda: f"https://cdn.jsdelivr.net/npm/@scope/pkg@{version()}/dist/Index{mixed(ALNUM, 8)}.js",
        lambda: f"https://public-inbox.org/git/{R.randint(10**7, 10**8)}.{sha(8)}@gmail.com/",
    ],
    "card-like": [
        lambda: f"Use the test card {bad_card()} in the sandbox; it is rejected on purpose.",
        lambda: f"trace_id={luhn_complete('4', 16)} duration={R.randint(1, 999)}ms",
        lambda: f"ts={R.randint(1_600_000_000_000, 1_800_000_000_000)} seq={R.randint(10**15, 10**16)}",
        lambda: f"order_id: {luhn_complete('5', 16)}\nstatus: shipped",
        lambda: f"IMEI {R.randint(10**14, 10**15 - 1)} registered",
        lambda: f"invoice {R.randint(2019, 2026)}-{R.randint(1000, 9999)}-{R.randint(1000, 9999)}",
    ],
    "phone-like": [
        lambda: f"Call stack depth {R.randint(10, 99)}, frames {R.randint(100, 999)}-{R.randint(1000, 9999)}",
        lambda: f"zip {R.randint(10000, 99999)}-{R.randint(1000, 9999)}, suite {R.randint(100, 999)}",
        lambda: f"part no. {R.randint(100, 999)}-{R.randint(10, 99)}-{R.randint(1000, 9999)} (sku)",
        lambda: f"+{R.randint(1, 99)}.{R.randint(0, 9)}% vs last week ({R.randint(1, 9)},{R.randint(100, 999)} users)",
        lambda: f"coordinates +{R.randint(10, 80)}.{R.randint(1000, 9999)}, -{R.randint(10, 170)}.{R.randint(1000, 9999)}",
        lambda: f"build {R.randint(100, 999)}.{R.randint(100, 999)}.{R.randint(1000, 9999)} passed",
        lambda: f"ports 8080-8090, 9000-9100 and range {R.randint(2000, 2015)}-{R.randint(2016, 2026)}",
    ],
    "ip-like": [
        lambda: f"listening on http://127.0.0.1:{R.randint(1024, 65535)} and http://0.0.0.0:{R.randint(1024, 65535)}",
        lambda: f"netmask 255.255.255.0 broadcast 255.255.255.255",
        lambda: f"route add -net 10.0.0.0/8 dev eth0; network 192.168.{R.randint(0, 255)}.0 is ours",
        lambda: f"ALLOWED_CIDRS=172.16.0.0/12,192.168.0.0/16",
        lambda: f"Automatically generated by Pandoc {R.randint(1, 3)}.{R.randint(0, 9)}.{R.randint(0, 9)}.{R.randint(1, 9)}",
        lambda: f"version {R.randint(1, 9)}.{R.randint(0, 9)}.{R.randint(0, 20)}.{R.randint(0, 99)}",
        lambda: f"mac address {':'.join(rnd('0123456789ABCDEF', 2) for _ in range(6))} on eth0",
    ],
    "ipv6-like": [
        lambda: "use std::collections::HashMap;\nlet m: HashMap<u32, String> = HashMap::new();",
        lambda: "std::vector<int> v; auto it = std::find(v.begin(), v.end(), 3);",
        lambda: "ping ::1 ok; route via std::net::Ipv6Addr::LOCALHOST",
        lambda: f"elapsed {R.randint(0, 23):02d}:{R.randint(0, 59):02d}:{R.randint(0, 59):02d} (dead::beef is not an address)",
        lambda: "ip -6 route add fe80::/10 dev eth0",
        lambda: "impl From<io::Error> for Error { fn from(e: io::Error) -> Self { Error::Io(e) } }",
    ],
    "email-like": [
        lambda: f"git clone git@github.com:acme/{R.choice(['api', 'web', 'infra'])}.git",
        lambda: f"npm install lodash@{version().lstrip('v')} @types/node@{R.randint(16, 22)}",
        lambda: "@app.route(\"/login\", methods=[\"POST\"])\ndef login():",
        lambda: "<img src=\"logo@2x.png\" srcset=\"logo@3x.png 3x\">",
        lambda: f"go get github.com/spf13/cobra@v1.{R.randint(1, 9)}.{R.randint(0, 9)}",
        lambda: "user@localhost can connect; root@% cannot",
        lambda: "@Override\npublic String toString() { return name; }",
    ],
    "home-generic": [
        lambda: f"cd /home/runner/work/{R.choice(['sam', 'api'])} && cargo test --release",
        lambda: "mkdir -p /home/user/.config && cp app.toml /home/user/.config/",
        lambda: "ls /Users/Shared/Library and C:\\Users\\Public\\Documents",
        lambda: "export PATH=$HOME/.cargo/bin:$PATH; cd ~/projects",
        lambda: "cp config.yml /home/$USER/.app/ && chown $USER /home/${USER}",
        lambda: "set CONFIG=%USERPROFILE%\\app.ini",
        lambda: "Replace /Users/<username>/ with your home folder.",
        lambda: "WORKDIR /home/node/app\nUSER node",
    ],
    "identifier": [
        lambda: f"fn getUserAccountSettingsV{R.randint(2, 9)}Handler(req: Request) -> Response {{ todo!() }}",
        lambda: f"class AbstractSingletonProxyFactoryBean{R.randint(2, 9)}Impl extends Base {{}}",
        lambda: "models/SmolLM2-135M-Instruct.Q4_1.gguf and Qwen2.5-Coder-1.5B-Instruct-GGUF",
        lambda: f"import org.apache.commons.lang{R.randint(2, 3)}.StringUtils;",
        lambda: "seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xBF58_476D_1CE4_E5B9",
        lambda: f".badge {{ color: #{sha(6)}; background: #ffffff; }}",
        lambda: f"img/{R.choice(['HeaderLogo', 'FooterIcon', 'UserAvatar'])}{R.randint(2, 9)}x.png loaded",
        lambda: "let encoded = \"" + base64.b64encode(R.choice([b'Hello, World! 12345', b'{"user":"ana","admin":false}', b'The quick brown fox 42'])).decode() + "\";",
        lambda: "test_parse_ipv6_addr_with_zone_id_and_port_8443_returns_error",
        lambda: f"kubectl rollout restart deployment/web -n prod  # pod web-{sha(10)}-{rnd(LOWER + DIGITS, 5)}",
        lambda: "AWS access key ids start with AKIA (long-term) or ASIA (temporary).",
        lambda: f"arn:aws:iam::{R.randint(10**11, 10**12 - 1)}:role/deploy-{R.choice(['ci', 'prod'])}",
        lambda: f"Processed {R.randint(1000, 99999):,} rows in {R.randint(1, 99)}.{R.randint(0, 99)}s",
    ],
}


def clean_rows():
    out = []
    for family, gens in CLEAN.items():
        n = max(30, len(gens) * 2)
        for i in range(n):
            text = gens[i % len(gens)]()
            ctx = "diff" if text.startswith("--- ") or "@@ " in text else R.choice(["code", "config", "log", "prose"])
            out.append({"label": "clean", "family": family, "context": ctx, "text": text, "secrets": []})
    return out


def secret_rows():
    out = []
    for kind in T:
        n = max(24, 2 * len(T[kind]))
        for i in range(n):
            ctx, text, secrets = secret_row(kind, i)
            out.append({"label": "secret", "family": kind, "context": ctx, "text": text, "secrets": secrets})
    return out


def main():
    records = secret_rows() + mixed_rows() + clean_rows()
    for i, r in enumerate(records):
        print(json.dumps({"id": i, **r}, ensure_ascii=False))


if __name__ == "__main__":
    main()
