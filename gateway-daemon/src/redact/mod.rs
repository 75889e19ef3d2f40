//! Inline redaction of secrets and personal data (issue 6): detectors find secrets (keys,
//! tokens, password hashes, passwords in URLs and assignments, random-looking strings next to
//! key-like words) and personal data (e-mail, phone, payment card, IBAN, configurable national
//! ids) in text, and replace each match with `[REDACTED:<detector>]`.
//!
//! One pass of a `RegexSet` of cheap triggers over the text says which detectors can match;
//! a string where none can is left alone without allocating (the common case). Only the
//! detectors whose trigger fired run their own regex and validator (Luhn, mod-97, entropy, a JWT header that decodes, …).
//! Overlapping matches are settled once: the more specific detector wins (see
//! `detectors::BUILTINS`, ranks), then the longer match; each region is replaced once.
//! Allow-listed values are never replaced, nor is any match lying inside one.
//!
//! JSON: every string leaf is redacted, object keys and non-string leaves are not, so the
//! document stays valid and every value keeps its type. A card number written as a JSON
//! *number* is therefore not redacted (turning it into a string would break a schema-checked
//! `structuredContent`; turning it into another number would silently corrupt data).

mod config;
mod counts;
mod detectors;
mod json;
mod validate;

#[cfg(test)]
mod bench_tests;
#[cfg(test)]
mod corpus_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;

use regex::{Regex, RegexSet, RegexSetBuilder};
use regex_syntax::hir::{Look, LookSet};

pub use config::{CustomDetector, RedactConfig, RequestMode, ResponseMode, Validator};
pub use counts::Counts;
pub use validate::{luhn, mod97, shannon_entropy};

use detectors::{BUILTINS, RANK_CUSTOM};
use validate::{Check, Params};

#[derive(Debug, thiserror::Error)]
pub enum RedactError {
    /// A `[redact]` config key is wrong; `key` names it (`redact.custom[2].pattern`).
    #[error("{key}: {message}")]
    Config { key: String, message: String },
    /// The detectors, valid one by one, do not compile together (too large).
    #[error(
        "cannot compile the redaction detectors together: {0}; \
         simplify or remove custom detectors (redact.custom)"
    )]
    Compile(#[source] regex::Error),
}

/// The names of all built-in detectors, in rank order of the table.
pub fn builtin_detector_names() -> impl Iterator<Item = &'static str> {
    BUILTINS.iter().map(|b| b.name)
}

struct Detector {
    name: String,
    rank: u8,
    /// Pattern of the one-pass set: the trigger of a built-in, the pattern of a custom one.
    trigger: String,
    regex: Regex,
    has_groups: bool,
    check: Check,
}

/// The compiled detectors. Immutable: build once from the config, share behind an `Arc`.
pub struct Redactor {
    /// Pattern i of the set is `detectors[i].trigger`.
    set: RegexSet,
    /// The same triggers in multi-line mode, for one pass over many strings joined by line
    /// breaks (`json`): there `^` and `$` also match at each string's start and end. None
    /// when a trigger anchors to the whole text (`\A`, `\z`, or `^`/`$` under `(?-m)`),
    /// which a joined text cannot show at every string: then each string is checked alone.
    joined: Option<RegexSet>,
    /// Whether no trigger anchors at all (to the text or to a line): then a trigger that
    /// matches in a string of a JSON text without escapes matches in that text too, where
    /// the string's bytes stand between quotes (see `might_redact_json_text`).
    unanchored: bool,
    /// The words a secret's name holds (what `secret_assignment` and `high_entropy` look
    /// for before a value): a JSON object's string value under such a key is also read
    /// together with its key, as `key: value` (`{"password": "…"}` holds an assignment no
    /// single string does).
    key_words: Regex,
    detectors: Vec<Detector>,
    allow: HashSet<String>,
    allow_patterns: Option<RegexSet>,
    params: Params,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("detectors", &self.detector_names())
            .field("allow", &self.allow.len())
            .finish_non_exhaustive()
    }
}

