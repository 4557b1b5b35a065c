//! The JSON shapes of the spec (reference.txt's wire types, api-details.md), pinned: each
//! literal reads as the expected value and writes back as the same JSON; and what must be refused.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::*;

/// `text` reads as `want` and `want` writes back as `text` (compared as JSON values).
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(text: &str, want: &T) {
    let got: T = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    assert_eq!(&got, want, "{text}");
    let back = serde_json::to_value(want).unwrap();
    let text: Value = serde_json::from_str(text).unwrap();
    assert_eq!(back, text);
}

fn refused<T: DeserializeOwned + std::fmt::Debug>(text: &str) {
    let r: Result<T, _> = serde_json::from_str(text);
    assert!(r.is_err(), "{text} was read as {r:?}");
}

#[test]
fn boot_modes() {
    for (mode, text) in [
        (BootMode::IpxeExit, "ipxe-exit"),
        (BootMode::FlashAlways, "bty-flash-always"),
        (BootMode::FlashOnce, "bty-flash-once"),
        (BootMode::Tui, "bty-tui"),
        (BootMode::Inventory, "bty-inventory"),
    ] {
        round_trip(&format!("{text:?}"), &mode);
        assert_eq!(mode.as_str(), text);
        assert_eq!(mode.to_string(), text);
        assert_eq!(text.parse::<BootMode>(), Ok(mode));
        assert_eq!(mode.is_flash(), text.starts_with("bty-flash-"));
    }
    assert_eq!(
        BootMode::ALL.map(BootMode::as_str),
        ["ipxe-exit", "bty-flash-always", "bty-flash-once", "bty-tui", "bty-inventory"]
    );
    assert_eq!(BootMode::default(), BootMode::IpxeExit);
    assert_eq!(
        "flash".parse::<BootMode>(),
        Err("must be one of ipxe-exit, bty-flash-always, bty-flash-once, bty-tui, bty-inventory \
             (got \"flash\")"
            .to_string())
    );
    for bad in ["\"flash\"", "\"IPXE-EXIT\"", "\"\"", "null", "1"] {
        refused::<BootMode>(bad);
    }
}

