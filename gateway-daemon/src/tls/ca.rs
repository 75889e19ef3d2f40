//! The gateway's local certificate authority: made once, on first start, and kept across
//! restarts, because agents trust it host-wide and a new CA would break every one of them.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;

use super::TlsError;

/// Ten years: the CA is installed by hand into trust stores, so it should outlive the host.
const CA_VALIDITY_DAYS: i64 = 3_650;

pub struct Ca {
    pub(super) issuer: Issuer<'static, KeyPair>,
    pub(super) der: CertificateDer<'static>,
    pub pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Option<String>, TlsError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TlsError::Io {
            what: "reading",
            path: path.to_owned(),
            source,
        }),
    }
}

impl Ca {
    /// Loads the CA, or makes it when neither file exists yet.
    pub fn load_or_create(cert: &Path, key: &Path) -> Result<Ca, TlsError> {
        match (read(cert)?, read(key)?) {
            (Some(pem), Some(key_pem)) => Self::load(cert, key, pem, &key_pem),
            (None, None) => Self::create(cert, key),
            (Some(_), None) => Err(TlsError::CaHalf {
                present: cert.to_owned(),
                missing: key.to_owned(),
            }),
            (None, Some(_)) => Err(TlsError::CaHalf {
                present: key.to_owned(),
                missing: cert.to_owned(),
            }),
        }
    }

    fn load(cert: &Path, key: &Path, pem: String, key_pem: &str) -> Result<Ca, TlsError> {
        let mode = std::fs::metadata(key)
            .map_err(|source| TlsError::Io {
                what: "inspecting",
                path: key.to_owned(),
                source,
            })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(TlsError::CaKeyExposed {
                path: key.to_owned(),
                mode: mode & 0o777,
            });
        }
        let bad = |path: &Path, reason: String| TlsError::CaInvalid {
            path: path.to_owned(),
            reason,
        };
        let signing = KeyPair::from_pem(key_pem).map_err(|e| bad(key, e.to_string()))?;
        let issuer =
            Issuer::from_ca_cert_pem(&pem, signing).map_err(|e| bad(cert, e.to_string()))?;
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
            .map_err(|e| bad(cert, e.to_string()))?;
        Ok(Ca { issuer, der, pem })
    }

    fn create(cert: &Path, key: &Path) -> Result<Ca, TlsError> {
        let signing = KeyPair::generate().map_err(TlsError::Mint)?;
        let mut params = CertificateParams::default();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into());
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "mcp-gateway");
        dn.push(DnType::CommonName, format!("mcp-gateway local CA ({host})"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(CA_VALIDITY_DAYS);
        let certificate = params.self_signed(&signing).map_err(TlsError::Mint)?;
        // The key first: a certificate without its key would make the next start fail.
        write_atomic(key, signing.serialize_pem().as_bytes(), 0o600)?;
        write_atomic(cert, certificate.pem().as_bytes(), 0o644)?;
        tracing::info!(cert = %cert.display(), "created the gateway's local CA; agents must trust it (see `mcp-gateway ca export`)");
        Ok(Ca {
            pem: certificate.pem(),
            der: certificate.der().clone(),
            issuer: Issuer::new(params, signing),
        })
    }
}

/// Writes through a temporary file in the same directory and renames it into place, so a
/// crash leaves the old file or the new one, never half of one.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Io { what, path, source }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    let tmp = PathBuf::from(format!("{}.tmp{}", path.display(), std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("creating", &tmp))?;
    f.write_all(bytes).map_err(io("writing", &tmp))?;
    f.sync_all().map_err(io("syncing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("renaming into", path))?;
    Ok(())
}
