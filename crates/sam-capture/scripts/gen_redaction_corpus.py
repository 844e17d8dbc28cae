#!/usr/bin/env python3
"""Generate the labelled redaction corpus (deterministic).

    python3 crates/sam-capture/scripts/gen_redaction_corpus.py > crates/sam-capture/tests/data/redaction_corpus.jsonl

Each line is one snippet of realistic code, log or prose:
  {"id": 7, "label": "secret"|"clean", "context": "...", "text": "...",
   "secrets": [{"kind": "email", "value": "...", "must_not_contain": ["..."]}]}

"secret" snippets plant one secret or PII value (all fake, but well formed:
Luhn-valid cards, mod-97-valid IBANs, SSNs in valid ranges, provider keys with
the right prefixes and lengths). "clean" snippets look similar but hold
nothing to redact: UUIDs, git hashes, checksums, version strings, card-like
numbers that fail Luhn, placeholders, environment-variable references.
"""
import base64
import ipaddress
import json
import random
import string

R = random.Random(20261125)

FIRST = ["alice", "bob", "carol", "dmitri", "elena", "farid", "grace", "hiro", "ines", "jamal", "kofi", "lena",
         "marta", "nikhil", "olga", "pedro", "quinn", "rosa", "sven", "tanvi", "umar", "vera", "wei", "ximena",
         "yusuf", "zoe"]
LAST = ["smith", "garcia", "nakamura", "okafor", "muller", "rossi", "kowalski", "dubois", "silva", "chen", "patel",
        "johansson", "novak", "haddad", "oconnor", "fischer"]
DOMAINS = ["gmail.com", "acme-corp.io", "fastmail.fm", "uni-heidelberg.de", "globex.co.uk", "initech.com",
           "proton.me", "contoso.org", "hooli.dev", "example-mail.net"]
ALNUM = string.ascii_letters + string.digits
B64 = ALNUM + "+/"
URLSAFE = ALNUM + "-_"


def rnd(alphabet, n):
    return "".join(R.choice(alphabet) for _ in range(n))


def name():
    return R.choice(FIRST), R.choice(LAST)


# ---------------------------------------------------------------- generators

def email():
    f, l = name()
    local = R.choice([f"{f}.{l}", f"{f}_{l}{R.randint(1, 99)}", f"{f[0]}{l}", f"{f}+{R.choice(['dev', 'news', 'git'])}"])
    return f"{local}@{R.choice(DOMAINS)}"


def phone():
    d = lambda n: "".join(str(R.randint(0, 9)) for _ in range(n))
    nanp = lambda: f"{R.randint(2, 9)}{d(2)}"
    return R.choice([
        lambda: f"+1 {nanp()}-{nanp()}-{d(4)}",
        lambda: f"+1 ({nanp()}) {nanp()}-{d(4)}",
        lambda: f"({nanp()}) {nanp()}-{d(4)}",
        lambda: f"{nanp()}-{nanp()}-{d(4)}",
        lambda: f"{nanp()}.{nanp()}.{d(4)}",
        lambda: f"+44 20 {d(4)} {d(4)}",
        lambda: f"+44 7{d(3)} {d(6)}",
        lambda: f"+49 30 {d(8)}",
        lambda: f"+49 151 {d(8)}",
        lambda: f"+33 1 {d(2)} {d(2)} {d(2)} {d(2)}",
        lambda: f"+33 6 {d(2)} {d(2)} {d(2)} {d(2)}",
        lambda: f"+81 3-{d(4)}-{d(4)}",
        lambda: f"+91 98{d(3)} {d(5)}",
        lambda: f"+61 2 {d(4)} {d(4)}",
        lambda: f"+55 11 9{d(4)}-{d(4)}",
        lambda: f"+34 6{d(2)} {d(3)} {d(3)}",
        lambda: f"+1-{nanp()}-{nanp()}-{d(4)}",
    ])()


def ssn():
    area = R.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{R.randint(1, 99):02d}-{R.randint(1, 9999):04d}"


