//! Running `lshw -json` with a time bound.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::{Context, Result};

/// How long lshw may take. It needs a second or two on a big server; a hung probe (a dead USB
/// device, a stuck SMBus) must not keep a netbooted machine from reporting its disks.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Most output read from lshw: ten times what bty-web keeps (its `LSHW_MAX`), so a big tree is
/// still read whole, and a runaway one cannot exhaust a live environment's memory.
const OUTPUT_MAX: u64 = 20 << 20;

/// Runs `lshw -json -quiet` and parses its output.
pub fn run() -> Result<Value> {
    run_json("lshw", &["-json", "-quiet"], TIMEOUT)
}

/// Runs `program` with `args` and parses what it prints as JSON. After `timeout` the program
/// and everything it started (its own process group) are killed and an error is returned.
///
/// lshw B.02.20 and later print the tree inside a one-element array; that array is unwrapped,
/// so callers always get the `{"id": ..., "class": "system", ...}` object older versions print.
pub fn run_json(program: &str, args: &[&str], timeout: Duration) -> Result<Value> {
    let what = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .with_context(|| format!("running {what}"))?;
    let stdout = child.stdout.take().context("taking the stdout pipe")?;
    let (tx, rx) = mpsc::sync_channel(1);
    let reader = thread::Builder::new()
        .name("lshw-out".into())
        .spawn(move || {
            let mut out = Vec::new();
            let r = stdout.take(OUTPUT_MAX).read_to_end(&mut out).map(|_| out);
            // The receiver is gone only if run_json returned early; nothing to report then.
            let _ = tx.send(r);
        })
        .context("spawning the lshw reader thread")?;
    let deadline = Instant::now() + timeout;
    let got = rx.recv_timeout(timeout);
    let mut timed_out = matches!(got, Err(mpsc::RecvTimeoutError::Timeout));
    // The output can end before the program does (it closed stdout and hangs): the bound is on
    // the program, not on its output.
    let status = loop {
        if !timed_out {
            if let Some(st) = child.try_wait().with_context(|| format!("waiting for {what}"))? {
                break st;
            }
            if Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
                continue;
            }
            timed_out = true;
        }
        // Kill the whole group: children of the program would otherwise hold the pipe open.
        let _ = crate::sys::kill_process_group(child.id());
        break child.wait().with_context(|| format!("waiting for {what}"))?;
    };
    // The pipe is closed now that the group is gone, so the reader has finished.
    let _ = reader.join();
    crate::ensure!(!timed_out, "{what} took longer than {timeout:?} and was killed");
    let out = match got {
        Ok(r) => r.with_context(|| format!("reading the output of {what}"))?,
        Err(_) => crate::bail!("reading the output of {what}: the reader thread ended"),
    };
    crate::ensure!(status.success(), "{what} failed ({status})");
    let v: Value = serde_json::from_slice(&out)
        .with_context(|| format!("parsing the output of {what} as JSON"))?;
    Ok(match v {
        Value::Array(mut a) if a.len() == 1 => a.remove(0),
        v => v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_json_and_unwraps_a_one_element_array() {
        let v =
            run_json("sh", &["-c", r#"echo '[{"id":"box","class":"system"}]'"#], TIMEOUT).unwrap();
        assert_eq!(v["class"], "system");
        let v = run_json("sh", &["-c", r#"echo '{"id":"box"}'"#], TIMEOUT).unwrap();
        assert_eq!(v["id"], "box");
    }

    #[test]
    fn failures_name_the_command() {
        let e = run_json("sh", &["-c", "echo not json"], TIMEOUT).unwrap_err().to_string();
        assert!(e.starts_with("parsing the output of sh -c echo not json as JSON"), "{e}");
        let e = run_json("sh", &["-c", "echo '{}'; exit 3"], TIMEOUT).unwrap_err().to_string();
        assert!(e.contains("failed (exit status: 3)"), "{e}");
        let e = run_json("/nonexistent/lshw", &["-json"], TIMEOUT).unwrap_err().to_string();
        assert!(e.starts_with("running /nonexistent/lshw -json: "), "{e}");
    }

    #[test]
    fn a_hung_program_and_its_children_are_killed_at_the_timeout() {
        let marker = std::env::temp_dir().join(format!("bty-lshw-timeout-{}", std::process::id()));
        let _ = std::fs::remove_file(&marker);
        // The shell's child inherits stdout: without the group kill, reading would block 30 s.
        let script = format!("sleep 30; touch {}", marker.display());
        let start = Instant::now();
        let e = run_json("sh", &["-c", &script], Duration::from_millis(300)).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
        assert!(e.to_string().contains("took longer than 300ms and was killed"), "{e}");
        assert!(!marker.exists());
    }
}
