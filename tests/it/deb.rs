//! The Debian packages of `make deb` (deploy/deb.sh): what each of the four holds (files,
//! conffiles, architecture, dependencies, the binary's ELF machine), lintian's verdict, and the
//! amd64 pair installed with dpkg into a throwaway root (its own dpkg database, the maintainer
//! scripts run chrootless with DPKG_ROOT, so the machine's dpkg, users and units are untouched):
//! the user, directories, password and enabled unit the postinst makes, then bty-web started
//! from the installed files as the package's user, answering /healthz and taking the generated
//! password; and a purge that removes what it should and keeps the lab's data.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::util::{self, Server, TestDir};

const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "-1");

fn out_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("build/deb")
}

fn deb(pkg: &str, arch: &str) -> PathBuf {
    let p = out_dir().join(format!("{pkg}_{VERSION}_{arch}.deb"));
    assert!(p.is_file(), "{} is missing: run `make deb` first", p.display());
    p
}

/// Runs `cmd`; its stdout, or a failure naming `what` with both outputs.
fn run(cmd: &mut Command, what: &str) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run it: {e}"));
    let text =
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{what} failed ({}):\n{text}", o.status);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn field(deb: &Path, name: &str) -> String {
    run(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name), &format!("dpkg-deb -f {name}"))
        .trim()
        .to_string()
}

/// The regular files and symlinks of the package, without the leading `./`.
fn files(deb: &Path) -> BTreeSet<String> {
    run(Command::new("dpkg-deb").arg("-c").arg(deb), "dpkg-deb -c")
        .lines()
        .filter(|l| !l.starts_with('d'))
        .map(|l| l.split_whitespace().nth(5).expect("a dpkg-deb -c line").trim_start_matches("./"))
        .map(String::from)
        .collect()
}

#[test]
fn packages_hold_the_binaries_unit_and_conffile() {
    for (arch, machine) in [("amd64", 62u16), ("arm64", 183)] {
        for pkg in ["bty", "bty-web"] {
            let d = deb(pkg, arch);
            let name = d.file_name().unwrap().to_string_lossy().into_owned();
            assert_eq!(field(&d, "Package"), pkg, "{name}: Package");
            assert_eq!(field(&d, "Version"), VERSION, "{name}: Version");
            assert_eq!(field(&d, "Architecture"), arch, "{name}: Architecture");
            let mut want: BTreeSet<String> = [
                format!("usr/bin/{pkg}"),
                format!("usr/share/doc/{pkg}/copyright"),
                format!("usr/share/doc/{pkg}/changelog.Debian.gz"),
                format!("usr/share/lintian/overrides/{pkg}"),
            ]
            .into();
            if pkg == "bty" {
                want.insert("usr/share/man/man1/bty.1.gz".into());
                assert_eq!(field(&d, "Depends"), "", "{name}: the static bty needs nothing");
            } else {
                want.extend(
                    [
                        "lib/systemd/system/bty-web.service",
                        "usr/lib/sysusers.d/bty-web.conf",
                        "usr/lib/tmpfiles.d/bty-web.conf",
                        "etc/bty/bty.toml",
                        "usr/share/man/man8/bty-web.8.gz",
                    ]
                    .map(String::from),
                );
                let depends = field(&d, "Depends");
                assert!(depends.starts_with("systemd |"), "{name}: Depends {depends:?}");
                let conffiles = run(
                    Command::new("dpkg-deb").arg("-I").arg(&d).arg("conffiles"),
                    &format!("dpkg-deb -I {name} conffiles"),
                );
                assert_eq!(conffiles, "/etc/bty/bty.toml\n", "{name}: conffiles");
                for script in ["postinst", "prerm", "postrm"] {
                    run(
                        Command::new("dpkg-deb").arg("-I").arg(&d).arg(script),
                        &format!("{name}: its {script}"),
                    );
                }
            }
            assert_eq!(files(&d), want, "{name}: the files it installs");

            // The binary is the static build of this architecture.
            let t = TestDir::new(&format!("deb-x-{pkg}-{arch}"));
            run(
                Command::new("dpkg-deb").arg("-x").arg(&d).arg(&t.0),
                &format!("dpkg-deb -x {name}"),
            );
            let elf = std::fs::read(t.0.join("usr/bin").join(pkg)).unwrap();
            assert_eq!(&elf[..4], b"\x7fELF", "{name}: usr/bin/{pkg} is no ELF file");
            assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), machine, "{name}: ELF machine");
            let meta = std::fs::metadata(t.0.join("usr/bin").join(pkg)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o7777, 0o755, "{name}: usr/bin/{pkg} mode");
        }
    }
    run(
        Command::new("sha256sum").args(["-c", "--quiet", "SHA256SUMS"]).current_dir(out_dir()),
        "sha256sum -c build/deb/SHA256SUMS",
    );
}

