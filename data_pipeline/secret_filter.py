"""Secrets and personal data in source files: found, counted per kind, and redacted (or the file dropped).

Elixir projects commit `secret_key_base`, signing salts, API keys and passwords in `config/*.exs` and
`runtime.exs`, test keys in PEM blocks, and their authors' emails in `mix.exs`. Two detectors find them:
  - detect-secrets' (Yelp's) token plugins: a provider's key by its shape, whatever the code around it
    (AWS, GitHub, GitLab, Slack, Stripe, OpenAI, ... keys, JWTs, passwords in `scheme://user:pass@host`),
    and private key blocks;
  - Elixir/Phoenix patterns: the string literal given to `secret_key_base`, `signing_salt` (also inside
    `live_view: [...]`), `encryption_salt`, Guardian's `secret_key`, Joken's signers (`default_signer`,
    `Joken.Signer.create/2`), `password` (Repo configs), and `*_key`/`*_token`/`*secret*` settings, in
    keyword lists, maps, module attributes and assignments; and email addresses (not the reserved
    example.com, .test, .invalid, .localhost ones).
A literal that reads as made up (words like example, dummy, test, secret, postgres; `<...>`, `${...}`,
interpolation, spaces, an environment variable's name, lower-case words joined by dashes, a single character
class, under 8 characters) is not a secret.

Redact: the value is replaced by a placeholder naming its kind (`"<SECRET_KEY_BASE>"`), so the code around
it (how to configure Phoenix, Ecto, Guardian) is kept and still parses, and the model never sees the value.
Drop: `*.secret.exs` files (Phoenix's `prod.secret.exs`), which exist only to hold deployment secrets: what
they hold beyond the known patterns is unknowable, and without the values nothing is left to learn from.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import re

from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
from detect_secrets.plugins.base import RegexBasedDetector

# detect-secrets' detectors left out: an IP address is not a credential; a private key's marker alone is not
# its key (_PEM cuts out the whole block); the keyword detectors for IBM, Cloudant and SoftLayer settings need
# `name = value` context, which the Elixir patterns cover for every `*_key`/`*password`/`*secret` setting.
_NOT_USED = {"IPPublicDetector", "PrivateKeyDetector", "CloudantDetector", "IbmCloudIamDetector",
             "IbmCosHmacDetector", "SoftlayerDetector"}
_MIN_TOKEN_CHARS = 20  # the detectors read only the words this long: where a key can be (and much faster)
# A setting's name marks a secret when one of its snake_case parts does (`signing_salt`, `access_key_id`,
# `default_signer`; not `passthrough` or `tokenizer`).
_SECRET_NAME = re.compile(r"(?i)(^|_)(secret_key_base|salt|pass|password|passwd|passphrase|secret|api_?key|access_?key|"
                          r"auth_?key|private_?key|token|signer)(_|$)")
# `name: "v"` (keyword lists, config), `"name" => "v"`, `name = "v"`, `@name "v"`, found from the part of the
# name that marks a secret (its first letter as a class: much faster than a case-blind alternation in `re`);
# the whole name is read backwards from there.
_SETTING = re.compile(r'[sSpPkKtT](?:alt|ass|ecret|ey|oken|igner|ALT|ASS|ECRET|EY|OKEN|IGNER)\w*"?'
                      r'(?P<assign>:[ \t]*|[ \t]*=>[ \t]*|[ \t]*=[ \t]*|[ \t]+)"(?P<value>[^"\\\n]{8,})"')
_NAME_START = re.compile(r'(?P<attribute>@)?"?(?P<head>\w*)\Z')
_LITERAL = r'"(?P<value>[^"\\\n]*)"'
_JOKEN_SIGNER = re.compile(r'Joken\.Signer\.create\(\s*"[A-Z0-9]+"\s*,\s*' + _LITERAL)
# An email is found from its `@` (most `@`s in Elixir are module attributes): the domain after, the user before.
_EMAIL_AT = re.compile(r"@(?=(?P<domain>[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})(?![\w-]))")
_EMAIL_USER = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+\Z")
_PEM = re.compile(r"-----BEGIN (?P<label>[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?)-----(?P<value>.*?)-----END (?P=label)-----",
                  re.DOTALL)
_NOT_PEOPLE = {"git", "noreply", "no-reply"}  # git@github.com: an SSH address
_RESERVED_DOMAINS = re.compile(r"(?i)(^|\.)(example\.(com|net|org)|example|test|invalid|localhost)$")
# Words a made-up value is made of (AWS's documented key ends in EXAMPLEKEY; tests use "dummy-secret"); a
# random secret holds none of them.
_PLACEHOLDER_WORDS = re.compile(r"(?i)example|dummy|fake|placeholder|changeme|secret|passw|postgres|sample|test")
_SECRET_FILE = re.compile(r"(^|/)[^/]*\.secret\.exs$")


@dataclasses.dataclass(frozen=True)
class Found:
    kind: str  # secret_key_base, salt, password, token, secret, key, email, private_key, aws_access_key, ...
    line: int  # 1-based, where the value starts


@dataclasses.dataclass(frozen=True)
class Scan:
    text: str  # with every secret replaced by its placeholder
    found: tuple[Found, ...]
    drop: str | None  # why the whole file goes, or None


def scan(path: str, text: str) -> Scan:
    """The file's secrets and personal data, and its text with them redacted."""
    spans = _spans(text)
    found = tuple(Found(kind, _line(text, start, end)) for start, end, kind in spans)
    if _SECRET_FILE.search(path):
        return Scan(text, found, "secrets: a *.secret.exs file holds deployment secrets")
    redacted = text
    for start, end, kind in reversed(spans):
        redacted = redacted[:start] + _placeholder(kind) + redacted[end:]
    return Scan(redacted, found, None)


