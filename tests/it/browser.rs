//! The browser UI in headless Chromium (Debian's chromium + chromium-driver over WebDriver)
//! against the real bty-web: log in, see a PXE-discovered machine appear live, claim it through
//! the form, add and upload catalog entries, script-looking input shown as text, a cross-origin
//! form refused, log out. Screenshots land in target/ui-screens/.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::util::Server;
use crate::util::webdriver::Driver;

const MAC: &str = "02:00:00:00:00:42";

/// Serves one fixed page to whoever asks, from another origin (another port of 127.0.0.1: the
/// same site for SameSite cookies, so only the Origin check stands in the way).
fn attacker(target: &str) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let page = format!(
        "<!doctype html><title>not bty</title><form method=\"post\" action=\"http://{target}/ui/machines/{MAC}\">\
         <input type=\"hidden\" name=\"boot_mode\" value=\"bty-tui\">\
         <button id=\"go\" type=\"submit\">Win a prize</button></form>"
    );
    std::thread::Builder::new()
        .name("attacker".into())
        .spawn(move || {
            for mut c in l.incoming().flatten().take(8) {
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf);
                let _ = write!(
                    c,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                );
            }
        })
        .unwrap();
    addr
}

fn flash(d: &Driver) -> String {
    d.text_of(".flash")
}

