//! `bty flash oras://...` against a real OCI registry: Debian's `docker-registry` on 127.0.0.1
//! with TLS from a test CA and JWT token auth from a token endpoint of the test, filled through
//! the OCI push API. Sidecar layers, tampered blobs, image indexes, expired tokens, cross-host
//! blob redirects, private repositories and plain-http registries.

use std::process::{Command, Output};
use std::time::Duration;

use crate::util::httpd::{Fault, Httpd};
use crate::util::registry::{CutProxy, OCI_INDEX, Options, Registry, b64};
use crate::util::*;

const MIB: usize = 1 << 20;

fn tls_token() -> Options {
    Options { tls: true, token: true, redirect_to: None }
}

/// `bty` with the environment that reaches `reg`.
fn bty_for(reg: &Registry) -> Command {
    let mut c = bty();
    for (k, v) in reg.env() {
        c.env(k, v);
    }
    c.env("BTY_HTTP_TIMEOUT", "20");
    c
}

fn flash_ref(reg: &Registry, reference: &str, target: &std::path::Path, extra: &[&str]) -> Output {
    bty_for(reg)
        .args(["flash", "--yes", "--progress", "json"])
        .arg(reference)
        .arg(target)
        .args(extra)
        .output()
        .expect("running bty")
}

fn done_line(o: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(stdout.lines().last().expect("a done line")).expect("json")
}

#[test]
fn flash_from_a_token_registry_over_tls_skips_sidecars() {
    let dir = TestDir::new("oras-flash");
    let reg = Registry::start(&dir, tls_token());
    let raw = disk_image(31, 12 * MIB);
    let z = zstd(&raw);
    let small = gzip(&disk_image(32, MIB));
    // A sidecar larger than the image, to show that size alone does not pick a layer.
    let big_json = vec![b' '; z.len() + 4096];
    let sha_line = format!("{}  disk.img.zst\n", sha256(&z));
    reg.push_artifact(
        "lab/debian",
        "v1",
        &[
            ("disk.img.zst.sha256", sha_line.as_bytes()),
            ("small.img.gz", &small),
            ("disk.img.zst", &z),
            ("info.json", &big_json),
            ("disk.img.zst.sig", b"signature"),
        ],
    );
    let reference = format!("oras://{}/lab/debian:v1", reg.addr);
    let l = Loop::new(&dir, "target", 16 * MIB);
    let o = flash_ref(&reg, &reference, &l.dev, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sha256(&l.read(0, raw.len())), sha256(&raw));
    let done = done_line(&o);
    assert_eq!(done["source_bytes"].as_u64(), Some(z.len() as u64));
    assert_eq!(done["sha256"].as_str(), Some(sha256(&z).as_str()), "the layer digest was checked");
    let tokens = reg.tokens.as_ref().unwrap().state.lock().unwrap().issued;
    assert!(tokens >= 1, "the token endpoint was used");

    // inspect names the layer's title as the file name and knows the size.
    let o = bty_for(&reg).args(["inspect", "--json"]).arg(&reference).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["format"], "zstd");
    assert_eq!(v["compressed_size"].as_u64(), Some(z.len() as u64));

    // SSL_CERT_FILE adds a CA as BTY_CA_FILE does.
    let o = bty_for(&reg)
        .args(["inspect"])
        .arg(&reference)
        .env("BTY_CA_FILE", "")
        .env("SSL_CERT_FILE", &reg.pki.ca_pem)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    // Without the test CA the TLS handshake fails, and the message says what to do.
    let o = bty()
        .args(["inspect"])
        .arg(&reference)
        .env("BTY_INSECURE_REGISTRIES", reg.env()[1].1.clone())
        .env("BTY_CA_FILE", "")
        .env("SSL_CERT_FILE", "")
        .env("BTY_HTTP_TIMEOUT", "5")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("BTY_CA_FILE"), "{}", stderr(&o));
}

