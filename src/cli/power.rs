//! Reboot and power-off after a flash. In bty's live environment bty is the machine's only
//! workload and its PID 1 is a shell script with no service manager: there bty syncs and calls
//! reboot(2) itself. Anywhere else (a workstation, a server with systemd) a raw reboot(2) would
//! be a hard reset that skips every service's clean shutdown, so bty asks the init system
//! instead, and uses reboot(2) only when no service manager answers.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::error::Result;
use crate::sys::PowerAction;

/// A file only the live image has (live/build.sh writes its release there): with PID 1
/// running `/init`, it tells our live init from other initramfs inits. Getting this wrong
/// matters both ways: busybox `reboot` there would signal our shell-script PID 1, not reboot.
const LIVE_MARKER: &str = "/etc/bty/release";
/// Present while systemd is the running init (what sd_booted(3) checks).
const SYSTEMD_RUNNING: &str = "/run/systemd/system";

/// How a power action is carried out.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Via {
    /// sync, then reboot(2): bty is the workload, or nothing else can do it.
    Syscall,
    /// `systemctl reboot` / `systemctl poweroff`: systemd stops every service first.
    Systemctl(PathBuf),
    /// The `reboot` / `poweroff` command of another init (sysvinit, OpenRC, busybox init).
    Command(PathBuf),
}

impl Via {
    /// The way, as the `BTY_TEST_NO_REBOOT` hook writes it.
    #[cfg(any(test, feature = "test-hooks"))]
    fn describe(&self) -> String {
        match self {
            Via::Syscall => "reboot(2)".into(),
            Via::Systemctl(_) => "systemctl".into(),
            Via::Command(p) => p.display().to_string(),
        }
    }
}

/// Whether bty runs as the workload of its own live environment: PID 1 is our `/init`.
pub fn is_live_environment() -> bool {
    let cmdline = std::fs::read("/proc/1/cmdline").unwrap_or_default();
    cmdline.split(|&b| b == 0).any(|arg| arg == b"/init") && Path::new(LIVE_MARKER).exists()
}

/// Picks the way to reboot or power off: reboot(2) in the live environment, else the running
/// systemd, else the init system's own command, else reboot(2) (no service manager at all).
fn choose(live: bool, systemd: bool, find: &dyn Fn(&str) -> Option<PathBuf>, name: &str) -> Via {
    if live {
        return Via::Syscall;
    }
    if systemd {
        if let Some(p) = find("systemctl") {
            return Via::Systemctl(p);
        }
    }
    match find(name) {
        Some(p) => Via::Command(p),
        None => Via::Syscall,
    }
}

/// The executable `prog` in PATH, then in the usual system directories (sudo and some init
/// scripts run with a short PATH).
fn find_program(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .filter(|d| d.is_absolute())
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(prog))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file()))
}

/// Reboots or powers off the machine, the clean way where there is one (see the module
/// comment). Returns when the init system accepted the request (it then stops bty with
/// everything else), under the test hook, or with an error saying why nothing happened.
pub fn power(action: PowerAction) -> Result<ExitCode> {
    let name = match action {
        PowerAction::Reboot => "reboot",
        PowerAction::PowerOff => "poweroff",
    };
    let systemd = Path::new(SYSTEMD_RUNNING).is_dir();
    let via = choose(is_live_environment(), systemd, &find_program, name);
    if let Some(done) = instead_of_power(name, &via) {
        return done;
    }
    let program = match &via {
        Via::Syscall => None,
        Via::Systemctl(p) => Some((p, vec![name])),
        Via::Command(p) => Some((p, vec![])),
    };
    if let Some((program, args)) = program {
        // Written back to disk before the init system starts stopping things.
        crate::sys::sync_all();
        let shown = format!("{} {}", program.display(), args.join(" "));
        let shown = shown.trim_end();
        match std::process::Command::new(program).args(&args).status() {
            Ok(st) if st.success() => {
                eprintln!("bty: asked the init system for a clean {name} ({shown})");
                return Ok(ExitCode::SUCCESS);
            }
            // A refusal (no privilege, a polkit denial) is the operator's to see, not a cue
            // to hard-reset the machine behind the init system's back.
            Ok(st) if systemd => crate::bail!("{name} through {shown}: it exited with {st}"),
            Ok(st) => crate::warn!("{name} through {shown}: it exited with {st}"),
            Err(e) => crate::warn!("{name} through {shown}: {e}"),
        }
        eprintln!("bty: no service manager answered; {name} through reboot(2)");
    }
    let e = crate::sys::power(action);
    crate::bail!("{name} through reboot(2): {e} (bty needs root, or CAP_SYS_BOOT, to {name})")
}

/// Test hook (cargo feature `test-hooks`, which no shipped build enables): with
/// `BTY_TEST_NO_REBOOT=PATH` the action and the way chosen ("reboot via systemctl", "poweroff
/// via reboot(2)", "reboot via /usr/sbin/reboot") are appended to PATH as a line and bty exits 0
/// instead, so a test can see what would have happened without losing the machine it runs on.
/// None: do it for real (always, without the feature).
#[cfg(feature = "test-hooks")]
fn instead_of_power(name: &str, via: &Via) -> Option<Result<ExitCode>> {
    use crate::error::Context;
    use std::io::Write;
    let path = std::env::var_os("BTY_TEST_NO_REBOOT").filter(|p| !p.is_empty())?;
    let shown = Path::new(&path).display().to_string();
    let write = || -> Result<ExitCode> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening the BTY_TEST_NO_REBOOT file {shown}"))?;
        writeln!(f, "{name} via {}", via.describe()).with_context(|| format!("writing {shown}"))?;
        crate::sys::sync_all();
        Ok(ExitCode::SUCCESS)
    };
    Some(write())
}

#[cfg(not(feature = "test-hooks"))]
fn instead_of_power(_name: &str, _via: &Via) -> Option<Result<ExitCode>> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_environment_reboots_itself_and_others_ask_their_init() {
        let all = |p: &str| Some(PathBuf::from(format!("/sbin/{p}")));
        let none = |_: &str| None;
        assert_eq!(choose(true, true, &all, "reboot"), Via::Syscall);
        assert_eq!(
            choose(false, true, &all, "reboot"),
            Via::Systemctl(PathBuf::from("/sbin/systemctl"))
        );
        assert_eq!(
            choose(false, false, &all, "poweroff"),
            Via::Command(PathBuf::from("/sbin/poweroff"))
        );
        assert_eq!(choose(false, true, &none, "reboot"), Via::Syscall);
        assert_eq!(choose(false, false, &none, "reboot"), Via::Syscall);
        assert_eq!(Via::Systemctl(PathBuf::from("/x")).describe(), "systemctl");
    }
}
