//! TLS for every listener, from PEM files: the HTTP listeners through a rustls acceptor
//! (see `listen::serve_http`), the PostgreSQL listener through pgwire's acceptor, gRPC
//! through tonic's own configuration (which also checks client certificates when a client
//! CA is given).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::{Error, Result};

/// The certificate files given in the settings.
#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    /// Clients of the gRPC listener must present a certificate signed by this CA.
    pub(crate) client_ca: Option<PathBuf>,
}

/// The server's identity, read and checked once at start.
#[derive(Clone)]
pub(crate) struct Tls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    client_ca_pem: Option<Vec<u8>>,
    http: Arc<ServerConfig>,
    postgres: Arc<ServerConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("client_ca", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads the files; a missing file, a file without a certificate or key, or a key that
    /// does not match the certificate stops the start by name.
    pub(crate) fn load(files: &TlsFiles) -> Result<Self> {
        let cert_pem = read(&files.cert, "tls_cert")?;
        let key_pem = read(&files.key, "tls_key")?;
        let client_ca_pem = match &files.client_ca {
            Some(path) => {
                let pem = read(path, "tls_client_ca")?;
                certificates(&pem, path)?;
                Some(pem)
            }
            None => None,
        };
        let certs = certificates(&cert_pem, &files.cert)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| {
            Error::Config(format!(
                "tls_key {}: no private key in it ({error})",
                files.key.display()
            ))
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| Error::Config(format!("TLS: {error}")))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|error| {
                Error::Config(format!(
                    "tls_cert {} and tls_key {}: {error}",
                    files.cert.display(),
                    files.key.display()
                ))
            })?;
        // One identity; each listener offers its own protocols.
        let with_alpn = |alpn: Vec<Vec<u8>>| {
            let mut config = config.clone();
            config.alpn_protocols = alpn;
            Arc::new(config)
        };
        Ok(Self {
            http: with_alpn(vec![b"h2".to_vec(), b"http/1.1".to_vec()]),
            postgres: with_alpn(vec![b"postgresql".to_vec()]),
            cert_pem,
            key_pem,
            client_ca_pem,
        })
    }

    /// The acceptor of the PostgreSQL listener.
    pub(crate) fn postgres(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.postgres.clone())
    }

    /// tonic's configuration for the gRPC listener.
    pub(crate) fn grpc(&self) -> tonic::transport::ServerTlsConfig {
        let identity = tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem);
        let config = tonic::transport::ServerTlsConfig::new().identity(identity);
        match &self.client_ca_pem {
            Some(ca) => config.client_ca_root(tonic::transport::Certificate::from_pem(ca)),
            None => config,
        }
    }

    /// The acceptor of the HTTP listeners.
    pub(crate) fn http(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.http.clone())
    }
}

fn read(path: &Path, key: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|error| Error::Config(format!("{key} {}: {error}", path.display())))
}

fn certificates(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| Error::Config(format!("{}: {error}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "{}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}
