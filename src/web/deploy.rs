//! `bty-web init / deploy / upgrade DIR`: writes the container stack of `deploy/` (compose file,
//! Quadlet units, envvars with generated secrets, bty.toml) into DIR, and starts or restarts it
//! with the tools this machine has: Quadlet and systemctl as root, podman or docker compose
//! for a user. Every file written and every command run is printed; `--dry-run` only prints.

use std::fs;
use std::io::Write;
use std::net::{IpAddr, UdpSocket};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use lexopt::prelude::*;

use crate::error::{Context, Error, Result};

/// Which of the three commands runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Action {
    Init,
    Deploy,
    Upgrade,
}

/// The stack's files from `deploy/`, rendered with `@IMAGE@`, `@DIR@` and `@VERSION@`.
const TEMPLATES: &[(&str, &str)] = &[
    ("compose.yaml", include_str!("../../deploy/compose.yaml")),
    ("quadlet/bty-web.container", include_str!("../../deploy/quadlet/bty-web.container")),
    ("quadlet/bty-tftp.container", include_str!("../../deploy/quadlet/bty-tftp.container")),
    ("quadlet/bty-data.volume", include_str!("../../deploy/quadlet/bty-data.volume")),
    ("quadlet/bty-cache.volume", include_str!("../../deploy/quadlet/bty-cache.volume")),
];

/// Where root's Quadlet units go (podman-systemd.unit(5)).
const QUADLET_DIR: &str = "/etc/containers/systemd";

const ENVVARS: &str = "envvars";
const TOML: &str = "bty.toml";

const BTY_TOML: &str = "\
# bty-web settings of this stack, mounted at /etc/bty/bty.toml (BTY_CONFIG_FILE). Written once by
# `bty-web init` and kept by `bty-web upgrade`; the BTY_* variables of envvars override it.
# `podman exec bty-web bty-web config` lists every key with its value and source.
[server]
host = \"0.0.0.0\"
port = 8080
";

/// The image a stack runs unless `--image` or envvars' BTY_IMAGE names another: the name and
/// tag `make image` gives its archives (the Makefile's IMAGE_TAG), so `podman load -i` of what
/// this version built is what deploy and upgrade find.
pub fn default_image() -> String {
    format!("localhost/bty-web:{}", crate::VERSION)
}

/// An image under `localhost/` names one built or loaded on this machine: no registry serves
/// it, so pulling it can only fail.
fn local_only(image: &str) -> bool {
    image.starts_with("localhost/")
}

struct Args {
    dir: PathBuf,
    host_addr: Option<IpAddr>,
    image: Option<String>,
    force: bool,
    dry_run: bool,
    pull: bool,
}

/// Runs `bty-web init|deploy|upgrade` with the rest of the command line.
pub fn command(action: Action, parser: &mut lexopt::Parser) -> Result<ExitCode> {
    let mut dir = None;
    let mut a = Args {
        dir: PathBuf::new(),
        host_addr: None,
        image: None,
        force: false,
        dry_run: false,
        pull: false,
    };
    while let Some(arg) = parser.next()? {
        match arg {
            Long("host-addr") => {
                let v = parser.value()?.string()?;
                a.host_addr = Some(v.parse().map_err(|_| {
                    Error::msg(format!("invalid --host-addr {v:?}: expected an IP address"))
                })?);
            }
            Long("image") => a.image = Some(parser.value()?.string()?),
            Long("force") => a.force = true,
            Long("dry-run") => a.dry_run = true,
            Long("pull") if action == Action::Upgrade => a.pull = true,
            Value(v) if dir.is_none() => dir = Some(PathBuf::from(v)),
            _ => return Err(arg.unexpected().into()),
        }
    }
    let dir = dir.ok_or_else(|| Error::msg("missing DIR: the directory to write the stack to"))?;
    a.dir = std::path::absolute(&dir)
        .with_context(|| format!("resolving the stack directory {}", dir.display()))?;
    match action {
        Action::Init => Ok(match init(&a, false)? {
            Some(_) => ExitCode::SUCCESS,
            None => ExitCode::from(1),
        }),
        Action::Deploy => match init(&a, true)? {
            Some(_) => start(&a),
            None => Ok(ExitCode::from(1)),
        },
        Action::Upgrade => upgrade(&a),
    }
}

/// What a stack is made of: the values its files are rendered from.
struct Stack {
    image: String,
    host_addr: IpAddr,
}