def luhn_complete(prefix, length):
    digits = [int(c) for c in prefix] + [R.randint(0, 9) for _ in range(length - len(prefix) - 1)]
    for check in range(10):
        ds = digits + [check]
        total = 0
        for i, x in enumerate(reversed(ds)):
            if i % 2 == 1:
                x *= 2
                if x > 9:
                    x -= 9
            total += x
        if total % 10 == 0:
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
                               ("65", 16), ("3530", 16)])
    return group_card(luhn_complete(prefix, length), R.choice([" ", "-", ""]))


def ipv4():
    while True:
        a = R.choice([R.randint(1, 223), 10, 172, 192])
        if a == 127:
            continue
        if a == 172:
            return f"172.{R.randint(16, 31)}.{R.randint(0, 255)}.{R.randint(1, 254)}"
        if a == 192:
            return f"192.168.{R.randint(0, 255)}.{R.randint(1, 254)}"
        return f"{a}.{R.randint(0, 255)}.{R.randint(0, 255)}.{R.randint(1, 254)}"


def ipv6():
    groups = [R.randint(0, 0xFFFF) for _ in range(8)]
    groups[0] = R.choice([0x2001, 0x2a00, 0x2606, 0xfe80, 0x2400])
    if R.random() < 0.5:
        for i in range(R.randint(2, 5), 7):
            groups[i] = 0 if R.random() < 0.7 else groups[i]
    addr = ipaddress.IPv6Address(":".join(f"{g:x}" for g in groups))
    return addr.compressed if R.random() < 0.7 else addr.exploded


IBAN_SPECS = {"DE": "8n10n", "GB": "4a6n8n", "FR": "10n11c2n", "NL": "4a10n", "ES": "20n", "IT": "1a10n12c",
              "CH": "5n12c", "BE": "12n", "AT": "16n", "PL": "24n", "SE": "20n", "IE": "4a6n8n"}


def iban_body(spec):
    out = ""
    for num, t in __import__("re").findall(r"(\d+)([nac])", spec):
        alpha = {"n": string.digits, "a": string.ascii_uppercase, "c": string.ascii_uppercase + string.digits}[t]
        out += rnd(alpha, int(num))
    return out


def iban_check(country, bban):
    s = bban + country + "00"
    n = int("".join(str(int(c, 36)) for c in s))
    return f"{98 - n % 97:02d}"


def iban():
    country = R.choice(sorted(IBAN_SPECS))
    bban = iban_body(IBAN_SPECS[country])
    compact = country + iban_check(country, bban) + bban
    if R.random() < 0.5:
        return " ".join(compact[i:i + 4] for i in range(0, len(compact), 4))
    return compact


def aws_key():
    return R.choice(["AKIA", "ASIA"]) + rnd(string.ascii_uppercase + "234567", 16)


def aws_secret():
    return rnd(B64, 40)


def github_token():
    if R.random() < 0.4:
        return "github_pat_" + rnd(ALNUM, 22) + "_" + rnd(ALNUM, 59)
    return R.choice(["ghp_", "gho_", "ghs_", "ghu_"]) + rnd(ALNUM, 36)


def openai_key():
    return R.choice([
        lambda: "sk-proj-" + rnd(URLSAFE, 48) + rnd(ALNUM, 20),
        lambda: "sk-" + rnd(ALNUM, 20) + "T3BlbkFJ" + rnd(ALNUM, 20),
        lambda: "sk-svcacct-" + rnd(URLSAFE, 60) + rnd(ALNUM, 8),
    ])()


def anthropic_key():
    return "sk-ant-api03-" + rnd(URLSAFE, 93) + "AA"


def slack_token():
    if R.random() < 0.25:
        return f"https://hooks.slack.com/services/T{rnd(string.ascii_uppercase + string.digits, 8)}/B{rnd(string.ascii_uppercase + string.digits, 10)}/{rnd(ALNUM, 24)}"
    return f"{R.choice(['xoxb', 'xoxp'])}-{R.randint(10**10, 10**12)}-{R.randint(10**11, 10**13)}-{rnd(ALNUM, 24)}"


