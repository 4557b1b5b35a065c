//! `oras://` sources: disk images pushed to an OCI registry as artifacts (OCI distribution spec).
//!
//! `oras://host[:port]/owner/repo:tag` or `...@sha256:<64 hex>` is resolved to a manifest (an
//! image index picks its linux/<arch> entry), then to the one layer that is a disk image: the
//! layer whose `org.opencontainers.image.title` has an image suffix (sidecars such as `.sha256`,
//! `.sig` or `.json` are skipped; the largest image layer wins). Its blob is streamed like an
//! http(s) source (Range resume) and its digest is checked by the flash as a pinned sha256.
//!
//! Auth: anonymous bearer tokens (`https://host/token` first, as ghcr.io hands them out there,
//! then the realm of the registry's `WWW-Authenticate: Bearer` challenge), with the basic
//! credentials or registry token of `REGISTRY_AUTH_FILE` or `~/.docker/config.json` for private
//! registries. Tokens are fetched again when the registry refuses one (they expire during long
//! downloads). An `Authorization` header never follows a redirect to another origin (blob
//! storage). Plain http only for the `host:port`s listed in `BTY_INSECURE_REGISTRIES`.
//!
//! Mirrors: a containerd-style hosts.toml (`source::mirrors`) lists hosts tried before the origin for
//! each manifest and blob; whatever they send is checked against its digest as the origin's is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{Context, Error, Result};
use crate::source::http::{self, Auth, Fail, Fetch, Resource, Response, Resumable, Url};
use crate::source::mirrors::{self, Endpoint};
use crate::suffix::{self, NameHint};

/// Manifest media types we ask for, most wanted first.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Registries refuse manifests over 4 MiB (distribution's default limit); so do we.
const MAX_MANIFEST: u64 = 4 << 20;
/// A token response is a small JSON object.
const MAX_TOKEN: u64 = 64 << 10;
const TITLE: &str = "org.opencontainers.image.title";

/// A parsed `oras://` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]`, lower case.
    pub registry: String,
    /// The repository path (`owner/repo`).
    pub repository: String,
    /// The tag, when the reference names one.
    pub tag: Option<String>,
    /// `sha256:<hex>`, when the reference pins a manifest digest (it wins over a tag).
    pub digest: Option<String>,
}

impl Reference {
    /// Parses `oras://host[:port]/owner/repo(:tag|@sha256:<64 hex>)`.
    pub fn parse(s: &str) -> Result<Reference> {
        let bad = |why: &str| {
            Error::msg(format!(
                "{s:?} is not an oras:// reference ({why}); expected \
                 oras://host[:port]/owner/repo:tag or oras://host[:port]/owner/repo@sha256:<64 hex>"
            ))
        };
        let rest = s
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case("oras://"))
            .map(|_| &s[7..])
            .ok_or_else(|| bad("no oras:// prefix"))?;
        let (registry, path) = rest.split_once('/').ok_or_else(|| bad("no repository"))?;
        let registry = registry.to_ascii_lowercase();
        let (host, port) = match registry.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || registry.starts_with('[') => (h, Some(p)),
            _ => (registry.as_str(), None),
        };
        let host_ok = !host.is_empty()
            && (host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
                || (host.starts_with('[') && host.ends_with(']')));
        if !host_ok || port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(bad("bad registry host"));
        }
        let (name, digest) = match path.split_once('@') {
            Some((n, d)) => (n, Some(d.to_string())),
            None => (path, None),
        };
        let (repository, tag) = match name.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, Some(t.to_string())),
            _ => (name, None),
        };
        if !repository.split('/').all(repo_component_ok) {
            return Err(bad("bad repository name: lower-case letters, digits and . _ - only"));
        }
        if let Some(t) = &tag {
            let ok = t.len() <= 128
                && t.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
                && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                return Err(bad("bad tag"));
            }
        }
        if let Some(d) = &digest {
            if parse_digest(d).is_err() {
                return Err(bad("bad digest"));
            }
        }
        if tag.is_none() && digest.is_none() {
            return Err(bad("no tag or digest; add :latest to use the latest tag"));
        }
        Ok(Reference { registry, repository: repository.to_string(), tag, digest })
    }

    /// What the manifest is fetched by: the digest when pinned, else the tag.
    fn manifest_ref(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or("latest")
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "oras://{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// One path component of a repository name (OCI distribution spec grammar).
fn repo_component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    !b.is_empty()
        && alnum(b[0])
        && alnum(b[b.len() - 1])
        && b.iter().all(|&x| alnum(x) || x == b'.' || x == b'_' || x == b'-')
}

