//! A real OCI registry for the oras:// tests: Debian's `docker-registry` (distribution v2) on
//! 127.0.0.1 with TLS from a test CA and JWT token auth from a token endpoint of ours, plus the
//! OCI push API to fill it, and a TCP proxy that cuts a connection mid-download.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

use super::TestDir;

pub const SERVICE: &str = "bty-test-registry";
pub const ISSUER: &str = "bty-test-issuer";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The registry binary, as `dpkg -L docker-registry` lists it.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

pub fn b64(data: &[u8], url: bool) -> String {
    let a: &[u8; 64] = if url {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(a[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else if !url {
                out.push('=');
            }
        }
    }
    out
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The test CA, the registry's TLS certificate, and the token signing certificate (all from
/// the CA), written to files the registry and bty read.
pub struct Pki {
    pub ca_pem: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    signer_der: Vec<u8>,
    signer_pkcs8: Vec<u8>,
}

impl Pki {
    pub fn new(dir: &TestDir) -> Pki {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "bty test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();

        let server_key = KeyPair::generate().unwrap();
        let mut sp = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        sp.distinguished_name.push(DnType::CommonName, "127.0.0.1");
        let server = sp.signed_by(&server_key, &ca).unwrap();

        let signer_key = KeyPair::generate().unwrap();
        let mut tp = CertificateParams::new(Vec::<String>::new()).unwrap();
        tp.distinguished_name.push(DnType::CommonName, "bty test token signer");
        tp.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let signer = tp.signed_by(&signer_key, &ca).unwrap();

        let p = Pki {
            ca_pem: dir.path("ca.pem"),
            server_cert: dir.path("server.pem"),
            server_key: dir.path("server.key"),
            signer_der: signer.der().to_vec(),
            signer_pkcs8: signer_key.serialize_der(),
        };
        std::fs::write(&p.ca_pem, ca.pem()).unwrap();
        std::fs::write(&p.server_cert, server.pem()).unwrap();
        std::fs::write(&p.server_key, server_key.serialize_pem()).unwrap();
        p
    }

    /// A registry JWT (ES256, the signing certificate in x5c) granting `actions` on `repo`,
    /// expiring at `exp` (unix seconds).
    pub fn token(&self, repo: &str, actions: &[&str], exp: i64) -> String {
        static JTI: AtomicUsize = AtomicUsize::new(0);
        let header = serde_json::json!({
            "typ": "JWT", "alg": "ES256", "x5c": [b64(&self.signer_der, false)],
        });
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": "bty-test", "aud": SERVICE,
            "exp": exp, "nbf": now() - 10, "iat": now() - 10,
            "jti": format!("t{}", JTI.fetch_add(1, Ordering::Relaxed)),
            "access": [{"type": "repository", "name": repo, "actions": actions}],
        });
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes(), true),
            b64(claims.to_string().as_bytes(), true)
        );
        let rng = SystemRandom::new();
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &self.signer_pkcs8, &rng)
                .unwrap();
        let sig = key.sign(&rng, signing_input.as_bytes()).unwrap();
        format!("{signing_input}.{}", b64(sig.as_ref(), true))
    }
}

/// What the token endpoint has done and how it behaves.
#[derive(Default)]
pub struct TokenState {
    /// Tokens issued so far.
    pub issued: usize,
    /// Issue the first token so that it expires within seconds (distribution allows 60 s of
    /// leeway past `exp`, so it is dated back).
    pub first_expires_soon: bool,
    /// Repositories under "private/" need this Basic credential (base64 of user:password).
    pub private_basic: Option<String>,
    /// The Authorization headers the endpoint received.
    pub auth_seen: Vec<Option<String>>,
}

/// The token endpoint (plain http on 127.0.0.1), the realm of the registry's challenges.
pub struct TokenServer {
    pub addr: String,
    pub state: Arc<Mutex<TokenState>>,
    stop: Arc<AtomicBool>,
}

impl TokenServer {
    fn start(pki: Arc<Pki>) -> TokenServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(TokenState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (Arc::clone(&state), Arc::clone(&stop));
        thread::spawn(move || {
            for c in l.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(c) = c else { continue };
                let (st, pki) = (Arc::clone(&st), Arc::clone(&pki));
                thread::spawn(move || token_conn(c, &st, &pki));
            }
        });
        TokenServer { addr, state, stop }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
    }
}

fn query_param(query: &str, key: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| bty::source::percent_decode(v, true))
        .collect()
}