/// One accepted match: the byte range replaced and the detector (index) that found it.
struct Found {
    span: Range<usize>,
    det: usize,
}

impl Redactor {
    pub fn new(cfg: &RedactConfig) -> Result<Self, RedactError> {
        cfg.validate()?;
        let compile = |p: &str| Regex::new(p).map_err(RedactError::Compile);
        let mut detectors = Vec::new();
        for b in BUILTINS {
            if cfg.disable.iter().any(|d| d == b.name) {
                continue;
            }
            let regex = compile(b.pattern)?;
            detectors.push(Detector {
                name: b.name.to_string(),
                rank: b.rank,
                trigger: b.trigger.to_string(),
                has_groups: regex.captures_len() > 1,
                regex,
                check: b.check,
            });
        }
        for c in &cfg.custom {
            let regex = compile(&c.pattern)?;
            detectors.push(Detector {
                name: c.name.clone(),
                rank: RANK_CUSTOM,
                trigger: c.pattern.clone(),
                has_groups: regex.captures_len() > 1,
                regex,
                check: match c.validator {
                    None => Check::None,
                    Some(Validator::Luhn) => Check::Luhn,
                    Some(Validator::Mod97) => Check::Mod97,
                    Some(Validator::Iban) => Check::Iban,
                    Some(Validator::Entropy) => Check::Entropy,
                },
            });
        }
        let triggers = || detectors.iter().map(|d| d.trigger.as_str());
        let set = RegexSetBuilder::new(triggers())
            .size_limit(64 << 20)
            .dfa_size_limit(16 << 20)
            .build()
            .map_err(RedactError::Compile)?;
        let looks: Vec<Option<LookSet>> = triggers().map(looks_of).collect();
        // A CRLF-mode `$` does not match between the `\r` a string ends with and the
        // separator's `\n`: such a trigger cannot be joined either.
        let joinable = looks.iter().all(|l| {
            l.is_some_and(|l| {
                !l.contains_anchor_haystack()
                    && !l.contains(Look::StartCRLF)
                    && !l.contains(Look::EndCRLF)
            })
        });
        let unanchored = looks
            .iter()
            .all(|l| l.is_some_and(|l| !l.contains_anchor()));
        let joined = if joinable {
            Some(
                RegexSetBuilder::new(triggers())
                    .multi_line(true)
                    .size_limit(64 << 20)
                    .dfa_size_limit(16 << 20)
                    .build()
                    .map_err(RedactError::Compile)?,
            )
        } else {
            None
        };
        let allow_patterns = if cfg.allow_patterns.is_empty() {
            None
        } else {
            Some(
                RegexSet::new(cfg.allow_patterns.iter().map(|p| format!("^(?:{p})$")))
                    .map_err(RedactError::Compile)?,
            )
        };
        Ok(Redactor {
            set,
            joined,
            unanchored,
            key_words: Regex::new(r"(?i-u)pass|secret|key|token|auth|credential")
                .expect("a fixed regex"),
            detectors,
            allow: cfg.allow.iter().cloned().collect(),
            allow_patterns,
            params: Params {
                entropy_threshold: cfg.entropy_threshold,
                entropy_min_length: cfg.entropy_min_length,
            },
        })
    }

    /// Finds and replaces every match in one string with `[REDACTED:<detector>]`.
    /// Returns None when nothing matched (the caller then forwards the original bytes).
    pub fn redact_str(&self, s: &str) -> Option<(String, Counts)> {
        let mut counts = Counts::default();
        self.redact_into(s, &mut counts).map(|out| (out, counts))
    }

    /// Whether `redact_json` could change `v`: false is certain, true only likely (one
    /// pass of the triggers; a caller that must not change `v` copies it only then).
    pub fn might_redact(&self, v: &serde_json::Value) -> bool {
        json::any_trigger(self, v, false)
    }