/// Writes a new stack into the directory; refuses (None) to replace one without --force.
fn init(a: &Args, started_next: bool) -> Result<Option<Stack>> {
    let existing: Vec<String> = [ENVVARS, TOML]
        .into_iter()
        .chain(TEMPLATES.iter().map(|t| t.0))
        .filter(|f| a.dir.join(f).exists())
        .map(String::from)
        .collect();
    if !existing.is_empty() && !a.force {
        crate::error!(
            "{} already holds a bty stack ({}): `bty-web upgrade {}` regenerates it and keeps \
             its secrets; --force writes a new one with new secrets",
            a.dir.display(),
            existing.join(", "),
            a.dir.display()
        );
        return Ok(None);
    }
    let host_addr = match a.host_addr {
        Some(ip) => ip,
        None => detect_host_addr().unwrap_or_else(|| {
            crate::warn!("no default route to detect the host address from: using 127.0.0.1 (pass --host-addr)");
            IpAddr::from([127, 0, 0, 1])
        }),
    };
    let stack = Stack { image: a.image.clone().unwrap_or_else(default_image), host_addr };
    let mut envvars = format!(
        "# Settings and secrets of the bty stack in this directory, written by `bty-web init`.\n\
         # `bty-web upgrade` keeps this file; the containers get its BTY_* variables.\n\
         HOST_ADDR={host_addr}\n\
         BTY_ADMIN_PASSWORD={}\n",
        random_secret()?
    );
    if let Some(image) = &a.image {
        envvars.push_str(&format!("BTY_IMAGE={image}\n"));
    }
    let mut files = render(&stack, &a.dir);
    files.push((ENVVARS.into(), envvars, 0o600));
    files.push((TOML.into(), BTY_TOML.into(), 0o644));
    write_files(&a.dir, &files, a.dry_run)?;
    print_next_steps(a, &stack, started_next);
    Ok(Some(stack))
}

/// The rendered templates: (path relative to the stack dir, contents, mode).
fn render(stack: &Stack, dir: &Path) -> Vec<(String, String, u32)> {
    TEMPLATES
        .iter()
        .map(|(name, text)| {
            let text = text
                .replace("@IMAGE@", &stack.image)
                .replace("@DIR@", &dir.display().to_string())
                .replace("@VERSION@", crate::VERSION);
            (name.to_string(), text, 0o644)
        })
        .collect()
}

fn write_files(dir: &Path, files: &[(String, String, u32)], dry_run: bool) -> Result<()> {
    let verb = if dry_run { "would write" } else { "wrote" };
    for (name, text, mode) in files {
        let path = dir.join(name);
        if !dry_run {
            write_atomic(&path, text.as_bytes(), *mode)?;
        }
        println!("{verb} {} (mode {mode:o})", path.display());
    }
    Ok(())
}

/// Replaces `path` with `data` through a temporary file, so a crash never leaves half a file
/// and a secret file is never readable by others, not even for a moment.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming {} into place", tmp.display()))?;
    Ok(())
}

fn print_next_steps(a: &Args, stack: &Stack, started_next: bool) {
    let d = a.dir.display();
    println!(
        "bty-web will answer on http://{}:8080/ui (admin password in {d}/{ENVVARS})",
        stack.host_addr
    );
    println!(
        "DHCP for PXE: UEFI HTTP boot file http://{0}:8080/boot/ipxe.efi; TFTP next-server {0} \
         with undionly.kpxe (BIOS) or ipxe.efi (UEFI), and autoexec.ipxe for user class iPXE",
        stack.host_addr
    );
    if a.dry_run {
        println!("dry run: nothing was written");
    }
    if started_next {
        return;
    }
    if crate::sys::euid() == 0 {
        println!(
            "to start it as systemd services: cp {d}/quadlet/* {QUADLET_DIR}/ && systemctl \
             daemon-reload && systemctl start bty-web bty-tftp (or `bty-web deploy {d}`)"
        );
    } else {
        println!("to start it: cd {d} && podman compose up -d (or docker compose up -d)");
    }
}

