//! Tool-poisoning checks: what in a server's tool, prompt or resource-template definition
//! smuggles instructions into the model's context. Pure functions over the JSON the server
//! listed; a finding blocks the definition until an administrator reviews it, so every
//! pattern here trades recall against blocking legitimate tools, and the comments on each
//! say which way it leans.
//!
//! Three families:
//! - characters a human reviewer cannot see but the model reads (invisible, bidi, terminal
//!   escapes, other controls), found by a per-character scan;
//! - phrases that address the model rather than describe the tool (`instruction_to_model`)
//!   or point at secrets other tools or the agent hold (`credential_reference`), found by
//!   regexes over a normalised copy of the text: invisible characters removed, Unicode tag
//!   characters decoded to the ASCII they hide, full-width and mathematical letters folded
//!   to ASCII, so `ig\u{200B}nore previous instructions` is caught (and reported twice:
//!   once for the character, once for the phrase);
//! - a tool name that shadows another server's tool (`shadowing`).
//!
//! Bounded work: the walk is iterative (no recursion limit to hit), stops at
//! [`MAX_FINDINGS`], reports each check at most once per string (with a count), runs each
//! regex once per string (the regex crate is linear time), and truncates what it quotes.

use std::fmt::Write as _;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const INVISIBLE_CHARACTER: &str = "invisible_character";
pub const BIDI_CONTROL: &str = "bidi_control";
pub const TERMINAL_ESCAPE: &str = "terminal_escape";
pub const CONTROL_CHARACTER: &str = "control_character";
pub const INSTRUCTION_TO_MODEL: &str = "instruction_to_model";
pub const CREDENTIAL_REFERENCE: &str = "credential_reference";
pub const SHADOWED_NAME: &str = "shadowed_name";

/// A poisoned definition needs one finding to be blocked; the rest only help the reviewer,
/// and a hostile server must not make the gateway build an unbounded list.
pub const MAX_FINDINGS: usize = 64;

/// Characters of a definition's text quoted in a detail (before escaping).
const DETAIL_CHARS: usize = 60;
/// Characters of one key quoted in a field pointer, and of the whole pointer.
const SEGMENT_CHARS: usize = 60;
const FIELD_CHARS: usize = 512;

/// One reason to hold a definition for review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// One of: "invisible_character", "bidi_control", "terminal_escape", "control_character",
    /// "instruction_to_model", "credential_reference", "shadowed_name".
    pub check: String,
    /// JSON pointer (RFC 6901) of the string inside the definition, e.g. "/description",
    /// "/inputSchema/properties/path/description". A finding in an object key points at the
    /// key's object plus the key, and its detail ends with "in the key". Escaped for display
    /// like `detail` (invisible and control characters as `<U+XXXX>`), long keys truncated.
    pub field: String,
    /// Short and safe to log or show an administrator: e.g.
    /// "U+200B ZERO WIDTH SPACE at char 41" (chars counted from 0) or
    /// "\"ignore previous instructions\"" (the matched text, truncated to 60 characters,
    /// invisible and control characters escaped as `<U+XXXX>`).
    pub detail: String,
}

/// Every finding in one definition (a JSON object as the server listed it), in document
/// order, at most [`MAX_FINDINGS`]. Walks every string value and object key, at any depth.
pub fn inspect(def: &Value) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut ptr = String::new();
    let mut stack: Vec<Frame<'_>> = Vec::new();
    match def {
        Value::String(s) => inspect_str(s, "", false, &mut out),
        _ => push_container(&mut stack, def, 0),
    }
    while out.len() < MAX_FINDINGS {
        let Some(frame) = stack.last_mut() else { break };
        let base = frame.base;
        let next = match &mut frame.children {
            Children::Object(it) => it.next().map(|(k, v)| (Some(k), 0, v)),
            Children::Array(it) => it.next().map(|(i, v)| (None, i, v)),
        };
        let Some((key, index, value)) = next else {
            stack.pop();
            continue;
        };
        ptr.truncate(base);
        match key {
            Some(key) => {
                push_segment(&mut ptr, key);
                inspect_str(key, &ptr, true, &mut out);
            }
            None => {
                let _ = write!(ptr, "/{index}");
            }
        }
        match value {
            Value::String(s) => inspect_str(s, &ptr, false, &mut out),
            Value::Object(_) | Value::Array(_) => push_container(&mut stack, value, ptr.len()),
            _ => {}
        }
    }
    out.truncate(MAX_FINDINGS);
    out
}

