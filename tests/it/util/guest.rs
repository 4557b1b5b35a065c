//! QEMU guests of the end-to-end tests (tests/it/e2e.rs with QEMU's user-mode network,
//! tests/it/lab.rs in a network namespace of its own): one powered-on guest that is killed on
//! drop, its serial console read from a file, and waits on that console or on bty-web's log,
//! each bounded in time.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The accelerator: TCG unless `BTY_E2E_ACCEL` says otherwise (KVM inside the project's VMs
/// stops with an emulation failure in the iPXE ROM).
pub fn accel() -> String {
    std::env::var("BTY_E2E_ACCEL").unwrap_or_else(|_| "tcg".into())
}

/// OVMF, with its own PXE turned off: after iPXE's `exit` it would try PXE on the NIC over
/// IPv4 and IPv6 first, each waiting for timeouts (~2 min under TCG), before the disk. The
/// lab's HTTP Boot guest relies on this too: with PXE off, OVMF's first boot option on the NIC
/// is its HTTP Boot over IPv4.
pub fn ovmf_args() -> Vec<String> {
    [
        "-bios",
        "/usr/share/ovmf/OVMF.fd",
        "-fw_cfg",
        "name=opt/org.tianocore/IPv4PXESupport,string=n",
        "-fw_cfg",
        "name=opt/org.tianocore/IPv6PXESupport,string=n",
    ]
    .map(String::from)
    .to_vec()
}

/// The start of a guest's command line: headless, serial console to `log`, one CPU.
pub fn qemu(program: Command, mem_mib: u32, log: &Path) -> Command {
    let mut c = program;
    c.args(["-accel", &accel(), "-m", &mem_mib.to_string(), "-smp", "1"])
        .args(["-vga", "none", "-display", "none", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// One powered-on guest; powered off (killed) on drop.
pub struct Guest {
    pub child: Child,
    pub log: PathBuf,
    pub started: Instant,
}

impl Guest {
    /// Starts `cmd` (a QEMU command line whose serial console goes to `log`).
    pub fn start(mut cmd: Command, log: PathBuf) -> Guest {
        let _ = std::fs::remove_file(&log);
        let child = cmd.spawn().expect("starting qemu-system-x86_64 (make deps installs it)");
        Guest { child, log, started: Instant::now() }
    }

    pub fn serial(&self) -> String {
        let b = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(&b).replace('\r', "")
    }

    /// QEMU's stderr, once it has exited.
    fn stderr(&mut self) -> String {
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        err
    }

    /// Waits until the serial console shows `marker`; the time since power-on.
    pub fn wait_for(&mut self, marker: &str, limit: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            if self.serial().contains(marker) {
                return self.started.elapsed();
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "qemu exited ({st}) before {marker:?}: {}\nserial ({}):\n{}",
                    self.stderr(),
                    self.log.display(),
                    tail(&self.serial())
                );
            }
            assert!(
                t0.elapsed() < limit,
                "no {marker:?} on the serial console within {limit:?}; serial ({}):\n{}",
                self.log.display(),
                tail(&self.serial())
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits up to `limit` until `done` holds for the text of `log` (bty-web's log); the time
    /// since power-on. A failure shows both the log's and the serial console's tail.
    pub fn wait_log(
        &mut self,
        log: &Path,
        limit: Duration,
        what: &str,
        done: impl Fn(&str) -> bool,
    ) -> Duration {
        let t0 = Instant::now();
        loop {
            let text = read_lossy(log);
            if done(&text) {
                return self.started.elapsed();
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "qemu exited ({st}) before {what}: {}\n{} ends:\n{}\nserial ({}):\n{}",
                    self.stderr(),
                    log.display(),
                    tail(&text),
                    self.log.display(),
                    tail(&self.serial())
                );
            }
            assert!(
                t0.elapsed() < limit,
                "no {what} within {limit:?}; {} ends:\n{}\nserial ({}):\n{}",
                log.display(),
                tail(&text),
                self.log.display(),
                tail(&self.serial())
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A file's text, empty when it is not there (yet).
pub fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// The last 40 lines, for a failure message.
pub fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Whether `marks` occur in `text` in this order (each after the one before).
pub fn in_order(text: &str, marks: &[&str]) -> bool {
    let mut from = 0;
    for m in marks {
        match text[from..].find(m) {
            Some(i) => from += i + m.len(),
            None => return false,
        }
    }
    true
}
