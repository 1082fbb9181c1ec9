//! HTTPS for the public listener: the certificate chain and key from `SYNCV3_TLS_CERT` and
//! `SYNCV3_TLS_KEY`, loaded at startup and again on SIGHUP ([`Certificate::reload`]), so
//! a renewed certificate is used without dropping a connection.

use std::fs::File;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::TlsFiles;

const CERT: &str = "SYNCV3_TLS_CERT (--tls-cert)";
const KEY: &str = "SYNCV3_TLS_KEY (--tls-key)";

/// Why the TLS files cannot be used. Each message names the setting and the path.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be opened or read.
    #[error("{setting} is {path:?}: cannot be read ({source}); check the path and that the proxy's user may read it")]
    Unreadable {
        setting: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// The certificate file holds no PEM `CERTIFICATE` block.
    #[error("SYNCV3_TLS_CERT (--tls-cert) is {0:?}: no certificate found; it must hold the PEM certificate chain (-----BEGIN CERTIFICATE-----), leaf first")]
    NoCertificate(PathBuf),
    /// The key file holds no PEM private key block.
    #[error("SYNCV3_TLS_KEY (--tls-key) is {0:?}: no private key found; it must hold a PEM private key (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)")]
    NoPrivateKey(PathBuf),
    /// The key is not the certificate's, or rustls cannot use one of them.
    #[error("SYNCV3_TLS_KEY (--tls-key) is {key:?} and SYNCV3_TLS_CERT (--tls-cert) is {cert:?}: {problem}; give the private key that belongs to the first certificate of the chain")]
    Unusable {
        cert: PathBuf,
        key: PathBuf,
        problem: String,
    },
}

/// The certificate handshakes use. Handshakes read it without a lock; a reload swaps it,
/// so connections already open keep theirs and new ones get the new one.
#[derive(Debug)]
pub struct Certificate {
    files: TlsFiles,
    current: ArcSwap<CertifiedKey>,
}

impl Certificate {
    /// Reads the files again. On an error the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.current.store(Arc::new(certified_key(&self.files)?));
        Ok(())
    }

    /// The certificate new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A rustls server configuration for `files`, offering HTTP/2 and HTTP/1.1 through ALPN,
/// and its certificate to reload.
pub fn server_config(
    files: &TlsFiles,
) -> Result<(Arc<rustls::ServerConfig>, Arc<Certificate>), TlsError> {
    let certificate = Arc::new(Certificate {
        files: files.clone(),
        current: ArcSwap::from_pointee(certified_key(files)?),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| unusable(files, e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(&certificate) as Arc<dyn ResolvesServerCert>);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(config), certificate))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn unusable(files: &TlsFiles, problem: String) -> TlsError {
    TlsError::Unusable {
        cert: files.cert.clone(),
        key: files.key.clone(),
        problem,
    }
}

/// The chain and key of `files`, checked to belong together.
fn certified_key(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    CertifiedKey::from_der(certs, key, &provider()).map_err(|e| {
        unusable(
            files,
            match e {
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                    "the key does not match the certificate".to_owned()
                }
                other => format!("rejected by rustls ({other})"),
            },
        )
    })
}

fn open(setting: &'static str, path: &Path) -> Result<BufReader<File>, TlsError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|source| TlsError::Unreadable {
            setting,
            path: path.to_owned(),
            source,
        })
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let unreadable = |source| TlsError::Unreadable {
        setting: CERT,
        path: path.to_owned(),
        source,
    };
    let certs = rustls_pemfile::certs(&mut open(CERT, path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(unreadable)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut open(KEY, path)?)
        .map_err(|source| TlsError::Unreadable {
            setting: KEY,
            path: path.to_owned(),
            source,
        })?
        .ok_or_else(|| TlsError::NoPrivateKey(path.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("slidesync-tls-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn write(&self, name: &str, contents: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn self_signed() -> rcgen::CertifiedKey {
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap()
    }

    #[test]
    fn a_matching_pair_loads_with_h2_and_http1_alpn() {
        let dir = Scratch::new("ok");
        let pair = self_signed();
        let files = TlsFiles {
            cert: dir.write("cert.pem", &pair.cert.pem()),
            key: dir.write("key.pem", &pair.key_pair.serialize_pem()),
        };
        let (config, _) = server_config(&files).unwrap();
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn each_bad_file_is_named_with_what_is_wrong() {
        let dir = Scratch::new("bad");
        let pair = self_signed();
        let other = self_signed();
        let cert = dir.write("cert.pem", &pair.cert.pem());
        let key = dir.write("key.pem", &pair.key_pair.serialize_pem());
        let other_key = dir.write("other.pem", &other.key_pair.serialize_pem());
        let missing = dir.0.join("missing.pem");

        let message = |cert: &PathBuf, key: &PathBuf| {
            server_config(&TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            })
            .unwrap_err()
            .to_string()
        };

        let line = message(&missing, &key);
        assert!(
            line.starts_with("SYNCV3_TLS_CERT (--tls-cert) is \""),
            "{line}"
        );
        assert!(line.contains("cannot be read"), "{line}");
        let line = message(&key, &key);
        assert!(line.contains("no certificate found"), "{line}");
        let line = message(&cert, &cert);
        assert!(line.starts_with("SYNCV3_TLS_KEY (--tls-key) is"), "{line}");
        assert!(line.contains("no private key found"), "{line}");
        let line = message(&cert, &other_key);
        assert!(
            line.contains("the key does not match the certificate"),
            "{line}"
        );
    }

    #[test]
    fn a_reload_takes_the_new_pair_and_a_bad_one_keeps_the_old() {
        let dir = Scratch::new("reload");
        let first = self_signed();
        let files = TlsFiles {
            cert: dir.write("cert.pem", &first.cert.pem()),
            key: dir.write("key.pem", &first.key_pair.serialize_pem()),
        };
        let (_, certificate) = server_config(&files).unwrap();
        assert_eq!(certificate.current().cert[0], *first.cert.der());

        let renewed = self_signed();
        dir.write("cert.pem", &renewed.cert.pem());
        dir.write("key.pem", &renewed.key_pair.serialize_pem());
        certificate.reload().unwrap();
        assert_eq!(certificate.current().cert[0], *renewed.cert.der());

        // Half-written renewal: the new certificate with the old key.
        dir.write("cert.pem", &self_signed().cert.pem());
        let line = certificate.reload().unwrap_err().to_string();
        assert!(line.contains("does not match"), "{line}");
        assert_eq!(certificate.current().cert[0], *renewed.cert.der());
    }
}
