//! `bty-web init / deploy / upgrade` on temp dirs: the files it writes, checked by the tools that
//! will read them where this machine has them (python3's yaml, systemd-analyze, the Quadlet
//! generator), refusing to overwrite, --dry-run, and envvars surviving an upgrade. Nothing here
//! starts containers or touches /etc: deploy and upgrade run with a PATH without podman/docker.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use crate::util;
use crate::util::TestDir;

fn bty_web(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bty-web"))
        .args(args)
        .arg(dir)
        .env_remove("BTY_CONFIG_FILE")
        .env_remove("BTY_CONFIG_DIR")
        .output()
        .expect("running bty-web")
}

/// Same, with a PATH that has no podman, docker or systemctl.
fn bty_web_no_tools(args: &[&str], dir: &Path, empty: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bty-web"))
        .args(args)
        .arg(dir)
        .env("PATH", empty)
        .env_remove("BTY_CONFIG_FILE")
        .env_remove("BTY_CONFIG_DIR")
        .output()
        .expect("running bty-web")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

const FILES: &[&str] = &[
    "compose.yaml",
    "envvars",
    "bty.toml",
    "quadlet/bty-web.container",
    "quadlet/bty-tftp.container",
    "quadlet/bty-data.volume",
    "quadlet/bty-cache.volume",
];

#[test]
fn init_writes_the_stack_with_secrets_and_prints_it() {
    let t = TestDir::new("deploy-init");
    let dir = t.path("stack");
    let o =
        bty_web(&["init", "--host-addr", "192.0.2.10", "--image", "localhost/bty-web:test"], &dir);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    for f in FILES {
        let p = dir.join(f);
        assert!(p.is_file(), "{f} missing:\n{out}");
        assert!(out.contains(&format!("wrote {}", p.display())), "{f} not reported:\n{out}");
    }
    let env = std::fs::read_to_string(dir.join("envvars")).unwrap();
    let mode = std::fs::metadata(dir.join("envvars")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "envvars holds secrets");
    assert!(env.contains("HOST_ADDR=192.0.2.10\n"), "{env}");
    let pw = env.lines().find_map(|l| l.strip_prefix("BTY_ADMIN_PASSWORD=")).unwrap();
    assert_eq!(pw.len(), 32, "a generated 128-bit secret: {pw}");
    assert_ne!(pw, "bty-lab");
    assert!(out.contains("http://192.0.2.10:8080/ui"), "{out}");
    assert!(!out.contains(pw), "the password is never printed");
    let container = std::fs::read_to_string(dir.join("quadlet/bty-web.container")).unwrap();
    assert!(container.contains(&format!("EnvironmentFile={}/envvars", dir.display())));
    assert!(container.contains("Image=localhost/bty-web:test"));
    // The bty.toml it writes is one bty-web accepts.
    let cfg = Command::new(env!("CARGO_BIN_EXE_bty-web"))
        .arg("config")
        .env("BTY_CONFIG_FILE", dir.join("bty.toml"))
        .output()
        .unwrap();
    assert!(cfg.status.success(), "{}", text(&cfg));
    assert!(String::from_utf8_lossy(&cfg.stdout).contains("[server] port"));
}

#[test]
fn compose_file_parses_as_yaml_with_both_services() {
    let t = TestDir::new("deploy-yaml");
    let dir = t.path("stack");
    assert!(bty_web(&["init", "--host-addr", "192.0.2.10"], &dir).status.success());
    let script = "import sys, yaml\n\
        d = yaml.safe_load(open(sys.argv[1]))\n\
        s = d['services']\n\
        assert set(s) == {'bty-web', 'bty-tftp'}, s\n\
        assert s['bty-web']['ports'] == ['8080:8080']\n\
        assert s['bty-web']['env_file'] == ['envvars']\n\
        assert 'bty-data:/var/lib/bty' in s['bty-web']['volumes']\n\
        assert s['bty-tftp']['command'] == ['tftp'] and s['bty-tftp']['profiles'] == ['tftp']\n\
        assert s['bty-tftp']['ports'] == ['69:1069/udp']\n\
        assert s['bty-web']['image'] == s['bty-tftp']['image']\n\
        assert 'bty-data' in d['volumes'] and 'bty-cache' in d['volumes']\n\
        assert 'bty-cache:/var/cache/bty' in s['bty-web']['volumes']\n\
        assert s['bty-web']['environment']['BTY_CACHE_DIR'] == '/var/cache/bty'\n";
    // python3-yaml comes with make deps.
    let o = Command::new("python3")
        .args(["-c", script])
        .arg(dir.join("compose.yaml"))
        .output()
        .expect("running python3");
    assert!(o.status.success(), "{}", text(&o));
    // Where a compose tool exists, it must accept the file too.
    if util::which("podman-compose").is_some() {
        let o = Command::new("podman-compose").arg("config").current_dir(&dir).output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
    }
}

/// The unit files as systemd reads them: [Section] headers and Key=Value lines.
fn ini_sections(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            out.push((name.to_string(), Vec::new()));
            continue;
        }
        let (k, v) = line.split_once('=').unwrap_or_else(|| panic!("not Key=Value: {line:?}"));
        out.last_mut().expect("a key before any section").1.push((k.into(), v.into()));
    }
    out
}