/// `sha256:<64 lower-case hex>` to bytes; other algorithms are refused by name.
fn parse_digest(d: &str) -> Result<[u8; 32]> {
    let (alg, hex) = d.split_once(':').with_context(|| format!("digest {d:?} has no algorithm"))?;
    crate::ensure!(alg == "sha256", "digest {d:?} uses {alg}; only sha256 is supported");
    crate::ensure!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "digest {d:?} is not 64 lower-case hex digits"
    );
    crate::hex::decode(hex)
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .with_context(|| format!("digest {d:?} is not valid hex"))
}

/// Whether `host[:port]` is listed in `BTY_INSECURE_REGISTRIES` (plain http allowed).
fn insecure(authority: &str) -> bool {
    std::env::var("BTY_INSECURE_REGISTRIES").is_ok_and(|v| {
        v.split([',', ' ', '\t', '\n'])
            .any(|h| !h.is_empty() && h.trim().eq_ignore_ascii_case(authority))
    })
}

/// Credentials for one registry from a Docker-style auth file.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Creds {
    /// base64 of `user:password`.
    Basic(String),
    /// A registry token, sent as a bearer token as it is.
    Bearer(String),
}

#[derive(Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    registrytoken: Option<String>,
}

/// The auth file in use: REGISTRY_AUTH_FILE, else $DOCKER_CONFIG/config.json, else
/// ~/.docker/config.json.
fn auth_file() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|p| !p.is_empty()) {
        return Some(p.into());
    }
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|p| !p.is_empty()) {
        return Some(std::path::PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".docker/config.json"))
}

/// Credentials for `registry` from the auth file, if it has any. A file named by
/// REGISTRY_AUTH_FILE must exist and parse; the default one may be absent.
fn credentials(registry: &str) -> Result<Option<Creds>> {
    let Some(path) = auth_file() else { return Ok(None) };
    let explicit = std::env::var_os("REGISTRY_AUTH_FILE").is_some_and(|p| !p.is_empty());
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let file: AuthFile = serde_json::from_slice(&text)
        .with_context(|| format!("reading {}: not a registry auth file", path.display()))?;
    Ok(creds_for(&file, registry))
}

fn creds_for(file: &AuthFile, registry: &str) -> Option<Creds> {
    // Keys are written as "host", "host:port" or "https://host/v1/" depending on the tool.
    let key_host = |k: &str| {
        let k = k.split_once("://").map_or(k, |(_, r)| r);
        k.split('/').next().unwrap_or_default().to_ascii_lowercase()
    };
    let docker_hub = ["docker.io", "registry-1.docker.io", "index.docker.io"];
    let entry = file.auths.iter().find_map(|(k, e)| {
        let h = key_host(k);
        (h == registry || (docker_hub.contains(&h.as_str()) && docker_hub.contains(&registry)))
            .then_some(e)
    })?;
    if let Some(t) = entry.registrytoken.as_ref().filter(|t| !t.is_empty()) {
        return Some(Creds::Bearer(t.clone()));
    }
    if let Some(a) = entry.auth.as_ref().filter(|a| !a.is_empty()) {
        return Some(Creds::Basic(a.trim().to_string()));
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) => Some(Creds::Basic(base64_encode(format!("{u}:{p}").as_bytes()))),
        _ => None,
    }
}

/// A registry connection for one repository: the auth state shared by every request.
pub(crate) struct Registry {
    base: Url,
    /// The API root path (`/v2`; a mirror's hosts.toml may say otherwise).
    api: String,
    repository: String,
    creds: Option<Creds>,
    /// The Authorization value in use (None: anonymous so far).
    auth: Mutex<Option<String>>,
}

