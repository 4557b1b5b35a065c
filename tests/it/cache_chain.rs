//! Chained image caches: a site bty-web whose `[cache] upstreams` names a central bty-web, and
//! a bty-web whose oras:// fills go through a registry mirror (`[registry] hosts_dir`). Both
//! keep filling with the origin gone, and hold whatever they get to the pinned sha256.

use std::path::PathBuf;

use crate::cache::{cache_files, events, get, import, partials, start, whole_fetches};
use crate::util;
use crate::util::Server;
use crate::util::httpd::Httpd;

#[test]
fn a_site_cache_fills_through_its_central_cache_with_the_origin_gone() {
    let dir = util::TestDir::new("chain-http");
    let image = util::zstd(&util::disk_image(51, 6 << 20));
    let sha = util::sha256(&image);
    let name = "debian.img.zst";
    let origin = Httpd::start();
    origin.file("/img/debian.img.zst", image.clone(), true, Some("\"v1\""));
    let src = origin.url("/img/debian.img.zst");
    let entry = [(name, src.as_str(), sha.as_str(), image.len())];
    let path = format!("/images/{sha}/{name}");

    let central_cache = dir.path("central");
    let central = start("chain-central", &central_cache, &[]);
    import(&central, &entry);
    let upstream = format!("http://{}", central.addr);

    // The first site pulls through the central cache, which fills from the origin.
    let site_cache = dir.path("site1");
    let site = start("chain-site1", &site_cache, &[("BTY_CACHE_UPSTREAMS", &upstream)]);
    import(&site, &entry);
    let (st, head, body) = get(&site.addr, "GET", &path, "");
    assert_eq!(st, 200, "{head}");
    assert!(body == image, "the site served {} bytes that differ from the image", body.len());
    assert_eq!(cache_files(&site_cache), vec![sha.clone()]);
    assert_eq!(cache_files(&central_cache), vec![sha.clone()], "the central cache kept it too");
    assert_eq!(whole_fetches(&origin, "/img/debian.img.zst"), 1, "{:?}", origin.seen());
    let filled = events(&site, "cache.filled");
    assert!(filled.iter().any(|m| m.contains(&format!("upstream {upstream}"))), "{filled:?}");

    // The origin goes away: a second site, with a cache of its own, still gets the image from
    // the central cache.
    drop(origin);
    let site2_cache = dir.path("site2");
    let site2 = start("chain-site2", &site2_cache, &[("BTY_CACHE_UPSTREAMS", &upstream)]);
    import(&site2, &entry);
    let (st, head, body) = get(&site2.addr, "GET", &path, "");
    assert_eq!(st, 200, "{head}");
    assert!(body == image, "the second site served other bytes");
    assert_eq!(cache_files(&site2_cache), vec![sha.clone()]);

    // Upstreams that lie: one announces another length (refused before a byte is kept), one
    // sends other bytes of the right length (thrown away once hashed). Each lie is reported
    // naming its upstream, and the next upstream fills the cache.
    let short = Httpd::start();
    short.file(&path, image[..image.len() - 1].to_vec(), true, None);
    let short_url = format!("http://{}", short.addr);
    let liar = Httpd::start();
    let mut garbage = image.clone();
    for b in &mut garbage[4096..4096 + 64] {
        *b ^= 0x5a;
    }
    liar.file(&path, garbage, true, None);
    let liar_url = format!("http://{}", liar.addr);
    let site3_cache = dir.path("site3");
    let both = format!("{short_url},{liar_url},{upstream}");
    let site3 = start("chain-site3", &site3_cache, &[("BTY_CACHE_UPSTREAMS", &both)]);
    import(&site3, &entry);
    // The request that started the fill reads the lie as it arrives: it is cut short (or, if
    // the lie was found before its first byte, refused), never completed.
    let (st, head, body) = get(&site3.addr, "GET", &path, "");
    assert!(
        st == 502 || (st == 200 && body.len() < image.len()),
        "{st} {head} with {} bytes",
        body.len()
    );
    let (st, head, body) = get(&site3.addr, "GET", &path, "");
    assert_eq!(st, 200, "{head}");
    assert!(body == image, "the site served the liar's bytes");
    assert_eq!(cache_files(&site3_cache), vec![sha.clone()]);
    assert_eq!(partials(&site3_cache), 0);
    let lied = events(&site3, "cache.upstream_lied");
    assert_eq!(lied.len(), 2, "{lied:?}");
    let said = |url: &str, what: &str| lied.iter().any(|m| m.contains(url) && m.contains(what));
    assert!(said(&short_url, "but the catalog says the image has"), "{lied:?}");
    assert!(said(&liar_url, "but the catalog pins"), "{lied:?}");
    let filled = events(&site3, "cache.filled");
    assert!(filled.iter().any(|m| m.contains(&format!("upstream {upstream}"))), "{filled:?}");

    // Every source down: an upstream with nothing listening, the central cache stopped, one
    // that has no such image, and the origin. A 502 names each, and nothing is kept.
    drop(central);
    let empty = Httpd::start();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let all = format!("http://{closed},{upstream},http://{}", empty.addr);
    let site4_cache = dir.path("site4");
    let site4 = start("chain-site4", &site4_cache, &[("BTY_CACHE_UPSTREAMS", &all)]);
    import(&site4, &entry);
    let (st, _, body) = get(&site4.addr, "GET", &path, "");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(st, 502, "{body}");
    for tried in [
        format!("upstream http://{closed}"),
        format!("upstream {upstream}"),
        format!("upstream http://{}", empty.addr),
        format!("origin {src}"),
    ] {
        assert!(body.contains(&tried), "the 502 does not name {tried}: {body}");
    }
    assert!(body.contains("404"), "{body}");
    assert!(cache_files(&site4_cache).is_empty());
    assert_eq!(partials(&site4_cache), 0);
    let failed = events(&site4, "cache.failed");
    assert!(failed.iter().any(|m| m.contains("every source failed")), "{failed:?}");
}

