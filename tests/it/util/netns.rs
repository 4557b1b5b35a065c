//! A lab network made by the test itself (tests/it/lab.rs): a network namespace with a bridge
//! that has an address, one tap per guest on the bridge, and the lab's servers (bty-web with
//! its TFTP, dnsmasq as DHCP) inside it, each bound to the bridge. Nothing leaves the
//! namespace: it has no link to the host's network, and the test reaches bty-web's API only
//! through `ip netns exec` (curl inside it). Dropping the `Lab` kills every process started in
//! it and deletes the taps, the bridge and the namespace, also when the test failed.
//!
//! Needs root, iproute2 (`ip netns`, `ip tuntap`), dnsmasq and curl (`make deps`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The bridge's name inside the namespace (names are per namespace).
pub const BRIDGE: &str = "br0";
/// bty-web's HTTP port inside the namespace (its own port space: no clash with anything).
pub const HTTP_PORT: u16 = 8080;
/// The admin password of the lab's bty-web.
pub const PASSWORD: &str = "pw-for-tests";

/// One lab network; torn down on drop.
pub struct Lab {
    /// The namespace's name: unique per test (process id and a counter).
    pub ns: String,
    /// The bridge's address: bty-web, TFTP and DHCP all answer here.
    pub addr: Ipv4Addr,
    /// Logs and files kept for a person to read after a failure (target/e2e/lab/<name>).
    pub out: PathBuf,
    /// Leases, configuration and bty-web's state: removed on drop.
    pub tmp: PathBuf,
    procs: Vec<(String, Child)>,
    taps: Vec<String>,
}

/// `ip ARGS`, which must succeed.
fn ip(args: &[&str]) {
    let o = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e} (iproute2: make deps)"));
    assert!(
        o.status.success(),
        "ip {}: {} (the lab tests need root)",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr).trim()
    );
}

impl Lab {
    /// A new namespace with the bridge up at 10.77.N.1/24; `name` names its output directory.
    pub fn new(name: &str) -> Lab {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let ns = format!("bty-lab-{}-{n}", std::process::id());
        let addr = Ipv4Addr::new(10, 77, (n % 250) as u8 + 1, 1);
        let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/e2e/lab").join(name);
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).expect("creating the lab's output directory");
        let tmp = std::env::temp_dir().join(format!("bty-{ns}"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).expect("creating the lab's temp directory");
        ip(&["netns", "add", &ns]);
        // From here on a failure still removes the namespace: the Lab exists.
        let lab = Lab { ns, addr, out, tmp, procs: Vec::new(), taps: Vec::new() };
        lab.ip(&["link", "set", "lo", "up"]);
        lab.ip(&["link", "add", BRIDGE, "type", "bridge"]);
        lab.ip(&["addr", "add", &format!("{addr}/24"), "dev", BRIDGE]);
        lab.ip(&["link", "set", BRIDGE, "up"]);
        lab
    }

    /// `ip -n NS ARGS`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.ns.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// The first three octets: the lab's /24.
    pub fn net(&self) -> String {
        let o = self.addr.octets();
        format!("{}.{}.{}", o[0], o[1], o[2])
    }

    /// A command that runs `program` inside the namespace (`ip netns exec` executes it in
    /// place, so the child is the program itself and killing it kills the program).
    pub fn exec(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }

    /// A new tap on the bridge, up, for one guest's `-netdev tap,ifname=...`.
    pub fn tap(&mut self) -> String {
        let name = format!("tap{}", self.taps.len());
        self.ip(&["tuntap", "add", "dev", &name, "mode", "tap"]);
        self.taps.push(name.clone());
        self.ip(&["link", "set", &name, "master", BRIDGE]);
        self.ip(&["link", "set", &name, "up"]);
        name
    }

    /// Keeps a process of the lab, to be killed when the lab goes.
    pub fn keep(&mut self, what: &str, child: Child) {
        self.procs.push((what.to_string(), child));
    }

