//! The test-only TLS identity under `fixtures/tls/` (a self-signed
//! certificate for `localhost` and `127.0.0.1`), and a client that trusts
//! only it, built with rustls directly rather than through otpgate.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls;

/// A file of the fixture identity: `cert.pem` or `key.pem`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tls").join(name)
}

/// The fixture identity as a server's configured files.
pub fn files() -> otpgate::config::TlsFiles {
    otpgate::config::TlsFiles {
        cert: fixture("cert.pem"),
        key: fixture("key.pem"),
    }
}

/// A TLS client that trusts only the fixture certificate.
pub fn connector() -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(fixture("cert.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A server under test whose SMSC also listens for SMPP over TLS, on any
/// port with the fixture identity; and that listener's address.
pub async fn server_with_smpp_tls() -> (super::TestServer, SocketAddr) {
    let server = super::TestServer::start_with(|c| {
        c.smpp_tls = Some(otpgate::config::SmppTls {
            addr: "127.0.0.1:0".parse().unwrap(),
            files: files(),
        })
    })
    .await;
    let addr = server
        .running
        .as_ref()
        .and_then(|r| r.smpp_tls)
        .expect("a TLS listener");
    (server, addr)
}
