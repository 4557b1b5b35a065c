//! The job rows of the Netboot and Backups pages in headless Chromium against the real bty-web:
//! a netboot fetch from a slow origin on 127.0.0.1 moves its progress without a reload, its
//! Cancel button stops it, and a backup started elsewhere shows up on the open Backups page
//! with its end. Screenshots land in target/ui-screens/.

use std::time::Duration;

use crate::release_fetch::SlowRelease;
use crate::util::Server;
use crate::util::webdriver::Driver;

/// The percentage at the end of a job's progress text ("1.5 MiB of 6.0 MiB (25%)").
fn percent(text: &str) -> Option<u64> {
    text.rsplit_once('(')?.1.strip_suffix("%)")?.parse().ok()
}

#[test]
fn job_progress_is_live_and_a_netboot_fetch_is_cancelled_from_its_page() {
    let origin = SlowRelease::large();
    let s = Server::start_env("browser-jobs", &[("BTY_BOOT_RELEASE_URL", origin.url().as_str())]);
    let d = Driver::start("jobs");
    let base = format!("http://{}", s.addr);
    d.log_in(&base);

    // Start a fetch with the page's button; its row is on the page it comes back to.
    d.goto(&format!("{base}/ui/netboot"));
    d.click(&d.find("form[action='/ui/netboot/fetch-release'] button"));
    assert!(
        d.wait(Duration::from_secs(5), |d| d.text_of(".flash").starts_with("Fetch started (job ")),
        "{}",
        d.text_of(".flash")
    );
    let flash = d.text_of(".flash");
    let id: i64 = flash
        .trim_start_matches("Fetch started (job ")
        .trim_end_matches(").")
        .parse()
        .unwrap_or_else(|e| panic!("{flash}: {e}"));
    let row = format!("#job-{id}");

    // The progress moves without a reload: the element found now is still the one read later
    // (a reload would leave it stale, and reading it would fail).
    let text = d.find(&format!("{row} .job-bytes"));
    assert_eq!(d.find_all(&format!("{row} progress")).len(), 1, "{}", d.source());
    let first = std::cell::Cell::new(None);
    let moved = d.wait(Duration::from_secs(60), |d| match (first.get(), percent(&d.text(&text))) {
        (None, Some(p)) if p < 50 => {
            first.set(Some(p));
            false
        }
        (Some(f), Some(p)) => p > f,
        _ => false,
    });
    assert!(moved, "the progress did not move live: {} (first {:?})", d.text(&text), first.get());
    assert_eq!(d.text_of(&format!("{row} td:nth-child(2)")), "running");
    d.screenshot("jobs-01-netboot-fetch-live");

    // Cancel from the page: the form posts, the page says so, and the row ends cancelled.
    d.click(&d.find(&format!("{row} form button")));
    assert!(
        d.wait(Duration::from_secs(5), |d| d
            .text_of(".flash")
            .starts_with(&format!("Cancelling netboot fetch job {id}"))),
        "{}",
        d.text_of(".flash")
    );
    assert!(
        d.wait(Duration::from_secs(30), |d| d.text_of(&format!("{row} td:nth-child(2)"))
            == "cancelled"),
        "the row did not end cancelled: {}",
        d.text_of(row.as_str())
    );
    assert!(
        d.wait(Duration::from_secs(5), |d| d.find_all(&format!("{row} form")).is_empty()),
        "no Cancel button on an ended job"
    );
    d.screenshot("jobs-02-netboot-fetch-cancelled");
    let cookie = s.login();
    let (_, _, body) = s.call("GET", "/boot/releases", Some(&cookie), "");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let job = v["jobs"].as_array().and_then(|a| a.iter().find(|j| j["id"] == id)).cloned();
    assert_eq!(job.as_ref().map(|j| j["state"].clone()), Some("cancelled".into()), "{body}");
    let left: Vec<String> = std::fs::read_dir(s.state.join("boot"))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "nothing installed, no temp file left: {left:?}");

    // A backup started elsewhere (the API) appears on the open Backups page, and ends there.
    d.goto(&format!("{base}/ui/backups"));
    let table = d.find("#jobs-backup");
    assert!(d.text(&table).contains("No jobs yet."), "{}", d.text(&table));
    let (st, _, body) = s.call("POST", "/workers/backups", Some(&cookie), "");
    assert_eq!(st, 202, "{body}");
    let bid = serde_json::from_str::<serde_json::Value>(&body).unwrap()["job"].as_i64().unwrap();
    let brow = format!("#job-{bid}");
    assert!(
        d.wait(Duration::from_secs(30), |d| d.text_of(&format!("{brow} td:nth-child(2)"))
            == "done"),
        "the backup did not appear done: {}",
        d.text(&table)
    );
    let done = d.text_of(&format!("{brow} .job-bytes"));
    assert_eq!(percent(&done), Some(100), "{done}");
    assert!(!d.text(&table).contains("No jobs yet."), "{}", d.text(&table));
    d.screenshot("jobs-03-backup-live");
}