/// A finding when `name` (a tool name of server `server`) shadows a tool another server
/// already offers: equal names, or equal after lowercasing and dropping '-', '_', '.' and
/// whitespace (and the invisible characters and full-width forms [`inspect`] sees through),
/// so "send_email", "sendEmail", "send-email" and "send\u{200B}email" all collide.
/// `others` yields (server, tool name) pairs of other servers' approved tools; pairs of
/// `server` itself are ignored (a server may rename its own tools).
pub fn shadowing<'a>(
    server: &str,
    name: &str,
    others: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Option<Finding> {
    let folded = fold_name(name);
    let (other_server, other_name) = others.into_iter().find(|&(s, n)| {
        s != server && (n == name || (!folded.is_empty() && fold_name(n) == folded))
    })?;
    Some(Finding {
        check: SHADOWED_NAME.to_string(),
        field: "/name".to_string(),
        detail: format!(
            "\"{}\" shadows \"{}\" of server \"{}\"",
            display(name, DETAIL_CHARS),
            display(other_name, DETAIL_CHARS),
            display(other_server, DETAIL_CHARS),
        ),
    })
}

fn fold_name(name: &str) -> String {
    normalize(name)
        .chars()
        .filter(|&c| !matches!(c, '-' | '_' | '.') && !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

// ---------------------------------------------------------------------------------------
// The walk

struct Frame<'a> {
    /// Length of the pointer to this container; children append their segment to it.
    base: usize,
    children: Children<'a>,
}

enum Children<'a> {
    Object(serde_json::map::Iter<'a>),
    Array(std::iter::Enumerate<std::slice::Iter<'a, Value>>),
}

fn push_container<'a>(stack: &mut Vec<Frame<'a>>, value: &'a Value, base: usize) {
    let children = match value {
        Value::Object(map) => Children::Object(map.iter()),
        Value::Array(items) => Children::Array(items.iter().enumerate()),
        _ => return,
    };
    stack.push(Frame { base, children });
}

/// RFC 6901 escaping, then display escaping: the pointer is shown to people and logs, and a
/// key is server-controlled text like any other.
fn push_segment(ptr: &mut String, key: &str) {
    ptr.push('/');
    let escaped = key.replace('~', "~0").replace('/', "~1");
    ptr.push_str(&display(&escaped, SEGMENT_CHARS));
}

fn finding(out: &mut Vec<Finding>, check: &str, field: &str, is_key: bool, detail: String) {
    if out.len() >= MAX_FINDINGS {
        return;
    }
    let field = if field.chars().count() > FIELD_CHARS {
        let mut f: String = field.chars().take(FIELD_CHARS).collect();
        f.push('…');
        f
    } else {
        field.to_string()
    };
    let detail = if is_key {
        format!("{detail} in the key")
    } else {
        detail
    };
    out.push(Finding {
        check: check.to_string(),
        field,
        detail,
    });
}

// ---------------------------------------------------------------------------------------
// Characters

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Invisible,
    Bidi,
    Terminal,
    Control,
}

const CLASSES: [(Class, &str); 4] = [
    (Class::Invisible, INVISIBLE_CHARACTER),
    (Class::Bidi, BIDI_CONTROL),
    (Class::Terminal, TERMINAL_ESCAPE),
    (Class::Control, CONTROL_CHARACTER),
];