impl Registry {
    /// A connection to one endpoint (a mirror or the origin) for the repository of `r`.
    fn new(r: &Reference, e: &Endpoint) -> Result<Registry> {
        http::trust_for_host(e.authority(), &e.ca);
        let creds = credentials(e.authority())?;
        let auth = match &creds {
            Some(Creds::Bearer(t)) => Some(format!("Bearer {t}")),
            _ => None,
        };
        let reg = Registry {
            base: e.base.clone(),
            api: e.api.clone(),
            repository: r.repository.clone(),
            creds,
            auth: Mutex::new(auth),
        };
        reg.try_token_endpoint();
        Ok(reg)
    }

    fn scope(&self) -> String {
        format!("repository:{}:pull", self.repository)
    }

    fn basic(&self) -> Option<Auth> {
        match &self.creds {
            Some(Creds::Basic(b)) => {
                Some(Auth { origin: String::new(), value: format!("Basic {b}") })
            }
            _ => None,
        }
    }

    /// ghcr.io and others hand out anonymous pull tokens at /token without a challenge first;
    /// asking there saves a round trip. Any failure just leaves the challenge path to do it.
    fn try_token_endpoint(&self) {
        if self.current().is_some() {
            return;
        }
        let url = self.base.with_path(&format!(
            "/token?scope={}&service={}",
            pct(&self.scope()),
            pct(self.base.authority())
        ));
        match self.fetch_token(&url, false) {
            Ok(t) => *self.lock() = Some(format!("Bearer {t}")),
            Err(e) => crate::debug!("no token from {url}: {e}"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.auth.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn current(&self) -> Option<Auth> {
        self.lock().clone().map(|value| Auth { origin: self.base.origin(), value })
    }

    /// GETs a token from a token service URL (with our basic credentials, to that origin only);
    /// `retry`: retry transient failures (not for the speculative /token guess).
    fn fetch_token(&self, url: &Url, retry: bool) -> Result<String> {
        let what = format!("getting a registry token from {url}");
        let auth = self.basic().map(|a| Auth { origin: url.origin(), ..a });
        let attempt = || {
            let resp = http::send(url, &[], auth.as_ref())?;
            let status = resp.status;
            if status == 200 {
                return resp.read_capped(MAX_TOKEN, &what);
            }
            match resp.status_fail(&what) {
                Fail::Final(e) if (status == 401 || status == 403) && auth.is_none() => {
                    Err(Fail::Final(Error::msg(format!(
                        "{e}; if the repository is private, add credentials for {} to the file \
                         REGISTRY_AUTH_FILE names or to ~/.docker/config.json",
                        self.base.authority()
                    ))))
                }
                f => Err(f),
            }
        };
        let body = if retry { http::with_retries(attempt)? } else { attempt()? };
        #[derive(Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: TokenResponse = serde_json::from_slice(&body)
            .with_context(|| format!("{what}: not a token response"))?;
        t.token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .with_context(|| format!("{what}: the response holds no token"))
    }

    /// Answers a 401: a bearer challenge gets a token from its realm; a basic one our
    /// credentials.
    fn authenticate(&self, challenge: Option<&str>, what: &str) -> Result<(), Fail> {
        let no_creds = || {
            Fail::Final(Error::msg(format!(
                "{what}: the registry wants credentials; add them to the file REGISTRY_AUTH_FILE \
                 names or to ~/.docker/config.json (\"auths\": {{\"{}\": {{\"auth\": \
                 \"<base64 user:password>\"}}}})",
                self.base.authority()
            )))
        };
        let Some((scheme, params)) = challenge.and_then(parse_challenge) else {
            let b = self.basic().ok_or_else(no_creds)?;
            *self.lock() = Some(b.value);
            return Ok(());
        };
        if scheme.eq_ignore_ascii_case("basic") {
            let b = self.basic().ok_or_else(no_creds)?;
            *self.lock() = Some(b.value);
            return Ok(());
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Fail::Final(Error::msg(format!(
                "{what}: the registry asks for {scheme} authentication, which bty does not speak"
            ))));
        }
        let realm = params.get("realm").ok_or_else(|| {
            Fail::Final(Error::msg(format!("{what}: the Bearer challenge names no realm")))
        })?;
        let realm = Url::parse(realm).map_err(|e| Fail::Final(e.wrap(what.to_string())))?;
        if !realm.is_https() && !insecure(realm.authority()) && !insecure(self.base.authority()) {
            return Err(Fail::Final(Error::msg(format!(
                "{what}: the token service {realm} is plain http; list {} in \
                 BTY_INSECURE_REGISTRIES to allow it",
                realm.authority()
            ))));
        }
        let scope = params.get("scope").cloned().unwrap_or_else(|| self.scope());
        let mut query = format!("scope={}", pct(&scope));
        if let Some(s) = params.get("service") {
            query.push_str(&format!("&service={}", pct(s)));
        }
        let sep = if realm.to_string().contains('?') { '&' } else { '?' };
        let url = Url::parse(&format!("{realm}{sep}{query}")).map_err(Fail::Final)?;
        let token = self.fetch_token(&url, true).map_err(Fail::Final)?;
        *self.lock() = Some(format!("Bearer {token}"));
        Ok(())
    }

    /// GETs a path of the registry API with auth: on a 401 the token is renewed once (it may
    /// have expired) and the request sent again.
    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<Response, Fail> {
        let url = self.base.with_path(path);
        let what = format!("fetching {url}");
        let mut renewed = false;
        loop {
            let resp = if content_addressed(path) {
                http::send_pinned(&url, headers, self.current().as_ref())?
            } else {
                http::send(&url, headers, self.current().as_ref())?
            };
            if resp.status == 401 && !renewed {
                let challenge = resp.header("www-authenticate").map(str::to_string);
                if self.current().is_some() {
                    crate::info!("{}: the registry refused the token; getting a new one", url);
                }
                self.authenticate(challenge.as_deref(), &what)?;
                renewed = true;
                continue;
            }
            return Ok(resp);
        }
    }

    fn blob_path(&self, digest: &str) -> String {
        format!("{}/{}/blobs/{digest}", self.api, self.repository)
    }

    /// Fetches a manifest by tag or digest; returns its bytes, digest and media type.
    /// `retry`: retry transient failures (not for a mirror, which the next host backs up).
    fn manifest(
        &self,
        reference: &str,
        display: &str,
        retry: bool,
    ) -> Result<(Vec<u8>, String, String)> {
        let path = format!("{}/{}/manifests/{reference}", self.api, self.repository);
        let what = format!("fetching the manifest of {display} from {}", self.base.authority());
        let attempt = || {
            let resp = self.get(&path, &[("Accept", MANIFEST_ACCEPT)])?;
            if resp.status != 200 {
                return Err(resp.status_fail(&what));
            }
            let ct = resp.header("content-type").unwrap_or_default().to_string();
            Ok((resp.read_capped(MAX_MANIFEST, &what)?, ct))
        };
        let (body, content_type) = if retry {
            http::with_retries(attempt)?
        } else {
            attempt().map_err(|f| match f {
                Fail::Final(e) | Fail::Transient(e) => e,
            })?
        };
        let digest = format!("sha256:{}", crate::hex::encode(&Sha256::digest(&body)));
        if reference.starts_with("sha256:") {
            crate::ensure!(
                digest == reference,
                "{what}: the registry sent a manifest whose digest is {digest}, not {reference}"
            );
        }
        let media = content_type.split(';').next().unwrap_or_default().trim().to_string();
        Ok((body, digest, media))
    }
}

/// The registries to pull one reference from: mirrors in hosts.toml order, the origin last.
pub(crate) struct Hosts {
    list: Vec<(Arc<Registry>, Endpoint)>,
}

impl Hosts {
    fn new(r: &Reference) -> Result<Hosts> {
        let scheme = if insecure(&r.registry) { "http" } else { "https" };
        let origin = Url::parse(&format!("{scheme}://{}/", r.registry))?;
        let list = mirrors::endpoints(&r.registry, &origin)?
            .into_iter()
            .map(|e| Ok((Arc::new(Registry::new(r, &e)?), e)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Hosts { list })
    }

    fn mirrored(&self) -> bool {
        self.list.len() > 1
    }

    /// Fetches a manifest from the first host that has it: by tag from hosts that may
    /// resolve, by digest from hosts that may pull. A mirror's failure moves on to the next.
    fn manifest(&self, reference: &str, display: &str) -> Result<(Vec<u8>, String, String)> {
        let by_digest = reference.starts_with("sha256:");
        let hosts: Vec<_> = self
            .list
            .iter()
            .enumerate()
            .filter(|(i, (_, e))| {
                *i + 1 == self.list.len() || if by_digest { e.pull } else { e.resolve }
            })
            .collect();
        let mut last = None;
        for (n, (_, (reg, _))) in hosts.iter().enumerate() {
            let is_last = n + 1 == hosts.len();
            match reg.manifest(reference, display, is_last) {
                Ok(m) => {
                    if self.mirrored() {
                        crate::info!(
                            "{display}: manifest {reference} from {}",
                            reg.base.authority()
                        );
                    }
                    return Ok(m);
                }
                Err(e) if !is_last => {
                    crate::warn!("{e}; trying the next registry host");
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::msg(format!("{display}: no registry host to ask"))))
    }

    /// GETs a blob from the first host that answers with it (a mirror's connection failure,
    /// 404 or 5xx moves on to the next host). Its bytes are checked against the digest by the
    /// caller, whichever host sent them.
    fn get_blob(&self, digest: &str, headers: &[(&str, &str)]) -> Result<Response, Fail> {
        let hosts: Vec<&(Arc<Registry>, Endpoint)> = self
            .list
            .iter()
            .enumerate()
            .filter(|(i, (_, e))| *i + 1 == self.list.len() || e.pull)
            .map(|(_, h)| h)
            .collect();
        for (n, (reg, _)) in hosts.iter().enumerate() {
            let is_last = n + 1 == hosts.len();
            let path = reg.blob_path(digest);
            match reg.get(&path, headers) {
                Ok(resp) if is_last || !(resp.status == 404 || resp.status >= 500) => {
                    if self.mirrored() {
                        crate::info!("blob {digest} from {}", reg.base.authority());
                    }
                    return Ok(resp);
                }
                Ok(resp) => crate::warn!(
                    "fetching blob {digest} from {}: HTTP {}; trying the next registry host",
                    reg.base.authority(),
                    resp.status
                ),
                Err(Fail::Final(e) | Fail::Transient(e)) if !is_last => {
                    crate::warn!("{e}; trying the next registry host")
                }
                Err(f) => return Err(f),
            }
        }
        Err(Fail::Final(Error::msg(format!("fetching blob {digest}: no registry host to ask"))))
    }
}

/// Whether a registry API path names its content by digest (a blob, or a manifest fetched by
/// digest): bty checks those bytes against the digest, so a redirect may leave https for them.
fn content_addressed(path: &str) -> bool {
    path.contains("/blobs/sha256:") || path.contains("/manifests/sha256:")
}

/// Parses `Bearer realm="...",service="...",scope="..."` into the scheme and its parameters.
fn parse_challenge(h: &str) -> Option<(String, HashMap<String, String>)> {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = HashMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (key, after) = s.split_once('=')?;
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            out.push(n);
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => out.push(c),
                }
            }
            (out, &q[end?..])
        } else {
            let i = after.find(',').unwrap_or(after.len());
            (after[..i].trim().to_string(), &after[i..])
        };
        params.insert(key, value);
        s = next.trim_start().trim_start_matches(',').trim_start();
    }
    Some((scheme.to_string(), params))
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) fn base64_encode(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize, Clone, Debug)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: HashMap<String, String>,
    platform: Option<Platform>,
}