fn token_conn(c: TcpStream, state: &Mutex<TokenState>, pki: &Pki) {
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut auth = None;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("authorization") {
                auth = Some(v.trim().to_string());
            }
        }
    }
    let target = line.split(' ').nth(1).unwrap_or("/");
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let mut w = c;
    let mut st = state.lock().unwrap();
    st.auth_seen.push(auth.clone());
    let scopes = query_param(query, "scope");
    let service = query_param(query, "service");
    let (repo, actions) = scopes
        .first()
        .and_then(|s| {
            let mut it = s.splitn(3, ':');
            let (_, name, acts) = (it.next()?, it.next()?, it.next()?);
            Some((name.to_string(), acts.split(',').map(str::to_string).collect::<Vec<_>>()))
        })
        .unwrap_or_default();
    let refuse = service.first().map(String::as_str) != Some(SERVICE)
        || (repo.starts_with("private/")
            && st.private_basic.as_ref().map(|b| format!("Basic {b}")) != auth);
    if refuse {
        let _ = w.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        return;
    }
    let exp = if st.first_expires_soon && st.issued == 0 { now() - 57 } else { now() + 600 };
    st.issued += 1;
    let acts: Vec<&str> = actions.iter().map(String::as_str).collect();
    let body =
        serde_json::json!({ "token": pki.token(&repo, &acts, exp), "expires_in": 300 }).to_string();
    let _ = write!(
        w,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
}

/// How to start a registry.
#[derive(Default)]
pub struct Options {
    /// Serve https with the test CA (else plain http).
    pub tls: bool,
    /// Token auth through our token endpoint (else open).
    pub token: bool,
    /// Redirect blob downloads to this base URL + the storage path (distribution's `redirect`
    /// storage middleware), as registries backed by object storage do.
    pub redirect_to: Option<String>,
}