#[test]
fn lintian_reports_no_errors_or_warnings() {
    let lintian = util::which("lintian").expect("lintian (make deps installs it)");
    let debs: Vec<PathBuf> =
        ["amd64", "arm64"].iter().flat_map(|a| [deb("bty", a), deb("bty-web", a)]).collect();
    let o = Command::new(lintian)
        .args(["--fail-on", "error,warning", "--display-info"])
        .args(&debs)
        .output()
        .expect("running lintian");
    let out =
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let bad: Vec<&str> = out
        .lines()
        .filter(|l| {
            l.starts_with("E: ")
                || l.starts_with("W: ")
                || l.contains("unused-override")
                || l.contains("mismatched-override")
        })
        .collect();
    assert!(
        o.status.success() && bad.is_empty(),
        "lintian on build/deb ({}): {bad:?}\n{out}",
        o.status
    );
}

/// `dpkg --root` with its own database; the maintainer scripts run on this machine with
/// DPKG_ROOT set (the root has no shell to chroot into), so everything they do lands in it.
fn dpkg(root: &Path, args: &[&str], debs: &[PathBuf]) -> String {
    let mut c = Command::new("dpkg");
    c.arg(format!("--root={}", root.display()))
        .args([
            "--force-not-root",
            "--force-script-chrootless",
            "--force-depends",
            "--log=/dev/null",
        ])
        .args(args)
        .args(debs);
    run(&mut c, &format!("dpkg --root {} {}", root.display(), args.join(" ")))
}