impl Descriptor {
    fn title(&self) -> Option<&str> {
        self.annotations.get(TITLE).map(String::as_str).filter(|t| !t.is_empty())
    }
}

#[derive(Deserialize, Clone, Debug)]
struct Platform {
    architecture: String,
    os: String,
}

/// The OCI name of the architecture bty runs on (GOARCH spelling).
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// What an `oras://` reference resolves to, without downloading the image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Resolved {
    /// `host[:port]` of the registry.
    pub registry: String,
    /// Repository path (`owner/repo`).
    pub repository: String,
    /// The reference as given, normalised (`oras://host/repo:tag`).
    pub reference: String,
    /// `sha256:<hex>` of the image manifest (for an index: of the entry picked).
    pub manifest_digest: String,
    /// `sha256:<hex>` of the image layer: the sha256 of the bytes a flash writes from.
    pub layer_digest: String,
    /// Size of the image layer in bytes.
    pub layer_size: u64,
    /// The layer's `org.opencontainers.image.title`: the image's file name.
    pub name: String,
    /// The layer's media type.
    pub media_type: String,
}

/// A manifest that is not an index, and its digest.
fn image_manifest(reg: &Hosts, r: &Reference) -> Result<(Manifest, String)> {
    let display = r.to_string();
    let (body, digest, media) = reg.manifest(r.manifest_ref(), &display)?;
    let m: Manifest = serde_json::from_slice(&body)
        .with_context(|| format!("reading the manifest of {display}: not an OCI manifest"))?;
    let kind = m.media_type.clone().unwrap_or(media);
    let is_index = kind == OCI_INDEX
        || kind == DOCKER_LIST
        || (m.layers.is_empty() && !m.manifests.is_empty());
    if !is_index {
        return Ok((m, digest));
    }
    let arch = oci_arch();
    let pick = m
        .manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == arch));
    let Some(pick) = pick else {
        let have: Vec<String> = m
            .manifests
            .iter()
            .map(|d| match &d.platform {
                Some(p) => format!("{}/{} {}", p.os, p.architecture, d.digest),
                None => format!("(no platform) {}", d.digest),
            })
            .collect();
        crate::bail!(
            "{display} is an image index with no linux/{arch} entry (it has: {}); pin the manifest \
             you want by its digest: oras://{}/{}@sha256:<hex>",
            if have.is_empty() { "nothing".to_string() } else { have.join(", ") },
            r.registry,
            r.repository
        );
    };
    let (body, digest, _) = reg.manifest(&pick.digest, &display)?;
    crate::ensure!(
        digest == pick.digest,
        "{display}: the index entry {} came back with digest {digest}",
        pick.digest
    );
    let m: Manifest = serde_json::from_slice(&body)
        .with_context(|| format!("reading the manifest {} of {display}", pick.digest))?;
    crate::ensure!(
        !m.layers.is_empty() || m.manifests.is_empty(),
        "{display}: the linux/{arch} entry of the index is itself an index; pin an image manifest by digest"
    );
    Ok((m, digest))
}