    /// Asserts that every process of the lab still runs (a server that died, e.g. on a bad
    /// configuration, fails the test with its log named).
    pub fn assert_running(&mut self) {
        for (what, child) in &mut self.procs {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("{what} exited ({st}); its log is in {}", self.out.display());
            }
        }
    }

    /// A file in the output directory.
    pub fn log(&self, name: &str) -> PathBuf {
        self.out.join(name)
    }

    /// Starts bty-web on the bridge address, HTTP on `HTTP_PORT` and TFTP on udp/69, serving
    /// the iPXE binaries of `ipxe` (and `env` on top); its log goes to `bty-web.log`. Returns
    /// once both listen.
    pub fn start_web(&mut self, ipxe: &Path, env: &[(&str, &str)]) {
        let state = self.tmp.join("state");
        let log = self.log("bty-web.log");
        let mut c = self.exec(env!("CARGO_BIN_EXE_bty-web"));
        c.arg("--listen")
            .arg(format!("{}:{HTTP_PORT}", self.addr))
            .arg("--state-dir")
            .arg(&state)
            .env_remove("BTY_CONFIG_FILE")
            .env_remove("BTY_CONFIG_DIR")
            .env("BTY_ADMIN_PASSWORD", PASSWORD)
            .env("BTY_TFTP_ENABLED", "true")
            .env("BTY_TFTP_LISTEN", format!("{}:69", self.addr))
            .env("BTY_BOOT_IPXE_DIR", ipxe)
            .env("BTY_PATHS_BOOT_DIR", self.tmp.join("boot"))
            .env("BTY_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("creating bty-web's log"));
        let (child, addr) = super::spawn_web(c);
        assert_eq!(addr, format!("{}:{HTTP_PORT}", self.addr), "bty-web's address line");
        // The TFTP socket is bound before the address line is printed: both answer now.
        self.keep("bty-web", child);
    }

    /// What `bty-web dhcp ARGS` prints for this lab's bty-web: the configuration the README
    /// tells a lab to give its DHCP server.
    pub fn dhcp_config(&self, args: &[&str]) -> String {
        let o = Command::new(env!("CARGO_BIN_EXE_bty-web"))
            .arg("dhcp")
            .args(args)
            .arg("--addr")
            .arg(self.addr.to_string())
            .arg("--listen")
            .arg(format!("{}:{HTTP_PORT}", self.addr))
            .arg("--state-dir")
            .arg(self.tmp.join("state"))
            .env_remove("BTY_CONFIG_FILE")
            .env_remove("BTY_CONFIG_DIR")
            .env_remove("BTY_SERVER_PUBLIC_URL")
            .output()
            .expect("running bty-web dhcp");
        assert!(
            o.status.success(),
            "bty-web dhcp {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).expect("bty-web dhcp prints text")
    }

    /// Starts dnsmasq in the namespace, DHCP only (`--port=0`), bound to the bridge, with
    /// `lines` (what `bty-web dhcp` prints, plus the lab's own lines) after the interface and
    /// the lease file. Its log is `dnsmasq-<name>.log`, its configuration `dnsmasq-<name>.conf`.
    pub fn start_dnsmasq(&mut self, name: &str, lines: &str) {
        let conf = self.log(&format!("dnsmasq-{name}.conf"));
        let leases = self.tmp.join(format!("dnsmasq-{name}.leases"));
        let text = format!(
            "# the lab's own lines\ninterface={BRIDGE}\ndhcp-leasefile={}\n{lines}",
            leases.display()
        );
        std::fs::write(&conf, text).expect("writing dnsmasq's configuration");
        let log = self.log(&format!("dnsmasq-{name}.log"));
        let mut c = self.exec("dnsmasq");
        c.args(["--no-daemon", "--port=0", "--bind-interfaces", "--log-dhcp", "--log-facility=-"])
            .arg(format!("--conf-file={}", conf.display()))
            // Not the machine's /etc/hosts or resolv.conf: there is no DNS here.
            .args(["--no-hosts", "--no-resolv"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("creating dnsmasq's log"));
        let child = c.spawn().expect("starting dnsmasq (dnsmasq-base: make deps)");
        self.keep(&format!("dnsmasq {name}"), child);
        self.wait_file(&log, "dnsmasq's start", |t| t.contains("DHCP, "));
        self.assert_running();
    }

    /// Waits (at most 10 s) until `done` holds for a file's text.
    fn wait_file(&mut self, path: &Path, what: &str, done: impl Fn(&str) -> bool) {
        let t0 = Instant::now();
        loop {
            let text = super::guest::read_lossy(path);
            if done(&text) {
                return;
            }
            self.assert_running();
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no {what} in {} within 10 s:\n{}",
                path.display(),
                super::guest::tail(&text)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Asks the lab's DHCP servers for an address as PXE firmware that is not iPXE would: busybox
    /// udhcpc on a veth of the bridge, with `vendor` as its vendor class (option 60) and
    /// `extra` options (`-x OPT:HEX`), and no user class. Returns the variables udhcpc hands its
    /// script for the lease (`siaddr`, `boot_file`, `ip`, ...), as `NAME=VALUE` lines.
    pub fn dhcp_as_firmware(&mut self, vendor: &str, extra: &[&str]) -> String {
        let n = self.taps.len();
        let (dev, peer) = (format!("fw{n}"), format!("fw{n}br"));
        self.ip(&["link", "add", &dev, "type", "veth", "peer", "name", &peer]);
        self.taps.push(dev.clone());
        self.ip(&["link", "set", &peer, "master", BRIDGE]);
        self.ip(&["link", "set", &peer, "up"]);
        self.ip(&["link", "set", &dev, "up"]);
        let out = self.tmp.join(format!("{dev}.lease"));
        let script = self.tmp.join(format!("{dev}.sh"));
        std::fs::write(
            &script,
            format!("#!/bin/sh\n[ \"$1\" = bound ] && env >{}\nexit 0\n", out.display()),
        )
        .expect("writing udhcpc's script");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .expect("making udhcpc's script executable");
        let mut c = self.exec("busybox");
        // Three tries 2 s apart, then give up (-n): bounded.
        c.args(["udhcpc", "-f", "-q", "-n", "-t", "3", "-T", "2", "-i", &dev, "-V", vendor, "-s"])
            .arg(&script);
        for x in extra {
            c.args(["-x", x]);
        }
        let o = c.output().expect("running busybox udhcpc (busybox-static: make deps)");
        let lease = super::guest::read_lossy(&out);
        assert!(
            o.status.success() && !lease.is_empty(),
            "udhcpc -V {vendor} got no lease: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        lease
    }

    /// Fetches `name` from bty-web's TFTP server with tftp-hpa, as firmware would; its bytes.
    pub fn tftp_get(&self, name: &str) -> Vec<u8> {
        let dest = self.tmp.join(format!("tftp-{name}"));
        let o = self
            .exec("tftp")
            .args(["-m", "binary", &self.addr.to_string(), "-c", "get", name])
            .arg(&dest)
            .output()
            .expect("running tftp (tftp-hpa: make deps)");
        assert!(o.status.success(), "tftp get {name}: {}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(&dest).unwrap_or_else(|e| panic!("tftp get {name}: {e}"))
    }

    /// Calls bty-web's API from inside the namespace with curl, logged in; (status, body).
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let jar = self.tmp.join("cookies");
        let base = format!("http://{}:{HTTP_PORT}", self.addr);
        if !jar.exists() {
            let o = self
                .exec("curl")
                .args(["-sS", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}", "-c"])
                .arg(&jar)
                .args(["-d", &format!("password={PASSWORD}")])
                .arg(format!("{base}/ui/login"))
                .output()
                .expect("running curl (make deps)");
            let code = String::from_utf8_lossy(&o.stdout).into_owned();
            assert_eq!(code, "303", "login: {}", String::from_utf8_lossy(&o.stderr));
        }
        let mut c = self.exec("curl");
        c.args(["-sS", "-m", "30", "-X", method, "-w", "\n%{http_code}", "-b"]).arg(&jar);
        if let Some(b) = body {
            c.args(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        let o = c.arg(format!("{base}{path}")).output().expect("running curl (make deps)");
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
        let code = code.trim().parse().unwrap_or_else(|_| {
            panic!("{method} {path}: {out} {}", String::from_utf8_lossy(&o.stderr))
        });
        (code, body.to_string())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, child) in self.procs.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let quiet = |args: &[&str]| {
            let _ = Command::new("ip").args(args).stderr(Stdio::null()).status();
        };
        for tap in &self.taps {
            quiet(&["-n", &self.ns, "link", "del", tap]);
        }
        quiet(&["-n", &self.ns, "link", "del", BRIDGE]);
        quiet(&["netns", "del", &self.ns]);
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}