    /// Which detectors fire on the object keys of `v` (at any depth), which `redact_json`
    /// leaves as they are.
    pub fn scan_keys(&self, v: &serde_json::Value) -> Counts {
        json::scan_keys(self, v)
    }

    /// Whether redacting the JSON text `text` could change it: false is certain (no
    /// trigger matches anywhere in it, so none in any of its strings, each of which stands
    /// there as its own bytes when the text holds no escape), true only likely.
    pub fn might_redact_json_text(&self, text: &[u8]) -> bool {
        if !self.unanchored || memchr::memchr(b'\\', text).is_some() {
            return true;
        }
        // A key holding a secret's name is read with its value (`redact_pair`), a text the
        // JSON does not hold as it is.
        std::str::from_utf8(text)
            .map_or(true, |t| self.key_words.is_match(t) || self.set.is_match(t))
    }

    /// Whether a string value under `key` is also read with its key (`redact_pair`). Not
    /// MCP's `progressToken`: an opaque id the client picks to pair progress with its
    /// request, which every request may carry in `_meta`, where a find is refused.
    pub fn names_a_secret(&self, key: &str) -> bool {
        key != "progressToken" && self.key_words.is_match(key)
    }

    /// As `redact_into` for the string `value` of an object under `key`: what is found in
    /// `value` alone, and what is found in `key: value` within the value (the value of
    /// `{"password": "…"}`), replaced.
    pub fn redact_pair(&self, key: &str, value: &str, counts: &mut Counts) -> Option<String> {
        self.replaced(value, &self.find_pair(key, value), counts)
    }

    /// As `scan_into`, for the string `value` of an object under `key`.
    pub(crate) fn scan_pair(&self, key: &str, value: &str, counts: &mut Counts) {
        for f in self.find_pair(key, value) {
            counts.add(&self.detectors[f.det].name, 1);
        }
    }

    /// The matches in `value`, read alone and after `key: `, disjoint and in order.
    fn find_pair(&self, key: &str, value: &str) -> Vec<Found> {
        let mut found = self.find(value);
        let pair = format!("{key}: {value}");
        let from = pair.len() - value.len();
        let mut more = false;
        for f in self.find(&pair) {
            if f.span.end > from {
                let start = f.span.start.max(from) - from;
                found.push(Found {
                    span: start..f.span.end - from,
                    det: f.det,
                });
                more = true;
            }
        }
        if more {
            found = self.resolve(found, &[]);
        }
        found
    }

    /// Which detectors fire on one string, without changing it.
    pub fn scan_str(&self, s: &str) -> Counts {
        let mut counts = Counts::default();
        for f in self.find(s) {
            counts.add(&self.detectors[f.det].name, 1);
        }
        counts
    }

    /// Applies `redact_str` to every string leaf of a JSON value in place (object keys
    /// untouched), returns counts per detector. The JSON stays valid and well-typed.
    pub fn redact_json(&self, v: &mut serde_json::Value) -> Counts {
        json::redact(self, v)
    }

    /// Scans without changing (for the request exfiltration guard): which detectors fire on
    /// the string leaves — and, unlike `redact_json`, on object keys too, since refusing a
    /// call cannot break its shape.
    pub fn scan_json(&self, v: &serde_json::Value) -> Counts {
        json::scan(self, v)
    }

    /// Enabled detectors: built-in ones in table order, then custom ones in config order.
    pub fn detector_names(&self) -> Vec<&str> {
        self.detectors.iter().map(|d| d.name.as_str()).collect()
    }

    /// Replaces the matches in `s`, adding to `counts`; None (and no allocation) when
    /// nothing matched.
    pub(crate) fn redact_into(&self, s: &str, counts: &mut Counts) -> Option<String> {
        self.replaced(s, &self.find(s), counts)
    }

