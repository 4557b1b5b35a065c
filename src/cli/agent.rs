//! Server-driven mode (`bty --server URL --mac MAC`): report this machine's inventory to
//! bty-web, ask it for a plan, and carry the plan out: flash unattended, open the wizard,
//! report the inventory only, or exit.
//!
//! The server is asked with short timeouts: an unreachable server must hand the operator a
//! wizard within seconds, not after minutes of retries.

use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use crate::cli::WizardArgs;
use crate::cli::progress::{Markers, Poster};
use crate::cli::wizard::{self, Choice};
use crate::error::{Context, Error, Result};
use crate::flash::progress::{Mode, Reporter};
use crate::flash::{self, FlashError, Options, Plan};
use crate::sys::PowerAction;
use crate::wire::{self, Status};

/// Connect, response and per-read timeout of each call to bty-web.
const CALL_TIMEOUT: Duration = Duration::from_secs(4);
/// Largest plan answer read (a plan is a few hundred bytes).
const PLAN_MAX: u64 = 64 << 10;
/// Calls to one bty-web on behalf of one MAC.
pub struct Client {
    base: String,
    mac: String,
    agent: ureq::Agent,
}

impl Client {
    /// A client for `base` (scheme and host, no trailing slash) and `mac`.
    pub fn new(base: &str, mac: &str, timeout: Duration) -> Result<Client> {
        let agent = crate::source::http::agent_with_timeout(base, timeout)?;
        Ok(Client { base: base.trim_end_matches('/').to_string(), mac: mac.to_string(), agent })
    }

    fn url(&self, what: &str) -> String {
        format!("{}/pxe/{}/{what}", self.base, self.mac)
    }

    /// POSTs a JSON body to `/pxe/{mac}/{what}`; any status but 2xx is an error naming it.
    pub fn post(&self, what: &str, body: &impl Serialize) -> Result<()> {
        let url = self.url(what);
        let bytes = serde_json::to_vec(body).context("encoding the request body")?;
        let resp = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json")
            .send(&bytes[..])
            .with_context(|| format!("POST {url}"))?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let detail =
                resp.into_body().with_config().limit(4096).read_to_string().unwrap_or_default();
            crate::bail!("POST {url}: HTTP {status} {}", detail.trim());
        }
        Ok(())
    }

    /// GETs and parses the plan.
    pub fn plan(&self) -> Result<wire::Plan> {
        let url = self.url("plan");
        let resp = self.agent.get(&url).call().with_context(|| format!("GET {url}"))?;
        let status = resp.status().as_u16();
        crate::ensure!(status == 200, "GET {url}: HTTP {status}");
        let body = resp
            .into_body()
            .with_config()
            .limit(PLAN_MAX)
            .read_to_vec()
            .with_context(|| format!("GET {url}: reading the answer"))?;
        parse_plan(&body).with_context(|| format!("GET {url}"))
    }

    /// The server's catalog, offered when its plan cannot be had.
    pub fn catalog_url(&self) -> String {
        format!("{}/catalog.toml", self.base)
    }
}

/// Parses a plan answer; a mode bty does not know is an error, like bad JSON.
pub fn parse_plan(body: &[u8]) -> Result<wire::Plan> {
    serde_json::from_slice(body).map_err(|e| {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        Error::msg(format!("the plan {text:?} is not one bty understands: {e}"))
    })
}

