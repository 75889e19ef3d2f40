//! The ledger's signing key (ed25519, kept 0600 beside the daemon's state) and the message a
//! signature covers: one chain position, so a signature vouches for everything before it.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("audit signing key {path}: {message}")]
    Key { path: PathBuf, message: String },
}

/// What a checkpoint or head signature covers.
pub fn message(seq: u64, hash: &str) -> Vec<u8> {
    format!("mcp-gateway audit v1\n{seq}\n{hash}\n").into_bytes()
}

pub fn sign(key: &SigningKey, seq: u64, hash: &str) -> String {
    hex::encode(key.sign(&message(seq, hash)).to_bytes())
}

pub fn verify(key: &VerifyingKey, seq: u64, hash: &str, signature_hex: &str) -> bool {
    let Ok(bytes) = hex::decode(signature_hex) else {
        return false;
    };
    let Ok(sig) = Signature::from_slice(&bytes) else {
        return false;
    };
    key.verify(&message(seq, hash), &sig).is_ok()
}

/// Loads the key, creating it (0600, parent 0700) on first start.
pub fn load_or_create(path: &Path) -> Result<SigningKey, KeyError> {
    let err = |message: String| KeyError::Key {
        path: path.to_owned(),
        message,
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            let mode = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o777);
            if let Ok(mode) = mode {
                if mode & 0o077 != 0 {
                    return Err(err(format!(
                        "is readable by others (mode {mode:o}); run `chmod 600 {}`",
                        path.display()
                    )));
                }
            }
            let secret: [u8; 32] = hex::decode(String::from_utf8_lossy(&bytes).trim())
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| err("is not a 64-digit hex ed25519 secret key".into()))?;
            Ok(SigningKey::from_bytes(&secret))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| err(format!("creating its directory: {e}")))?;
            }
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret).map_err(|e| err(format!("no randomness: {e}")))?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| err(format!("creating: {e}")))?;
            f.write_all(hex::encode(secret).as_bytes())
                .and_then(|_| f.sync_all())
                .map_err(|e| err(format!("writing: {e}")))?;
            Ok(SigningKey::from_bytes(&secret))
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// The key if it already exists (for verification: never creates one).
pub fn load_or_create_existing(path: &Path) -> Option<SigningKey> {
    path.exists().then(|| load_or_create(path).ok()).flatten()
}

/// A public key given as 64 hex digits (what `mcp-gateway audit pubkey` prints).
pub fn parse_public(text: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = hex::decode(text.trim()).ok()?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/audit.key");
        let a = load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = load_or_create(&path).unwrap();
        assert_eq!(a.verifying_key(), b.verifying_key());
        let sig = sign(&a, 5, "abc");
        assert!(verify(&b.verifying_key(), 5, "abc", &sig));
        assert!(!verify(&b.verifying_key(), 6, "abc", &sig));
        assert!(!verify(&b.verifying_key(), 5, "abd", &sig));
        let pubhex = hex::encode(a.verifying_key().to_bytes());
        assert_eq!(parse_public(&pubhex), Some(a.verifying_key()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_or_create(&path)
            .unwrap_err()
            .to_string()
            .contains("chmod 600"));
    }
}
