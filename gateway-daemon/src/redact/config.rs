//! The `[redact]` table of the daemon's config, and its validation (errors name the key).
//!
//! ```toml
//! [redact]
//! mode_responses = "redact"          # "redact" | "off"
//! mode_requests = "refuse"           # "redact" | "refuse" | "off" (tool arguments)
//! disable = ["phone"]                # built-in detectors to turn off
//! allow = ["AKIAIOSFODNN7EXAMPLE"]   # exact values never redacted
//! allow_patterns = ['^[^@]+@corp\.internal$']   # whole-value regexes never redacted
//! entropy_threshold = 3.5            # bits per character, for `high_entropy`
//! entropy_min_length = 20
//!
//! [[redact.custom]]                  # national ids and in-house token formats
//! name = "us_ssn"
//! pattern = '\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b'
//!
//! [[redact.custom]]
//! name = "ca_sin"
//! pattern = '\b[1-9][0-9]{2}[ -]?[0-9]{3}[ -]?[0-9]{3}\b'
//! validator = "luhn"                 # "luhn" | "mod97" | "iban" | "entropy"
//! ```

use serde::Deserialize;

use super::detectors::BUILTINS;
use super::RedactError;

/// What the gateway does with a tool call whose arguments hold a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestMode {
    /// Replace it with a marker and forward the call.
    #[default]
    Redact,
    /// Refuse the call (exfiltration guard): nothing leaves the host.
    Refuse,
    /// Forward arguments untouched.
    Off,
}

/// What the gateway does with secrets in what servers send back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResponseMode {
    #[default]
    Redact,
    Off,
}

/// A validator a custom detector can require of each match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Validator {
    /// The digits of the match pass the Luhn check (card-like ids, e.g. IMEI, SIRET).
    Luhn,
    /// ISO 7064 MOD 97-10: the letters and digits of the match, read as one number
    /// (A=10 … Z=35), are 1 modulo 97.
    Mod97,
    /// An IBAN (country length and mod-97).
    Iban,
    /// Shannon entropy of the match at least `entropy_threshold`, length at least
    /// `entropy_min_length`, upper case, lower case and digits.
    Entropy,
}

/// A detector defined in the config. The marker is `[REDACTED:<name>]`; when the pattern
/// has capture groups, only the first group that took part is replaced.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomDetector {
    pub name: String,
    pub pattern: String,
    #[serde(default)]
    pub validator: Option<Validator>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactConfig {
    pub mode_responses: ResponseMode,
    pub mode_requests: RequestMode,
    /// Built-in detectors turned off, by name.
    pub disable: Vec<String>,
    pub custom: Vec<CustomDetector>,
    /// Exact matched values that are never redacted (documented example keys, a team's
    /// shared support address).
    pub allow: Vec<String>,
    /// Regexes a whole matched value must match to be left alone.
    pub allow_patterns: Vec<String>,
    pub entropy_threshold: f64,
    pub entropy_min_length: usize,
}

impl Default for RedactConfig {
    fn default() -> Self {
        RedactConfig {
            mode_responses: ResponseMode::Redact,
            mode_requests: RequestMode::Redact,
            disable: Vec::new(),
            custom: Vec::new(),
            allow: Vec::new(),
            allow_patterns: Vec::new(),
            entropy_threshold: 3.5,
            entropy_min_length: 20,
        }
    }
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> RedactError {
    RedactError::Config {
        key: key.into(),
        message: message.into(),
    }
}

fn builtin_list() -> String {
    BUILTINS
        .iter()
        .map(|b| b.name)
        .collect::<Vec<_>>()
        .join(", ")
}

impl RedactConfig {
    /// Checks what serde cannot: detector names, regexes, ranges. The error names the key,
    /// e.g. `redact.custom[2].pattern: invalid regex: …`.
    pub fn validate(&self) -> Result<(), RedactError> {
        for (i, name) in self.disable.iter().enumerate() {
            if !BUILTINS.iter().any(|b| b.name == name) {
                return Err(invalid(
                    format!("redact.disable[{i}]"),
                    format!(
                        "no built-in detector {name:?} (built-in detectors: {})",
                        builtin_list()
                    ),
                ));
            }
        }
        for (i, c) in self.custom.iter().enumerate() {
            let key = format!("redact.custom[{i}]");
            let name_ok = !c.name.is_empty()
                && c.name.len() <= 64
                && c.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !name_ok {
                return Err(invalid(
                    format!("{key}.name"),
                    format!(
                        "{:?} is not a detector name: use 1–64 of a-z, 0-9 and _ (it appears in \
                         markers and audit records)",
                        c.name
                    ),
                ));
            }
            if BUILTINS.iter().any(|b| b.name == c.name) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!(
                        "{:?} is a built-in detector; choose another name (or disable the \
                         built-in one)",
                        c.name
                    ),
                ));
            }
            if let Some(j) = self.custom[..i].iter().position(|o| o.name == c.name) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("{:?} is already the name of redact.custom[{j}]", c.name),
                ));
            }
            let re = regex::Regex::new(&c.pattern)
                .map_err(|e| invalid(format!("{key}.pattern"), format!("invalid regex: {e}")))?;
            if re.is_match("") {
                return Err(invalid(
                    format!("{key}.pattern"),
                    format!(
                        "{:?} matches the empty string; a detector must match some text",
                        c.pattern
                    ),
                ));
            }
        }
        for (i, v) in self.allow.iter().enumerate() {
            if v.is_empty() {
                return Err(invalid(format!("redact.allow[{i}]"), "empty value"));
            }
        }
        for (i, p) in self.allow_patterns.iter().enumerate() {
            regex::Regex::new(p).map_err(|e| {
                invalid(
                    format!("redact.allow_patterns[{i}]"),
                    format!("invalid regex: {e}"),
                )
            })?;
        }
        if !(self.entropy_threshold > 0.0 && self.entropy_threshold <= 8.0) {
            return Err(invalid(
                "redact.entropy_threshold",
                format!(
                    "{} is outside (0, 8] bits per character (the default is 3.5)",
                    self.entropy_threshold
                ),
            ));
        }
        if !(16..=256).contains(&self.entropy_min_length) {
            return Err(invalid(
                "redact.entropy_min_length",
                format!(
                    "{} is outside 16..=256 characters (the default is 20)",
                    self.entropy_min_length
                ),
            ));
        }
        Ok(())
    }
}
