//! The built-in detectors: a name (the marker says `[REDACTED:<name>]`), a rank, a regex and
//! the validator its candidates must pass.
//!
//! Regex conventions: ASCII word boundaries `(?-u:\b)` and ASCII classes (`[0-9]`, never
//! `\d`/`\w`/Unicode `\b`), so that the one-pass `RegexSet` stays on the lazy DFA for any
//! input. When a pattern has capture groups, the first group that took part is what gets
//! redacted (the value of `password=…`, the password of a URL); otherwise the whole match.

use super::validate::Check;

/// Ranks settle overlapping matches: the lower rank (the more specific format) wins, then
/// the longer match. Custom detectors rank with the specific token formats.
pub(crate) const RANK_CUSTOM: u8 = 1;

pub(crate) struct Builtin {
    pub name: &'static str,
    pub rank: u8,
    /// What is matched (and, through its first capture group if any, replaced).
    pub pattern: &'static str,
    /// A cheaper regex that matches wherever `pattern` finds something valid: the one-pass
    /// `RegexSet` is built from these, and only the detectors whose trigger fired run their
    /// `pattern`. Short literals and no long counted repetitions, so the set's DFA stays
    /// small (`tests::triggers_cover_patterns` checks the "wherever" on the corpus).
    pub trigger: &'static str,
    pub check: Check,
}

const fn d(
    name: &'static str,
    rank: u8,
    pattern: &'static str,
    trigger: &'static str,
    check: Check,
) -> Builtin {
    Builtin {
        name,
        rank,
        pattern,
        trigger,
        check,
    }
}

