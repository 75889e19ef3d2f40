//! Validators: what a regex cannot say about a candidate match — checksums (Luhn, mod-97),
//! Shannon entropy, a JWT header that decodes, the context around a phone number. Each check
//! gets the whole string and the candidate's span, and returns the span to redact (the same,
//! or narrowed) or `None` to drop the candidate.

use std::ops::Range;

use base64::Engine;

/// Tunables a check needs from the config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    pub entropy_threshold: f64,
    pub entropy_min_length: usize,
}

/// The check a detector runs on each candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// The regex says it all.
    None,
    /// Payment card: 13–19 digits, known IIN prefix and length, Luhn.
    Card,
    /// IBAN: country length and mod-97.
    Iban,
    /// Custom: the digits of the match pass Luhn.
    Luhn,
    /// Custom: the alphanumerics of the match, read as a number (A=10 … Z=35), are 1 mod 97.
    Mod97,
    /// High-entropy token: length, character classes, entropy, not code or a data URI.
    Entropy,
    /// AWS secret key: 40 base64 characters that look random.
    AwsSecret,
    /// A token whose body must mix upper case, lower case and digits (OpenAI `sk-…`).
    MixedToken,
    /// A token whose body must hold a digit (Slack: team and user ids).
    HasDigit,
    /// JWT: the header segment decodes to a JSON object with `alg`.
    Jwt,
    /// Phone: digit counts and numbering rules per format, not part of a date/IP/version.
    Phone,
    /// E-mail: not an ssh remote, an asset name (`icon@2x.png`) or a reserved domain.
    Email,
    /// `key = value`: a real value, not a placeholder, a type or a variable.
    Assignment,
    /// The password of a URL: not a placeholder.
    NotPlaceholder,
}

impl Check {
    /// `whole` is the regex's whole match, `span` the part to redact (its first capture
    /// group that took part, or the whole match).
    pub(crate) fn run(
        self,
        hay: &str,
        whole: Range<usize>,
        span: Range<usize>,
        p: &Params,
    ) -> Option<Range<usize>> {
        let s = &hay[span.clone()];
        let ok = match self {
            Check::None => true,
            Check::Card => return card(hay, span),
            Check::Iban => return iban(hay, span),
            Check::Luhn => luhn(&digits(s)),
            Check::Mod97 => mod97(s.chars().filter(char::is_ascii_alphanumeric)) == Some(1),
            Check::Entropy => high_entropy(hay, &span, p),
            Check::AwsSecret => classes(s) == (true, true, true) && shannon_entropy(s) >= 4.0,
            Check::MixedToken => {
                // The body after the last fixed prefix piece (`sk-`, `sk-proj-`, …).
                classes(s) == (true, true, true) && shannon_entropy(s) >= 3.5
            }
            Check::HasDigit => s.bytes().any(|b| b.is_ascii_digit()),
            Check::Jwt => jwt_header_has_alg(s),
            Check::Phone => phone(hay, &span),
            Check::Email => email(hay, &span),
            Check::Assignment => assignment_key(hay, whole.start) && assignment_value(hay, &span),
            Check::NotPlaceholder => !is_placeholder(s),
        };
        ok.then_some(span)
    }
}

/// The decimal digits of `s`, as numbers 0–9.
fn digits(s: &str) -> Vec<u8> {
    s.bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect()
}