#[test]
fn a_tampered_blob_fails_like_a_wrong_sha256() {
    let dir = TestDir::new("oras-tamper");
    let reg = Registry::start(&dir, tls_token());
    // Raw, so that nothing but the digest can notice the change.
    let raw = disk_image(33, 8 * MIB);
    reg.push_artifact("lab/raw", "v1", &[("disk.img", &raw), ("disk.img.sha256", b"x")]);
    let blob = reg.blob_file(&format!("sha256:{}", sha256(&raw)));
    let mut bytes = std::fs::read(&blob).unwrap();
    for b in &mut bytes[6 * MIB..6 * MIB + 16] {
        *b ^= 0xff;
    }
    std::fs::write(&blob, bytes).unwrap();
    let l = Loop::new(&dir, "target", 16 * MIB);
    let o = flash_ref(&reg, &format!("oras://{}/lab/raw:v1", reg.addr), &l.dev, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("sha256 mismatch"), "{}", stderr(&o));
    assert!(stderr(&o).contains(&sha256(&raw)), "names the expected layer digest: {}", stderr(&o));
    assert_blank(&l);
    let o = bty_for(&reg)
        .args(["inspect", "--sha256"])
        .arg(format!("oras://{}/lab/raw:v1", reg.addr))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("sha256 mismatch"), "{}", stderr(&o));

    // A --sha256 that contradicts the layer digest is refused before anything is written.
    let o = flash_ref(
        &reg,
        &format!("oras://{}/lab/raw:v1", reg.addr),
        &l.dev,
        &["--sha256", &"00".repeat(32)],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("differs from the digest"), "{}", stderr(&o));
}

#[test]
fn a_manifest_with_only_sidecars_is_refused() {
    let dir = TestDir::new("oras-sidecars");
    let reg = Registry::start(&dir, tls_token());
    reg.push_artifact(
        "lab/meta",
        "v1",
        &[("disk.img.zst.sha256", b"abc"), ("info.json", b"{}"), ("disk.img.zst.sig", b"s")],
    );
    let l = Loop::new(&dir, "target", 8 * MIB);
    let before = sha256(&l.read(0, 8 * MIB));
    let o = flash_ref(&reg, &format!("oras://{}/lab/meta:v1", reg.addr), &l.dev, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("has no disk image layer"), "{err}");
    assert!(err.contains("disk.img.zst.sha256, info.json, disk.img.zst.sig"), "{err}");
    assert_eq!(sha256(&l.read(0, 8 * MIB)), before);

    // An unknown tag names the registry's reason.
    let o = flash_ref(&reg, &format!("oras://{}/lab/meta:nope", reg.addr), &l.dev, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("HTTP 404 Not Found"), "{}", stderr(&o));
}

/// The OCI name of this machine's architecture.
fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[test]
fn an_image_index_picks_this_arch_or_asks_for_a_digest() {
    let dir = TestDir::new("oras-index");
    let reg = Registry::start(&dir, tls_token());
    let ours = disk_image(34, 4 * MIB);
    let other = disk_image(35, 4 * MIB);
    let (ours_digest, ours_size) =
        reg.push_artifact_sized("lab/multi", "ours", &[("disk.img.gz", &gzip(&ours))]);
    let (other_digest, other_size) =
        reg.push_artifact_sized("lab/multi", "other", &[("disk.img.gz", &gzip(&other))]);
    let entry = |digest: &str, size: usize, arch: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": size,
            "platform": {"os": "linux", "architecture": arch},
        })
    };
    let foreign = if arch() == "s390x" { "riscv64" } else { "s390x" };
    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [entry(&other_digest, other_size, foreign), entry(&ours_digest, ours_size, arch())],
    });
    reg.push_manifest("lab/multi", "multi", OCI_INDEX, &index.to_string());
    let l = Loop::new(&dir, "target", 8 * MIB);
    let o = flash_ref(&reg, &format!("oras://{}/lab/multi:multi", reg.addr), &l.dev, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sha256(&l.read(0, ours.len())), sha256(&ours));

    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [entry(&other_digest, other_size, foreign)],
    });
    reg.push_manifest("lab/multi", "foreign", OCI_INDEX, &index.to_string());
    let o = flash_ref(&reg, &format!("oras://{}/lab/multi:foreign", reg.addr), &l.dev, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains(&format!("no linux/{} entry", arch())), "{err}");
    assert!(err.contains("pin the manifest you want by its digest"), "{err}");
    assert!(err.contains(&other_digest), "lists what the index has: {err}");

    // Pinned by digest, the foreign manifest is flashed as asked.
    let o = flash_ref(&reg, &format!("oras://{}/lab/multi@{other_digest}", reg.addr), &l.dev, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sha256(&l.read(0, other.len())), sha256(&other));
}

