//! A small PKI for the TLS tests, and a way to run an unmodified client with a CA added to the
//! host's trust store — the way an administrator installs one — without touching the real store.
//!
//! Certificates are ECDSA P-256 from rcgen with its default validity (1975 to 4096), written as
//! PEM: `<name>.pem` (certificate) and `<name>.key` (PKCS#8 key).

use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use sha2::{Digest, Sha256};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;

/// The test CA's common name.
pub const CA_NAME: &str = "mcp-gateway tests CA";

/// A test CA whose certificate is `ca.pem` in its directory, and the leaves it issues there.
pub struct TestPki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl TestPki {
    /// Makes the CA and writes `dir/ca.pem`.
    pub fn new(dir: &Path) -> TestPki {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, CA_NAME);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("generating the test CA's key");
        let cert = params.self_signed(&key).expect("self-signing the test CA");
        write(&dir.join("ca.pem"), &cert.pem());
        TestPki {
            dir: dir.to_path_buf(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate (PEM), to add to a trust store.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A server certificate from this CA for `sans` (DNS names, or IP addresses when they parse
    /// as one): `(dir/<name>.pem, dir/<name>.key)`.
    pub fn issue(&self, name: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        let (mut params, key) = leaf(name, sans);
        // Lets OpenSSL-based clients match the leaf to its CA by key id.
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .unwrap_or_else(|e| panic!("signing the test certificate {name}: {e}"));
        write_leaf(&self.dir, name, &cert, &key)
    }
}

/// A self-signed server certificate for `sans`, from no CA: `(dir/<name>.pem, dir/<name>.key)`.
pub fn self_signed(dir: &Path, name: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
    let (params, key) = leaf(name, sans);
    let cert = params
        .self_signed(&key)
        .unwrap_or_else(|e| panic!("self-signing the test certificate {name}: {e}"));
    write_leaf(dir, name, &cert, &key)
}

fn leaf(name: &str, sans: &[&str]) -> (CertificateParams, KeyPair) {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans)
        .unwrap_or_else(|e| panic!("subject alternative names of {name}: {e}"));
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().expect("generating a test key");
    (params, key)
}

fn write_leaf(dir: &Path, name: &str, cert: &Certificate, key: &KeyPair) -> (PathBuf, PathBuf) {
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    write(&cert_path, &cert.pem());
    write(&key_path, &key.serialize_pem());
    (cert_path, key_path)
}

fn write(path: &Path, pem: &str) {
    std::fs::write(path, pem).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// The SHA-256 of the first certificate in a PEM file, as lowercase hex (what
/// `openssl x509 -fingerprint -sha256` shows, without the colons).
pub fn der_sha256(pem: &Path) -> String {
    let der = CertificateDer::from_pem_file(pem)
        .unwrap_or_else(|e| panic!("reading a certificate from {}: {e}", pem.display()));
    hex::encode(Sha256::digest(der.as_ref()))
}

/// Runs as `sh -c` inside a private mount namespace: CA paths, `--`, then the command.
///
/// Everything it writes lands on a tmpfs mounted only in that namespace, so the real
/// /etc/ssl/certs and /usr/local/share/ca-certificates never change. The copy of /etc/ssl/certs
/// keeps its symlinks (into /usr/share/ca-certificates), which stay valid. The hooks of
/// update-ca-certificates are masked: they update other stores outside /etc/ssl/certs (Debian's
/// ca-certificates-java hook even runs dpkg triggers), which would leak out of the namespace.
const HOST_TRUST_SH: &str = r#"set -eu
die() { echo "host_trust: $*" >&2; exit 125; }
command -v update-ca-certificates >/dev/null ||
    die "update-ca-certificates is missing: apt-get install ca-certificates"
for d in /etc/ssl/certs /usr/local/share/ca-certificates; do
    [ -d "$d" ] || die "$d is missing: apt-get install ca-certificates"
done
stage=$(mktemp -d) || die "mktemp -d failed"
trap 'umount "$stage" 2>/dev/null || true; rmdir "$stage" 2>/dev/null || true' EXIT
mount -t tmpfs -o mode=0755 host-trust "$stage" || die "mounting a tmpfs on $stage failed"
mkdir "$stage/certs" "$stage/local" "$stage/hooks"
cp -a /etc/ssl/certs/. "$stage/certs/" || die "copying /etc/ssl/certs failed"
cp -a /usr/local/share/ca-certificates/. "$stage/local/" ||
    die "copying /usr/local/share/ca-certificates failed"
n=0
while [ "$#" -gt 0 ] && [ "$1" != -- ]; do
    n=$((n + 1))
    cp "$1" "$stage/local/mcp-gateway-test-$n.crt" || die "copying the CA $1 failed"
    shift
done
[ "$#" -gt 1 ] || die "no command to run"
shift
mount --bind "$stage/certs" /etc/ssl/certs || die "bind-mounting over /etc/ssl/certs failed"
mount --bind "$stage/local" /usr/local/share/ca-certificates ||
    die "bind-mounting over /usr/local/share/ca-certificates failed"
if [ -d /etc/ca-certificates/update.d ]; then
    mount --bind "$stage/hooks" /etc/ca-certificates/update.d ||
        die "masking /etc/ca-certificates/update.d failed"
fi
# The bind mounts keep the tmpfs alive; its mount point goes, leaving no trace in $TMPDIR.
umount "$stage" && rmdir "$stage" || die "removing $stage failed"
trap - EXIT
# Quiet unless it fails: the command's stderr stays its own.
if ! log=$(update-ca-certificates 2>&1); then
    printf '%s\n' "$log" >&2
    die "update-ca-certificates failed"
fi
exec "$@"
"#;

/// `cmd` (its program, arguments, environment changes and directory; not its stdio, which is
/// set on the returned command) run in a private mount namespace where `extra_cas` (PEM files)
/// have been added to the host's trust store as an administrator would: copied into
/// /usr/local/share/ca-certificates as `.crt`, then `update-ca-certificates`, which rewrites
/// /etc/ssl/certs/ca-certificates.crt and the hash links in /etc/ssl/certs. The real host's
/// store is left unchanged. An `env_clear` on `cmd` is not carried over (std cannot read it).
/// Needs root (`unshare --mount`). A failure to set this up exits 125
/// with a `host_trust:` line on stderr (after update-ca-certificates' output when it failed).
pub fn host_trust(cmd: Command, extra_cas: &[&Path]) -> Command {
    let mut wrapped = Command::new("unshare");
    wrapped.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"]);
    wrapped.arg(HOST_TRUST_SH).arg("host_trust");
    for ca in extra_cas {
        // The command's current directory applies to the script too.
        wrapped.arg(std::path::absolute(ca).expect("absolute CA path"));
    }
    wrapped
        .arg("--")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

/// Variables that point OpenSSL, httpx, rustls-native-certs or curl at another store than the
/// host's. This machine sets several of them; the tests must not depend on that.
pub const CA_ENV: &[&str] = &[
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
];

/// `cmd` with those variables removed, so it trusts what the host's store says.
pub fn host_store_only(mut cmd: Command) -> Command {
    for var in CA_ENV {
        cmd.env_remove(var);
    }
    cmd
}