/// Starts a freshly written stack with the tools of this machine.
fn start(a: &Args) -> Result<ExitCode> {
    if crate::sys::euid() == 0 {
        if let Some(why) = quadlet_missing() {
            println!(
                "skipped starting: a root install runs Quadlet units, but {why}; the files are \
                 in {} (a compose tool can run them: cd there && podman compose up -d)",
                a.dir.display()
            );
            return Ok(ExitCode::from(1));
        }
        install_quadlet(a, true)?;
        run(a, &["systemctl", "daemon-reload"])?;
        run(a, &["systemctl", "start", "bty-web.service", "bty-tftp.service"])?;
        println!("started bty-web and bty-tftp as systemd services (they start again at boot)");
        Ok(ExitCode::SUCCESS)
    } else {
        let Some(compose) = compose_command() else {
            println!(
                "skipped starting: no compose tool (podman compose, docker compose or \
                 podman-compose) is installed; the files are in {}",
                a.dir.display()
            );
            return Ok(ExitCode::from(1));
        };
        let mut cmd = compose.clone();
        cmd.extend(["up", "-d"]);
        run(a, &cmd)?;
        println!(
            "skipped: TFTP (a user cannot publish udp/69; run as root, or `{} --profile tftp \
             up -d` where ports below 1024 are allowed) and autostart (no systemd units for a \
             user install)",
            compose.join(" ")
        );
        Ok(ExitCode::SUCCESS)
    }
}

/// Where root's Quadlet units are: /etc/containers/systemd, or `BTY_TEST_QUADLET_DIR`, a test
/// hook that only a build with the cargo feature `test-hooks` reads (no shipped build enables
/// it), so that tests run the Quadlet path without writing /etc.
fn quadlet_dir() -> PathBuf {
    #[cfg(feature = "test-hooks")]
    if let Some(dir) = std::env::var_os("BTY_TEST_QUADLET_DIR") {
        return PathBuf::from(dir);
    }
    PathBuf::from(QUADLET_DIR)
}

/// Whether this is a root install, whose units are Quadlet's. The test hook of `quadlet_dir`
/// stands for one too, so those tests behave the same whoever runs them.
fn root_install() -> bool {
    #[cfg(feature = "test-hooks")]
    if std::env::var_os("BTY_TEST_QUADLET_DIR").is_some() {
        return true;
    }
    crate::sys::euid() == 0
}

/// What runs an installed stack, and so what restarts it.
enum Runner {
    /// Root's Quadlet units, run by systemd.
    Quadlet,
    /// A compose tool's argv prefix, for a user's stack (or root's without Quadlet units).
    Compose(Vec<&'static str>),
}

impl Runner {
    /// The container CLI whose image store the stack's containers come from.
    fn image_tool(&self) -> &'static str {
        match self {
            Runner::Compose(c) if c[0] == "docker" => "docker",
            _ => "podman",
        }
    }
}

/// How the stack in this machine is run, or why it cannot be restarted from here.
fn upgrade_runner() -> std::result::Result<Runner, String> {
    let qdir = quadlet_dir();
    if root_install() && qdir.join("bty-web.container").exists() {
        if find_program("podman").is_none() {
            return Err(format!(
                "the stack runs from Quadlet units in {} but podman is not installed",
                qdir.display()
            ));
        }
        return Ok(Runner::Quadlet);
    }
    compose_command().map(Runner::Compose).ok_or_else(|| {
        format!(
            "no Quadlet units in {} and no compose tool (podman compose, docker compose or \
             podman-compose) is installed",
            qdir.display()
        )
    })
}

/// Whether `image` is in `tool`'s local store. Read-only, so it runs in a dry run too: what
/// the dry run prints next depends on it.
fn image_present(tool: &str, image: &str) -> Result<bool> {
    let argv: &[&str] = if tool == "docker" {
        &["docker", "image", "inspect", "--format", "{{.Id}}", image]
    } else {
        &["podman", "image", "exists", image]
    };
    println!("checking: {}", argv.join(" "));
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("checking whether {image} is present: running {tool}"))?;
    if out.status.success() {
        return Ok(true);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    // podman says "absent" with exit status 1 and errors with 125; docker says absent only in
    // words, and anything else (a daemon not running) must not pass for a missing image.
    let absent = if tool == "docker" {
        stderr.to_ascii_lowercase().contains("no such image")
    } else {
        out.status.code() == Some(1)
    };
    crate::ensure!(
        absent,
        "checking whether {image} is present: {} failed ({}): {}",
        argv.join(" "),
        out.status,
        stderr.trim()
    );
    Ok(false)
}