/// The class of a character out of context (the emoji, script and flag exceptions are
/// applied by the scan, which sees the neighbours).
fn class_of(c: char) -> Option<Class> {
    Some(match c {
        '\u{1B}' | '\u{9B}' => Class::Terminal,
        '\t' | '\n' | '\r' => return None,
        '\u{0}'..='\u{1F}' | '\u{7F}'..='\u{9F}' => Class::Control,
        '\u{61C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' => {
            Class::Bidi
        }
        '\u{AD}'
        | '\u{115F}'
        | '\u{1160}'
        | '\u{180E}'
        | '\u{200B}'..='\u{200D}'
        | '\u{2060}'..='\u{2064}'
        | '\u{3164}'
        | '\u{FEFF}'
        | '\u{FFA0}'
        | '\u{E0000}'..='\u{E007F}' => Class::Invisible,
        // Variation selectors carry one byte each after a base character ("emoji
        // smuggling"); the scan lets the two emoji/text presentation selectors through
        // after an ordinary character.
        '\u{FE00}'..='\u{FE0F}' | '\u{E0100}'..='\u{E01EF}' => Class::Invisible,
        _ => return None,
    })
}

fn is_variation_selector(c: char) -> bool {
    matches!(c, '\u{FE00}'..='\u{FE0F}' | '\u{E0100}'..='\u{E01EF}')
}

/// Extended_Pictographic, roughly: the blocks whose characters appear on either side of a
/// zero width joiner in emoji ZWJ sequences (👨‍👩‍👧, 🏳️‍🌈, 🐈‍⬛, ❤️‍🔥, 🏃‍♀️).
fn is_pictographic(c: char) -> bool {
    matches!(c,
        '\u{1F000}'..='\u{1FAFF}' | '\u{2600}'..='\u{27BF}' | '\u{2300}'..='\u{23FF}'
        | '\u{2B00}'..='\u{2BFF}')
}

/// Scripts whose orthography needs ZWNJ/ZWJ between letters: Persian writes می‌خواهم with a
/// ZWNJ, Hindi and Sinhala conjuncts use a ZWJ after the virama (ශ්‍රී). Flagging those would
/// block every tool described in those languages.
fn is_joining_script(c: char) -> bool {
    matches!(c,
        '\u{0600}'..='\u{06FF}' | '\u{0700}'..='\u{074F}' | '\u{0750}'..='\u{077F}'
        | '\u{08A0}'..='\u{08FF}' | '\u{0900}'..='\u{0DFF}' | '\u{FB50}'..='\u{FDFF}'
        | '\u{FE70}'..='\u{FEFE}')
}

/// The only tag sequences that render: England, Scotland, Wales after 🏴 (U+1F3F4). Any other
/// run of tag characters is hidden ASCII; allowing arbitrary syntactically valid subdivision
/// flags would let a server smuggle text six letters at a time.
const SUBDIVISION_FLAGS: [&str; 3] = ["gbeng", "gbsct", "gbwls"];

/// If `rest` (the text right after a 🏴) is one of [`SUBDIVISION_FLAGS`] spelled in tag
/// characters and closed by CANCEL TAG, its length in bytes.
fn subdivision_flag_len(rest: &str) -> Option<usize> {
    let mut spelled = String::new();
    for (i, c) in rest.char_indices() {
        match c {
            '\u{E0061}'..='\u{E007A}' if spelled.len() < 5 => {
                spelled.push(char::from(b'a' + (u32::from(c) - 0xE0061) as u8));
            }
            '\u{E007F}' if SUBDIVISION_FLAGS.contains(&spelled.as_str()) => {
                return Some(i + c.len_utf8());
            }
            _ => return None,
        }
    }
    None
}

/// The ASCII character a tag character stands for, if any (U+E0020–U+E007E).
fn tag_ascii(c: char) -> Option<char> {
    let cp = u32::from(c);
    (0xE0020..=0xE007E)
        .contains(&cp)
        .then(|| char::from((cp - 0xE0000) as u8))
}

#[derive(Default)]
struct Tally {
    count: usize,
    first: Option<(usize, char, usize)>, // (char index, char, byte index)
}

struct Scan {
    tallies: [Tally; 4],
    /// ASCII hidden in tag characters, as the model would read it (truncated).
    hidden: String,
    /// The text the phrase checks run on.
    normalized: String,
}

