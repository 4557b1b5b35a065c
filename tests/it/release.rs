//! The netboot fetch against the real release: the directory `make release` writes to
//! `build/release` (release.toml and its assets), installed by bty-web as a local directory and
//! served over http, as an air-gapped mirror would. `make test` runs `make release` first; run
//! alone with `cargo test --features test-hooks --test it release::`.

use std::path::{Path, PathBuf};

use crate::util::Server;
use crate::util::httpd::Httpd;
use crate::util::release as rel;

/// `build/release`, which must hold a release.toml: a missing release is a failure, not a skip.
fn release_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("build/release");
    assert!(
        dir.join("release.toml").is_file(),
        "{} has no release.toml: run `make release` first (`make test` does), which builds the \
         release directory this test installs the netboot artifacts from",
        dir.display()
    );
    dir
}

/// The names of the x86_64 netboot kernel and initrd the release lists, read with plain TOML
/// (not bty-web's parser, which is what is under test).
fn netboot_pair(dir: &Path) -> (String, String) {
    let text = std::fs::read_to_string(dir.join("release.toml")).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap();
    let assets = table["assets"].as_array().expect("release.toml has [[assets]]");
    let find = |kind: &str| {
        let found: Vec<&str> = assets
            .iter()
            .filter(|a| a["kind"].as_str() == Some(kind) && a["arch"].as_str() == Some("x86_64"))
            .filter_map(|a| a["name"].as_str())
            .collect();
        assert_eq!(found.len(), 1, "release.toml lists one x86_64 {kind}: {found:?}");
        found[0].to_string()
    };
    (find("netboot-kernel"), find("netboot-initrd"))
}

/// Fetches the release at `url` into a fresh bty-web and checks the installed bytes against the
/// release directory's and the names in a machine's script.
fn installs(dir: &Path, url: &str, name: &str) {
    let (kernel, initrd) = netboot_pair(dir);
    let s = Server::start_env(name, &[("BTY_BOOT_RELEASE_URL", url)]);
    let cookie = s.login();
    let mac = "52:54:00:08:00:01";
    rel::flash_machine(&s, &cookie, mac);
    rel::fetch(&s, &cookie, "done");
    let boot = s.state.join("boot");
    for n in [&kernel, &initrd] {
        let want = std::fs::read(dir.join(n)).unwrap();
        let got = std::fs::read(boot.join(n)).unwrap_or_else(|e| panic!("{n} from {url}: {e}"));
        assert!(got == want, "{n} from {url}: the installed bytes differ from {}", dir.display());
    }
    assert_eq!(rel::script_names(&s, mac), (kernel, initrd));
}

#[test]
fn the_real_release_installs_from_its_directory() {
    let dir = release_dir();
    installs(&dir, &dir.display().to_string(), "release-real-dir");
}

#[test]
fn the_real_release_installs_over_http() {
    let dir = release_dir();
    let http = Httpd::start();
    http.serve_dir(dir.clone());
    installs(&dir, &http.url("/"), "release-real-http");
}