/// Runs server-driven mode.
pub fn run(args: &WizardArgs, mac: &str) -> Result<ExitCode> {
    let mac =
        crate::wire::normalize_mac(mac).map_err(|e| Error::msg(format!("--mac {mac:?}: {e}")))?;
    let client = Client::new(&args.server, &mac, CALL_TIMEOUT)?;
    crate::info!("server-driven mode: {} as {mac}", args.server);
    // The inventory goes first, so the operator sees the disks even when the plan fails. An
    // unknown MAC is refused (404) until the plan request below creates its record: a warning.
    if let Err(e) = post_inventory(&client) {
        crate::warn!("{e}");
    }
    let plan = match client.plan() {
        Ok(p) => p,
        Err(e) => {
            let catalog = client.catalog_url();
            crate::error!("{e}");
            crate::warn!("no plan from the server: opening the wizard with {catalog}");
            return wizard::run(args, Some(catalog), None);
        }
    };
    crate::info!("plan: {plan:?}");
    match plan {
        wire::Plan::Exit => {
            eprintln!("bty: the server has nothing for this machine to do (plan: exit)");
            Ok(ExitCode::SUCCESS)
        }
        wire::Plan::Interactive { catalog } => {
            wizard::run(args, Some(catalog.unwrap_or_else(|| client.catalog_url())), None)
        }
        wire::Plan::Inventory => {
            post_inventory(&client)?;
            Markers::new().say("inventory posted; rebooting");
            crate::cli::power::power(PowerAction::Reboot)
        }
        wire::Plan::Flash { image, target_disk_serial, name, format, disk_image_sha } => {
            let choice = Choice {
                name: name.unwrap_or_else(|| crate::catalog::last_segment(&image).to_string()),
                format: format.unwrap_or_default(),
                url: image,
                sha256: disk_image_sha,
            };
            match auto_flash(&client, &choice, target_disk_serial.as_deref()) {
                Ok(target) => {
                    register_uefi_boot(&target, &choice.name);
                    if let Err(e) = client.post("done", &serde_json::json!({})) {
                        crate::error!("{e}");
                    }
                    Markers::new().say("flash complete; rebooting");
                    crate::cli::power::power(PowerAction::Reboot)
                }
                Err(e) => {
                    let reason = e.to_string();
                    Markers::new().say(&format!("auto-flash failed: {reason}"));
                    if let Err(e) = client.post("status", &Status::failed(&reason)) {
                        crate::error!("{e}");
                    }
                    // A refused image is not offered again in the wizard either.
                    let choice = check_plan_image(&choice.url).is_ok().then_some(choice);
                    wizard::run(args, Some(client.catalog_url()), choice)
                }
            }
        }
    }
}

fn post_inventory(client: &Client) -> Result<()> {
    let no_lshw = std::env::var("BTY_NO_LSHW")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
    let inv = crate::inventory::collect(&crate::inventory::Options { all: false, lshw: !no_lshw })
        .context("collecting the inventory")?;
    client.post("inventory", &inv.wire())
}

/// With `BTY_REGISTER_UEFI_BOOT=1`, makes the firmware boot the flashed disk next; a failure is
/// a warning, never a failed flash.
pub fn register_uefi_boot(disk: &std::path::Path, image: &str) {
    if !crate::cli::uefi::requested() {
        return;
    }
    match crate::cli::uefi::register(
        disk,
        &format!("bty: {image}"),
        &crate::cli::uefi::efivars_dir(),
    ) {
        Ok(n) => {
            eprintln!("bty: UEFI boot entry Boot{n:04X} for {} set as BootNext", disk.display())
        }
        Err(e) => crate::warn!("registering a UEFI boot entry for {}: {e}", disk.display()),
    }
}