fn scan(s: &str) -> Scan {
    let mut tallies: [Tally; 4] = Default::default();
    let mut hidden = String::new();
    let mut normalized = String::with_capacity(s.len());
    let mut prev: Option<char> = None;
    let mut prev2: Option<char> = None;
    let mut exempt_until = 0usize;
    let mut in_tags = false;
    for (ci, (bi, c)) in s.char_indices().enumerate() {
        let next = s[bi + c.len_utf8()..].chars().next();
        if c == '\u{1F3F4}' {
            if let Some(n) = subdivision_flag_len(&s[bi + c.len_utf8()..]) {
                exempt_until = bi + c.len_utf8() + n;
            }
        }
        let class = if bi < exempt_until {
            None
        } else {
            class_of(c).filter(|_| !exempt_in_context(c, prev, prev2, next))
        };
        let tag = class.and(tag_ascii(c));
        if tag.is_some() != in_tags {
            // Decoded tag text is its own run of words, not glued to the visible text.
            normalized.push(' ');
            in_tags = tag.is_some();
        }
        match (class, tag) {
            (_, Some(a)) => {
                normalized.push(a);
                if hidden.chars().count() <= DETAIL_CHARS {
                    hidden.push(a);
                }
            }
            (Some(Class::Terminal | Class::Control), _) => normalized.push(' '),
            (Some(_), _) => {}
            (None, _) => {
                if class_of(c).is_none() {
                    normalized.push(fold_char(c));
                }
            }
        }
        if let Some(class) = class {
            let t = &mut tallies[class as usize];
            t.count += 1;
            t.first.get_or_insert((ci, c, bi));
        }
        prev2 = prev;
        prev = Some(c);
    }
    Scan {
        tallies,
        hidden,
        normalized,
    }
}

/// The legitimate uses of otherwise invisible characters, decided from the neighbours.
fn exempt_in_context(c: char, prev: Option<char>, prev2: Option<char>, next: Option<char>) -> bool {
    match c {
        '\u{200D}' => {
            // 🏳️‍🌈: the joiner may follow an emoji presentation selector.
            let left = if prev == Some('\u{FE0F}') {
                prev2
            } else {
                prev
            };
            (left.is_some_and(is_pictographic) && next.is_some_and(is_pictographic))
                || joins_script(prev, next)
        }
        '\u{200C}' => joins_script(prev, next),
        '\u{FE0E}' | '\u{FE0F}' => {
            prev.is_some_and(|p| !is_variation_selector(p) && class_of(p).is_none())
        }
        _ => false,
    }
}

fn joins_script(prev: Option<char>, next: Option<char>) -> bool {
    // A Malayalam chillu or Persian suffix may end the word: the right side can be a space,
    // punctuation or the end of the string, but not a letter of another script.
    prev.is_some_and(is_joining_script)
        && next.is_none_or(|n| is_joining_script(n) || !n.is_alphanumeric())
}

/// NFKC for the forms attackers use to dodge ASCII regexes, without a Unicode-data crate:
/// full-width ASCII, mathematical alphanumerics (𝐢𝐠𝐧𝐨𝐫𝐞), exotic spaces.
fn fold_char(c: char) -> char {
    let cp = u32::from(c);
    let ascii = |b: u32| char::from_u32(b).unwrap_or(c);
    match cp {
        0xFF01..=0xFF5E => ascii(cp - 0xFEE0),
        0x1D400..=0x1D6A3 => {
            let i = (cp - 0x1D400) % 52;
            ascii(if i < 26 {
                'A' as u32 + i
            } else {
                'a' as u32 + i - 26
            })
        }
        0x1D7CE..=0x1D7FF => ascii('0' as u32 + (cp - 0x1D7CE) % 10),
        0xA0 | 0x2000..=0x200A | 0x202F | 0x205F | 0x3000 => ' ',
        _ => c,
    }
}

/// The whole normalised text (for names and phrases).
fn normalize(s: &str) -> String {
    scan(s).normalized
}