/// Two caches that name each other as upstreams: a miss goes around once, the second cache
/// sees the first's id in `Bty-Cache-Chain` and answers 508 instead of waiting on a fill that
/// waits on it, and each cache goes on to its next source.
#[test]
fn caches_that_name_each_other_as_upstreams_do_not_wait_on_each_other() {
    let dir = util::TestDir::new("chain-loop");
    let image = util::zstd(&util::disk_image(53, 3 << 20));
    let sha = util::sha256(&image);
    let origin = Httpd::start();
    origin.file("/img/loop.img.zst", image.clone(), true, None);
    let src = origin.url("/img/loop.img.zst");
    // B's port is taken before A starts so that each can name the other.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let b_url = format!("http://127.0.0.1:{port}");
    let a_cache = dir.path("a");
    let a = start("chain-loop-a", &a_cache, &[("BTY_CACHE_UPSTREAMS", &b_url)]);
    let a_url = format!("http://{}", a.addr);
    let b_cache = dir.path("b");
    let b_state = dir.path("b-state");
    let mut cmd = util::bty_web(&b_state);
    cmd.args(["--listen", &format!("127.0.0.1:{port}")])
        .env("BTY_ADMIN_PASSWORD", "pw-for-tests")
        .env("BTY_CACHE_DIR", &b_cache)
        .env("BTY_CACHE_UPSTREAMS", &a_url);
    let (child, addr) = util::spawn_web(cmd);
    let b = Server { child, addr, state: b_state };
    assert_eq!(b.addr, format!("127.0.0.1:{port}"));
    let entry = [("loop.img.zst", src.as_str(), sha.as_str(), image.len())];
    import(&a, &entry);
    import(&b, &entry);

    // A asks B, B asks A, A refuses the loop, B takes the origin, A takes B's copy.
    let (st, head, body) = get(&a.addr, "GET", &format!("/images/{sha}/loop.img.zst"), "");
    assert_eq!(st, 200, "{head}");
    assert!(body == image, "A served other bytes");
    assert_eq!(cache_files(&a_cache), vec![sha.clone()]);
    assert_eq!(cache_files(&b_cache), vec![sha.clone()]);
    let a_filled = events(&a, "cache.filled");
    assert!(a_filled.iter().any(|m| m.contains(&format!("upstream {b_url}"))), "{a_filled:?}");
    let b_filled = events(&b, "cache.filled");
    assert!(b_filled.iter().any(|m| m.contains(&format!("origin {src}"))), "{b_filled:?}");
    assert_eq!(whole_fetches(&origin, "/img/loop.img.zst"), 1, "{:?}", origin.seen());

    // With the origin gone as well, the loop still ends at once: B's fill records A's 508, and
    // A answers 502 naming B and the origin.
    let gone = "http://127.0.0.1:9/img/other.img.zst";
    let other = util::zstd(&util::disk_image(54, 1 << 20));
    let other_sha = util::sha256(&other);
    let entry = [("other.img.zst", gone, other_sha.as_str(), other.len())];
    import(&a, &entry);
    import(&b, &entry);
    let (st, _, body) = get(&a.addr, "GET", &format!("/images/{other_sha}/other.img.zst"), "");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(st, 502, "{body}");
    assert!(body.contains(&format!("upstream {b_url}")) && body.contains(gone), "{body}");
    let b_failed = events(&b, "cache.failed");
    assert!(b_failed.iter().any(|m| m.contains("508")), "B did not record A's 508: {b_failed:?}");
    assert!(cache_files(&a_cache) == vec![sha.clone()] && partials(&a_cache) == 0);

    // A chain header from the network is checked like any input.
    let (st, _, body) = get(
        &a.addr,
        "GET",
        &format!("/images/{sha}/loop.img.zst"),
        "Bty-Cache-Chain: <script>\r\n",
    );
    assert_eq!(st, 400, "{}", String::from_utf8_lossy(&body));
}

