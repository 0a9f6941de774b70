//! TLS to PostgreSQL, as libpq's `sslmode` in the database URL asks
//! (tokio-postgres itself knows only `disable`, `prefer` and `require`):
//!
//! - `disable`: no TLS;
//! - `prefer` (the default, as libpq's): TLS when the server offers it;
//! - `require`: TLS or no connection; the certificate is not checked (libpq
//!   checks it against `sslrootcert` when one is given: so does this);
//! - `verify-ca`: the certificate must chain to a trusted root;
//! - `verify-full`: that, and name the host connected to.
//!
//! The roots: the PEM file `sslrootcert` names, or the system's
//! (`sslrootcert=system`, and the default here where libpq would look for
//! `~/.postgresql/root.crt`). rustls with ring, the binary's one provider.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::SqlError;

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    ChainAndName,
}

/// A database URL made ready for tokio-postgres, and the TLS it asks for
/// (`None`: `sslmode=disable`).
#[derive(Clone)]
pub struct Connection {
    pub url: String,
    pub tls: Option<MakeRustlsConnect>,
}

/// Reads `sslmode` and `sslrootcert` from `url` (a `postgres://` URL) and
/// gives tokio-postgres a URL it accepts with the connector they ask for.
/// Connectors are kept per URL (the databases `dynapi.yaml` names, a few):
/// loading the system's roots takes a while, and every statement connects
/// anew, to whichever database it names.
pub fn prepare(url: &str) -> Result<Connection, SqlError> {
    /// URLs kept at most; all are dropped when one more comes.
    const KEPT: usize = 32;
    static SEEN: Mutex<Option<HashMap<String, Connection>>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    let seen = seen.get_or_insert_with(HashMap::new);
    if let Some(known) = seen.get(url) {
        return Ok(known.clone());
    }
    let bad = |why: String| SqlError::Unavailable(format!("the database URL: {why}"));
    let mut parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    let mut mode = None;
    let mut rootcert = None;
    let mut kept = Vec::new();
    for (key, value) in parsed.query_pairs() {
        match &*key {
            "sslmode" => mode = Some(value.into_owned()),
            "sslrootcert" => rootcert = Some(value.into_owned()),
            _ => kept.push((key.into_owned(), value.into_owned())),
        }
    }
    let (given, check) = match mode.as_deref().unwrap_or("prefer") {
        "disable" => ("disable", None),
        "allow" | "prefer" => ("prefer", Some(Check::Nothing)),
        "require" if rootcert.is_none() => ("require", Some(Check::Nothing)),
        "require" | "verify-ca" => ("require", Some(Check::Chain)),
        "verify-full" => ("require", Some(Check::ChainAndName)),
        other => {
            return Err(bad(format!(
                "sslmode `{other}` is not one of disable, allow, prefer, require, verify-ca, verify-full"
            )))
        }
    };
    kept.push(("sslmode".to_string(), given.to_string()));
    parsed.query_pairs_mut().clear().extend_pairs(kept);
    let tls = match check {
        None => None,
        Some(check) => Some(MakeRustlsConnect::new(config(check, rootcert.as_deref())?)),
    };
    let made = Connection {
        url: parsed.to_string(),
        tls,
    };
    if seen.len() >= KEPT {
        seen.clear();
    }
    seen.insert(url.to_string(), made.clone());
    Ok(made)
}

fn config(check: Check, rootcert: Option<&str>) -> Result<rustls::ClientConfig, SqlError> {
    let bad = |why: String| SqlError::Unavailable(format!("TLS to the database: {why}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match (check, rootcert) {
        (Check::Nothing, _) => Arc::new(AnyCertificate(provider.clone())),
        (_, None | Some("system")) => Arc::new(
            rustls_platform_verifier::Verifier::new(provider.clone())
                .map_err(|e| bad(format!("the system's roots: {e}")))?,
        ),
        (_, Some(file)) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(file)
                .map_err(|e| bad(format!("sslrootcert `{file}`: {e}")))?
            {
                let cert = cert.map_err(|e| bad(format!("sslrootcert `{file}`: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| bad(format!("sslrootcert `{file}`: {e}")))?;
            }
            if roots.is_empty() {
                return Err(bad(format!("sslrootcert `{file}` holds no certificate")));
            }
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .map_err(|e| bad(e.to_string()))?
        }
    };
    let verifier = if check == Check::Chain {
        Arc::new(AnyName(verifier))
    } else {
        verifier
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// `require` without roots: any certificate, as libpq; the handshake's
/// signatures are still checked, so the session is encrypted to whoever
/// holds the certificate's key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain is checked, the name is not.
#[derive(Debug)]
struct AnyName(Arc<dyn ServerCertVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_is_read_and_the_url_given_to_tokio_postgres_is_one_it_knows() {
        let c = prepare("postgres://u@h/db?sslmode=verify-full&application_name=x").unwrap();
        assert_eq!(
            c.url,
            "postgres://u@h/db?application_name=x&sslmode=require"
        );
        assert!(c.tls.is_some());
        let c = prepare("postgres://u@h/db").unwrap();
        assert_eq!(c.url, "postgres://u@h/db?sslmode=prefer");
        let c = prepare("postgres://u@h/db?sslmode=disable").unwrap();
        assert!(c.tls.is_none());
        let e = prepare("postgres://u@h/db?sslmode=sometimes")
            .err()
            .unwrap();
        assert!(e.to_string().contains("sslmode `sometimes`"), "{e}");
        let e = prepare("postgres://u@h/db?sslmode=verify-ca&sslrootcert=/nonexistent.pem")
            .err()
            .unwrap();
        assert!(e.to_string().contains("/nonexistent.pem"), "{e}");
    }
}