fn char_name(c: char) -> &'static str {
    const C0: [&str; 32] = [
        "NULL",
        "START OF HEADING",
        "START OF TEXT",
        "END OF TEXT",
        "END OF TRANSMISSION",
        "ENQUIRY",
        "ACKNOWLEDGE",
        "BELL",
        "BACKSPACE",
        "CHARACTER TABULATION",
        "LINE FEED",
        "LINE TABULATION",
        "FORM FEED",
        "CARRIAGE RETURN",
        "SHIFT OUT",
        "SHIFT IN",
        "DATA LINK ESCAPE",
        "DEVICE CONTROL ONE",
        "DEVICE CONTROL TWO",
        "DEVICE CONTROL THREE",
        "DEVICE CONTROL FOUR",
        "NEGATIVE ACKNOWLEDGE",
        "SYNCHRONOUS IDLE",
        "END OF TRANSMISSION BLOCK",
        "CANCEL",
        "END OF MEDIUM",
        "SUBSTITUTE",
        "ESCAPE",
        "INFORMATION SEPARATOR FOUR",
        "INFORMATION SEPARATOR THREE",
        "INFORMATION SEPARATOR TWO",
        "INFORMATION SEPARATOR ONE",
    ];
    match c {
        '\u{0}'..='\u{1F}' => C0[c as usize],
        '\u{7F}' => "DELETE",
        '\u{9B}' => "CONTROL SEQUENCE INTRODUCER",
        '\u{80}'..='\u{9F}' => "C1 CONTROL",
        '\u{AD}' => "SOFT HYPHEN",
        '\u{115F}' => "HANGUL CHOSEONG FILLER",
        '\u{1160}' => "HANGUL JUNGSEONG FILLER",
        '\u{180E}' => "MONGOLIAN VOWEL SEPARATOR",
        '\u{200B}' => "ZERO WIDTH SPACE",
        '\u{200C}' => "ZERO WIDTH NON-JOINER",
        '\u{200D}' => "ZERO WIDTH JOINER",
        '\u{2060}' => "WORD JOINER",
        '\u{2061}' => "FUNCTION APPLICATION",
        '\u{2062}' => "INVISIBLE TIMES",
        '\u{2063}' => "INVISIBLE SEPARATOR",
        '\u{2064}' => "INVISIBLE PLUS",
        '\u{3164}' => "HANGUL FILLER",
        '\u{FEFF}' => "ZERO WIDTH NO-BREAK SPACE",
        '\u{FFA0}' => "HALFWIDTH HANGUL FILLER",
        '\u{E0001}' => "LANGUAGE TAG",
        '\u{E007F}' => "CANCEL TAG",
        '\u{E0000}'..='\u{E007E}' => "TAG",
        '\u{FE00}'..='\u{FE0F}' | '\u{E0100}'..='\u{E01EF}' => "VARIATION SELECTOR",
        '\u{61C}' => "ARABIC LETTER MARK",
        '\u{200E}' => "LEFT-TO-RIGHT MARK",
        '\u{200F}' => "RIGHT-TO-LEFT MARK",
        '\u{202A}' => "LEFT-TO-RIGHT EMBEDDING",
        '\u{202B}' => "RIGHT-TO-LEFT EMBEDDING",
        '\u{202C}' => "POP DIRECTIONAL FORMATTING",
        '\u{202D}' => "LEFT-TO-RIGHT OVERRIDE",
        '\u{202E}' => "RIGHT-TO-LEFT OVERRIDE",
        '\u{2066}' => "LEFT-TO-RIGHT ISOLATE",
        '\u{2067}' => "RIGHT-TO-LEFT ISOLATE",
        '\u{2068}' => "FIRST STRONG ISOLATE",
        '\u{2069}' => "POP DIRECTIONAL ISOLATE",
        _ => "CHARACTER",
    }
}

/// `s` made safe to print: at most `max` characters of it, each one a reader could not see
/// (or a terminal would act on) written as `<U+XXXX>`, and "…" if it went on.
fn display(s: &str, max: usize) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    for c in chars.by_ref().take(max) {
        if class_of(c).is_some() || c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
            let _ = write!(out, "<U+{:04X}>", u32::from(c));
        } else {
            out.push(c);
        }
    }
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

// ---------------------------------------------------------------------------------------
// Phrases