/// Whether upgrade pulls `image`: only when asked (--pull) or when it is absent. Refuses an
/// image that cannot be pulled and is needed from a registry, before anything is changed.
fn decide_pull(a: &Args, tool: &str, image: &str) -> Result<bool> {
    let present = image_present(tool, image)?;
    let archive = match image.strip_prefix("localhost/bty-web:") {
        Some(tag) => format!("target/image/bty-web-{tag}.oci.tar"),
        None => "target/image/bty-web-VERSION.oci.tar".into(),
    };
    let load = format!(
        "load it first (`make image` writes {archive}; `{tool} load -i` it on this machine) or \
         pass --image with one a registry serves"
    );
    if local_only(image) && (a.pull || !present) {
        let what = if present {
            format!("--pull cannot pull image {image}")
        } else {
            format!("image {image} is not on this machine and cannot be pulled")
        };
        crate::bail!(
            "upgrading {}: {what}: a localhost/ name is an image built or loaded here, which no \
             registry serves; {load}. Nothing was changed",
            a.dir.display()
        );
    }
    match (present, a.pull) {
        (true, false) => {
            println!("skipped pull: {image} is present locally (--pull fetches it again)");
            Ok(false)
        }
        (true, true) => {
            println!("{image} is present locally; pulling it again as --pull asks");
            Ok(true)
        }
        (false, _) => {
            println!("{image} is not on this machine: pulling it");
            Ok(true)
        }
    }
}

/// Rewrites the generated files for this version, keeping envvars, bty.toml and the data
/// volume, then restarts whatever runs the stack on the image: the local one, pulled only when
/// absent or asked for with --pull.
fn upgrade(a: &Args) -> Result<ExitCode> {
    let env_path = a.dir.join(ENVVARS);
    let env = read_envvars(&env_path).with_context(|| {
        format!("reading {} (is this a stack `bty-web init` wrote?)", env_path.display())
    })?;
    let host_addr = a
        .host_addr
        .or_else(|| env.iter().find(|(k, _)| k == "HOST_ADDR").and_then(|(_, v)| v.parse().ok()))
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let image = a
        .image
        .clone()
        .or_else(|| env.iter().find(|(k, _)| k == "BTY_IMAGE").map(|(_, v)| v.clone()))
        .unwrap_or_else(default_image);
    let stack = Stack { image: image.clone(), host_addr };
    let mut files = render(&stack, &a.dir);
    if !a.dir.join(TOML).exists() {
        files.push((TOML.into(), BTY_TOML.into(), 0o644));
    }
    let runner = match upgrade_runner() {
        Ok(r) => r,
        Err(why) => {
            // The files are still worth regenerating: the operator can start them by hand.
            write_files(&a.dir, &files, a.dry_run)?;
            println!("kept {} and the bty-data and bty-cache volumes", env_path.display());
            println!("skipped pull and restart: {why}");
            return Ok(ExitCode::from(1));
        }
    };
    // The image first: a pull that fails or an image that cannot be had leaves the running
    // stack and its files as they were.
    let tool = runner.image_tool();
    if decide_pull(a, tool, &image)? {
        run(a, &[tool, "pull", &image])?;
    }
    write_files(&a.dir, &files, a.dry_run)?;
    println!("kept {} and the bty-data and bty-cache volumes", env_path.display());
    match runner {
        Runner::Quadlet => {
            // Decided before the copy, so the dry run and the real run restart the same units
            // and a TFTP unit the operator removed stays removed.
            let tftp = quadlet_dir().join("bty-tftp.container");
            let with_tftp = tftp.exists();
            install_quadlet(a, with_tftp)?;
            run(a, &["systemctl", "daemon-reload"])?;
            let mut units = vec!["systemctl", "restart", "bty-web.service"];
            if with_tftp {
                units.push("bty-tftp.service");
            } else {
                println!(
                    "skipped installing and restarting bty-tftp: {} was not installed",
                    tftp.display()
                );
            }
            run(a, &units)?;
        }
        Runner::Compose(compose) => {
            // Recreated even when compose.yaml did not change: a new build loaded under the
            // same tag must replace the running container, and podman-compose only compares
            // the file.
            let mut cmd = compose.clone();
            cmd.extend(["up", "-d", "--force-recreate"]);
            run(a, &cmd)?;
            println!(
                "skipped restarting bty-tftp: it is in the tftp profile, which `up` leaves out; \
                 where it runs, `{} --profile tftp up -d --force-recreate` restarts it",
                compose.join(" ")
            );
        }
    }
    let verb = if a.dry_run { "would restart" } else { "restarted" };
    println!("{verb} the stack in {} on {image}", a.dir.display());
    Ok(ExitCode::SUCCESS)
}