#[test]
fn operator_workflow_in_headless_chromium() {
    let s = Server::start("browser");
    let d = Driver::start("workflow");
    let base = format!("http://{}", s.addr);

    // Logged out, every page leads to the login form.
    d.goto(&format!("{base}/ui/machines"));
    assert!(d.url().ends_with("/ui/login"), "{}", d.url());
    d.screenshot("01-login");
    d.submit_login();
    d.screenshot("02-dashboard");
    // Keyboard users get to the content first, then the navigation.
    d.tab();
    assert_eq!(d.focused_text(), "Skip to content");
    d.tab();
    assert_eq!(d.focused_text(), "bty");
    d.tab();
    assert_eq!(d.focused_text(), "Dashboard");

    // A machine that PXE-boots shows up without a reload.
    d.goto(&format!("{base}/ui/machines"));
    assert!(
        d.wait(Duration::from_secs(5), |d| d.text_of("#live-state").contains("live")),
        "the live stream did not connect"
    );
    let t = Instant::now();
    assert_eq!(s.call("GET", &format!("/pxe/{MAC}"), None, "").0, 200);
    let row = "#m-020000000042";
    assert!(
        d.wait(Duration::from_secs(2), |d| !d.find_all(row).is_empty()),
        "no live row within 2 s"
    );
    eprintln!("machine row appeared {} ms after the PXE contact", t.elapsed().as_millis());
    assert!(d.text_of(row).contains("discovered"));
    // Flash progress from the live environment moves the bar without a reload.
    let p = r#"{"phase": "writing", "written_bytes": 750, "total_bytes": 1000}"#;
    assert_eq!(s.call("POST", &format!("/pxe/{MAC}/progress"), None, p).0, 204);
    assert!(
        d.wait(Duration::from_secs(2), |d| d.find_all(&format!("{row} progress")).len() == 1
            && d.text_of(row).contains("writing 75%")),
        "no live progress bar within 2 s"
    );
    d.screenshot("03-machines-live");
    d.goto(&format!("{base}/ui/machines/{MAC}"));
    let p = r#"{"phase": "verifying", "written_bytes": 1000, "total_bytes": 1000}"#;
    assert_eq!(s.call("POST", &format!("/pxe/{MAC}/progress"), None, p).0, 204);
    assert!(
        d.wait(Duration::from_secs(2), |d| d.text_of("#live-progress") == "verifying 100%"),
        "the machine page follows the flash: {}",
        d.text_of("#live-progress")
    );

    // The live environment reports its disks; the operator adds images.
    let inv = r#"{"disks": [{"path": "/dev/vda", "size": "20G", "vendor": "virtio", "model": "disk", "serial": "VD-0042", "tran": null, "removable": false, "readonly": false}]}"#;
    assert_eq!(s.call("POST", &format!("/pxe/{MAC}/inventory"), None, inv).0, 204);
    d.goto(&format!("{base}/ui/images"));
    d.type_into(&d.find("#image_url"), "https://images.example/debian-12.img.zst");
    d.type_into(&d.find("#name"), "<img src=x id=xss>debian");
    d.click(&d.find("form[action='/ui/catalog/entries'] button"));
    assert!(d.wait(Duration::from_secs(5), |d| flash(d).starts_with("Added")), "{}", flash(&d));
    assert!(d.find_all("#xss").is_empty(), "an image name is text, not markup");
    assert!(d.source().contains("&lt;img src=x id=xss&gt;debian"));
    let toml = s.state.join("lab-catalog.toml");
    std::fs::write(
        &toml,
        "version = 1\n[[images]]\nname = \"fedora.raw.xz\"\nsrc = \"https://images.example/fedora.raw.xz\"\n",
    )
    .unwrap();
    d.type_into(&d.find("#catalog"), &toml.display().to_string());
    d.click(&d.find("form[action='/ui/catalog/upload'] button"));
    assert!(
        d.wait(Duration::from_secs(5), |d| flash(d).starts_with("Imported 1")),
        "{}",
        flash(&d)
    );
    d.screenshot("04-images");

    // Claim the machine through its form.
    let (_, _, entries) = s.call("GET", "/catalog/entries", Some(&s.login()), "");
    let entries: serde_json::Value = serde_json::from_str(&entries).unwrap();
    let image_ref = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["src"] == "https://images.example/debian-12.img.zst")
        .unwrap()["bty_image_ref"]
        .as_str()
        .unwrap()
        .to_string();
    d.goto(&format!("{base}/ui/machines/{MAC}"));
    // Script-looking labels are refused and shown back as text.
    let labels = d.find("#labels");
    d.type_into(&labels, "<script>alert(1)</script>");
    d.click(&d.find("form.stack button[type=submit]"));
    assert!(d.wait(Duration::from_secs(5), |d| !d.find_all(".field-error").is_empty()));
    assert!(!d.alert_open(), "no script ran");
    assert!(d.text_of(".field-error").starts_with("labels[0]:"));
    d.screenshot("05-label-refused");
    d.select("#bty_image_ref", &image_ref);
    d.select("#target_disk_serial", "VD-0042");
    d.select("#boot_mode", "bty-flash-once");
    let labels = d.find("#labels");
    d.clear(&labels);
    d.type_into(&labels, "rack 1, web");
    d.click(&d.find("form.stack button[type=submit]"));
    assert!(
        d.wait(Duration::from_secs(5), |d| flash(d) == format!("Saved {MAC}.")),
        "{}",
        flash(&d)
    );
    d.screenshot("06-machine-claimed");
    let cookie = s.login();
    let (_, _, json) = s.call("GET", &format!("/machines/{MAC}"), Some(&cookie), "");
    let m: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(m["boot_mode"], "bty-flash-once");
    assert_eq!(m["bty_image_ref"], image_ref.as_str());
    assert_eq!(m["target_disk_serial"], "VD-0042");
    assert_eq!(m["labels"], serde_json::json!(["rack 1", "web"]));

    // Phone width: the machines table still reads.
    d.set_window(390, 844);
    d.goto(&format!("{base}/ui/machines"));
    assert!(d.wait(Duration::from_secs(5), |d| !d.find_all(row).is_empty()));
    d.screenshot("07-machines-phone");
    d.set_window(1920, 1080);
    d.color_scheme("dark");
    d.goto(&format!("{base}/ui/machines/{MAC}"));
    d.screenshot("07-machine-dark-1920");
    d.color_scheme("light");

    // A form on another origin is refused even though the browser sends the cookie.
    let evil = attacker(&s.addr);
    d.goto(&format!("http://{evil}/"));
    d.click(&d.find("#go"));
    assert!(d.wait(Duration::from_secs(5), |d| d.source().contains("Refused")), "{}", d.source());
    d.screenshot("08-cross-origin-refused");
    let (_, _, json) = s.call("GET", &format!("/machines/{MAC}"), Some(&cookie), "");
    assert!(json.contains("bty-flash-once"), "unchanged: {json}");

    // Log out: pages lead to the login form again.
    d.goto(&format!("{base}/ui/account"));
    d.click(&d.find("main form button[type=submit]"));
    assert!(d.wait(Duration::from_secs(5), |d| d.url().ends_with("/ui/login")), "{}", d.url());
    d.goto(&format!("{base}/ui/machines/{MAC}"));
    assert!(d.url().ends_with("/ui/login"), "{}", d.url());
    d.screenshot("09-logged-out");
}