    /// `s` with each of `found` replaced by its marker, counted; None when there is none.
    fn replaced(&self, s: &str, found: &[Found], counts: &mut Counts) -> Option<String> {
        if found.is_empty() {
            return None;
        }
        let mut out = String::with_capacity(s.len() + 16 * found.len());
        let mut at = 0;
        for f in found {
            let name = &self.detectors[f.det].name;
            out.push_str(&s[at..f.span.start]);
            out.push_str("[REDACTED:");
            out.push_str(name);
            out.push(']');
            counts.add(name, 1);
            at = f.span.end;
        }
        out.push_str(&s[at..]);
        Some(out)
    }

    pub(crate) fn scan_into(&self, s: &str, counts: &mut Counts) {
        for f in self.find(s) {
            counts.add(&self.detectors[f.det].name, 1);
        }
    }

    /// Whether any detector's trigger matches somewhere in `s` (one early-exit pass).
    pub(crate) fn any_trigger(&self, s: &str) -> bool {
        self.set.is_match(s)
    }

    /// The pass over many strings joined by line breaks, when one can answer (see
    /// `joined`).
    pub(crate) fn joined_triggers(&self) -> Option<&RegexSet> {
        self.joined.as_ref()
    }

    fn allowed(&self, text: &str) -> bool {
        self.allow.contains(text)
            || self
                .allow_patterns
                .as_ref()
                .is_some_and(|set| set.is_match(text))
    }

    /// The matches to replace in `s`, disjoint and in order.
    ///
    /// The end of a match is a boundary for the next, as it is in the redacted text, where
    /// a marker ending in `]` stands in its place: of two keys glued together
    /// (`AIza…AIza…`) the second starts after a word character, so `\b` fails there in
    /// `s`, and it would be found, in clear, only when the output is redacted again. So
    /// `s` is searched again with what was found masked as a marker masks it, until nothing
    /// new turns up: a find inside one already made is dropped (a value that takes the
    /// mask itself, `pass:"[]]]"`), one reaching past it is merged with it, as within one
    /// search. A chain needing more than `ROUNDS` searches again can only be made on
    /// purpose (each costs a whole pass): the rest of `s`, from what the last one still
    /// found, is then redacted as one.
    fn find(&self, s: &str) -> Vec<Found> {
        let mut found = self.find_once(s);
        if found.is_empty() {
            return found;
        }
        let mut masked = s.as_bytes().to_vec();
        for round in 1..=ROUNDS {
            for f in &found {
                mask(&mut masked, &f.span);
            }
            let text = std::str::from_utf8(&masked).expect("ASCII over whole characters");
            let new: Vec<Found> = self
                .find_once(text)
                .into_iter()
                .filter(|n| !inside(&found, &n.span))
                .collect();
            let Some(first) = new.first() else {
                return found;
            };
            let rest = (round == ROUNDS).then_some(Found {
                span: first.span.start..s.len(),
                det: first.det,
            });
            found.extend(new);
            found.extend(rest);
            found = self.resolve(found, &[]);
        }
        found
    }

    /// One search of `s`: the matches to replace, disjoint and in order.
    fn find_once(&self, s: &str) -> Vec<Found> {
        // The common case — no trigger anywhere — in one early-exit pass, no allocation.
        if !self.any_trigger(s) {
            return Vec::new();
        }
        let hits = self.set.matches(s);
        let mut candidates = Vec::new();
        let mut allowed: Vec<Range<usize>> = Vec::new();
        let mut consider = |det: usize, whole: Range<usize>, span: Range<usize>| {
            let check = self.detectors[det].check;
            let Some(span) = check.run(s, whole, span, &self.params) else {
                return;
            };
            if span.is_empty() {
                return;
            }
            if self.allowed(&s[span.clone()]) {
                allowed.push(span);
            } else {
                candidates.push(Found { span, det });
            }
        };
        for det in hits.iter() {
            let d = &self.detectors[det];
            if d.has_groups {
                for caps in d.regex.captures_iter(s) {
                    // The first group that took part, else the whole match.
                    let whole = caps.get(0).expect("group 0 always matches").range();
                    let part = caps.iter().skip(1).flatten().next();
                    consider(det, whole.clone(), part.map_or(whole, |m| m.range()));
                }
            } else {
                for m in d.regex.find_iter(s) {
                    consider(det, m.range(), m.range());
                }
            }
        }
        self.resolve(candidates, &allowed)
    }