#[test]
fn an_oras_cache_fills_through_a_registry_mirror_with_the_origin_gone() {
    use util::registry::{Options, Registry};
    let dir = util::TestDir::new("chain-oras");
    let mirror_dir = util::TestDir::new("chain-oras-mirror");
    let plain_tls = || Options { tls: true, token: false, redirect_to: None };
    let origin = Registry::start(&dir, plain_tls());
    let image = util::zstd(&util::disk_image(52, 4 << 20));
    let sha = util::sha256(&image);
    origin.push_artifact("lab/img", "v1", &[("disk.img.zst", &image)]);
    // The same artifact under a tag the mirror is never asked for while the origin is up.
    origin.push_artifact("lab/img", "v2", &[("disk.img.zst", &image)]);
    // A second docker-registry as a pull-through cache of the origin, as in
    // source_oras::pulls_go_through_a_pull_through_cache_mirror.
    let mirror = Registry::start_with(
        &mirror_dir,
        plain_tls(),
        &format!("proxy:\n  remoteurl: {}\n", origin.base()),
        &[("SSL_CERT_FILE", origin.pki.ca_pem.as_path())],
    );
    let hosts = dir.path("hosts.d");
    std::fs::create_dir_all(hosts.join(&origin.addr)).unwrap();
    std::fs::write(
        hosts.join(&origin.addr).join("hosts.toml"),
        format!(
            "[host.\"https://{}\"]\ncapabilities = [\"pull\", \"resolve\"]\nca = \"{}\"\n",
            mirror.addr,
            mirror.pki.ca_pem.display()
        ),
    )
    .unwrap();
    // By tag, as catalogs name images.
    let reference = format!("oras://{}/lab/img:v1", origin.addr);
    let entry = [("disk.img.zst", reference.as_str(), sha.as_str(), image.len())];
    let path = format!("/images/{sha}/disk.img.zst");
    let reg_env = origin.env();
    let env_for = |cache: &PathBuf, extra: Vec<(String, String)>| {
        let mut env = reg_env.clone();
        env.push(("BTY_CACHE_DIR".into(), cache.display().to_string()));
        env.extend(extra);
        env
    };

    // The hosts directory from bty.toml's [registry] hosts_dir.
    let toml = dir.path("bty.toml");
    std::fs::write(&toml, format!("[registry]\nhosts_dir = \"{}\"\n", hosts.display())).unwrap();
    let cache1 = dir.path("cache1");
    let env = env_for(&cache1, vec![("BTY_CONFIG_FILE".into(), toml.display().to_string())]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let s1 = Server::start_env("chain-oras1", &env);
    import(&s1, &entry);
    let layer = format!("sha256:{sha}");
    assert!(!mirror.blob_file(&layer).exists());
    let (st, head, body) = get(&s1.addr, "GET", &path, "");
    assert_eq!(st, 200, "{head}");
    assert!(body == image, "the cache served other bytes");
    // The pull-through cache commits the blob it streamed once the stream is done.
    let kept = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        mirror.blob_file(&layer).exists()
    });
    assert!(kept, "the fill went through the mirror, which kept the blob");
    assert_eq!(cache_files(&cache1), vec![sha.clone()]);

    // The origin registry goes away: a fresh bty-web (its own cache; the hosts directory from
    // BTY_REGISTRY_HOSTS_DIR this time) still fills, from the mirror. Its entry names the tag
    // the mirror never saw, which nothing can resolve now: the fill takes the pinned layer by
    // its digest, which the mirror holds.
    let unseen = format!("oras://{}/lab/img:v2", origin.addr);
    drop(origin);
    let cache2 = dir.path("cache2");
    let env =
        env_for(&cache2, vec![("BTY_REGISTRY_HOSTS_DIR".into(), hosts.display().to_string())]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let s2 = Server::start_env("chain-oras2", &env);
    import(&s2, &[("disk.img.zst", unseen.as_str(), sha.as_str(), image.len())]);
    let (st, head, body) = get(&s2.addr, "GET", &path, "");
    assert_eq!(st, 200, "{head}");
    assert!(body == image, "the second cache served other bytes");
    assert_eq!(cache_files(&cache2), vec![sha]);
    let filled = events(&s2, "cache.filled");
    assert!(filled.iter().any(|m| m.contains(&unseen)), "{filled:?}");
}
