//! Reboot and power-off after a flash: sync, then reboot(2), with no init system needed.

use std::process::ExitCode;

use crate::error::{Context, Result};
use crate::sys::PowerAction;

/// Syncs and reboots or powers off. Returns only when that failed (then the error says why),
/// or under the test hook.
///
/// Test hook, set only by bty's own tests: with `BTY_TEST_NO_REBOOT=PATH` the action's name
/// ("reboot" or "poweroff") is appended to PATH and bty exits 0 instead, so a test can see what
/// would have happened without losing the machine it runs on.
pub fn power(action: PowerAction) -> Result<ExitCode> {
    let name = match action {
        PowerAction::Reboot => "reboot",
        PowerAction::PowerOff => "poweroff",
    };
    if let Some(path) = std::env::var_os("BTY_TEST_NO_REBOOT").filter(|p| !p.is_empty()) {
        use std::io::Write;
        let shown = std::path::Path::new(&path).display().to_string();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening the BTY_TEST_NO_REBOOT file {shown}"))?;
        writeln!(f, "{name}").with_context(|| format!("writing {shown}"))?;
        crate::sys::sync_all();
        return Ok(ExitCode::SUCCESS);
    }
    let e = crate::sys::power(action);
    crate::bail!("{name} through reboot(2): {e} (bty needs root, or CAP_SYS_BOOT, to {name})")
}