def counts(found: tuple[Found, ...]) -> dict[str, int]:
    return dict(sorted(collections.Counter(f.kind for f in found).items()))


def _line(text: str, start: int, end: int) -> int:
    """The line of the value's first non-blank character (a PEM block's body starts after its BEGIN line)."""
    value = text[start:end]
    return text.count("\n", 0, start + len(value) - len(value.lstrip())) + 1


def _placeholder(kind: str) -> str:
    return f"\n<{kind.upper()}>\n" if kind == "private_key" else f"<{kind.upper()}>"


def _spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, kind) of each secret value, in order and without overlaps (the first found wins)."""
    spans: list[tuple[int, int, str]] = []
    for match in _PEM.finditer(text):
        if len(re.sub(r"\s", "", match.group("value"))) >= 64:
            spans.append((match.start("value"), match.end("value"), "private_key"))
    for match in _SETTING.finditer(text):
        before = _NAME_START.search(text, max(0, match.start() - 64), match.start())
        name = before.group("head") + text[match.start():match.start("assign")].rstrip('"')
        if (_SECRET_NAME.search(name) and (before.group("attribute") or match.group("assign").strip())
                and _looks_secret(match.group("value"))):
            spans.append((match.start("value"), match.end("value"), _setting_kind(name.lower())))
    for match in _JOKEN_SIGNER.finditer(text):
        if _looks_secret(match.group("value")):
            spans.append((match.start("value"), match.end("value"), "secret"))
    for match in _EMAIL_AT.finditer(text):
        user = _EMAIL_USER.search(text, max(0, match.start() - 64), match.start())
        if user and not _RESERVED_DOMAINS.search(match.group("domain")) and user.group().lower() not in _NOT_PEOPLE:
            spans.append((user.start(), match.end("domain"), "email"))
    words = "\n".join(word for word in text.split() if len(word) >= _MIN_TOKEN_CHARS)
    for kind, plugin in _token_plugins():
        for value in set(plugin.analyze_string(words)):
            if _looks_secret(value):  # the whole token: a detector may stop short (a JWT's signature)
                spans += [(m.start(), m.end(), kind) for m in re.finditer(re.escape(value) + r"[\w.+/=-]*", text)]
    kept: list[tuple[int, int, str]] = []
    for span in sorted(spans):
        if not kept or span[0] >= kept[-1][1]:
            kept.append(span)
    return kept


def _setting_kind(key: str) -> str:
    for part, kind in (("secret_key_base", "secret_key_base"), ("salt", "salt"), ("pass", "password"),
                       ("token", "token"), ("secret", "secret"), ("signer", "secret")):
        if part in key:
            return kind
    return "key"


def _looks_secret(value: str) -> bool:
    """Not a placeholder, a development default, an environment variable's name or words."""
    if len(value) < 8 or re.search(r"\s|^<.*>$|^\$\{|#\{|^\.\.\.", value) or _PLACEHOLDER_WORDS.search(value):
        return False
    if re.fullmatch(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)+|[a-z]+([-_.][a-z]+)*", value):  # ENV_NAME, plug-debugger-actions
        return False
    classes = sum(bool(re.search(pattern, value)) for pattern in (r"[a-z]", r"[A-Z]", r"[0-9]", r"[^A-Za-z0-9]"))
    return classes >= 2 and len(set(value)) > 4


@functools.cache
def _token_plugins() -> tuple[tuple[str, RegexBasedDetector], ...]:
    """detect-secrets' detectors that know a key by its shape: (kind, plugin)."""
    plugins = []
    for secret_type, plugin in sorted(get_mapping_from_secret_type_to_class().items()):
        if issubclass(plugin, RegexBasedDetector) and plugin.__name__ not in _NOT_USED:
            plugins.append((re.sub(r"[^a-z0-9]+", "_", secret_type.lower()).strip("_"), plugin()))
    return tuple(plugins)