#[test]
fn quadlet_units_are_well_formed() {
    let t = TestDir::new("deploy-quadlet");
    let dir = t.path("stack");
    assert!(bty_web(&["init", "--host-addr", "192.0.2.10"], &dir).status.success());
    // Keys of podman-systemd.unit(5) these units use; a typo would be silently ignored.
    let container_keys = [
        "ContainerName",
        "Image",
        "PublishPort",
        "Volume",
        "EnvironmentFile",
        "Environment",
        "HealthCmd",
        "HealthInterval",
        "Exec",
    ];
    for name in ["bty-web.container", "bty-tftp.container", "bty-data.volume", "bty-cache.volume"] {
        let text = std::fs::read_to_string(dir.join("quadlet").join(name)).unwrap();
        let sections = ini_sections(&text);
        for (section, keys) in &sections {
            let allowed: &[&str] = match section.as_str() {
                "Unit" => &["Description", "Wants", "After", "Requires"],
                "Container" => &container_keys,
                "Volume" => &["VolumeName"],
                "Service" => &["Restart", "TimeoutStopSec"],
                "Install" => &["WantedBy"],
                s => panic!("{name}: unexpected section [{s}]"),
            };
            for (k, _) in keys {
                assert!(allowed.contains(&k.as_str()), "{name}: [{section}] {k} is not known");
            }
        }
        let main = if name.ends_with(".volume") { "Volume" } else { "Container" };
        assert!(sections.iter().any(|s| s.0 == main), "{name} has no [{main}]");
    }
    // Quadlet's own dry run (the generator from trixie's podman 5; `make deps` fetches it, as
    // bookworm's podman 4.3 has none): it refuses unknown keys and shows the podman command.
    let quadlet = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/quadlet/quadlet");
    assert!(
        quadlet.exists(),
        "{} is missing: run `make quadlet` (part of make test)",
        quadlet.display()
    );
    let o = Command::new(&quadlet)
        .arg("-dryrun")
        .env("QUADLET_UNIT_DIRS", dir.join("quadlet"))
        .output()
        .unwrap();
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    for unit in [
        "bty-web.service",
        "bty-tftp.service",
        "bty-data-volume.service",
        "bty-cache-volume.service",
    ] {
        assert!(out.contains(&format!("---{unit}---")), "no {unit} in:\n{out}");
    }
    let run = out
        .lines()
        .find(|l| l.starts_with("ExecStart=/usr/bin/podman run --name bty-web"))
        .expect(&out);
    for arg in [
        "-v bty-data:/var/lib/bty",
        "-v bty-cache:/var/cache/bty",
        "--publish 8080:8080",
        "--env BTY_CACHE_DIR=/var/cache/bty",
        "--health-cmd",
    ] {
        assert!(run.contains(arg), "{arg} missing from {run}");
    }
    // A unit with a key Quadlet does not know is refused, so the check above has teeth.
    std::fs::write(
        dir.join("quadlet/typo.container"),
        "[Container]\nImage=docker.io/x/y\nPublishPorts=1:1\n",
    )
    .unwrap();
    let o = Command::new(&quadlet)
        .arg("-dryrun")
        .env("QUADLET_UNIT_DIRS", dir.join("quadlet"))
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
}