def google_key():
    return "AIza" + rnd(URLSAFE, 35)


def stripe_key():
    return R.choice(["sk_live_", "rk_live_"]) + rnd(ALNUM, R.choice([24, 34, 99]))


def private_key():
    kind = R.choice(["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY"])
    lines = [rnd(B64, 64) for _ in range(R.randint(3, 8))] + [rnd(B64, R.randint(8, 60)) + "=="]
    return f"-----BEGIN {kind}-----\n" + "\n".join(lines) + f"\n-----END {kind}-----"


def b64url(obj):
    return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).decode().rstrip("=")


def jwt():
    header = b64url({"alg": R.choice(["HS256", "RS256"]), "typ": "JWT"})
    f, l = name()
    payload = b64url({"sub": str(R.randint(10**6, 10**9)), "name": f"{f.title()} {l.title()}", "iat": R.randint(1.6e9, 1.8e9)})
    return f"{header}.{payload}.{rnd(URLSAFE, 43)}"


def password():
    words = ["tiger", "Sunset", "maple", "Orbit", "falcon", "Quartz", "river", "Velvet"]
    return R.choice([
        lambda: R.choice(words) + str(R.randint(10, 9999)) + R.choice("!#$%&*"),
        lambda: rnd(ALNUM + "!@#%^&*", R.randint(10, 18)),
        lambda: f"{R.choice(words)}-{R.choice(words)}-{R.randint(1, 99)}",
        lambda: R.choice(words).lower() + str(R.randint(100, 999)),
    ])()


def high_entropy():
    while True:
        s = rnd(ALNUM, R.choice([24, 32, 40, 48]))
        if any(c.isdigit() for c in s) and any(c.isupper() for c in s) and any(c.islower() for c in s):
            return s


def home_user():
    f, l = name()
    return R.choice([f, f"{f[0]}{l}", f"{f}.{l}"])


# ---------------------------------------------------------------- templates
# Each template gets {v} (the secret) and may use {name}, {n}, {uuid}, {sha}.

