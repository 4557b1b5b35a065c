//! `bty-web init / deploy / upgrade` on temp dirs: the files it writes, checked by the tools that
//! will read them where this machine has them (python3's yaml, systemd-analyze, the Quadlet
//! generator), refusing to overwrite, --dry-run, and envvars surviving an upgrade. Nothing here
//! starts containers or touches /etc: deploy and upgrade run with a PATH without podman/docker,
//! or with one whose podman and systemctl are scripts that only log their arguments, and the
//! Quadlet dir is a temp dir (BTY_TEST_QUADLET_DIR, a test hook).

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

/// The image `make image` tags: the Makefile's IMAGE_TAG with this crate's version.
fn make_image_tag() -> String {
    let makefile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Makefile")).unwrap();
    let tag = makefile
        .lines()
        .find_map(|l| l.strip_prefix("IMAGE_TAG ?= "))
        .expect("IMAGE_TAG in the Makefile");
    tag.trim().replace("$(VERSION)", env!("CARGO_PKG_VERSION"))
}

#[test]
fn deploy_defaults_to_the_image_make_image_tags() {
    let tag = make_image_tag();
    assert_eq!(tag, format!("localhost/bty-web:{}", env!("CARGO_PKG_VERSION")));
    let t = TestDir::new("deploy-default-image");
    let dir = t.path("stack");
    let empty = t.path("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let o = bty_web_no_tools(&["deploy", "--host-addr", "192.0.2.10"], &dir, &empty);
    assert_eq!(o.status.code(), Some(1), "nothing to start it with here: {}", text(&o));
    let compose = std::fs::read_to_string(dir.join("compose.yaml")).unwrap();
    assert!(compose.contains(&format!("image: {tag}\n")), "{compose}");
    let unit = std::fs::read_to_string(dir.join("quadlet/bty-web.container")).unwrap();
    assert!(unit.contains(&format!("Image={tag}\n")), "{unit}");
    let env = std::fs::read_to_string(dir.join("envvars")).unwrap();
    assert!(!env.contains("BTY_IMAGE"), "the default is not pinned: {env}");
}

/// A PATH whose podman and systemctl only append their arguments to `log`; `podman image
/// exists` answers whether the image is present, `podman compose version` says it has compose.
struct FakeTools {
    bin: std::path::PathBuf,
    log: std::path::PathBuf,
    quadlet: std::path::PathBuf,
}

impl FakeTools {
    fn new(t: &TestDir, image_present: bool) -> FakeTools {
        let bin = t.path("fake-bin");
        let log = t.path("commands.log");
        let quadlet = t.path("quadlet-dir");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&quadlet).unwrap();
        let exists = if image_present { 0 } else { 1 };
        let podman = format!(
            "#!/bin/sh\necho \"podman $*\" >> '{}'\ncase \"$1 $2\" in\n\
             \"image exists\") exit {exists} ;;\nesac\nexit 0\n",
            log.display()
        );
        let systemctl = format!("#!/bin/sh\necho \"systemctl $*\" >> '{}'\n", log.display());
        for (name, script) in [("podman", podman), ("systemctl", systemctl)] {
            let p = bin.join(name);
            std::fs::write(&p, script).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        FakeTools { bin, log, quadlet }
    }

    fn run(&self, args: &[&str], dir: &Path) -> Output {
        Command::new(env!("CARGO_BIN_EXE_bty-web"))
            .args(args)
            .arg(dir)
            .env("PATH", &self.bin)
            .env("BTY_TEST_QUADLET_DIR", &self.quadlet)
            .env_remove("BTY_CONFIG_FILE")
            .env_remove("BTY_CONFIG_DIR")
            .output()
            .expect("running bty-web")
    }

    /// The commands the tools ran, without compose's version probe (how bty-web finds it).
    fn commands(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| *l != "podman compose version")
            .map(String::from)
            .collect()
    }

    /// Puts the stack's Quadlet units where a root install keeps them.
    fn install_quadlet(&self, dir: &Path) {
        for f in ["bty-web.container", "bty-tftp.container"] {
            std::fs::copy(dir.join("quadlet").join(f), self.quadlet.join(f)).unwrap();
        }
    }
}