/// The layer that is a disk image: an image suffix in its title; the largest when several.
fn image_layer<'a>(m: &'a Manifest, display: &str) -> Result<&'a Descriptor> {
    let is_image = |d: &&Descriptor| {
        d.title().is_some_and(|t| matches!(suffix::hint_from_name(t), NameHint::Format(_)))
    };
    if let Some(best) = m.layers.iter().filter(is_image).max_by_key(|d| d.size) {
        return Ok(best);
    }
    let have: Vec<String> = m
        .layers
        .iter()
        .map(|d| {
            d.title().map(str::to_string).unwrap_or_else(|| format!("untitled {}", d.media_type))
        })
        .collect();
    crate::bail!(
        "{display} has no disk image layer (layers: {}); an image layer needs an {TITLE} \
         annotation with an image suffix (.img, .iso, .img.gz, .img.zst, .img.xz, .img.bz2, \
         .qcow2), as `oras push` sets from the file name",
        if have.is_empty() { "none".to_string() } else { have.join(", ") }
    )
}

fn resolve_with(reference: &str) -> Result<(Resolved, Arc<Hosts>)> {
    let r = Reference::parse(reference)?;
    let display = r.to_string();
    let reg = Arc::new(Hosts::new(&r)?);
    let (m, manifest_digest) = image_manifest(&reg, &r)?;
    let layer = image_layer(&m, &display)?;
    parse_digest(&layer.digest).with_context(|| format!("{display}: the image layer"))?;
    let title = layer.title().unwrap_or_default();
    let name = title.rsplit('/').next().unwrap_or(title).to_string();
    let resolved = Resolved {
        registry: r.registry.clone(),
        repository: r.repository.clone(),
        reference: display,
        manifest_digest,
        layer_digest: layer.digest.clone(),
        layer_size: layer.size,
        name,
        media_type: layer.media_type.clone(),
    };
    Ok((resolved, reg))
}

