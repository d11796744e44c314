//! TLS for the embedded servers and the OTP core's clients, with rustls
//! (the `ring` provider, TLS 1.2 and 1.3).
//!
//! [`TlsIdentity`] is a server's certificate chain and private key, read
//! from PEM files once at start: SMTP's STARTTLS and the SMSC's TLS
//! listener present it. [`client_connector`] is what the OTP core trusts
//! when it submits to an external SMSC over TLS: the system's roots, or a
//! CA file of the operator's. This module only loads and validates; the
//! handshakes happen in the connection tasks. It must never log a key or
//! keep PEM text around.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

/// Why a TLS identity could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate {path}: {message}")]
    Certificate { path: String, message: String },
    #[error("private key {path}: {message}")]
    Key { path: String, message: String },
    #[error("the certificate and the key do not go together: {0}")]
    Mismatch(String),
}

/// What the server presents after STARTTLS; cheap to clone.
#[derive(Clone)]
pub struct TlsIdentity {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsIdentity")
    }
}

impl TlsIdentity {
    /// Reads a PEM certificate chain (leaf first) and a PEM private key
    /// (PKCS#8, PKCS#1 or SEC1) and checks that they match.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<TlsIdentity, TlsError> {
        let cert_error = |message: String| TlsError::Certificate {
            path: cert_path.display().to_string(),
            message,
        };
        let key_error = |message: String| TlsError::Key {
            path: key_path.display().to_string(),
            message,
        };
        let chain = CertificateDer::pem_file_iter(cert_path)
            .map_err(|e| cert_error(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cert_error(e.to_string()))?;
        if chain.is_empty() {
            return Err(cert_error("no CERTIFICATE block in the file".into()));
        }
        let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| key_error(e.to_string()))?;
        TlsIdentity::from_der(chain, key)
    }

    /// Builds the identity from DER values (for callers that hold them
    /// already, such as tests).
    pub fn from_der(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<TlsIdentity, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Mismatch(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Mismatch(e.to_string()))?;
        Ok(TlsIdentity {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}

/// A connection read and written alike whether it is plain TCP or TLS
/// over it: the SMSC's sessions and the OTP core's SMPP client take one.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}

/// A TLS client that trusts the certificates in `ca_file` (PEM), or the
/// system's roots when there is none.
pub fn client_connector(ca_file: Option<&Path>) -> Result<tokio_rustls::TlsConnector, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let error = |message: String| TlsError::Certificate {
                path: path.display().to_string(),
                message,
            };
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| error(e.to_string()))? {
                roots
                    .add(cert.map_err(|e| error(e.to_string()))?)
                    .map_err(|e| error(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(error("no CERTIFICATE block in the file".into()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(TlsError::Certificate {
                    path: "the system's certificate store".into(),
                    message: "no root certificate found; give a CA file".into(),
                });
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Mismatch(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tls").join(name)
    }

    #[test]
    fn the_fixture_identity_loads() {
        TlsIdentity::load(&fixture("cert.pem"), &fixture("key.pem")).expect("fixture loads");
    }

    #[test]
    fn bad_files_name_what_is_wrong() {
        let missing = TlsIdentity::load(&fixture("none.pem"), &fixture("key.pem")).unwrap_err();
        assert!(matches!(missing, TlsError::Certificate { .. }), "{missing}");
        // A certificate where the key should be.
        let swapped = TlsIdentity::load(&fixture("cert.pem"), &fixture("cert.pem")).unwrap_err();
        assert!(matches!(swapped, TlsError::Key { .. }), "{swapped}");
        // The README is no certificate at all.
        let empty = TlsIdentity::load(&fixture("README.md"), &fixture("key.pem")).unwrap_err();
        assert!(matches!(empty, TlsError::Certificate { .. }), "{empty}");
    }
}