/// Luhn (mod 10) over digits given most significant first. Needs at least two digits.
pub fn luhn(digits: &[u8]) -> bool {
    if digits.len() < 2 {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// ISO 7064 MOD 97-10: the characters read as one number (digits as themselves, letters
/// A/a=10 … Z/z=35), modulo 97. `None` for anything that is not ASCII alphanumeric, or empty.
pub fn mod97(chars: impl IntoIterator<Item = char>) -> Option<u32> {
    let mut rem = 0u32;
    let mut any = false;
    for c in chars {
        let v = c.to_digit(36)?;
        rem = if v < 10 {
            (rem * 10 + v) % 97
        } else {
            (rem * 100 + v) % 97
        };
        any = true;
    }
    any.then_some(rem)
}

/// Shannon entropy of `s` in bits per character.
pub fn shannon_entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    let mut n = 0u32;
    let mut other = std::collections::HashMap::new();
    for c in s.chars() {
        n += 1;
        if (c as u32) < 256 {
            counts[c as usize] += 1;
        } else {
            *other.entry(c).or_insert(0u32) += 1;
        }
    }
    if n == 0 {
        return 0.0;
    }
    let n = f64::from(n);
    counts
        .iter()
        .copied()
        .chain(other.into_values())
        .filter(|&c| c > 0)
        .map(|c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// (has upper case, has lower case, has digit) over ASCII.
fn classes(s: &str) -> (bool, bool, bool) {
    let b = s.as_bytes();
    (
        b.iter().any(u8::is_ascii_uppercase),
        b.iter().any(u8::is_ascii_lowercase),
        b.iter().any(u8::is_ascii_digit),
    )
}

fn char_before(hay: &str, at: usize) -> Option<char> {
    hay[..at].chars().next_back()
}

fn char_after(hay: &str, at: usize) -> Option<char> {
    hay[at..].chars().next()
}

/// Known issuer prefixes (IIN ranges) with the lengths that issuer uses.
fn card_issuer_known(d: &[u8]) -> bool {
    let len = d.len();
    let prefix = |n: usize| d[..n].iter().fold(0u32, |a, &x| a * 10 + u32::from(x));
    let (p1, p2, p3, p4, p6) = (prefix(1), prefix(2), prefix(3), prefix(4), prefix(6));
    match p1 {
        // Visa
        4 => matches!(len, 13 | 16 | 19),
        // Mastercard 51–55 and 2221–2720, Mir 2200–2204
        2 => len == 16 && ((2221..=2720).contains(&p4) || (2200..=2204).contains(&p4)),
        5 => {
            (len == 16 && (51..=55).contains(&p2))
                // Maestro
                || ((p2 == 50 || (56..=58).contains(&p2)) && (12..=19).contains(&len))
        }
        // Amex 34/37, Diners 300–305/36/38/39, JCB 3528–3589
        3 => {
            (len == 15 && (p2 == 34 || p2 == 37))
                || ((14..=19).contains(&len)
                    && ((300..=305).contains(&p3) || matches!(p2, 36 | 38 | 39)))
                || ((16..=19).contains(&len) && (3528..=3589).contains(&p4))
        }
        // Discover 6011/644–649/65/622126–622925, UnionPay 62, Maestro 6304/67
        6 => {
            (16..=19).contains(&len)
                && (p4 == 6011
                    || (644..=649).contains(&p3)
                    || p2 == 65
                    || (622126..=622925).contains(&p6)
                    || p2 == 62)
                || ((12..=19).contains(&len) && (p4 == 6304 || p2 == 67))
        }
        _ => false,
    }
}

/// A card number: the candidate is digit groups joined by single spaces or dashes. The
/// longest run of whole groups that is shaped like a card (one group of 13–19 digits, or a
/// first group of 4, then groups of 4–6, the last 1–6), is a known issuer and passes Luhn
/// wins (so a card next to another number is still found).
fn card(hay: &str, span: Range<usize>) -> Option<Range<usize>> {
    if numeric_context(hay, &span) {
        return None;
    }
    let s = &hay[span.clone()];
    let seps: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_digit()).collect();
    if seps.windows(2).any(|w| w[0] != w[1]) {
        return None; // "4111 1111-1111 1111": not how anyone writes a card number
    }
    // Groups as byte ranges within s.
    let mut groups = Vec::new();
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        if !b.is_ascii_digit() {
            groups.push(start..i);
            start = i + 1;
        }
    }
    groups.push(start..s.len());
    let mut best: Option<Range<usize>> = None;
    for i in 0..groups.len() {
        for j in i..groups.len() {
            let r = groups[i].start..groups[j].end;
            let d = digits(&s[r.clone()]);
            if d.len() > 19 {
                break;
            }
            let shaped = i == j
                || (groups[i].len() == 4
                    && groups[i + 1..j].iter().all(|g| (4..=6).contains(&g.len()))
                    && (1..=6).contains(&groups[j].len()));
            if shaped
                && d.len() >= 13
                && card_issuer_known(&d)
                && luhn(&d)
                && best.as_ref().is_none_or(|b| r.len() > b.len())
            {
                best = Some(r);
            }
        }
    }
    best.map(|r| span.start + r.start..span.start + r.end)
}

/// Inside a decimal number, a dotted quad or a version: `1.4111111111111111`, `…111.5`.
fn numeric_context(hay: &str, span: &Range<usize>) -> bool {
    let before = hay[..span.start].chars().rev().take(2).collect::<Vec<_>>();
    let after = hay[span.end..].chars().take(2).collect::<Vec<_>>();
    let joined =
        |v: &[char]| v.len() == 2 && matches!(v[0], '.' | ',' | ':' | '/') && v[1].is_ascii_digit();
    joined(&before) || joined(&after)
}

/// IBAN registry lengths by country.
fn iban_length(country: &str) -> Option<usize> {
    const LENGTHS: &[(&str, usize)] = &[
        ("AD", 24),
        ("AE", 23),
        ("AL", 28),
        ("AT", 20),
        ("AZ", 28),
        ("BA", 20),
        ("BE", 16),
        ("BG", 22),
        ("BH", 22),
        ("BI", 27),
        ("BR", 29),
        ("BY", 28),
        ("CH", 21),
        ("CR", 22),
        ("CY", 28),
        ("CZ", 24),
        ("DE", 22),
        ("DJ", 27),
        ("DK", 18),
        ("DO", 28),
        ("EE", 20),
        ("EG", 29),
        ("ES", 24),
        ("FI", 18),
        ("FK", 18),
        ("FO", 18),
        ("FR", 27),
        ("GB", 22),
        ("GE", 22),
        ("GI", 23),
        ("GL", 18),
        ("GR", 27),
        ("GT", 28),
        ("HR", 21),
        ("HU", 28),
        ("IE", 22),
        ("IL", 23),
        ("IQ", 23),
        ("IS", 26),
        ("IT", 27),
        ("JO", 30),
        ("KW", 30),
        ("KZ", 20),
        ("LB", 28),
        ("LC", 32),
        ("LI", 21),
        ("LT", 20),
        ("LU", 20),
        ("LV", 21),
        ("LY", 25),
        ("MC", 27),
        ("MD", 24),
        ("ME", 22),
        ("MK", 19),
        ("MN", 20),
        ("MR", 27),
        ("MT", 31),
        ("MU", 30),
        ("NI", 28),
        ("NL", 18),
        ("NO", 15),
        ("OM", 23),
        ("PK", 24),
        ("PL", 28),
        ("PS", 29),
        ("PT", 25),
        ("QA", 29),
        ("RO", 24),
        ("RS", 22),
        ("RU", 33),
        ("SA", 24),
        ("SC", 31),
        ("SD", 18),
        ("SE", 24),
        ("SI", 19),
        ("SK", 24),
        ("SM", 27),
        ("SO", 23),
        ("ST", 25),
        ("SV", 28),
        ("TL", 23),
        ("TN", 24),
        ("TR", 26),
        ("UA", 29),
        ("VA", 22),
        ("VG", 24),
        ("XK", 20),
        ("YE", 30),
    ];
    LENGTHS.iter().find(|(c, _)| *c == country).map(|&(_, n)| n)
}

/// An IBAN: the candidate is cut to its country's length (the regex may have taken a
/// following word group), must end at a group boundary, and pass mod-97.
fn iban(hay: &str, span: Range<usize>) -> Option<Range<usize>> {
    let s = &hay[span.clone()];
    let want = iban_length(s.get(..2)?)?;
    let mut taken = 0;
    let mut end = None;
    for (i, c) in s.char_indices() {
        if c.is_ascii_alphanumeric() {
            taken += 1;
            if taken == want {
                end = Some(i + 1);
                break;
            }
        }
    }
    let end = end?;
    if !(end == s.len() || s[end..].starts_with(' ')) {
        return None;
    }
    let compact: Vec<char> = s[..end].chars().filter(|c| *c != ' ').collect();
    let rearranged = compact[4..].iter().chain(&compact[..4]).copied();
    (mod97(rearranged) == Some(1)).then(|| span.start..span.start + end)
}

fn high_entropy(hay: &str, span: &Range<usize>, p: &Params) -> bool {
    let s = &hay[span.clone()];
    if s.chars().count() < p.entropy_min_length {
        return false;
    }
    // Hex (digests, git SHAs, UUIDs) is an identifier far more often than a secret; a hex
    // secret is still caught when it is the value of a `token=`/`secret:` assignment.
    if s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return false;
    }
    if classes(s) != (true, true, true) {
        return false;
    }
    // Stripe publishable keys are public by design.
    if s.starts_with("pk_live_") || s.starts_with("pk_test_") {
        return false;
    }
    // Part of a data URI (`data:image/png;base64,iVBOR…`), or a function being called.
    if hay[..span.start].ends_with("base64,") || char_after(hay, span.end) == Some('(') {
        return false;
    }
    if looks_like_identifier(s) {
        return false;
    }
    shannon_entropy(s) >= p.entropy_threshold
}