/// The lines of `out` that name a command, in order: what a dry run says would run.
fn would_run(out: &str) -> Vec<&str> {
    out.lines().filter_map(|l| l.strip_prefix("would run: ")).collect()
}

fn init_stack(dir: &Path, image: Option<&str>) {
    let mut args = vec!["init", "--host-addr", "192.0.2.10"];
    if let Some(image) = image {
        args.extend(["--image", image]);
    }
    let o = bty_web(&args, dir);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn upgrade_dry_run_uses_the_local_image_without_pulling_and_prints_the_restart() {
    let t = TestDir::new("upgrade-dry-local");
    let dir = t.path("stack");
    init_stack(&dir, None);
    std::fs::write(dir.join("compose.yaml"), "stale: true\n").unwrap();
    let tools = FakeTools::new(&t, true);
    let o = tools.run(&["upgrade", "--dry-run"], &dir);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let image = make_image_tag();
    assert!(out.contains(&format!("checking: podman image exists {image}\n")), "{out}");
    assert!(out.contains(&format!("skipped pull: {image} is present locally")), "{out}");
    assert_eq!(would_run(&out), ["podman compose up -d --force-recreate"], "{out}");
    assert!(!out.contains(" pull "), "{out}");
    assert!(out.contains("skipped restarting bty-tftp"), "says why: {out}");
    // Only the read-only look for the image ran; nothing was written.
    assert_eq!(tools.commands(), [format!("podman image exists {image}")]);
    assert_eq!(std::fs::read_to_string(dir.join("compose.yaml")).unwrap(), "stale: true\n");
}

#[test]
fn upgrade_dry_run_with_pull_prints_the_pull_before_the_restart() {
    let t = TestDir::new("upgrade-dry-pull");
    let dir = t.path("stack");
    // A registry's name: nothing is fetched, the fake podman only logs.
    let image = "registry.invalid/bty-web:9.9.9";
    init_stack(&dir, Some(image));
    let tools = FakeTools::new(&t, true);
    let o = tools.run(&["upgrade", "--dry-run", "--pull"], &dir);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert_eq!(
        would_run(&out),
        [&format!("podman pull {image}")[..], "podman compose up -d --force-recreate"],
        "{out}"
    );
    assert_eq!(tools.commands(), [format!("podman image exists {image}")]);
    // Absent, a registry's image is pulled without being asked.
    let t2 = TestDir::new("upgrade-dry-absent");
    let tools = FakeTools::new(&t2, false);
    let o = tools.run(&["upgrade", "--dry-run"], &dir);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains(&format!("{image} is not on this machine: pulling it")), "{out}");
    assert_eq!(would_run(&out)[0], format!("podman pull {image}"), "{out}");
    // --pull is upgrade's alone.
    let o = bty_web(&["init", "--pull", "--force"], &dir);
    assert!(!o.status.success(), "{}", text(&o));
}

#[test]
fn upgrade_restarts_the_compose_stack_on_the_local_image() {
    let t = TestDir::new("upgrade-compose");
    let dir = t.path("stack");
    init_stack(&dir, None);
    std::fs::write(dir.join("compose.yaml"), "stale: true\n").unwrap();
    let tools = FakeTools::new(&t, true);
    let o = tools.run(&["upgrade"], &dir);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let image = make_image_tag();
    assert_eq!(
        tools.commands(),
        [format!("podman image exists {image}"), "podman compose up -d --force-recreate".into()],
        "{out}"
    );
    let compose = std::fs::read_to_string(dir.join("compose.yaml")).unwrap();
    assert!(compose.contains(&format!("image: {image}\n")), "rewritten before the restart");
    assert!(out.contains(&format!("restarted the stack in {} on {image}", dir.display())));
}