/// A running `docker-registry`; killed on drop.
pub struct Registry {
    child: Child,
    pub addr: String,
    /// The storage root (blobs live under docker/registry/v2/blobs/sha256/).
    pub root: PathBuf,
    pub pki: Arc<Pki>,
    pub tokens: Option<TokenServer>,
    agent: ureq::Agent,
    pub log: PathBuf,
    tls: bool,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Registry {
    pub fn start(dir: &TestDir, opts: Options) -> Registry {
        Registry::start_with(dir, opts, "", &[])
    }

    /// As `start`, with more config.yml text (top-level sections such as `proxy:`) and more
    /// environment for the registry process (such as SSL_CERT_FILE, for a pull-through cache
    /// of a TLS origin).
    pub fn start_with(
        dir: &TestDir,
        opts: Options,
        extra_cfg: &str,
        env: &[(&str, &std::path::Path)],
    ) -> Registry {
        assert!(
            std::path::Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} is missing: `make deps` installs Debian's docker-registry"
        );
        let pki = Arc::new(Pki::new(dir));
        let root = dir.path("registry");
        std::fs::create_dir_all(&root).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: {addr}\n  secret: bty-test-secret\n",
            root.display()
        );
        if opts.tls {
            cfg.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                pki.server_cert.display(),
                pki.server_key.display()
            ));
        }
        let tokens = opts.token.then(|| TokenServer::start(Arc::clone(&pki)));
        if let Some(t) = &tokens {
            cfg.push_str(&format!(
                "auth:\n  token:\n    realm: http://{}/token\n    service: {SERVICE}\n    \
                 issuer: {ISSUER}\n    rootcertbundle: {}\n",
                t.addr,
                pki.ca_pem.display()
            ));
        }
        if let Some(base) = &opts.redirect_to {
            cfg.push_str(&format!(
                "middleware:\n  storage:\n    - name: redirect\n      options:\n        baseurl: {base}\n"
            ));
        }
        cfg.push_str(extra_cfg);
        let cfg_path = dir.path("registry.yml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let log = dir.path("registry.log");
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&cfg_path)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting docker-registry");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = std::fs::read(&pki.ca_pem).unwrap();
        let certs: Vec<_> = ureq::tls::parse_pem(&ca)
            .filter_map(|i| match i {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)))
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .tls_config(tls)
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .into();
        let reg = Registry { child, addr, root, pki, tokens, agent, log, tls: opts.tls };
        reg.wait_ready();
        reg
    }

    pub fn base(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.addr)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = format!("{}/v2/", self.base());
        loop {
            if let Ok(r) = self.agent.get(&url).call() {
                if r.status() == 200 || r.status() == 401 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer on {url} within 20 s: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The env a `bty` run needs to reach this registry: the CA and the plain-http token realm.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut insecure = Vec::new();
        if let Some(t) = &self.tokens {
            insecure.push(t.addr.clone());
        }
        if !self.base().starts_with("https") {
            insecure.push(self.addr.clone());
        }
        vec![
            ("BTY_CA_FILE".into(), self.pki.ca_pem.display().to_string()),
            ("BTY_INSECURE_REGISTRIES".into(), insecure.join(",")),
            ("REGISTRY_AUTH_FILE".into(), String::new()),
            ("DOCKER_CONFIG".into(), "/nonexistent".into()),
        ]
    }

    fn auth(&self, repo: &str) -> Option<String> {
        self.tokens
            .as_ref()
            .map(|_| format!("Bearer {}", self.pki.token(repo, &["pull", "push"], now() + 600)))
    }

    fn request(
        &self,
        method: &str,
        url: &str,
        repo: &str,
        ct: Option<&str>,
        body: &[u8],
    ) -> (u16, String, String) {
        let mut req = ureq::http::Request::builder().method(method).uri(url);
        if let Some(a) = self.auth(repo) {
            req = req.header("Authorization", a);
        }
        if let Some(ct) = ct {
            req = req.header("Content-Type", ct);
        }
        let resp =
            self.agent.run(req.body(body.to_vec()).unwrap()).expect("talking to the registry");
        let status = resp.status().as_u16();
        let loc = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let text = resp.into_body().read_to_string().unwrap_or_default();
        (status, loc, text)
    }

    /// Pushes a blob (POST then monolithic PUT, per the OCI push API); returns its digest.
    pub fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = format!("sha256:{}", super::sha256(data));
        let (st, loc, text) = self.request(
            "POST",
            &format!("{}/v2/{repo}/blobs/uploads/", self.base()),
            repo,
            None,
            &[],
        );
        assert_eq!(st, 202, "starting an upload: {text}");
        let loc = if loc.starts_with('/') { format!("{}{loc}", self.base()) } else { loc };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let (st, _, text) = self.request(
            "PUT",
            &format!("{loc}{sep}digest={digest}"),
            repo,
            Some("application/octet-stream"),
            data,
        );
        assert_eq!(st, 201, "finishing an upload: {text}");
        digest
    }

    /// Pushes a manifest under `reference` (a tag or its digest); returns its digest.
    pub fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        json: &str,
    ) -> String {
        let (st, _, text) = self.request(
            "PUT",
            &format!("{}/v2/{repo}/manifests/{reference}", self.base()),
            repo,
            Some(media_type),
            json.as_bytes(),
        );
        assert_eq!(st, 201, "pushing a manifest: {text}");
        format!("sha256:{}", super::sha256(json.as_bytes()))
    }

    /// Pushes an artifact: each (title, bytes) becomes a layer with that title; returns the
    /// manifest digest.
    pub fn push_artifact(&self, repo: &str, tag: &str, layers: &[(&str, &[u8])]) -> String {
        self.push_artifact_sized(repo, tag, layers).0
    }

    /// As `push_artifact`, also returning the manifest's size (for an index entry).
    pub fn push_artifact_sized(
        &self,
        repo: &str,
        tag: &str,
        layers: &[(&str, &[u8])],
    ) -> (String, usize) {
        let config = b"{}";
        let config_digest = self.push_blob(repo, config);
        let descs: Vec<serde_json::Value> = layers
            .iter()
            .map(|(title, data)| {
                serde_json::json!({
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": self.push_blob(repo, data),
                    "size": data.len(),
                    "annotations": {"org.opencontainers.image.title": title},
                })
            })
            .collect();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.bty.disk-image",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config_digest, "size": 2},
            "layers": descs,
        })
        .to_string();
        (self.push_manifest(repo, tag, OCI_MANIFEST, &manifest), manifest.len())
    }

    /// Where the registry keeps a blob's bytes.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.root.join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy to `target` that, on the first connection to carry more than `cut_after`
/// bytes towards the client, holds for `hold` and then closes it.
pub struct CutProxy {
    pub addr: String,
    stop: Arc<AtomicBool>,
    pub cuts: Arc<AtomicUsize>,
}

impl CutProxy {
    pub fn start(target: &str, cut_after: u64, hold: Duration) -> CutProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (sp, cu, target) = (Arc::clone(&stop), Arc::clone(&cuts), target.to_string());
        thread::spawn(move || {
            for c in l.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = c else { continue };
                let Ok(server) = TcpStream::connect(&target) else { continue };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                thread::spawn(move || pump(c2, s2, None));
                let cu = Arc::clone(&cu);
                thread::spawn(move || pump(server, client, Some((cut_after, hold, cu))));
            }
        });
        CutProxy { addr, stop, cuts }
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, cut: Option<(u64, Duration, Arc<AtomicUsize>)>) {
    let mut buf = [0u8; 16 << 10];
    let mut moved = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        moved += n as u64;
        if let Some((after, hold, cuts)) = &cut {
            if moved > *after
                && cuts.compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst).is_ok()
            {
                thread::sleep(*hold);
                break;
            }
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}