T = {
    "email": [
        "# Maintainer: {v}\n__version__ = \"2.4.1\"",
        "2024-05-02T10:14:07Z INFO  auth: login ok user={v} ip=127.0.0.1 request_id={uuid}",
        "Hi team, please send the invoices to {v} before Friday. Thanks!",
        "const ADMIN_CONTACT = \"{v}\";\nexport default ADMIN_CONTACT;",
        "[user]\n    name = {name}\n    email = {v}",
        "Author: {name} <{v}>\nDate:   Tue Mar 5 14:02:11 2024 +0100\n\n    Fix flaky retry test",
        "send_mail(to=[\"{v}\"], subject=\"Build {n} failed\")",
        "<a href=\"mailto:{v}\">Contact us</a>",
        "Reported-by: {name} <{v}>",
    ],
    "phone": [
        "Call me at {v} if the deploy fails again.",
        "customer = Customer(name=\"{name}\", phone=\"{v}\", tier=\"gold\")",
        "2024-06-11 08:31:55 WARN sms: delivery failed to={v} provider=twilio attempt=3",
        "On-call this week: {name}, mobile {v}.",
        "  contact:\n    phone: \"{v}\"\n    timezone: Europe/Berlin",
        "Support hotline ({name}): {v} (weekdays 9-17 CET)",
    ],
    "ssn": [
        "employee = {{\"name\": \"{name}\", \"ssn\": \"{v}\", \"dept\": \"R&D\"}}",
        "ERROR payroll: validation failed for record {n}: ssn={v} already exists",
        "Her SSN is {v}, please update the W-2 form.",
        "INSERT INTO people (name, ssn) VALUES ('{name}', '{v}');",
    ],
    "credit_card": [
        "charge = stripe.Charge.create(amount=2000, card_number=\"{v}\")",
        "2024-02-19 12:00:03 DEBUG checkout: card={v} exp=09/27 amount=49.99",
        "Use my card {v} for the team lunch order.",
        "{{\"order\": {n}, \"pan\": \"{v}\", \"currency\": \"EUR\"}}",
    ],
    "ipv4": [
        "ssh deploy@{v} -p 2222",
        "2024-01-07 03:12:45 ERROR upstream timed out (110) while connecting to upstream, client: {v}, server: api",
        "ALLOWED_HOSTS = [\"localhost\", \"{v}\"]",
        "The staging box is at {v}, ask ops for access.",
        "  - name: DB_HOST\n    value: \"{v}\"",
        "X-Forwarded-For: {v}, 10.0.0.1",
    ],
    "ipv6": [
        "ping6 {v}",
        "listen [{v}]:443 ssl;",
        "2024-08-30 17:45:12 INFO peer connected addr={v} proto=quic",
        "Our office egress is {v}, whitelist it please.",
    ],
    "iban": [
        "Please transfer the deposit to IBAN {v} (account holder {name}).",
        "payout = Payout(iban=\"{v}\", amount=Decimal(\"120.00\"))",
        "2024-04-04 09:00:00 INFO sepa: mandate created iban={v} ref={n}",
        "IBAN: {v}\nBIC: DEUTDEFFXXX",
    ],
    "aws_key": [
        "AWS_ACCESS_KEY_ID={v}\nAWS_DEFAULT_REGION=eu-west-1",
        "s3 = boto3.client(\"s3\", aws_access_key_id=\"{v}\")",
        "[default]\naws_access_key_id = {v}\nregion = us-east-1",
        "Found the leaked key {v} in the CI logs, rotating now.",
    ],
    "aws_secret": [
        "[default]\naws_access_key_id = <AWS_KEY>\naws_secret_access_key = {v}",
        "export AWS_SECRET_ACCESS_KEY={v}",
        "session = boto3.Session(aws_secret_access_key=\"{v}\")",
    ],
    "github_token": [
        "git clone https://{v}@github.com/acme/infra.git",
        "export GITHUB_TOKEN={v}",
        "      - uses: actions/checkout@v4\n        with:\n          token: {v}",
        "headers = {{\"Authorization\": f\"token {v}\"}}",
        "I pasted my token {v} in the chat by mistake, revoke it.",
    ],
    "openai_key": [
        "OPENAI_API_KEY={v}",
        "client = OpenAI(api_key=\"{v}\")",
        "const openai = new OpenAI({{ apiKey: '{v}' }});",
        "my key is {v} but it says quota exceeded",
    ],
    "anthropic_key": [
        "ANTHROPIC_API_KEY={v}",
        "client = anthropic.Anthropic(api_key=\"{v}\")",
        "curl https://api.anthropic.com/v1/messages -H \"x-api-key: {v}\"",
    ],
    "slack_token": [
        "SLACK_BOT_TOKEN={v}",
        "requests.post(\"{v}\", json={{\"text\": \"deploy done\"}})",
        "app = App(token=\"{v}\")",
        "webhook/token for #alerts: {v}",
    ],
    "google_api_key": [
        "GOOGLE_MAPS_KEY={v}",
        "<script src=\"https://maps.googleapis.com/maps/api/js?key={v}&callback=initMap\"></script>",
        "const firebaseConfig = {{ apiKey: \"{v}\", projectId: \"demo-app\" }};",
    ],
    "stripe_key": [
        "STRIPE_SECRET_KEY={v}",
        "stripe.api_key = \"{v}\"",
        "Stripe::setApiKey('{v}');",
    ],
    "private_key": [
        "{v}",
        "ssh_key: |\n  {v_indented}",
        "{{\"type\": \"service_account\", \"private_key\": \"{v_json}\"}}",
        "Here's the deploy key, don't share it:\n{v}\n",
    ],
    "jwt": [
        "Authorization: Bearer {v}",
        "curl -H 'Authorization: Bearer {v}' https://api.internal/v1/me",
        "2024-03-03 11:11:11 DEBUG session cookie={v}",
        "localStorage.setItem(\"jwt\", \"{v}\");",
        "redirecting to https://app.internal/callback?token={v}",
    ],
    "password": [
        "DATABASE_URL=postgres://app:{v}@db.internal:5432/app",
        "password = \"{v}\"",
        "db:\n  user: app\n  password: {v}",
        "{{\"username\": \"{first}\", \"password\": \"{v}\"}}",
        "mysql --user=root --password={v} -h db",
        "The wifi password is {v} btw.",
        "conn = psycopg2.connect(host=\"db\", user=\"app\", password=\"{v}\")",
        "DB_PASSWORD={v}",
        "redis://:{v}@cache.internal:6379/0",
        "export PGPASSWORD='{v}'",
        "spring.datasource.password={v}",
    ],
    "secret": [
        "SECRET_KEY = \"{v}\"",
        "client_secret: {v}",
        "API_TOKEN={v}",
        "config.auth_token = '{v}'",
        "{{\"webhook_secret\": \"{v}\"}}",
        "GET https://api.internal/v1/data?api_key={v}&format=json 200",
    ],
    "high_entropy": [
        "Authorization: Bearer {v}",
        "2024-07-21 22:10:00 INFO signed upload url issued sig={v} expires=3600",
        "curl -H \"X-Signature: {v}\" https://hooks.internal/ingest",
        "The recovery code is {v}, store it somewhere safe.",
        "const seed = \"{v}\";",
    ],
    "home_path": [
        "Traceback (most recent call last):\n  File \"{v}/projects/app/main.py\", line 12, in <module>\n    main()",
        "error[E0425]: cannot find value `x` in this scope\n --> {v}/code/sam/src/lib.rs:10:5",
        "cd {v}/Downloads && tar xzf release.tar.gz",
        "PYTHONPATH={v}/venvs/ml/lib/python3.11/site-packages",
    ],
}

