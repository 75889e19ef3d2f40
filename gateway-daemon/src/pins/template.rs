//! Whether a resource URI falls under a URI template (RFC 6570), as a server would expand
//! it: `{var}` stands for one path segment's worth (no `/`, `?` or `#`), the reserved and
//! path-like operators (`{+var}`, `{#var}`, `{/var}`, `{.var}`, `{;var}`, `{?var}`,
//! `{&var}`) for anything. Broad on purpose: a held template must hold every URI it could
//! have produced.

/// One piece of a template.
enum Piece<'a> {
    Literal(&'a str),
    /// An expression; true when it may expand to anything (an operator).
    Var(bool),
}

fn pieces(template: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            out.push(Piece::Literal(&rest[..open]));
        }
        let Some(close) = rest[open..].find('}') else {
            out.push(Piece::Literal(&rest[open..]));
            return out;
        };
        let expr = &rest[open + 1..open + close];
        out.push(Piece::Var(
            expr.starts_with(['+', '#', '/', '.', ';', '?', '&']),
        ));
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Literal(rest));
    }
    out
}

/// Templates longer than this, or of more pieces, are not matched piece by piece: they
/// hold every URI of their server (a held definition must never cost the daemon its time).
const MAX_TEMPLATE: usize = 4096;
const MAX_PIECES: usize = 128;

/// Whether `uri` could be an expansion of `template`: one pass per piece over the
/// positions the URI could be at (no backtracking), so time is pieces × URI length.
pub fn matches(template: &str, uri: &str) -> bool {
    if template.len() > MAX_TEMPLATE {
        return true;
    }
    let pieces = pieces(template);
    if pieces.len() > MAX_PIECES {
        return true;
    }
    let uri = uri.as_bytes();
    let n = uri.len();
    // at[j]: the pieces so far can end at byte j of the URI.
    let mut at = vec![false; n + 1];
    at[0] = true;
    for piece in &pieces {
        let mut next = vec![false; n + 1];
        match piece {
            Piece::Literal(l) => {
                let l = l.as_bytes();
                for j in 0..=n {
                    if at[j] && uri[j..].starts_with(l) {
                        next[j + l.len()] = true;
                    }
                }
            }
            Piece::Var(any) => {
                let mut open = false;
                for j in 0..=n {
                    open |= at[j];
                    next[j] = open;
                    if j < n && !any && matches!(uri[j], b'/' | b'?' | b'#') {
                        open = false;
                    }
                }
            }
        }
        at = next;
        if !at.iter().any(|&b| b) {
            return false;
        }
    }
    at[n]
}

/// `uri` as servers compare it: scheme and host in lower case, `file://localhost/` as
/// `file:///`, unreserved characters percent-decoded, `.` and `..` segments resolved. A
/// read is held when either spelling falls under a held template.
pub fn normalize(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once(':') else {
        return uri.to_string();
    };
    let scheme = scheme.to_ascii_lowercase();
    let (authority, path) = match rest.strip_prefix("//") {
        Some(r) => {
            let end = r.find(['/', '?', '#']).unwrap_or(r.len());
            let a = r[..end].to_ascii_lowercase();
            let a = if scheme == "file" && a == "localhost" {
                String::new()
            } else {
                a
            };
            (Some(a), &r[end..])
        }
        None => (None, rest),
    };
    let cut = path.find(['?', '#']).unwrap_or(path.len());
    let (path, tail) = path.split_at(cut);
    let path = dot_segments(&unreserved(path));
    match authority {
        Some(a) => format!("{scheme}://{a}{path}{tail}"),
        None => format!("{scheme}:{path}{tail}"),
    }
}

/// Percent-escapes of unreserved characters decoded (they mean the same).
fn unreserved(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                let v = (h * 16 + l) as u8;
                if v.is_ascii_alphanumeric() || b"-._~".contains(&v) {
                    out.push(v);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

/// RFC 3986 remove_dot_segments, on `/`-separated segments.
fn dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let absolute = path.starts_with('/');
    let parts: Vec<&str> = path.split('/').collect();
    for (i, seg) in parts.iter().enumerate() {
        match *seg {
            "." => {}
            ".." => {
                if out.len() > usize::from(absolute) {
                    out.pop();
                }
            }
            s => out.push(s),
        }
        // A trailing `.` or `..` leaves the directory: keep its slash.
        if i == parts.len() - 1 && (*seg == "." || *seg == "..") {
            out.push("");
        }
    }
    out.join("/")
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn expansions_match_and_others_do_not() {
        assert!(matches("file:///logs/{name}", "file:///logs/app.log"));
        assert!(!matches("file:///logs/{name}", "file:///logs/a/b.log"));
        assert!(matches("file:///logs/{+path}", "file:///logs/a/b.log"));
        assert!(matches("db://{table}/rows/{id}", "db://users/rows/7"));
        assert!(!matches("db://{table}/rows/{id}", "db://users/cols/7"));
        assert!(matches(
            "search://q{?term,page}",
            "search://q?term=x&page=2"
        ));
        assert!(matches("exact://a", "exact://a"));
        assert!(!matches("exact://a", "exact://ab"));
    }

    #[test]
    fn spellings_of_one_uri_normalize_alike() {
        use super::normalize;
        for spelled in [
            "FILE:///logs/app.log",
            "file:///logs/./app.log",
            "file://localhost/logs/app.log",
            "file:///logs/x/../app.log",
            "file:///logs/%61pp.log",
        ] {
            assert_eq!(normalize(spelled), "file:///logs/app.log", "{spelled}");
        }
        assert_eq!(normalize("db://Host/a?b=%2F"), "db://host/a?b=%2F");
        assert_eq!(normalize("x:/%é%"), "x:/%é%");
    }

    #[test]
    fn hostile_templates_cost_little() {
        let many = "{a}".repeat(200_000);
        assert!(
            matches(&many, "x"),
            "past the limits a template holds everything"
        );
        let t = "x{+a}{+b}{+c}{+d}{+e}{+f}{+g}{+h}y";
        let start = std::time::Instant::now();
        assert!(!matches(t, &"x".repeat(5000)));
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }
}