/// (check, pattern). Matched case-insensitively on the normalised text; `\b` is an ASCII
/// word boundary (keeps the regexes on the fast DFA), `\s+` between words tolerates any
/// run of whitespace. When a pattern has a capture group, the group is what is quoted.
const PHRASES: &[(&str, &str)] = &[
    // --- instruction_to_model. The model is addressed ("you", "the user", "instructions");
    // a description addresses a reader about the tool. Patterns that could fire on a
    // description of the tool's own behaviour require that address.

    // "Ignore previous instructions". The noun is required: "Ignore case when matching"
    // and "ignore previous results" are ordinary options. "rules" stays in although a
    // firewall tool could say "ignore previous rules": that phrase is rare and reviewed once.
    (
        INSTRUCTION_TO_MODEL,
        r"\b(?:ignore|disregard|forget)\s+(?:(?:all|any|of|the|your|my|these|those)\s+)*(?:previous|prior|above|earlier|preceding|former|original|foregoing)\s+(?:instructions?|prompts?|rules|directions|directives|guidelines|commands)\b",
    ),
    // Secrecy towards the user. "tell the user" alone is fine ("Tell the user the current
    // weather"), only its negation hides something.
    (
        INSTRUCTION_TO_MODEL,
        r"\b(?:do\s+not|don['’]?t|never|must\s+not|should\s+not)\s+(?:tell|inform|notify|alert|warn|let)\s+(?:the\s+|your\s+)?users?\b",
    ),
    (
        INSTRUCTION_TO_MODEL,
        r"\b(?:do\s+not|don['’]?t|never|must\s+not|should\s+not)\s+(?:mention|reveal|show|disclose|say|explain|display)\b(?:\s+[^\s.!?]+){0,6}?\s+(?:to|with)\s+(?:the\s+|your\s+)?users?\b",
    ),
    // "Do not mention that you first need to read the file": talk about the conversation.
    (
        INSTRUCTION_TO_MODEL,
        r"\b(?:do\s+not|don['’]?t|never)\s+mention\s+(?:this|that|it)\b",
    ),
    // Also fires on "overwrites without asking the user": skipping the human is exactly
    // what a reviewer should see, even when the author meant a force flag.
    (
        INSTRUCTION_TO_MODEL,
        r"\bwithout\s+(?:telling|informing|asking|notifying|alerting|consulting|letting|bothering)\s+(?:the\s+|your\s+)?users?\b",
    ),
    (
        INSTRUCTION_TO_MODEL,
        r"\b(?:the\s+)?users?\s+(?:must|should|shall|needs?\s+to)\s*(?:not|n['’]t|never)\s+(?:know|see|notice|find\s+out|learn|be\s+(?:told|informed|aware|shown|notified|alerted))\b",
    ),
    // Pseudo-markup that models are trained to obey, and chat-template tokens. Other
    // angle-bracket words (<secret>, <admin>) are common placeholders in usage strings.
    (
        INSTRUCTION_TO_MODEL,
        r"<\s*/?\s*(?:important|system|system[_-]?prompt|instructions?|assistant)\s*>|<\|(?:im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id|end_header_id)\|>|\[/?inst\]|<<\s*/?sys\s*>>",
    ),
    // A prompt-management server could legitimately say "system prompt"; rare, reviewed.
    (INSTRUCTION_TO_MODEL, r"\bsystem\s+prompts?\b"),
    // Orders to call something first or always. "you must use absolute paths", "you should
    // use this tool when…" and "you must provide the SHA" are ordinary, so "use" and "run"
    // count only with "first"/"always", and the plain form needs a tool-ish object.
    (
        INSTRUCTION_TO_MODEL,
        r"\byou\s+(?:must|should|have\s+to|need\s+to|are\s+required\s+to)\s+(?:always\s+)?first\s+(?:call|use|invoke|run|read|execute|fetch|send)\s+\S+",
    ),
    (
        INSTRUCTION_TO_MODEL,
        r"\byou\s+(?:must|should|have\s+to|are\s+required\s+to)\s+always\s+(?:call|invoke|read|execute|send|include)\s+\S+",
    ),
    (
        INSTRUCTION_TO_MODEL,
        r"\byou\s+(?:must|should|have\s+to|are\s+required\s+to)\s+(?:call|invoke|read|execute)\s+(?:\S+\s+){0,3}?\S*(?:tool|function|file|contents?|before|first)\b",
    ),
    // Sequencing across tools. "Before calling, make sure the path exists" is advice about
    // the tool's own input and does not name a tool: not a finding.
    (
        INSTRUCTION_TO_MODEL,
        r"\bbefore\s+(?:using|calling|invoking|running|executing)\s+(?:this|any|the|another)\s+(?:other\s+)?(?:tools?|functions?)\b",
    ),
    // Threats that the tool breaks unless the model obeys. "This tool will only work if the
    // repository is public" is a fact about the world; "if you"/"when you" addresses the model.
    (
        INSTRUCTION_TO_MODEL,
        r"\b(?:this|the)\s+tool\s+(?:will|would|must|can|does)\s*(?:not|n['’]t)?\s+(?:only\s+)?(?:work|function)(?:\s+(?:properly|correctly))?\s+(?:only|unless|if\s+you|when\s+you)\b",
    ),
    (
        INSTRUCTION_TO_MODEL,
        r"\botherwise\s+(?:this|the)\s+tool\s+(?:will|would|may)\s*(?:not|n['’]t)\s+(?:work|function)\b",
    ),
    (
        INSTRUCTION_TO_MODEL,
        r#"\bas\s+(?:a\s+)?["'`]?side\s*-?\s*note\b"#,
    ),
    // "Override the system default timezone" is an option: only instructions or the
    // system prompt/message.
    (
        INSTRUCTION_TO_MODEL,
        r"\boverride\s+(?:(?:the|any|all|your|previous|prior|existing)\s+)*(?:instructions|system\s+(?:prompt|instructions|message|rules))\b",
    ),
    // Role-play addressed to the model. A bare "act as" is how a proxy or relay describes
    // itself ("can act as an HTTP proxy"), so the address is required; a sentence-initial
    // imperative "Act as the administrator" is missed (documented trade-off).
    (
        INSTRUCTION_TO_MODEL,
        r"\b(?:you\s+(?:(?:will|must|should|shall|are\s+to)\s+)?(?:now\s+)?|from\s+now\s+on,?\s+|please\s+|now\s+)act\s+as\b|\bpretend\s+(?:to\s+be|you\s+are)\b",
    ),
    // "Add new instructions to the recipe" is content, not a redirect of the model.
    (
        INSTRUCTION_TO_MODEL,
        r"\b(?:your|the\s+following|these\s+are\s+(?:your|the)|here\s+are\s+(?:your|the))\s+new\s+instructions\b|\bnew\s+instructions\s*:",
    ),
    // --- credential_reference: secrets another tool or the agent holds. Precision
    // trade-off: a server that manages such things (an SSH-key deployer naming
    // ~/.ssh/id_ed25519.pub, a wallet taking a private key, a Vault server reading "the
    // content of a secret", an MCP installer editing mcp.json) is flagged too; that is one
    // review, and exactly the servers whose definitions an administrator should read.
    (
        CREDENTIAL_REFERENCE,
        r"(?:^|[^\w.])((?:~|\$home|%userprofile%)?[/\\]?\.ssh)\b",
    ),
    (CREDENTIAL_REFERENCE, r"\bid_(?:rsa|dsa|ecdsa|ed25519)\b"),
    (CREDENTIAL_REFERENCE, r"\.aws[/\\]credentials\b"),
    (
        CREDENTIAL_REFERENCE,
        r"\b(?:mcp|mcp_settings|cline_mcp_settings|claude_desktop_config)\.json\b|(?:^|[^\w])(\.claude\.json)\b",
    ),
    // ".env" the file, not "environment" nor "process.env"/"import.meta.env".
    (
        CREDENTIAL_REFERENCE,
        r#"(?:^|[\s'"`(\[/\\~=:,])(\.env(?:\.[a-z0-9_-]+)?)\b"#,
    ),
    (
        CREDENTIAL_REFERENCE,
        r"(?:^|[^\w])(\.(?:npmrc|netrc|pypirc|pgpass|git-credentials))\b",
    ),
    // Also a parameter named private_key/privateKey: a tool asking for one is a sink for
    // the agent's secrets. "keyword" and "keyboard" are not keys.
    (CREDENTIAL_REFERENCE, r"\bprivate[\s_-]*keys?\b"),
    // "Create an API key for the project" is API management; only keys of *other*
    // parties (tools, servers) are a grab.
    (
        CREDENTIAL_REFERENCE,
        r"\b(?:api[\s_-]*keys?|credentials|secrets|passwords)\s+(?:of|for|from|belonging\s+to|used\s+by)\s+(?:the\s+)?(?:other|another|all\s+(?:(?:other|the|your)\s+)?(?:tools|servers|services|providers|mcp))\b",
    ),
    // At most three words between: "the contents of the file along with token counts"
    // must not match.
    (
        CREDENTIAL_REFERENCE,
        r"\bcontents?\s+of\s+(?:[^\s!?]+\s+){0,3}?[^\s!?]*?(?:credentials?|tokens?|secrets?|passwords?)\b",
    ),
    // Exfiltration channels: an extra argument to carry what was read. Only "it/them/its
    // content" as a bare "parameter": "pass the ID as the `repo` parameter" is a usage note.
    (
        CREDENTIAL_REFERENCE,
        r#"\bpass\b(?:\s+[^\s.!?]+){1,6}?\s+(?:as|in)\s+(?:a\s+|the\s+)?["'`]?side\s*-?\s*note"#,
    ),
    (
        CREDENTIAL_REFERENCE,
        r"\bpass\s+(?:it|them|(?:its|their|the)\s+contents?)\s+as\s+(?:an?\s+)?(?:parameter|argument)\b",
    ),
];