#[test]
fn upgrade_restarts_the_quadlet_units_on_the_local_image() {
    let t = TestDir::new("upgrade-quadlet");
    let dir = t.path("stack");
    init_stack(&dir, None);
    let tools = FakeTools::new(&t, true);
    tools.install_quadlet(&dir);
    std::fs::write(tools.quadlet.join("bty-web.container"), "[Container]\nImage=old\n").unwrap();
    let image = make_image_tag();
    let restart = "systemctl restart bty-web.service bty-tftp.service";
    // The dry run names the same commands, in the order the real run runs them.
    let o = tools.run(&["upgrade", "--dry-run"], &dir);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert_eq!(would_run(&out), ["systemctl daemon-reload", restart], "{out}");
    assert!(out.contains(&format!("would copy {}/quadlet/bty-web.container", dir.display())));
    let o = tools.run(&["upgrade"], &dir);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert_eq!(
        tools.commands(),
        [
            format!("podman image exists {image}"),
            format!("podman image exists {image}"),
            "systemctl daemon-reload".into(),
            restart.into()
        ],
        "{out}"
    );
    let unit = std::fs::read_to_string(tools.quadlet.join("bty-web.container")).unwrap();
    assert!(unit.contains(&format!("Image={image}\n")), "units copied before the restart");
}

#[test]
fn upgrade_leaves_a_removed_tftp_unit_removed_and_says_so() {
    let t = TestDir::new("upgrade-no-tftp");
    let dir = t.path("stack");
    init_stack(&dir, None);
    let tools = FakeTools::new(&t, true);
    tools.install_quadlet(&dir);
    std::fs::remove_file(tools.quadlet.join("bty-tftp.container")).unwrap();
    for args in [&["upgrade", "--dry-run"][..], &["upgrade"]] {
        let o = tools.run(args, &dir);
        let out = text(&o);
        assert!(o.status.success(), "{out}");
        assert!(out.contains("skipped installing and restarting bty-tftp"), "{out}");
        assert!(!out.contains("bty-tftp.service"), "{out}");
    }
    assert!(!tools.quadlet.join("bty-tftp.container").exists());
    assert_eq!(tools.commands().last().unwrap(), "systemctl restart bty-web.service");
}

#[test]
fn upgrade_refuses_an_absent_localhost_image_and_changes_nothing() {
    let t = TestDir::new("upgrade-absent");
    let dir = t.path("stack");
    init_stack(&dir, None);
    std::fs::write(dir.join("compose.yaml"), "stale: true\n").unwrap();
    let tools = FakeTools::new(&t, false);
    let image = make_image_tag();
    for args in [&["upgrade"][..], &["upgrade", "--dry-run"], &["upgrade", "--pull"]] {
        let o = tools.run(args, &dir);
        let out = text(&o);
        assert!(!o.status.success(), "{args:?}: {out}");
        assert!(out.contains(&format!("upgrading {}", dir.display())), "{out}");
        assert!(out.contains(&image) && out.contains("cannot be pulled"), "{out}");
        assert!(out.contains("podman load -i"), "says how to get it: {out}");
        assert!(!out.contains("would run") && !out.contains("running:"), "{out}");
    }
    assert!(tools.commands().iter().all(|c| c.starts_with("podman image exists")));
    assert_eq!(std::fs::read_to_string(dir.join("compose.yaml")).unwrap(), "stale: true\n");
    // Present, a localhost/ image still cannot be pulled on request.
    let t2 = TestDir::new("upgrade-pull-local");
    let tools = FakeTools::new(&t2, true);
    let o = tools.run(&["upgrade", "--pull"], &dir);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("--pull cannot pull"), "{}", text(&o));
    assert!(tools.commands().iter().all(|c| c.starts_with("podman image exists")));
}