GEN = {
    "email": email, "phone": phone, "ssn": ssn, "credit_card": card, "ipv4": ipv4, "ipv6": ipv6, "iban": iban,
    "aws_key": aws_key, "aws_secret": aws_secret, "github_token": github_token, "openai_key": openai_key,
    "anthropic_key": anthropic_key, "slack_token": slack_token, "google_api_key": google_key,
    "stripe_key": stripe_key, "private_key": private_key, "jwt": jwt, "password": password, "secret": high_entropy,
    "high_entropy": high_entropy,
}


def home_path():
    u = home_user()
    base = R.choice([f"/home/{u}", f"/Users/{u}", f"C:\\Users\\{u}", f"C:/Users/{u}"])
    return base, [base]


def fill(tpl, v):
    f, l = name()
    return tpl.format(
        v=v, v_indented=v.replace("\n", "\n  "), v_json=v.replace("\n", "\\n"), name=f"{f.title()} {l.title()}",
        first=f, n=R.randint(100, 99999), uuid=uuid(), sha=rnd("0123456789abcdef", 40))


def uuid():
    h = rnd("0123456789abcdef", 32)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


def secret_records():
    out = []
    for kind, tpls in T.items():
        for i in range(18):
            tpl = tpls[i % len(tpls)]
            if kind == "home_path":
                v, pieces = home_path()
            else:
                v = GEN[kind]()
                if kind == "private_key":
                    pieces = [l for l in v.split("\n") if not l.startswith("-----")]
                elif kind == "jwt":
                    pieces = v.split(".")
                else:
                    pieces = [v]
            out.append({"label": "secret", "context": kind, "text": fill(tpl, v),
                        "secrets": [{"kind": kind, "value": v, "must_not_contain": pieces}]})
    return out


# ---------------------------------------------------------------- clean lookalikes

def bad_card():
    while True:
        prefix, length = R.choice([("4", 16), ("51", 16), ("37", 15), ("6011", 16)])
        num = luhn_complete(prefix, length)
        num = num[:-1] + str((int(num[-1]) + R.randint(1, 9)) % 10)
        if not luhn_ok(num):
            return group_card(num, R.choice([" ", "-", ""]))


