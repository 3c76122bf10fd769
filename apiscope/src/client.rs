//! How the client commands (`sql`, `import`, `loadgen`) reach a daemon that asks for a
//! token or speaks TLS.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::{Error, Result};

/// Credentials and trust, shared by the client commands.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct ClientArgs {
    /// Token sent as `Authorization: Bearer` (gRPC: `authorization` metadata); it needs the
    /// scope of what the command does [default: none].
    #[arg(long, env = "APISCOPE_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// PEM CA certificate to trust for `https://` URLs, instead of the system's roots
    /// [default: none].
    #[arg(long, env = "APISCOPE_CA_CERT")]
    pub(crate) ca_cert: Option<PathBuf>,
}

impl ClientArgs {
    /// An HTTP client sending the token with every request and trusting `--ca-cert`.
    pub(crate) fn http(&self, timeout: Duration) -> Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder().timeout(timeout);
        if let Some(value) = self.authorization()? {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::AUTHORIZATION, value);
            builder = builder.default_headers(headers);
        }
        if let Some(pem) = self.ca_pem()? {
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|error| Error::Config(format!("--ca-cert: {error}")))?;
            builder = builder.tls_certs_only(certs);
        }
        builder
            .build()
            .map_err(|error| Error::Client(format!("cannot set up the HTTP client: {error}")))
    }

    /// `Bearer <token>` as a header value.
    pub(crate) fn authorization(&self) -> Result<Option<reqwest::header::HeaderValue>> {
        let Some(token) = &self.token else {
            return Ok(None);
        };
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| Error::Config("--token must be printable ASCII".into()))?;
        value.set_sensitive(true);
        Ok(Some(value))
    }

    /// tonic's TLS settings for an `https://` gRPC endpoint.
    pub(crate) fn grpc_tls(&self) -> Result<tonic::transport::ClientTlsConfig> {
        let config = tonic::transport::ClientTlsConfig::new();
        Ok(match self.ca_pem()? {
            Some(pem) => config.ca_certificate(tonic::transport::Certificate::from_pem(pem)),
            None => config.with_enabled_roots(),
        })
    }

    fn ca_pem(&self) -> Result<Option<Vec<u8>>> {
        self.ca_cert
            .as_ref()
            .map(|path| {
                std::fs::read(path).map_err(|error| {
                    Error::Config(format!("--ca-cert {}: {error}", path.display()))
                })
            })
            .transpose()
    }
}

/// The error of a request that did not reach the daemon at `url`.
pub(crate) fn unreachable(url: &str) -> impl FnOnce(reqwest::Error) -> Error + '_ {
    move |error| {
        Error::Client(format!(
            "cannot reach apiscope at {url}: {error} (is `apiscope serve` running? see --url)"
        ))
    }
}