/// camelCase / PascalCase / snake_case words (`getOAuth2TokenForUser`): lower-case runs
/// average three letters or more, where a random token's average under two.
fn looks_like_identifier(s: &str) -> bool {
    let (mut runs, mut letters, mut in_run) = (0u32, 0u32, false);
    for b in s.bytes() {
        if b.is_ascii_lowercase() {
            letters += 1;
            if !in_run {
                runs += 1;
            }
            in_run = true;
        } else {
            in_run = false;
        }
    }
    runs > 0 && f64::from(letters) / f64::from(runs) >= 3.0
}

fn jwt_header_has_alg(s: &str) -> bool {
    let header = s.split('.').next().unwrap_or("");
    if header.len() > 2048 {
        return false;
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    let Ok(bytes) = engine.decode(header) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes)
        .is_ok_and(|m| m.contains_key("alg"))
}

/// Phone numbers by the shape the regex matched: `+…` international (E.164: 8–15 digits,
/// at least 10 when written without separators), `(NXX) NXX-XXXX` / `NXX-NXX-XXXX` North
/// American (area and exchange not starting with 0/1, one kind of separator), `0…` national
/// trunk formats (10–12 digits, spaces or dashes, not both). Not when glued to a word, a
/// path, a decimal or a dotted number (IPs, versions, dates).
fn phone(hay: &str, span: &Range<usize>) -> bool {
    let s = &hay[span.clone()];
    let before = char_before(hay, span.start);
    if before.is_some_and(|c| c.is_alphanumeric() || matches!(c, '.' | '/' | '-' | '_' | '+')) {
        return false;
    }
    let mut after = hay[span.end..].chars();
    if let (Some(a), Some(b)) = (after.next(), after.next()) {
        if matches!(a, '.' | '-' | ':' | '/' | ',') && b.is_ascii_digit() {
            return false;
        }
    }
    let d = digits(s);
    let seps: Vec<u8> = s
        .bytes()
        .filter(|b| matches!(b, b' ' | b'-' | b'.'))
        .collect();
    let uniform = seps.windows(2).all(|w| w[0] == w[1]);
    // `(415) 555-2671`: the space after the area code is not a group separator.
    let paren_area = s.starts_with('(');
    match s.as_bytes()[0] {
        b'+' => {
            let min = if seps.is_empty() && !s.contains('(') {
                10
            } else {
                8
            };
            (min..=15).contains(&d.len()) && uniform
        }
        b'0' => (10..=12).contains(&d.len()) && uniform && !seps.contains(&b'.'),
        _ => {
            // North American: the regex fixed the shape (3-3-4 digits).
            let (area, exchange) = (d[0], d[3]);
            d.len() == 10 && area >= 2 && exchange >= 2 && (uniform || paren_area)
        }
    }
}

