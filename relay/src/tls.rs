//! TLS for both transports: the relay certificate (configured or self-signed, generated on
//! first run), its SHA-256 fingerprint that clients pin, and the rustls configurations.
//!
//! Every rustls config is built with the ring provider explicitly, so a second provider in
//! the dependency tree can never make rustls pick one at runtime.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Server name clients send (pinning, not names, authenticates the relay).
pub const SERVER_NAME: &str = "claudemesh-relay";

/// Certificate setup failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file could not be read or parsed.
    #[error("cannot load {what} from {path}: {detail}")]
    Load {
        /// `certificate` or `private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Detail.
        detail: String,
    },
    /// Writing the generated certificate failed.
    #[error("cannot write generated certificate to {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
    /// rustls refused the configuration.
    #[error("invalid TLS configuration: {0}")]
    Config(String),
}

/// The ring crypto provider, shared.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-256 of a DER certificate: what invite links and meshes pin.
pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    sha2::Sha256::digest(cert.as_ref()).into()
}

/// The relay's certificate chain and key.
#[derive(Debug)]
pub struct Identity {
    /// Chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Private key.
    pub key: PrivateKeyDer<'static>,
    /// Fingerprint of the leaf.
    pub fingerprint: [u8; 32],
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            fingerprint: self.fingerprint,
        }
    }
}

impl Identity {
    /// Load the configured PEM files, or the self-signed certificate in `data_dir`
    /// (generated on first run, key written 0600).
    pub fn load_or_generate(
        data_dir: &Path,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Self, TlsError> {
        if let (Some(c), Some(k)) = (cert, key) {
            return Self::load(c, k);
        }
        let c = data_dir.join("relay-cert.pem");
        let k = data_dir.join("relay-key.pem");
        if c.exists() && k.exists() {
            return Self::load(&c, &k);
        }
        let generated = rcgen::generate_simple_self_signed(vec![
            SERVER_NAME.to_string(),
            "localhost".to_string(),
        ])
        .map_err(|e| TlsError::Generate(e.to_string()))?;
        // The key first: a cut between the two leaves no certificate, so both are made anew
        // before anyone could have pinned either.
        write_private(&k, generated.signing_key.serialize_pem().as_bytes())?;
        write_private(&c, generated.cert.pem().as_bytes())?;
        Self::load(&c, &k)
    }

    fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| TlsError::Load {
                what: "certificate",
                path: cert.to_path_buf(),
                detail: e.to_string(),
            })?;
        let Some(leaf) = chain.first() else {
            return Err(TlsError::Load {
                what: "certificate",
                path: cert.to_path_buf(),
                detail: "no certificate in file".into(),
            });
        };
        let fingerprint = fingerprint(leaf);
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Load {
            what: "private key",
            path: key.to_path_buf(),
            detail: e.to_string(),
        })?;
        Ok(Self {
            chain,
            key,
            fingerprint,
        })
    }

    /// rustls server config for the TLS (WebSocket) listener.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, TlsError> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        Ok(cfg)
    }
}

/// Write a file the relay generated for itself, 0600, durably: members pin the
/// certificate (and the QUIC keys must match the previous process), so a power cut must
/// not bring back an empty, half-written or missing one and with it a new identity.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    crate::durable::write_atomic(path, bytes, 0o600).map_err(|source| TlsError::Write {
        path: path.into(),
        source,
    })
}

/// The fingerprint a client saw in its last handshake (for trust-on-first-use and for
/// telling a pin mismatch apart from other failures).
pub type SeenFingerprint = Arc<Mutex<Option<[u8; 32]>>>;

#[derive(Debug)]
struct PinVerifier {
    pin: Option<[u8; 32]>,
    seen: SeenFingerprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = fingerprint(end_entity);
        if let Ok(mut s) = self.seen.lock() {
            *s = Some(seen);
        }
        match self.pin {
            Some(fp) if fp != seen => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// rustls client config that accepts only the relay certificate with fingerprint `pin`
/// (or, with `None`, any certificate: trust on first use). The fingerprint seen is written
/// to `seen` either way.
pub fn client_config(
    pin: Option<[u8; 32]>,
    seen: SeenFingerprint,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinVerifier {
            pin,
            seen,
            provider,
        }))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_identity_is_stable_and_key_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_generate(dir.path(), None, None).unwrap();
        let b = Identity::load_or_generate(dir.path(), None, None).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("relay-key.pem"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