#[test]
fn an_expired_token_is_renewed_when_the_download_resumes() {
    let dir = TestDir::new("oras-expiry");
    let reg = Registry::start(&dir, tls_token());
    reg.tokens.as_ref().unwrap().state.lock().unwrap().first_expires_soon = true;
    let raw = disk_image(36, 8 * MIB);
    reg.push_artifact("lab/slow", "v1", &[("disk.img", &raw)]);
    // The first connection that carries more than 1 MiB holds for 5 s (the first token
    // expires meanwhile), then drops.
    let proxy = CutProxy::start(&reg.addr, MIB as u64, Duration::from_secs(5));
    let l = Loop::new(&dir, "target", 16 * MIB);
    let o = flash_ref(&reg, &format!("oras://{}/lab/slow:v1", proxy.addr), &l.dev, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sha256(&l.read(0, raw.len())), sha256(&raw));
    let err = stderr(&o);
    assert_eq!(proxy.cuts.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(err.contains("connection lost at byte"), "{err}");
    assert!(err.contains("refused the token; getting a new one"), "{err}");
    assert!(err.contains("resumed at byte"), "{err}");
    let issued = reg.tokens.as_ref().unwrap().state.lock().unwrap().issued;
    assert!(issued >= 2, "a fresh token was fetched ({issued} issued)");
}

#[test]
fn a_blob_redirect_to_another_host_carries_no_authorization() {
    let dir = TestDir::new("oras-redirect");
    let store = Httpd::start();
    let reg = Registry::start(
        &dir,
        Options { tls: true, token: true, redirect_to: Some(format!("http://{}", store.addr)) },
    );
    store.serve_dir(reg.root.clone());
    let raw = disk_image(37, 10 * MIB);
    let z = zstd(&raw);
    reg.push_artifact("lab/cdn", "v1", &[("disk.img.zst", &z)]);
    let blob = reg.blob_file(&format!("sha256:{}", sha256(&z)));
    let blob_path = format!("/{}", blob.strip_prefix(&reg.root).unwrap().display());
    // The storage cuts the first download: the resume goes back through the registry for a
    // fresh redirect and asks the storage for the rest.
    store.faults(&blob_path, vec![Fault::Cut(z.len() as u64 / 3)]);
    let l = Loop::new(&dir, "target", 16 * MIB);
    let o = flash_ref(&reg, &format!("oras://{}/lab/cdn:v1", reg.addr), &l.dev, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sha256(&l.read(0, raw.len())), sha256(&raw));
    let seen = store.seen();
    assert!(seen.len() >= 2, "{seen:?}");
    for s in &seen {
        assert_eq!(s.path, blob_path);
        assert_eq!(s.authorization, None, "the registry token leaked to the storage host");
    }
    assert!(seen[1..].iter().all(|s| s.range.is_some()), "{seen:?}");
}

#[test]
fn a_private_repository_uses_the_auth_file() {
    let dir = TestDir::new("oras-private");
    let reg = Registry::start(&dir, tls_token());
    let basic = b64(b"alice:s3cret", false);
    reg.tokens.as_ref().unwrap().state.lock().unwrap().private_basic = Some(basic.clone());
    let raw = disk_image(38, 2 * MIB);
    reg.push_artifact("private/img", "v1", &[("disk.img", &raw)]);
    let reference = format!("oras://{}/private/img:v1", reg.addr);
    let out = dir.path("out.img");
    let o = flash_ref(&reg, &reference, &out, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("HTTP 401"), "{}", stderr(&o));
    assert!(stderr(&o).contains("REGISTRY_AUTH_FILE"), "{}", stderr(&o));

    let auth = dir.path("auth.json");
    std::fs::write(&auth, format!(r#"{{"auths": {{"{}": {{"auth": "{basic}"}}}}}}"#, reg.addr))
        .unwrap();
    let o = bty_for(&reg)
        .args(["flash", "--yes", "--progress", "none"])
        .arg(&reference)
        .arg(&out)
        .env("REGISTRY_AUTH_FILE", &auth)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sha256(&std::fs::read(&out).unwrap()), sha256(&raw));
    let seen = reg.tokens.as_ref().unwrap().state.lock().unwrap().auth_seen.clone();
    assert!(seen.contains(&Some(format!("Basic {basic}"))), "{seen:?}");
}

#[test]
fn plain_http_registries_must_be_listed() {
    let dir = TestDir::new("oras-insecure");
    let reg = Registry::start(&dir, Options::default());
    let raw = disk_image(39, 2 * MIB);
    reg.push_artifact("lab/plain", "v1", &[("disk.img", &raw)]);
    let reference = format!("oras://{}/lab/plain:v1", reg.addr);
    let out = dir.path("out.img");
    let o = bty_for(&reg)
        .args(["flash", "--yes", "--progress", "none"])
        .arg(&reference)
        .arg(&out)
        .env("BTY_INSECURE_REGISTRIES", "")
        .env("BTY_HTTP_TIMEOUT", "5")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("https://{}", reg.addr)), "{}", stderr(&o));
    assert!(stderr(&o).contains("BTY_INSECURE_REGISTRIES"), "{}", stderr(&o));
    let o = bty_for(&reg)
        .args(["flash", "--yes", "--progress", "none"])
        .arg(&reference)
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sha256(&std::fs::read(&out).unwrap()), sha256(&raw));
}