/// RFC 2606 / RFC 6761 names: no person's mailbox can be there.
fn reserved_domain(domain: &str) -> bool {
    let d = domain.to_ascii_lowercase();
    ["example.com", "example.net", "example.org"]
        .iter()
        .any(|r| d == *r || d.ends_with(&format!(".{r}")))
        || [".example", ".test", ".invalid", ".localhost"]
            .iter()
            .any(|t| d.ends_with(t))
}

fn email(hay: &str, span: &Range<usize>) -> bool {
    let s = &hay[span.clone()];
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    // `git@github.com:org/repo.git`, `user@host:path`: scp-style ssh, not mail;
    // `/user.slice/user@1000.service/`: a path component (systemd units).
    if char_after(hay, span.end) == Some(':')
        || local == "git"
        || char_before(hay, span.start) == Some('/')
    {
        return false;
    }
    // `icon@2x.png`: an asset name, not an address.
    let tld = domain.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
    const ASSETS: &[&str] = &[
        "png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp", "tif", "tiff", "css", "js",
        "mjs", "map", "woff", "woff2",
    ];
    if ASSETS.contains(&tld.as_str()) {
        return false;
    }
    !reserved_domain(domain)
}

/// A value that stands for a secret without being one: `${DB_PASSWORD}`, `<token>`, `****`,
/// `{{ secrets.X }}`, `%(password)s`, `null`, an earlier `[REDACTED:…]` marker.
pub(crate) fn is_placeholder(v: &str) -> bool {
    let v = v.trim();
    if v.is_empty() || v.starts_with("[REDACTED") {
        return true;
    }
    if v.starts_with("${")
        || v.starts_with("{{")
        || v.starts_with('<')
        || v.starts_with("%(")
        || v.starts_with("%s")
        || v.starts_with('{') && v.ends_with('}')
    {
        return true;
    }
    if let Some(var) = v.strip_prefix('$') {
        if !var.is_empty()
            && var
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b == b'_' || b.is_ascii_digit())
        {
            return true;
        }
    }
    if v.chars()
        .all(|c| matches!(c, '*' | 'x' | 'X' | '•' | '.' | '-' | '#' | '?'))
    {
        return true;
    }
    // `your-token-here`, `YOUR_API_KEY`, `xoxb-your-token-here`.
    let lower = v.to_ascii_lowercase();
    if ["your-", "your_", "-here", "_here"]
        .iter()
        .any(|w| lower.contains(w))
    {
        return true;
    }
    const WORDS: &[&str] = &[
        "null",
        "none",
        "nil",
        "true",
        "false",
        "undefined",
        "redacted",
        "hidden",
        "masked",
        "secret",
        "password",
        "token",
        "changeit",
        "your_password",
        "your-password",
        "yourpassword",
        "your_token",
        "your-token",
        "your_api_key",
        "your-api-key",
    ];
    WORDS.contains(&v.to_ascii_lowercase().as_str())
}

