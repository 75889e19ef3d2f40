//! Leaf certificates the gateway shows agents: one per server name, signed by the local
//! CA, short-lived, kept in a bounded cache so a kept-alive agent never waits for a mint.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::ca::Ca;
use super::TlsError;

/// Clocks of agents and gateway disagree a little; a leaf valid from "now" would be
/// rejected by an agent whose clock is behind.
const BACKDATE: Duration = Duration::from_secs(3_600);

struct Entry {
    key: Arc<CertifiedKey>,
    /// When the cached leaf is replaced: well before it expires.
    renew_at: Instant,
}

pub struct Leaves {
    ca: Ca,
    provider: Arc<CryptoProvider>,
    validity: Duration,
    cache: Mutex<LruCache<String, Entry>>,
}

impl std::fmt::Debug for Leaves {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaves").finish_non_exhaustive()
    }
}

impl Leaves {
    pub fn new(ca: Ca, provider: Arc<CryptoProvider>, capacity: usize, validity: Duration) -> Self {
        Leaves {
            ca,
            provider,
            validity,
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca.pem
    }

    /// The leaf for `name`, minted when missing or due for renewal.
    pub fn get(&self, name: &str) -> Result<Arc<CertifiedKey>, TlsError> {
        let now = Instant::now();
        if let Some(e) = self.cache.lock().expect("leaf cache").get(name) {
            if e.renew_at > now {
                return Ok(e.key.clone());
            }
        }
        let key = Arc::new(self.mint(name)?);
        let entry = Entry {
            key: key.clone(),
            // Renewed at two thirds of its life, so an agent never sees one near expiry.
            renew_at: now + self.validity * 2 / 3,
        };
        self.cache
            .lock()
            .expect("leaf cache")
            .put(name.to_owned(), entry);
        Ok(key)
    }

    fn mint(&self, name: &str) -> Result<CertifiedKey, TlsError> {
        let signing = KeyPair::generate().map_err(TlsError::Mint)?;
        let mut params = CertificateParams::new(vec![name.to_owned()]).map_err(TlsError::Mint)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + self.validity;
        let cert = params
            .signed_by(&signing, &self.ca.issuer)
            .map_err(TlsError::Mint)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(signing.serialize_der()));
        let chain = vec![cert.der().clone(), self.ca.der.clone()];
        CertifiedKey::from_der(chain, key, &self.provider).map_err(TlsError::Rustls)
    }
}

impl ResolvesServerCert for Leaves {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // The gateway only terminates after it has read a server name (no SNI is refused
        // before the handshake), so a missing name here cannot be served.
        let name = hello.server_name()?;
        match self.get(name) {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!(sni = name, error = %e, "minting a leaf certificate failed");
                None
            }
        }
    }
}