/// The library API for bty-web (resolve, fetch_toml) runs in a child process of this test
/// binary, so that the environment it needs (the test CA) is set for it alone.
#[test]
fn library_api_resolves_references_and_fetches_catalog_toml() {
    let dir = TestDir::new("oras-api");
    let reg = Registry::start(&dir, tls_token());
    let z = zstd(&disk_image(40, 2 * MIB));
    let manifest =
        reg.push_artifact("lab/api", "v1", &[("disk.img.zst", &z), ("disk.img.zst.sha256", b"x")]);
    let toml = b"version = 1\n\n[[images]]\nname = \"disk.img.zst\"\nsrc = \"oras://h/r:t\"\n";
    reg.push_artifact("lab/catalog", "latest", &[("catalog.toml", toml)]);
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", "source_oras::api_child", "--nocapture", "--test-threads", "1"]);
    for (k, v) in reg.env() {
        c.env(k, v);
    }
    c.env("BTY_TEST_API_REGISTRY", &reg.addr)
        .env("BTY_TEST_API_MANIFEST", &manifest)
        .env("BTY_TEST_API_LAYER", format!("sha256:{}", sha256(&z)))
        .env("BTY_TEST_API_SIZE", z.len().to_string());
    let o = c.output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.contains("1 passed"), "{out}\n{}", stderr(&o));
}

#[test]
fn api_child() {
    let Ok(addr) = std::env::var("BTY_TEST_API_REGISTRY") else { return };
    let env = |k: &str| std::env::var(k).unwrap();
    let r = bty::source::oras::resolve(&format!("oras://{addr}/lab/api:v1")).unwrap();
    assert_eq!(r.registry, addr);
    assert_eq!(r.repository, "lab/api");
    assert_eq!(r.reference, format!("oras://{addr}/lab/api:v1"));
    assert_eq!(r.manifest_digest, env("BTY_TEST_API_MANIFEST"));
    assert_eq!(r.layer_digest, env("BTY_TEST_API_LAYER"));
    assert_eq!(r.layer_size.to_string(), env("BTY_TEST_API_SIZE"));
    assert_eq!(r.name, "disk.img.zst");
    assert_eq!(r.media_type, "application/vnd.oci.image.layer.v1.tar");
    let toml =
        bty::source::oras::fetch_toml(&format!("oras://{addr}/lab/catalog:latest"), 4096).unwrap();
    assert!(String::from_utf8(toml).unwrap().starts_with("version = 1"));
    let e = bty::source::oras::fetch_toml(&format!("oras://{addr}/lab/catalog:latest"), 10)
        .unwrap_err();
    assert!(e.to_string().contains("more than the 10 allowed"), "{e}");
    let e = bty::source::oras::resolve(&format!("oras://{addr}/lab/api")).unwrap_err();
    assert!(e.to_string().contains(":latest"), "{e}");
}