#[test]
fn installed_into_a_throwaway_root_bty_web_serves_healthz() {
    let (web_deb, bty_deb) = (deb("bty-web", "amd64"), deb("bty", "amd64"));
    let t = TestDir::new("deb-root");
    let root = t.path("root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    let log = dpkg(&root, &["-i"], &[web_deb, bty_deb]);
    for pkg in ["bty", "bty-web"] {
        let status = run(
            Command::new("dpkg-query")
                .arg(format!("--admindir={}", root.join("var/lib/dpkg").display()))
                .args(["-W", "-f", "${Status}", pkg]),
            &format!("dpkg-query {pkg} in the root"),
        );
        assert_eq!(status, "install ok installed", "{pkg} in the root:\n{log}");
    }

    // The postinst: the user `bty` (sysusers.d), its directories (tmpfiles.d), the password, the
    // enabled unit.
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).expect("the root's etc/passwd");
    let entry: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with("bty:"))
        .unwrap_or_else(|| panic!("no user bty in the root's etc/passwd:\n{passwd}\n{log}"))
        .split(':')
        .collect();
    let (uid, gid): (u32, u32) = (entry[2].parse().unwrap(), entry[3].parse().unwrap());
    assert_eq!(entry[5], "/var/lib/bty", "bty's home: {entry:?}");
    for (dir, mode) in
        [("var/lib/bty", 0o750), ("var/lib/bty/boot", 0o755), ("var/cache/bty", 0o750)]
    {
        let m = std::fs::metadata(root.join(dir)).unwrap_or_else(|e| panic!("{dir}: {e}\n{log}"));
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (uid, gid, mode),
            "owner and mode of {dir}"
        );
    }
    let env_file = root.join("etc/bty/envvars");
    let m = std::fs::metadata(&env_file).unwrap_or_else(|e| panic!("etc/bty/envvars: {e}\n{log}"));
    assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o600), "etc/bty/envvars: owner root, mode 0600");
    let env: Vec<(String, String)> = std::fs::read_to_string(&env_file)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_once('=').expect("KEY=VALUE in envvars"))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let password = env
        .iter()
        .find(|(k, _)| k == "BTY_ADMIN_PASSWORD")
        .map(|(_, v)| v.clone())
        .expect("BTY_ADMIN_PASSWORD in etc/bty/envvars");
    assert!(password.len() >= 20, "a generated password of 24 characters, not {password:?}");
    let wants = root.join("etc/systemd/system/multi-user.target.wants/bty-web.service");
    assert_eq!(
        std::fs::read_link(&wants)
            .unwrap_or_else(|e| panic!("the unit is not enabled: {e}\n{log}")),
        Path::new("/lib/systemd/system/bty-web.service")
    );

    // The installed unit, as systemd reads it, with ExecStart pointed into the root.
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/bty-web.service")).unwrap();
    let exec: Vec<&str> = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart in the installed unit")
        .split_whitespace()
        .collect();
    assert_eq!(exec[0], "/usr/bin/bty-web", "the unit's ExecStart: {exec:?}");
    let reroot =
        |v: &str| if v.starts_with('/') { format!("{}{v}", root.display()) } else { v.into() };
    if let Some(analyze) = util::which("systemd-analyze") {
        let copy = t.path("bty-web.service");
        std::fs::write(&copy, unit.replace("/usr/bin/bty-web", &reroot("/usr/bin/bty-web")))
            .unwrap();
        let out = run(
            Command::new(analyze).args(["verify", "--man=no"]).arg(&copy),
            "systemd-analyze verify of the installed unit",
        );
        assert!(!out.contains("bty-web.service:"), "systemd-analyze complains:\n{out}");
    }
    let version =
        run(Command::new(reroot("/usr/bin/bty")).arg("--version"), "the installed bty --version");
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "bty --version: {version}");

    // bty-web as the unit starts it: the unit's user, ExecStart's arguments, its Environment=
    // and EnvironmentFile, the conffile as its bty.toml; all paths inside the root, 127.0.0.1 on
    // a free port, and TFTP off (port 69 needs the unit's CAP_NET_BIND_SERVICE).
    let stderr = std::fs::File::create(t.path("bty-web.log")).unwrap();
    let mut cmd = Command::new(reroot(exec[0]));
    cmd.args(exec[1..].iter().map(|a| reroot(a)))
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("BTY_CONFIG_DIR")
        .env_remove("BTY_LOG")
        .envs(
            unit.lines()
                .filter_map(|l| l.strip_prefix("Environment="))
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), reroot(v))),
        )
        .envs(env.iter().cloned())
        .env("BTY_TFTP_ENABLED", "false")
        .env("BTY_CONFIG_FILE", root.join("etc/bty/bty.toml"))
        .env("BTY_BOOT_IPXE_DIR", root.join("usr/share/bty/ipxe"))
        .uid(uid)
        .gid(gid)
        .stdout(Stdio::piped())
        .stderr(stderr);
    let (child, addr) = util::spawn_web(cmd);
    let server = Server { child, addr, state: root.join("var/lib/bty") };
    let (status, head, body) = server.call("GET", "/healthz", None, "");
    let log_text = || std::fs::read_to_string(t.path("bty-web.log")).unwrap_or_default();
    assert_eq!(status, 200, "GET /healthz of the installed bty-web: {head}{body}\n{}", log_text());
    let (status, head, _) = server.call("POST", "/ui/login", None, &format!("password={password}"));
    assert_eq!(status, 303, "login with the password of etc/bty/envvars: {head}\n{}", log_text());
    let db = std::fs::metadata(root.join("var/lib/bty/state.db")).expect("state.db in var/lib/bty");
    assert_eq!(db.uid(), uid, "state.db is written by the package's user");
    server.stop_keeping_state();

    // Purge: the binaries, the conffile and the generated password go, the unit is no longer
    // enabled nor left masked; the lab's data stays.
    let log = dpkg(&root, &["--purge", "bty-web", "bty"], &[]);
    for gone in [
        "usr/bin/bty-web",
        "usr/bin/bty",
        "etc/bty/bty.toml",
        "etc/bty/envvars",
        "etc/systemd/system/bty-web.service",
        "etc/systemd/system/multi-user.target.wants/bty-web.service",
        "var/cache/bty",
    ] {
        assert!(
            root.join(gone).symlink_metadata().is_err(),
            "{gone} is left after the purge:\n{log}"
        );
    }
    assert!(root.join("var/lib/bty/state.db").is_file(), "the purge removed the lab's state.db");
}