    /// Settles overlaps: by rank (more specific first), then length, then position. A
    /// candidate inside one already kept is dropped, as is one inside an allowed value. One
    /// that overlaps kept spans but reaches past them is merged with them into one span,
    /// named for the best-ranked of them: dropping it would leave the part it alone covers
    /// in clear (the e-mail address in `postgres://app:S3cret@db.ret@db.internal` whose
    /// local part is the URL's password).
    fn resolve(&self, mut candidates: Vec<Found>, allowed: &[Range<usize>]) -> Vec<Found> {
        candidates.retain(|c| {
            !allowed
                .iter()
                .any(|a| a.start <= c.span.start && c.span.end <= a.end)
        });
        if candidates.len() <= 1 {
            return candidates;
        }
        let order = |a: &Found, b: &Found| {
            let (da, db) = (&self.detectors[a.det], &self.detectors[b.det]);
            da.rank
                .cmp(&db.rank)
                .then(b.span.len().cmp(&a.span.len()))
                .then(a.span.start.cmp(&b.span.start))
                .then(a.det.cmp(&b.det))
        };
        candidates.sort_by(order);
        // Kept spans, disjoint, by start: those overlapping a candidate are a run that ends
        // with the last one starting before the candidate's end.
        let mut kept: BTreeMap<usize, Found> = BTreeMap::new();
        for c in candidates {
            let overlapping: Vec<usize> = kept
                .range(..c.span.end)
                .rev()
                .take_while(|(_, k)| k.span.end > c.span.start)
                .map(|(start, _)| *start)
                .collect();
            let inside_one = overlapping.len() == 1 && {
                let k = &kept[&overlapping[0]];
                k.span.start <= c.span.start && c.span.end <= k.span.end
            };
            if inside_one {
                continue;
            }
            let mut merged = c;
            let mut best: Option<Found> = None;
            for start in overlapping {
                let k = kept.remove(&start).expect("listed above");
                merged.span.start = merged.span.start.min(k.span.start);
                merged.span.end = merged.span.end.max(k.span.end);
                if best
                    .as_ref()
                    .is_none_or(|b| order(&k, b) == std::cmp::Ordering::Less)
                {
                    best = Some(k);
                }
            }
            if let Some(b) = best {
                merged.det = b.det;
            }
            kept.insert(merged.span.start, merged);
        }
        kept.into_values().collect()
    }
}

/// Searches of one text `find` makes again at most, after the first.
const ROUNDS: usize = 8;

/// `span` of `text` overwritten as the marker `[REDACTED:…]` bounds it: `[` first, `]`
/// last and between, none of them a word character. The length is kept, so the spans
/// found after stay those of the text itself.
fn mask(text: &mut [u8], span: &Range<usize>) {
    let bytes = &mut text[span.clone()];
    bytes.fill(b']');
    if bytes.len() > 1 {
        bytes[0] = b'[';
    }
}

/// Whether `span` lies inside one of `found` (disjoint, by start).
fn inside(found: &[Found], span: &Range<usize>) -> bool {
    let after = found.partition_point(|f| f.span.start <= span.start);
    after > 0 && found[after - 1].span.end >= span.end
}

/// The assertions `trigger` makes, read in multi-line mode: one anchoring to nothing but
/// lines matches in one string exactly where it matches in that string set between line
/// breaks. None for a regex that does not parse here (it failed to compile already).
fn looks_of(trigger: &str) -> Option<LookSet> {
    regex_syntax::ParserBuilder::new()
        .multi_line(true)
        .build()
        .parse(trigger)
        .ok()
        .map(|hir| hir.properties().look_set())
}