/// A containerd-style hosts directory naming `mirrors` (URL, extra lines) for `registry`.
fn hosts_dir(dir: &TestDir, registry: &str, mirrors: &[(String, String)]) -> std::path::PathBuf {
    let hosts = dir.path("hosts.d");
    let _ = std::fs::remove_dir_all(&hosts);
    std::fs::create_dir_all(hosts.join(registry)).unwrap();
    let mut text = String::new();
    for (url, extra) in mirrors {
        text.push_str(&format!(
            "[host.\"{url}\"]\ncapabilities = [\"pull\", \"resolve\"]\n{extra}\n"
        ));
    }
    std::fs::write(hosts.join(registry).join("hosts.toml"), text).unwrap();
    hosts
}

#[test]
fn pulls_go_through_a_pull_through_cache_mirror() {
    let dir = TestDir::new("oras-mirror");
    let cache_dir = TestDir::new("oras-mirror-cache");
    let origin = Registry::start(&dir, Options { tls: true, token: false, redirect_to: None });
    let raw = disk_image(41, 6 * MIB);
    let z = zstd(&raw);
    let manifest = origin.push_artifact("lab/img", "v1", &[("disk.img.zst", &z)]);
    // A second docker-registry as a pull-through cache of the origin (its own CA; the origin's
    // CA trusted through SSL_CERT_FILE, as Go reads it).
    let cache = Registry::start_with(
        &cache_dir,
        Options { tls: true, token: false, redirect_to: None },
        &format!("proxy:\n  remoteurl: {}\n", origin.base()),
        &[("SSL_CERT_FILE", origin.pki.ca_pem.as_path())],
    );
    let ca_line = format!("ca = \"{}\"", cache.pki.ca_pem.display());
    let hosts =
        hosts_dir(&dir, &origin.addr, &[(format!("https://{}", cache.addr), ca_line.clone())]);
    let l = Loop::new(&dir, "target", 8 * MIB);
    let env = origin.env();
    let flash = |reference: &str| {
        bty()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("BTY_HTTP_TIMEOUT", "20")
            .env("BTY_REGISTRY_HOSTS_DIR", &hosts)
            .args(["flash", "--yes", "--progress", "json"])
            .arg(reference)
            .arg(&l.dev)
            .output()
            .expect("running bty")
    };
    let by_tag = format!("oras://{}/lab/img:v1", origin.addr);
    let o = flash(&by_tag);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sha256(&l.read(0, raw.len())), sha256(&raw));
    let layer = format!("sha256:{}", sha256(&z));
    assert!(
        stderr(&o).contains(&format!("blob {layer} from {}", cache.addr)),
        "the mirror served the blob: {}",
        stderr(&o)
    );
    assert!(cache.blob_file(&layer).exists(), "the cache kept the blob");

    // A mirror that is down is passed over for the next host, here the origin.
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    // (The same directory, rewritten.)
    hosts_dir(
        &dir,
        &origin.addr,
        &[
            (format!("https://{down}"), String::new()),
            (format!("https://{}", cache.addr), ca_line.clone()),
        ],
    );
    let o = flash(&by_tag);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("trying the next registry host"), "{}", stderr(&o));

    // With the origin gone, a pull by digest still comes from the cache.
    let by_digest = format!("oras://{}/lab/img@{manifest}", origin.addr);
    drop(origin);
    std::fs::write(l.dev.as_path(), vec![0u8; 8 * MIB]).unwrap();
    let o = flash(&by_digest);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sha256(&l.read(0, raw.len())), sha256(&raw));

    // A mirror that serves wrong bytes fails like a wrong sha256.
    let blob = cache.blob_file(&layer);
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0xff;
    }
    std::fs::write(&blob, bytes).unwrap();
    let o = flash(&by_digest);
    assert!(!o.status.success(), "a tampered mirror blob was flashed");
    assert!(stderr(&o).contains("sha256"), "{}", stderr(&o));
}