def version():
    return R.choice([
        lambda: f"v{R.randint(0, 20)}.{R.randint(0, 40)}.{R.randint(0, 30)}",
        lambda: f"{R.randint(0, 5)}.{R.randint(0, 99)}.{R.randint(0, 20)}",
        lambda: f"{R.randint(1, 4)}.{R.randint(0, 12)}.{R.randint(0, 9)}-rc.{R.randint(1, 5)}",
    ])()


CLEAN = [
    lambda: f"2024-05-02T10:14:07Z INFO  http: GET /api/v1/items/{uuid()} 200 12ms",
    lambda: f"commit {rnd('0123456789abcdef', 40)}\nMerge: {rnd('0123456789abcdef', 7)} {rnd('0123456789abcdef', 7)}",
    lambda: f"sha256sum: {rnd('0123456789abcdef', 64)}  release-{version()}.tar.gz",
    lambda: f"\"resolved\": \"https://registry.npmjs.org/lodash/-/lodash-4.17.21.tgz\",\n\"integrity\": \"sha512-{rnd(B64, 86)}==\"",
    lambda: f"github.com/stretchr/testify v1.8.4 h1:{rnd(B64, 43)}=",
    lambda: f"Upgraded tokio from {version()} to {version()} and serde to {version()}.",
    lambda: f"[assembly: AssemblyVersion(\"{R.randint(1, 9)}.{R.randint(0, 9)}.{R.randint(0, 9)}.{R.randint(0, 9)}\")]",
    lambda: f"Use the test card {bad_card()} in the sandbox; it is rejected on purpose.",
    lambda: f"order_id={R.randint(10**9, 10**10)} created_at={R.randint(1_600_000_000, 1_800_000_000)} total=129.90",
    lambda: f"docker pull ghcr.io/acme/api@sha256:{rnd('0123456789abcdef', 64)}",
    lambda: f"password = os.environ[\"DB_PASSWORD\"]\nuser = os.environ.get(\"DB_USER\", \"app\")",
    lambda: "      env:\n        DB_PASSWORD: ${{ secrets.DB_PASSWORD }}\n        API_TOKEN: ${{ secrets.API_TOKEN }}",
    lambda: "api_key = \"<your-api-key>\"  # get one at https://platform.example.com",
    lambda: "def login(username: str, password: str) -> Token:\n    token = issue_token(username)\n    return token",
    lambda: f"PASSWORD_MIN_LENGTH = {R.randint(8, 16)}\nTOKEN_TTL_SECONDS = {R.randint(60, 86400)}",
    lambda: "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\nAWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    lambda: f"listening on http://127.0.0.1:{R.randint(1024, 65535)} and http://0.0.0.0:{R.randint(1024, 65535)}",
    lambda: f"ping ::1 ok; route via std::net::Ipv6Addr::LOCALHOST",
    lambda: f"The meeting is at {R.randint(9, 17)}:{R.choice(['00', '15', '30', '45'])} on 2024-{R.randint(1, 12):02d}-{R.randint(1, 28):02d}.",
    lambda: f"mac address {':'.join(rnd('0123456789ABCDEF', 2) for _ in range(6))} on eth0",
    lambda: f"const user = await db.users.findOne({{ id: \"{uuid()}\" }});",
    lambda: f"fn getUserAccountSettingsV{R.randint(2, 9)}Handler(req: Request) -> Response {{ todo!() }}",
    lambda: f"git clone git@github.com:acme/{R.choice(['api', 'web', 'infra'])}.git && cd {R.choice(['api', 'web', 'infra'])}",
    lambda: f"Processed {R.randint(1000, 99999):,} rows in {R.randint(1, 99)}.{R.randint(0, 99)}s ({R.randint(100, 999)} rows/s).",
    lambda: f"OID {R.choice(['1.3.6.1.4.1.311.21.8', '2.5.4.3', '1.2.840.113549.1.1.11'])} is sha256WithRSAEncryption",
    lambda: f"cd /home/runner/work/{R.choice(['sam', 'api'])} && cargo test --release",
    lambda: f"cache key: {rnd('0123456789abcdef', 32)} (md5 of Cargo.lock)",
    lambda: f"See section {R.randint(1, 9)}.{R.randint(1, 9)}.{R.randint(1, 9)} of RFC {R.randint(1000, 9999)} for the details.",
    lambda: f"ticket JIRA-{R.randint(100, 9999)}: bump python to 3.{R.randint(8, 13)}.{R.randint(0, 9)}",
    lambda: f"let token = tokenizer.encode(\"{R.choice(['hello', 'world', 'fn main'])}\", true)?;",
    lambda: f"max_tokens = {R.choice([256, 512, 1024, 4096])}\ntemperature = 0.{R.randint(1, 9)}",
    lambda: f"img/{R.choice(['HeaderLogo', 'FooterIcon', 'UserAvatar'])}{R.randint(2, 9)}x.png loaded",
    lambda: f"ISBN 978-{R.randint(0, 9)}-{R.randint(100, 999)}-{R.randint(10000, 99999)}-{R.randint(0, 9)}",
    lambda: f"pod web-{rnd('0123456789abcdef', 10)}-{rnd(string.ascii_lowercase + string.digits, 5)} restarted",
    lambda: f"build {R.randint(1000, 9999)} finished: {R.randint(0, 300)} passed, 0 failed, coverage {R.randint(50, 99)}.{R.randint(0, 9)}%",
    lambda: f"password: \"\"  # set via PGPASSWORD\nsslmode: require",
    lambda: f"Error: password is required",
    lambda: f"if (token === undefined) {{ throw new Error(\"missing token\"); }}",
    lambda: f"secret_name = \"prod/db/credentials\"\nregion_name = \"eu-central-1\"",
    lambda: f"use std::collections::HashMap;\nlet m: HashMap<u32, String> = HashMap::new();",
    lambda: f".badge {{ color: #{rnd('0123456789abcdef', 6)}; background: #ffffff; }}",
    lambda: "<img src=\"data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==\">",
    lambda: f"import org.apache.commons.lang{R.randint(2, 3)}.StringUtils;",
    lambda: "curl -H \"Authorization: Bearer $API_TOKEN\" https://api.internal/v1/me",
    lambda: "password_hash = bcrypt.hashpw(password.encode(), bcrypt.gensalt())",
    lambda: "AWS access key ids start with AKIA (long-term) or ASIA (temporary).",
    lambda: f"\"engines\": {{ \"node\": \">={R.randint(14, 20)}.0.0 <{R.randint(21, 23)}.0.0\" }}",
    lambda: f"OS build 10.0.{R.randint(19041, 22631)}.{R.randint(1000, 3000)}",
    lambda: f"class AbstractSingletonProxyFactoryBean{R.randint(2, 9)}Impl extends Base {{}}",
    lambda: "dsn = f\"postgres://{user}:{password}@{host}/{db}\"",
    lambda: "ssh-keygen -t ed25519 -C \"work laptop\" -f ~/.ssh/id_ed25519",
    lambda: f"AWS_REGION=eu-west-{R.randint(1, 3)}\nAWS_PROFILE=staging",
    lambda: f"kubectl rollout restart deployment/web -n prod  # pod web-{rnd('0123456789abcdef', 10)}-{rnd(string.ascii_lowercase + string.digits, 5)}",
]


def clean_records():
    out = []
    for i in range(520):
        out.append({"label": "clean", "context": f"clean{i % len(CLEAN)}", "text": CLEAN[i % len(CLEAN)](),
                    "secrets": []})
    return out


def main():
    records = secret_records() + clean_records()
    for i, r in enumerate(records):
        print(json.dumps({"id": i, **r}, ensure_ascii=False))


if __name__ == "__main__":
    main()