/// Finds the plan's disk by serial and flashes it, posting progress as it goes; the disk.
fn auto_flash(
    client: &Client,
    choice: &Choice,
    serial: Option<&str>,
) -> Result<std::path::PathBuf> {
    let mut markers = Markers::new();
    markers.say("auto-flash starting");
    check_plan_image(&choice.url)?;
    let serial = serial
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .context("the plan names no target disk serial")?;
    let disks = crate::disks::list(&crate::disks::ListOptions { all: false })?;
    // Never a serial-less disk: an empty serial must not match an empty target.
    let Some(disk) = disks.iter().find(|d| d.inventory.serial.as_deref() == Some(serial)) else {
        let seen: Vec<String> = disks
            .iter()
            .map(|d| {
                format!(
                    "{} ({})",
                    d.inventory.path,
                    d.inventory.serial.as_deref().unwrap_or("no serial")
                )
            })
            .collect();
        crate::bail!(
            "no disk with serial {serial:?} on this machine (disks: {})",
            if seen.is_empty() { "none".to_string() } else { seen.join(", ") }
        );
    };
    if let Some(r) = &disk.refusal {
        crate::bail!("refusing {} (serial {serial}): {r}", disk.inventory.path);
    }
    let sha256 = match choice.sha256.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(flash::parse_sha256(s)?),
        None => None,
    };
    let target = std::path::PathBuf::from(&disk.inventory.path);
    let plan = Plan::new(&choice.url, &target)?;
    crate::info!("flashing {} onto {}", plan.source.display, plan.target.describe());
    crate::sys::catch_cancel_signals().context("installing the SIGINT/SIGTERM handler")?;
    let poster = Poster::start(client_for_progress(client)?);
    let mut reporter = Reporter::new(Mode::Auto);
    let opts = Options { sha256, verify: false, zero_skip: true };
    let outcome = flash::run(
        &plan,
        &opts,
        &mut |s| {
            reporter.update(s);
            markers.progress(s);
            poster.update(s);
        },
        crate::sys::cancel_flag(),
    );
    poster.finish();
    match outcome {
        Ok(report) => {
            markers.complete();
            reporter.finish(&plan.target.resolved.display().to_string(), &report);
            Ok(plan.target.resolved.clone())
        }
        Err(FlashError::Refused(e)) => Err(e),
        Err(FlashError::Failed(e)) => Err(e.wrap(format!(
            "flashing {} (first and last MiB blanked)",
            plan.target.resolved.display()
        ))),
        Err(FlashError::Cancelled) => Err(Error::msg(format!(
            "flashing {}: cancelled (first and last MiB blanked)",
            plan.target.resolved.display()
        ))),
    }
}

/// Refuses a plan image that is not fetched over the network: a plan comes from whoever
/// answers on the lab network, and `file://`, a path or `-` would let that answer pick a file
/// (or a device) on this machine as the image, or make bty read the console as one.
pub fn check_plan_image(image: &str) -> Result<()> {
    let lower = image.get(..8).unwrap_or(image).to_ascii_lowercase();
    let remote = ["http://", "https://", "oras://"].iter().any(|p| lower.starts_with(p));
    crate::ensure!(
        remote,
        "refusing the server's plan image {:?}: a server-driven flash takes only http(s):// or \
         oras:// images, never a local file, a file:// URL or standard input; nothing was written",
        image.chars().take(200).collect::<String>()
    );
    Ok(())
}

/// The poster gets its own client with a tighter timeout: a post that hangs is dropped, the
/// next snapshot replaces it.
fn client_for_progress(client: &Client) -> Result<Client> {
    Client::new(&client.base, &client.mac, Duration::from_millis(1500))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_and_unknown_ones_are_errors() {
        let p = parse_plan(
            br#"{"mode":"flash","image":"http://h/a.img","target_disk_serial":"S1","name":"a","format":"img","disk_image_sha":null}"#,
        )
        .unwrap();
        assert!(
            matches!(p, wire::Plan::Flash { ref target_disk_serial, .. } if target_disk_serial.as_deref() == Some("S1"))
        );
        assert_eq!(parse_plan(br#"{"mode":"exit"}"#).unwrap(), wire::Plan::Exit);
        assert_eq!(parse_plan(br#"{"mode":"inventory"}"#).unwrap(), wire::Plan::Inventory);
        assert_eq!(
            parse_plan(br#"{"mode":"interactive","catalog":"http://h/catalog.toml"}"#).unwrap(),
            wire::Plan::Interactive { catalog: Some("http://h/catalog.toml".into()) }
        );
        for ok in ["http://h/a.img", "HTTPS://h/a.img.xz", "oras://r/x:1"] {
            assert!(check_plan_image(ok).is_ok(), "{ok}");
        }
        for bad in ["file:///dev/sda", "/srv/a.img", "-", "a.img", "ftp://h/a.img", ""] {
            let e = check_plan_image(bad).unwrap_err().to_string();
            assert!(e.contains("only http(s):// or oras://"), "{bad}: {e}");
        }
        for bad in [&b"{"[..], br#"{"mode":"dance"}"#, br#"{"mode":"flash"}"#, b"[]"] {
            assert!(parse_plan(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
