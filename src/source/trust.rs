//! Whom bty's TLS connections trust: Mozilla's roots, the system bundle, the lab CAs named in
//! the environment (`SSL_CERT_FILE`, `BTY_CA_FILE`), and CAs trusted for one host only (a
//! registry mirror's `ca` in its hosts.toml).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

use crate::error::{Context, Result};

/// Bundles of the system certificate store (Debian/Ubuntu/Alpine, then Fedora/RHEL).
const SYSTEM_BUNDLES: [&str; 2] =
    ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"];

/// Lab CAs trusted for one `host[:port]` only (a registry mirror's `ca` in its hosts.toml).
type HostCas = Mutex<HashMap<String, Vec<PathBuf>>>;

fn host_cas_map() -> &'static HostCas {
    static CAS: OnceLock<HostCas> = OnceLock::new();
    CAS.get_or_init(HostCas::default)
}

pub(crate) fn host_cas(authority: &str) -> Vec<PathBuf> {
    host_cas_map()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(authority)
        .cloned()
        .unwrap_or_default()
}

/// Trusts the PEM certificates in `files` for requests to `authority` (`host[:port]`), besides
/// the usual roots.
pub(crate) fn trust_for_host(authority: &str, files: &[PathBuf]) {
    if files.is_empty() {
        return;
    }
    let mut map = host_cas_map().lock().unwrap_or_else(|e| e.into_inner());
    let list = map.entry(authority.to_ascii_lowercase()).or_default();
    for f in files {
        if !list.contains(f) {
            list.push(f.clone());
        }
    }
}

/// The TLS settings for a connection: everyone's, or with `extra` CA files trusted too.
pub(crate) fn tls_for(extra: &[PathBuf]) -> Result<TlsConfig> {
    // Also installs the crypto provider, which the extra-roots config below needs too.
    let everyone = tls_config()?;
    if extra.is_empty() {
        return Ok(everyone);
    }
    let mut roots = root_certs()?;
    for path in extra {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading the CA file {}", path.display()))?;
        let certs: Vec<_> = pem_certs(&pem).collect();
        crate::ensure!(!certs.is_empty(), "{} holds no PEM certificate", path.display());
        roots.extend(certs);
    }
    Ok(TlsConfig::builder().root_certs(RootCerts::Specific(Arc::new(roots))).build())
}

/// The TLS settings of every agent, built once (reading the trust store takes a while).
fn tls_config() -> Result<TlsConfig> {
    static TLS: OnceLock<TlsConfig> = OnceLock::new();
    if let Some(t) = TLS.get() {
        return Ok(t.clone());
    }
    // ring is our only provider; install_default fails only if one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = TlsConfig::builder().root_certs(RootCerts::Specific(Arc::new(root_certs()?))).build();
    Ok(TLS.get_or_init(|| tls).clone())
}

/// The roots bty trusts: Mozilla's, the system bundle, and the lab CAs named in the environment.
fn root_certs() -> Result<Vec<Certificate<'static>>> {
    let mut roots: Vec<Certificate<'static>> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()))
        .collect();
    if let Some(path) = SYSTEM_BUNDLES.iter().find(|p| std::path::Path::new(p).exists()) {
        // A damaged system bundle should not stop bty from working with its own roots.
        match std::fs::read(path) {
            Ok(pem) => roots.extend(pem_certs(&pem)),
            Err(e) => crate::debug!("reading {path}: {e}"),
        }
    }
    for var in ["SSL_CERT_FILE", "BTY_CA_FILE"] {
        let Some(path) = std::env::var_os(var).filter(|p| !p.is_empty()) else { continue };
        let shown = std::path::Path::new(&path).display().to_string();
        let pem = std::fs::read(&path).with_context(|| format!("reading {var} {shown}"))?;
        let certs: Vec<_> = pem_certs(&pem).collect();
        crate::ensure!(!certs.is_empty(), "{var} {shown} holds no PEM certificate");
        roots.extend(certs);
    }
    Ok(roots)
}

fn pem_certs(pem: &[u8]) -> impl Iterator<Item = Certificate<'static>> + '_ {
    ureq::tls::parse_pem(pem).filter_map(|item| match item {
        Ok(PemItem::Certificate(c)) => Some(c),
        _ => None,
    })
}