/// Resolves an `oras://` reference to its image layer without downloading the blob: the
/// manifest is fetched (an image index picks its linux/<arch> entry, or the error says to pin
/// a digest), and the layer whose title has an image suffix is chosen (the largest if several).
///
/// For bty-web's catalog: `layer_digest` is the content sha256 to pin, `name` the file name,
/// `layer_size` the size. Errors name the reference and what failed.
pub fn resolve(reference: &str) -> Result<Resolved> {
    Ok(resolve_with(reference)?.0)
}

/// A registry blob, fetched through the registry's auth.
struct Blob {
    reg: Arc<Hosts>,
    digest: String,
}

impl Fetch for Blob {
    fn get(&self, headers: &[(&str, &str)]) -> Result<Response, Fail> {
        self.reg.get_blob(&self.digest, headers)
    }
}

/// An opened `oras://` source: the image layer's blob as a resumable stream.
pub(crate) struct Opened {
    pub display: String,
    pub name: String,
    pub resource: Arc<Resource>,
    pub stream: Resumable,
    pub digest: [u8; 32],
}

/// Resolves a reference and starts streaming its image layer.
pub(crate) fn open(spec: &str) -> Result<Opened> {
    let (resolved, reg) = resolve_with(spec)?;
    let digest = parse_digest(&resolved.layer_digest)?;
    let fetch = Blob { digest: resolved.layer_digest.clone(), reg };
    let display = resolved.reference.clone();
    let (resource, stream) =
        Resource::open_sized(Box::new(fetch), display.clone(), Some(resolved.layer_size))?;
    Ok(Opened { display, name: resolved.name, resource, stream, digest })
}

