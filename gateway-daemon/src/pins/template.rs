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

fn matches_from(pieces: &[Piece<'_>], uri: &str) -> bool {
    match pieces.split_first() {
        None => uri.is_empty(),
        Some((Piece::Literal(l), rest)) => {
            uri.starts_with(l) && matches_from(rest, &uri[l.len()..])
        }
        Some((Piece::Var(any), rest)) => {
            // Every split point the variable could end at (including empty).
            let mut end = 0;
            loop {
                if matches_from(rest, &uri[end..]) {
                    return true;
                }
                let Some(c) = uri[end..].chars().next() else {
                    return false;
                };
                if !any && matches!(c, '/' | '?' | '#') {
                    return false;
                }
                end += c.len_utf8();
            }
        }
    }
}

/// Whether `uri` could be an expansion of `template`.
pub fn matches(template: &str, uri: &str) -> bool {
    matches_from(&pieces(template), uri)
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
}