static COMPILED: LazyLock<Vec<(&'static str, Regex)>> = LazyLock::new(|| {
    PHRASES
        .iter()
        .map(|&(check, pattern)| {
            let pattern = format!("(?i){}", pattern.replace(r"\b", r"(?-u:\b)"));
            let re = Regex::new(&pattern)
                .unwrap_or_else(|e| panic!("built-in poison pattern {pattern:?}: {e}"));
            (check, re)
        })
        .collect()
});

// ---------------------------------------------------------------------------------------
// One string

fn inspect_str(s: &str, field: &str, is_key: bool, out: &mut Vec<Finding>) {
    if out.len() >= MAX_FINDINGS {
        return;
    }
    let scan = scan(s);
    for (class, check) in CLASSES {
        let tally = &scan.tallies[class as usize];
        let Some((ci, c, bi)) = tally.first else {
            continue;
        };
        let mut detail = format!("U+{:04X} {} at char {ci}", u32::from(c), char_name(c));
        if tally.count > 1 {
            let _ = write!(detail, " (+{} more)", tally.count - 1);
        }
        if class == Class::Invisible && !scan.hidden.is_empty() {
            let _ = write!(
                detail,
                " hiding \"{}\"",
                display(&scan.hidden, DETAIL_CHARS)
            );
        }
        if class == Class::Terminal {
            // The sequence says what it does to the screen (ESC[8m hides, ESC[2J clears).
            let _ = write!(detail, " starting \"{}\"", display(&s[bi..], 12));
        }
        finding(out, check, field, is_key, detail);
    }
    for (check, re) in COMPILED.iter() {
        if out.len() >= MAX_FINDINGS {
            return;
        }
        let Some(caps) = re.captures(&scan.normalized) else {
            continue;
        };
        let m = caps
            .iter()
            .skip(1)
            .flatten()
            .next()
            .or_else(|| caps.get(0))
            .map_or("", |m| m.as_str());
        let detail = format!("\"{}\"", display(m.trim(), DETAIL_CHARS));
        finding(out, check, field, is_key, detail);
    }
}

#[cfg(test)]
#[path = "poison_tests.rs"]
mod tests;