#[test]
fn plans() {
    let sha = "ab".repeat(32);
    round_trip(
        &format!(
            r#"{{"mode": "flash", "image": "http://10.0.2.2:8080/images/{sha}/debian.img.zst",
                "target_disk_serial": "S4EWNX0R123456", "name": "debian.img.zst",
                "format": "img.zst", "disk_image_sha": "{sha}"}}"#
        ),
        &Plan::Flash {
            image: format!("http://10.0.2.2:8080/images/{sha}/debian.img.zst"),
            target_disk_serial: Some("S4EWNX0R123456".into()),
            name: Some("debian.img.zst".into()),
            format: Some("img.zst".into()),
            disk_image_sha: Some(sha.clone()),
        },
    );
    round_trip(
        r#"{"mode": "flash", "image": "oras://r/x:1", "target_disk_serial": "S1",
            "name": "x.img", "format": "img", "disk_image_sha": null}"#,
        &Plan::Flash {
            image: "oras://r/x:1".into(),
            target_disk_serial: Some("S1".into()),
            name: Some("x.img".into()),
            format: Some("img".into()),
            disk_image_sha: None,
        },
    );
    round_trip(
        r#"{"mode": "interactive", "catalog": "http://h/catalog.toml"}"#,
        &Plan::Interactive { catalog: Some("http://h/catalog.toml".into()) },
    );
    round_trip(r#"{"mode": "inventory"}"#, &Plan::Inventory);
    round_trip(r#"{"mode": "exit"}"#, &Plan::Exit);
    // What bty reads of a plan from a server that sends less, or more.
    let p: Plan = serde_json::from_str(r#"{"mode": "flash", "image": "http://h/a.img"}"#).unwrap();
    assert_eq!(
        p,
        Plan::Flash {
            image: "http://h/a.img".into(),
            target_disk_serial: None,
            name: None,
            format: None,
            disk_image_sha: None
        }
    );
    let p: Plan = serde_json::from_str(r#"{"mode": "exit", "why": "later"}"#).unwrap();
    assert_eq!(p, Plan::Exit);
    let p: Plan = serde_json::from_str(r#"{"mode": "interactive"}"#).unwrap();
    assert_eq!(p, Plan::Interactive { catalog: None });
    for (p, mode) in [
        (Plan::Exit, "exit"),
        (Plan::Inventory, "inventory"),
        (Plan::Interactive { catalog: None }, "interactive"),
    ] {
        assert_eq!(p.mode().as_str(), mode);
        assert_eq!(serde_json::to_value(&p).unwrap()["mode"], mode);
    }
    for bad in [
        r#"{"mode": "dance"}"#,
        r#"{"mode": "flash"}"#,
        r#"{"mode": "Flash", "image": "http://h/a.img"}"#,
        r#"{"image": "http://h/a.img"}"#,
        r#"{"mode": "flash", "image": 5}"#,
        r#"{"mode": null}"#,
        "[]",
        "{",
    ] {
        refused::<Plan>(bad);
    }
}

#[test]
fn progress_reports() {
    round_trip(
        r#"{"phase": "write", "written_bytes": 5, "total_bytes": 10, "rate_bytes_per_s": 1}"#,
        &Progress {
            phase: "write".into(),
            written_bytes: 5,
            total_bytes: Some(10),
            rate_bytes_per_s: Some(1),
        },
    );
    round_trip(
        r#"{"phase": "done", "written_bytes": 0, "total_bytes": null, "rate_bytes_per_s": null}"#,
        &Progress {
            phase: "done".into(),
            written_bytes: 0,
            total_bytes: None,
            rate_bytes_per_s: None,
        },
    );
    let p: Progress =
        serde_json::from_str(r#"{"phase": "writing", "written_bytes": 750, "total_bytes": 1000}"#)
            .unwrap();
    assert_eq!(
        (p.phase.as_str(), p.total_bytes, p.rate_bytes_per_s),
        ("writing", Some(1000), None)
    );
    for bad in [
        r#"{"written_bytes": 1}"#,
        r#"{"phase": "write"}"#,
        r#"{"phase": "write", "written_bytes": -1}"#,
        r#"{"phase": "write", "written_bytes": 1.5}"#,
        r#"{"phase": "write", "written_bytes": "1"}"#,
        r#"{"phase": "write", "written_bytes": 1, "eta": 3}"#,
    ] {
        refused::<Progress>(bad);
    }
}

#[test]
fn status_reports() {
    round_trip(r#"{"status": "done"}"#, &Status::Done);
    round_trip(
        r#"{"status": "failed", "reason": "disk S1 not found"}"#,
        &Status::Failed { reason: "disk S1 not found".into() },
    );
    for (text, want) in [
        (r#"{"status": "done", "reason": "ignored"}"#, Status::Done),
        (r#"{"status": "failed"}"#, Status::Failed { reason: String::new() }),
        (r#"{"status": "failed", "reason": null}"#, Status::Failed { reason: String::new() }),
    ] {
        assert_eq!(serde_json::from_str::<Status>(text).unwrap(), want, "{text}");
    }
    let long = "r".repeat(REASON_MAX_CHARS + 10);
    assert_eq!(Status::failed(&long), Status::Failed { reason: "r".repeat(REASON_MAX_CHARS) });
    for bad in [
        r#"{"status": "ok"}"#,
        r#"{"status": "DONE"}"#,
        r#"{"reason": "x"}"#,
        r#"{"status": true}"#,
        r#"{"status": "done", "why": "x"}"#,
        r#"{"status": "failed", "reason": 5}"#,
    ] {
        refused::<Status>(bad);
    }
}

#[test]
fn inventories() {
    let disk = InventoryDisk {
        path: "/dev/sda".into(),
        size: Some("500G".into()),
        vendor: Some("ATA".into()),
        model: Some("Samsung 980".into()),
        serial: Some("S4EWNX0R123456".into()),
        tran: Some("sata".into()),
        removable: false,
        readonly: false,
    };
    let disk_json = r#"{"path": "/dev/sda", "size": "500G", "vendor": "ATA",
        "model": "Samsung 980", "serial": "S4EWNX0R123456", "tran": "sata",
        "removable": false, "readonly": false}"#;
    round_trip(disk_json, &disk);
    round_trip(
        &format!(r#"{{"disks": [{disk_json}], "lshw": {{"class": "system", "product": "X1"}}}}"#),
        &Inventory {
            disks: vec![disk.clone()],
            lshw: Some(json!({"class": "system", "product": "X1"})),
        },
    );
    round_trip(r#"{"disks": []}"#, &Inventory { disks: vec![], lshw: None });
    // What bty-web reads the same way: null lshw, lsblk columns it drops, null booleans.
    let inv: Inventory = serde_json::from_str(
        r#"{"disks": [{"path": "/dev/nvme0n1", "serial": null, "rm": "0", "removable": null}],
            "lshw": null}"#,
    )
    .unwrap();
    assert_eq!(inv.lshw, None);
    assert_eq!(
        inv.disks,
        [InventoryDisk {
            path: "/dev/nvme0n1".into(),
            size: None,
            vendor: None,
            model: None,
            serial: None,
            tran: None,
            removable: false,
            readonly: false
        }]
    );
    for bad in [
        r#"{}"#,
        r#"{"disks": {}}"#,
        r#"{"disks": [], "extra": 1}"#,
        r#"{"disks": ["/dev/sda"]}"#,
        r#"{"disks": [{"size": "1G"}]}"#,
        r#"{"disks": [{"path": 1}]}"#,
        r#"{"disks": [{"path": "/dev/sda", "size": 500}]}"#,
        r#"{"disks": [{"path": "/dev/sda", "removable": "0"}]}"#,
    ] {
        refused::<Inventory>(bad);
    }
}