#[test]
fn host_install_unit_passes_systemd_analyze_verify() {
    let analyze =
        util::which("systemd-analyze").expect("systemd-analyze (make deps installs systemd)");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd");
    let t = TestDir::new("deploy-systemd");
    // verify checks that ExecStart exists: point it at the binary under test.
    let unit = std::fs::read_to_string(root.join("bty-web.service"))
        .unwrap()
        .replace("/usr/local/bin/bty-web", env!("CARGO_BIN_EXE_bty-web"));
    std::fs::write(t.path("bty-web.service"), unit).unwrap();
    let o = Command::new(analyze).arg("verify").arg(t.path("bty-web.service")).output().unwrap();
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(!out.contains("bty-web.service:"), "systemd-analyze complains about the unit:\n{out}");
    for (file, first) in [("bty.sysusers", "u bty "), ("bty.tmpfiles", "d /var/lib/bty ")] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        assert!(text.lines().any(|l| l.starts_with(first)), "{file}: {text}");
    }
}

#[test]
fn init_refuses_an_existing_stack_unless_forced() {
    let t = TestDir::new("deploy-force");
    let dir = t.path("stack");
    assert!(bty_web(&["init", "--host-addr", "192.0.2.10"], &dir).status.success());
    let before = std::fs::read_to_string(dir.join("envvars")).unwrap();
    let o = bty_web(&["init", "--host-addr", "192.0.2.11"], &dir);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("--force"), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(dir.join("envvars")).unwrap(), before, "left alone");
    let o = bty_web(&["init", "--force", "--host-addr", "192.0.2.11"], &dir);
    assert!(o.status.success(), "{}", text(&o));
    let after = std::fs::read_to_string(dir.join("envvars")).unwrap();
    assert!(after.contains("HOST_ADDR=192.0.2.11"));
    assert_ne!(after, before, "--force writes new secrets");
}

#[test]
fn dry_run_writes_nothing() {
    let t = TestDir::new("deploy-dry");
    let dir = t.path("stack");
    let o = bty_web(&["init", "--dry-run", "--host-addr", "192.0.2.10"], &dir);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(&format!("would write {}/envvars", dir.display())));
    assert!(!dir.exists(), "a dry run creates nothing");
}

#[test]
fn deploy_without_podman_or_docker_writes_the_files_and_says_what_it_skipped() {
    let t = TestDir::new("deploy-skip");
    let dir = t.path("stack");
    let empty = t.path("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let o = bty_web_no_tools(&["deploy", "--host-addr", "192.0.2.10"], &dir, &empty);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("skipped starting"), "{out}");
    assert!(out.contains("podman"), "names what is missing: {out}");
    assert!(dir.join("compose.yaml").is_file());
}

#[test]
fn upgrade_keeps_envvars_and_rewrites_the_generated_files() {
    let t = TestDir::new("deploy-upgrade");
    let dir = t.path("stack");
    let empty = t.path("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    assert!(
        bty_web(
            &["init", "--host-addr", "192.0.2.10", "--image", "localhost/bty-web:pinned"],
            &dir
        )
        .status
        .success()
    );
    let mut env = std::fs::read_to_string(dir.join("envvars")).unwrap();
    env.push_str("BTY_SERVER_IDLE_TIMEOUT=30\n");
    std::fs::write(dir.join("envvars"), &env).unwrap();
    std::fs::write(dir.join("bty.toml"), "[server]\nport = 8080\n# operator's edit\n").unwrap();
    std::fs::write(dir.join("compose.yaml"), "stale: true\n").unwrap();
    std::fs::remove_file(dir.join("quadlet/bty-data.volume")).unwrap();
    let o = bty_web_no_tools(&["upgrade"], &dir, &empty);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "nothing could be restarted here: {out}");
    assert!(out.contains("skipped pull and restart"), "{out}");
    assert_eq!(std::fs::read_to_string(dir.join("envvars")).unwrap(), env, "envvars kept");
    assert!(std::fs::read_to_string(dir.join("bty.toml")).unwrap().contains("operator's edit"));
    let compose = std::fs::read_to_string(dir.join("compose.yaml")).unwrap();
    assert!(compose.contains("image: localhost/bty-web:pinned"), "{compose}");
    assert!(dir.join("quadlet/bty-data.volume").is_file());
    // A directory that was never initialised is not upgraded.
    let o = bty_web(&["upgrade"], &t.path("nothing-here"));
    assert!(!o.status.success());
    assert!(text(&o).contains("bty-web init"), "{}", text(&o));
}