/// The keyword of an assignment starting at `at` begins a word or a part of one
/// (`password`, `db_password`, `db.password`, `dbPassword`, `X-Api-Key`; not `bypass`,
/// `compass`), and the key is not a pagination, sync or progress token (`next_page_token`,
/// `pageToken`, `cursor_token`, MCP's `progressToken`).
fn assignment_key(hay: &str, at: usize) -> bool {
    let first = hay[at..].chars().next().unwrap_or(' ');
    // Glued to a letter or digit: only a camelCase boundary (`dbPassword`) starts a part.
    let glued = char_before(hay, at).is_some_and(|c| c.is_ascii_alphanumeric());
    let camel = char_before(hay, at).is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && first.is_ascii_uppercase();
    if glued && !camel {
        return false;
    }
    let key_start = hay[..at]
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        .map_or(0, |i| i + hay[i..].chars().next().map_or(1, char::len_utf8));
    let key = hay[key_start..at].to_ascii_lowercase();
    // MCP's own `progressToken` is protocol, not a credential.
    !["page", "cursor", "next", "continuation", "sync", "progress"]
        .iter()
        .any(|w| key.contains(w))
}

/// The value of a `password=` / `token:` assignment (the span is the value). Quoted values are
/// literals, so only placeholders are dropped; an unquoted value is dropped when it reads as
/// code or prose: a type (`password: str`), a variable or attribute (`password=password`,
/// `token=args.token`), a call (`password=getpass()`), a path or URL, a short number
/// (`pass=12` in test output), or a plain word.
fn assignment_value(hay: &str, span: &Range<usize>) -> bool {
    let v = &hay[span.clone()];
    if is_placeholder(v) || v.chars().count() < 3 {
        return false;
    }
    let quoted = matches!(char_before(hay, span.start), Some('"' | '\''))
        && char_after(hay, span.end) == char_before(hay, span.start);
    if quoted {
        return true;
    }
    if char_after(hay, span.end) == Some('(') {
        return false;
    }
    if v.starts_with('/') || v.starts_with("~/") || v.starts_with("./") || v.contains("://") {
        return false;
    }
    if v.starts_with(['&', '*', ':', '=', '|']) || v.ends_with(':') {
        return false; // `&str`, `*const u8`, `Token::new`, `token == x`, `|x: u32|`
    }
    if v.bytes().all(|b| b.is_ascii_digit()) && v.len() <= 6 {
        return false;
    }
    // Identifiers and dotted paths without digits: `str`, `String`, `password`,
    // `self.password`, `os.environ`, `Option<String>` (cut at `<`).
    let ident_like = v
        .split('.')
        .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_'));
    if ident_like {
        return false;
    }
    // Dotted attribute access with digits: `cfg.token2`, `settings.db.password`.
    let dotted = v.contains('.')
        && v.split('.').all(|part| {
            part.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
    !dotted
}