/// Starts streaming the blob `digest` (`sha256:<hex>`, `size` bytes when known) of the
/// reference's repository without resolving its tag or manifest: for a caller that pinned the
/// layer already (bty-web's cache), so that a mirror holding the blob serves it when the tag
/// cannot be resolved (a pull-through cache whose origin is down).
pub(crate) fn open_blob(spec: &str, digest: &str, size: Option<u64>) -> Result<Opened> {
    let r = Reference::parse(spec)?;
    let want = parse_digest(digest).with_context(|| format!("{r}: the pinned layer"))?;
    let fetch = Blob { digest: digest.to_string(), reg: Arc::new(Hosts::new(&r)?) };
    let display = format!("{r} (layer {digest})");
    let (resource, stream) = Resource::open_sized(Box::new(fetch), display.clone(), size)?;
    Ok(Opened { display, name: String::new(), resource, stream, digest: want })
}

/// Fetches the TOML layer of a small artifact, such as an `oras://` catalog: the layer whose
/// title ends in `.toml` or whose media type mentions toml (the only layer, if there is one).
/// The blob's digest is checked, and a layer larger than `max_bytes` is refused before any of it
/// is downloaded.
pub fn fetch_toml(reference: &str, max_bytes: u64) -> Result<Vec<u8>> {
    let r = Reference::parse(reference)?;
    let display = r.to_string();
    let reg = Hosts::new(&r)?;
    let (m, _) = image_manifest(&reg, &r)?;
    let is_toml = |d: &&Descriptor| {
        d.title().is_some_and(|t| t.to_ascii_lowercase().ends_with(".toml"))
            || d.media_type.to_ascii_lowercase().contains("toml")
    };
    let tomls: Vec<&Descriptor> = m.layers.iter().filter(is_toml).collect();
    let layer = match (tomls.as_slice(), m.layers.as_slice()) {
        ([one], _) => *one,
        ([], [only]) => only,
        ([], _) => crate::bail!("{display} has no TOML layer (a title ending in .toml)"),
        (_, _) => crate::bail!("{display} has {} TOML layers; expected one", tomls.len()),
    };
    let want = parse_digest(&layer.digest).with_context(|| format!("{display}: the TOML layer"))?;
    crate::ensure!(
        layer.size <= max_bytes,
        "{display}: the TOML layer is {} bytes, more than the {max_bytes} allowed",
        layer.size
    );
    let what = format!("fetching {display} (layer {})", layer.digest);
    let body = http::with_retries(|| {
        let resp = reg.get_blob(&layer.digest, &[])?;
        if resp.status != 200 {
            return Err(resp.status_fail(&what));
        }
        resp.read_capped(max_bytes, &what)
    })?;
    let got: [u8; 32] = Sha256::digest(&body).into();
    crate::ensure!(
        got == want,
        "{what}: sha256 mismatch: the registry sent sha256:{}",
        crate::hex::encode(&got)
    );
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_digest_addressed_paths_may_leave_https() {
        assert!(content_addressed("/v2/lab/img/blobs/sha256:abc"));
        assert!(content_addressed("/v2/lab/img/manifests/sha256:abc"));
        assert!(!content_addressed("/v2/lab/img/manifests/latest"));
        assert!(!content_addressed("/v2/lab/img/tags/list"));
    }

    #[test]
    fn references_parse_by_the_grammar() {
        let r = Reference::parse("oras://GHCR.io/owner/bty-catalog:latest").unwrap();
        assert_eq!(r.registry, "ghcr.io");
        assert_eq!(r.repository, "owner/bty-catalog");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.to_string(), "oras://ghcr.io/owner/bty-catalog:latest");
        let d = format!("sha256:{}", "ab".repeat(32));
        let r = Reference::parse(&format!("oras://127.0.0.1:5000/a/b/c@{d}")).unwrap();
        assert_eq!((r.registry.as_str(), r.repository.as_str()), ("127.0.0.1:5000", "a/b/c"));
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert_eq!(r.manifest_ref(), d);
        for bad in [
            "oras://host/repo",
            "oras://host/Repo:tag",
            "oras://host/repo:-tag",
            "oras:///repo:tag",
            "oras://host:x/repo:tag",
            "oras://host/repo@sha256:abc",
            "oras://host/repo@md5:00",
            "https://host/repo:tag",
            "oras://host/re..po/:tag",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn challenges_parse_with_quotes_and_commas() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="reg.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(s, "Bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "reg.example");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let (s, p) = parse_challenge(r#"Basic realm="x""#).unwrap();
        assert_eq!((s.as_str(), p["realm"].as_str()), ("Basic", "x"));
    }

    #[test]
    fn auth_files_match_hosts_however_written() {
        let file: AuthFile = serde_json::from_str(
            r#"{"auths": {"https://reg.example:5000/v1/": {"auth": "dTpw"},
                          "tok.example": {"registrytoken": "abc"},
                          "https://index.docker.io/v1/": {"username": "u", "password": "p"}}}"#,
        )
        .unwrap();
        assert_eq!(creds_for(&file, "reg.example:5000"), Some(Creds::Basic("dTpw".into())));
        assert_eq!(creds_for(&file, "tok.example"), Some(Creds::Bearer("abc".into())));
        assert_eq!(creds_for(&file, "registry-1.docker.io"), Some(Creds::Basic("dTpw".into())));
        assert_eq!(creds_for(&file, "other.example"), None);
    }

    #[test]
    fn base64_and_percent_encoding() {
        assert_eq!(base64_encode(b"u:p"), "dTpw");
        assert_eq!(base64_encode(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64_encode(b"ab"), "YWI=");
        assert_eq!(base64_encode(b""), "");
        assert_eq!(pct("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
    }

    #[test]
    fn image_layer_skips_sidecars_and_picks_the_largest() {
        let layer = |title: &str, size: u64| Descriptor {
            media_type: "application/octet-stream".into(),
            digest: format!("sha256:{}", "00".repeat(32)),
            size,
            annotations: [(TITLE.to_string(), title.to_string())].into(),
            platform: None,
        };
        let m = Manifest {
            media_type: None,
            layers: vec![
                layer("disk.img.zst.sha256", 64),
                layer("big.json", 1 << 30),
                layer("small.img.gz", 10),
                layer("disk.img.zst", 1000),
                layer("disk.img.zst.sig", 500),
            ],
            manifests: vec![],
        };
        assert_eq!(image_layer(&m, "x").unwrap().title(), Some("disk.img.zst"));
        let m = Manifest {
            media_type: None,
            layers: vec![layer("a.sha256", 1), layer("b.json", 2)],
            manifests: vec![],
        };
        let e = image_layer(&m, "oras://h/r:t").unwrap_err().to_string();
        assert!(e.contains("no disk image layer (layers: a.sha256, b.json)"), "{e}");
    }
}