pub(crate) const BUILTINS: &[Builtin] = &[
    // PEM and OpenSSH private keys, PGP private key blocks. A block cut short (no END line) is
    // redacted up to the end of its base64.
    d(
        "private_key",
        0,
        r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----(?:(?s:.)*?-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|(?:[A-Za-z0-9+/=\r\n\\]|Proc-Type: [0-9A-Z,]+|DEK-Info: [A-Z0-9,-]+)*)",
        r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY",
        Check::None,
    ),
    // AWS access key ids: long-term (AKIA), temporary (ASIA) and the rarer ABIA/ACCA; base32.
    d(
        "aws_access_key_id",
        1,
        r"(?-u:\b)(?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}(?-u:\b)",
        r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}",
        Check::None,
    ),
    // AWS secret keys have no prefix: 40 base64 characters near `aws…secret` or
    // `secret access key`.
    d(
        "aws_secret_key",
        3,
        r"(?:(?i-u:aws)[A-Za-z0-9_ .-]{0,20}?(?i-u:secret)|(?i-u:secret)[_ .-]?(?i-u:access)[_ .-]?(?i-u:key))[^\n]{0,20}?[^A-Za-z0-9/+]([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)",
        r"(?i-u:aws)[A-Za-z0-9_ .-]{0,20}?(?i-u:secret)|(?i-u:secret)[_ .-]?(?i-u:access)",
        Check::AwsSecret,
    ),
    d(
        "github_token",
        1,
        r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})(?-u:\b)",
        r"gh[pousr]_[A-Za-z0-9]{36}|github_pat_",
        Check::None,
    ),
    d(
        "gitlab_token",
        1,
        r"(?-u:\b)gl(?:pat|ptt|dt|rt)-[A-Za-z0-9_-]{20,300}(?:\.[A-Za-z0-9_-]{2,64}){0,2}",
        r"gl(?:pat|ptt|dt|rt)-",
        Check::None,
    ),
    d(
        "slack_token",
        1,
        r"(?-u:\b)(?:xox[abprs]|xoxe\.xox[bp]|xapp)-[A-Za-z0-9-]{10,250}",
        r"(?:xox[abprs]|xoxe\.xox[bp]|xapp)-",
        Check::HasDigit,
    ),
    d(
        "slack_webhook",
        1,
        r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/-]{20,300}",
        r"hooks\.slack\.com/",
        Check::None,
    ),
    // Secret and restricted keys, live and test (publishable `pk_` keys are public).
    d(
        "stripe_key",
        1,
        r"(?-u:\b)(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{20,247}(?-u:\b)",
        r"(?:sk|rk)_(?:live|test)_",
        Check::None,
    ),
    d(
        "google_api_key",
        1,
        r"(?-u:\b)AIza[A-Za-z0-9_-]{35}",
        r"AIza",
        Check::None,
    ),
    d(
        "anthropic_key",
        1,
        r"(?-u:\b)sk-ant-[a-z]{2,8}[0-9]{0,3}-[A-Za-z0-9_-]{32,300}",
        r"sk-ant-",
        Check::None,
    ),
    // Ranked below anthropic_key, which it also matches.
    d(
        "openai_key",
        2,
        r"(?-u:\b)sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,300}",
        r"sk-",
        Check::MixedToken,
    ),
    // JWS (three segments, the last may be empty) and JWE (five).
    d(
        "jwt",
        1,
        r"(?-u:\b)eyJ[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*){2,4}",
        r"eyJ",
        Check::Jwt,
    ),
    // bcrypt, argon2, md5/sha-crypt ($1$ $5$ $6$), scrypt (passlib) and $7$, yescrypt,
    // PBKDF2 (passlib and Django).
    d(
        "password_hash",
        1,
        r"\$2[abxy]?\$[0-9]{2}\$[./A-Za-z0-9]{53}|\$argon2(?:id|i|d)\$(?:v=[0-9]+\$)?m=[0-9]+,t=[0-9]+,p=[0-9]+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+|\$[156]\$(?:rounds=[0-9]+\$)?[./A-Za-z0-9]{1,16}\$[./A-Za-z0-9]{22,86}|\$scrypt\$[a-z]+=[0-9]+(?:,[a-z]+=[0-9]+)*\$[A-Za-z0-9+/.=]+\$[A-Za-z0-9+/.=]+|\$7\$[./A-Za-z0-9]{11,}\$[./A-Za-z0-9]{43}|\$y\$[./A-Za-z0-9]+\$[./A-Za-z0-9]{1,86}\$[./A-Za-z0-9]{43}|\$pbkdf2-sha(?:1|256|512)\$[0-9]+\$[./A-Za-z0-9+]+\$[./A-Za-z0-9+]+|(?-u:\b)pbkdf2_sha(?:1|256)\$[0-9]+\$[A-Za-z0-9./+]+\$[A-Za-z0-9./+=]+",
        r"\$(?:2[abxy]?\$[0-9]|argon2|[1567y]\$|scrypt\$|pbkdf2-)|pbkdf2_sha",
        Check::None,
    ),
    // The password of a database/broker URL (only the password is replaced).
    d(
        "database_url",
        3,
        r#"(?-u:\b)(?i-u:postgres(?:ql)?|mysql|mariadb|mongodb(?:\+srv)?|rediss?|amqps?|mssql|sqlserver|cockroachdb|clickhouse)://[^:/?#@\s"'<>]*:([^@/?#\s"'<>]+)@[A-Za-z0-9.\[\]-]"#,
        r"(?i-u:postgres|mysql|mariadb|mongodb|redis|amqp|mssql|sqlserver|cockroachdb|clickhouse)[A-Za-z+]*://[^@\s/]*:[^@\s/]*@",
        Check::NotPlaceholder,
    ),
    // `password=…`, `"api_key": "…"`, `DB_PASSWORD=…`, `clientSecret: …`,
    // `Authorization: Bearer …`: the value. The validator checks the keyword starts a word
    // or a part of one (`db_password`, `dbPassword`; not `bypass`).
    d(
        "secret_assignment",
        4,
        r#"(?i-u:password|passwd|passphrase|pass|secret|api[_-]?key|token|private[_-]?key|authorization)["']?[ \t]*(?::|=|:=|=>)[ \t]*(?:(?i-u:bearer|basic|token)[ \t]+)?(?:"([^"\n]{1,256})"|'([^'\n]{1,256})'|([^\s"'`,;()}\]<>\[]{1,256}))"#,
        r#"(?i-u:password|passwd|passphrase|pass|secret|token|authorization|api[_-]?key|private[_-]?key)["']?[ \t]*[:=]"#,
        Check::Assignment,
    ),
    // A random-looking token within a few characters after key/secret/token/credential/auth.
    d(
        "high_entropy",
        5,
        r"(?i-u:key|secret|token|credential|auth|passw)[^\n,;]{0,24}?[^A-Za-z0-9+/=_,;\n-]([A-Za-z0-9+/_-]{16,256}={0,2})(?:[^A-Za-z0-9+/=_-]|$)",
        r"(?i-u:key|secret|token|credential|auth|passw)[^\n,;]*?[A-Za-z0-9+/_-]{16}",
        Check::Entropy,
    ),
    // Digit groups as people write card numbers: 13–19 contiguous, or 4 then groups of 4–6
    // (4-4-4-4, 4-6-5, 4-4-4-4-3).
    d(
        "payment_card",
        6,
        r"(?-u:\b)(?:[0-9]{13,19}|[0-9]{4}(?:[ -][0-9]{4,6}){1,3}(?:[ -][0-9]{1,6})?)(?-u:\b)",
        r"(?-u:\b)[0-9]{4}(?:[0-9]{9}| [0-9]{4,6} [0-9]|-[0-9]{4,6}-[0-9])",
        Check::Card,
    ),
    d(
        "iban",
        6,
        r"(?-u:\b)[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?(?-u:\b)",
        r"(?-u:\b)[A-Z]{2}[0-9]{2} ?[A-Z0-9]{4} ?[A-Z0-9]{4}",
        Check::Iban,
    ),
    // Local part with any letters (RFC 6531 addresses, `jörg@…`); ASCII domains.
    d(
        "email",
        7,
        r"[\p{L}\p{N}._%+-]+@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}(?-u:\b)",
        r#"[^\s@<>()\[\],;:"']@[A-Za-z0-9-]+\.[A-Za-z]{2}"#,
        Check::Email,
    ),
    // International (+…), North American ((NXX) NXX-XXXX, NXX-NXX-XXXX) and national trunk
    // formats (0…: French 0X XX XX XX XX, Dutch 06-12345678, UK/German 020 7946 0958,
    // 030 12345678); the validator counts digits and looks at the context.
    d(
        "phone",
        8,
        r"(?:\+[1-9][0-9]{0,3}(?:[ .-]?(?:\([0-9]{1,4}\)|[0-9]{1,4})){2,6}|\([2-9][0-9]{2}\) ?[2-9][0-9]{2}[-. ][0-9]{4}|(?-u:\b)[2-9][0-9]{2}[-. ][2-9][0-9]{2}[-. ][0-9]{4}|(?-u:\b)0[1-9](?:[ .-][0-9]{2}){4}|(?-u:\b)0[1-9][ -][0-9]{8}|(?-u:\b)0[1-9][0-9]{1,3}[ -][0-9]{3,8}(?:[ -][0-9]{3,4})?)(?-u:\b)",
        r"\+[1-9][0-9 .()-]{7}|\([2-9][0-9]{2}\) ?[2-9][0-9]{2}[-. ][0-9]{4}|(?-u:\b)[2-9][0-9]{2}[-. ][2-9][0-9]{2}[-. ][0-9]{4}|(?-u:\b)0[1-9](?:[ .-][0-9]{2}){4}(?-u:\b)|(?-u:\b)0[1-9][ -][0-9]{8}(?-u:\b)|(?-u:\b)0[1-9][0-9]{1,3}[ -][0-9]{3,8}(?-u:\b)",
        Check::Phone,
    ),
];