/// Copies the stack's Quadlet units, bty-tftp's only `with_tftp`, to the Quadlet dir.
fn install_quadlet(a: &Args, with_tftp: bool) -> Result<()> {
    let units = TEMPLATES
        .iter()
        .filter(|t| t.0.starts_with("quadlet/"))
        .filter(|t| with_tftp || t.0 != "quadlet/bty-tftp.container");
    for (name, _) in units {
        let src = a.dir.join(name);
        let dest = quadlet_dir().join(name.trim_start_matches("quadlet/"));
        println!(
            "{} {} -> {}",
            if a.dry_run { "would copy" } else { "copying" },
            src.display(),
            dest.display()
        );
        if !a.dry_run {
            let data = fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
            write_atomic(&dest, &data, 0o644)?;
        }
    }
    Ok(())
}

/// Runs a command in the stack directory, printing it first; under --dry-run only prints it.
fn run(a: &Args, argv: &[&str]) -> Result<()> {
    println!("{} {}", if a.dry_run { "would run:" } else { "running:" }, argv.join(" "));
    if a.dry_run {
        return Ok(());
    }
    let status = Command::new(argv[0])
        .args(&argv[1..])
        .current_dir(&a.dir)
        .status()
        .with_context(|| format!("running {}", argv.join(" ")))?;
    crate::ensure!(status.success(), "{} failed ({status})", argv.join(" "));
    Ok(())
}

/// A compose command this machine has: `podman compose` (podman 4.7+), `docker compose` or
/// the older `podman-compose`.
fn compose_command() -> Option<Vec<&'static str>> {
    for argv in [["podman", "compose"], ["docker", "compose"]] {
        let Some(prog) = find_program(argv[0]) else { continue };
        // The CLI may be there without its compose subcommand (podman before 4.7, docker
        // without the plugin).
        let ok = Command::new(prog)
            .args([argv[1], "version"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(argv.to_vec());
        }
    }
    find_program("podman-compose").map(|_| vec!["podman-compose"])
}

/// Why this machine cannot run Quadlet units, if it cannot.
fn quadlet_missing() -> Option<&'static str> {
    if find_program("podman").is_none() {
        return Some("podman is not installed");
    }
    let generator = [
        "/usr/lib/systemd/system-generators/podman-system-generator",
        "/usr/libexec/podman/quadlet",
    ];
    if !generator.iter().any(|g| Path::new(g).exists()) {
        return Some("this podman has no Quadlet generator (it came with podman 4.4)");
    }
    if find_program("systemctl").is_none() {
        return Some("systemctl is not installed");
    }
    None
}

/// A program on PATH.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// The address of the interface that the default route leaves from: what lab machines reach.
pub(crate) fn detect_host_addr() -> Option<IpAddr> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    // connect() on UDP only picks the route and the source address; nothing is sent.
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// 128 random bits as hex: safe in env files, YAML and shell without quoting.
fn random_secret() -> Result<String> {
    let mut bytes = [0u8; 16];
    crate::sys::random_bytes(&mut bytes).context("drawing random bytes for the admin password")?;
    Ok(crate::hex::encode(&bytes))
}

/// `KEY=VALUE` lines of an envvars file, comments and blank lines skipped.
fn read_envvars(path: &Path) -> Result<Vec<(String, String)>> {
    let text = fs::read_to_string(path)?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_placeholder() {
        let stack =
            Stack { image: "localhost/bty-web:x".into(), host_addr: [192, 0, 2, 10].into() };
        for (name, text, _) in render(&stack, Path::new("/opt/bty")) {
            assert!(!text.contains('@'), "{name} keeps a placeholder:\n{text}");
            assert!(text.contains("localhost/bty-web:x") || name.ends_with(".volume"), "{name}");
        }
    }

    #[test]
    fn the_default_image_is_local_and_of_this_version() {
        assert_eq!(default_image(), format!("localhost/bty-web:{}", crate::VERSION));
        assert!(local_only(&default_image()));
        assert!(!local_only("ghcr.io/safl/bty-web:1"));
        // Only the registry part counts: a repository path mentioning localhost is pullable.
        assert!(!local_only("registry.example/localhost/bty-web:1"));
    }

    #[test]
    fn reads_envvars_lines() {
        let d = std::env::temp_dir().join(format!("bty-envvars-{}", std::process::id()));
        fs::write(&d, "# c\n\nHOST_ADDR=192.0.2.1\nBTY_ADMIN_PASSWORD = a=b\nnonsense\n").unwrap();
        let env = read_envvars(&d).unwrap();
        let _ = fs::remove_file(&d);
        assert_eq!(
            env,
            vec![
                ("HOST_ADDR".into(), "192.0.2.1".into()),
                ("BTY_ADMIN_PASSWORD".into(), "a=b".into())
            ]
        );
    }
}
