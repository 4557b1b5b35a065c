//! The pages (GET): each gathers what it shows and fills its template. Tables are built here
//! with every value escaped; templates hold the fixed markup.

use std::collections::{BTreeSet, HashMap};

use crate::web::db::{CatalogEntry, Event, Machine};
use crate::web::http::Resp;
use crate::web::routes::internal;
use crate::web::ui::template::{Escape, Html, Val, render};
use crate::web::ui::{Ctx, page};
use crate::web::validate;

const DASHBOARD: &str = include_str!("../../../html/dashboard.html");
const MACHINES: &str = include_str!("../../../html/machines.html");
const MACHINE: &str = include_str!("../../../html/machine.html");
const IMAGES: &str = include_str!("../../../html/images.html");
const EVENTS: &str = include_str!("../../../html/events.html");
const NETBOOT: &str = include_str!("../../../html/netboot.html");
const SETTINGS: &str = include_str!("../../../html/settings.html");
const ACCOUNT: &str = include_str!("../../../html/account.html");
const BACKUPS: &str = include_str!("../../../html/backups.html");

/// Where "Fetch the default catalog" imports from (the upstream image builder's release).
pub const DEFAULT_CATALOG: &str =
    "https://github.com/safl/nosi/releases/latest/download/catalog.toml";

/// Answers `GET /ui/<segs>`.
pub fn get(ctx: &Ctx<'_>, segs: &[&str]) -> Resp {
    let r = match segs {
        ["dashboard"] => dashboard(ctx),
        ["machines"] => machines(ctx),
        ["machines", mac] => match validate::normalize_mac(mac) {
            Ok(mac) => machine(ctx, &mac, None),
            Err(e) => Ok(not_found(ctx, &e.to_string())),
        },
        ["images"] => images(ctx, None),
        ["events"] => events(ctx),
        ["netboot"] => netboot(ctx),
        ["backups"] => backups(ctx),
        ["settings"] => settings(ctx, None),
        ["account"] => account(ctx),
        _ => Ok(not_found(ctx, "There is no such page.")),
    };
    r.unwrap_or_else(internal)
}

type PageResult = crate::error::Result<Resp>;

pub fn not_found(ctx: &Ctx<'_>, msg: &str) -> Resp {
    let mut body = Html::new();
    body.push(format_args!("<p>{}</p><p><a href=\"/ui/dashboard\">Dashboard</a></p>", Escape(msg)));
    page(ctx, "", "Not found", 404, &body)
}

fn dashboard(ctx: &Ctx<'_>) -> PageResult {
    let app = ctx.app;
    let machines = app.db.machines()?;
    let catalog = app.db.catalog()?;
    let discovered = machines.iter().filter(|m| m.bty_image_ref.is_none()).count();
    let recent = app.db.events(None, None, 10, None)?;
    // Logins and saves are routine; failures, orphan contacts and schema resets want a look.
    let warning = |k: &str| k.ends_with(".failed") || k.contains("orphan") || k.contains("reset");
    let unacked = app
        .db
        .events(None, None, 500, None)?
        .iter()
        .filter(|e| !e.acknowledged && warning(&e.kind))
        .count();
    let s = &app.settings;
    let boot = s.boot_dir();
    let missing: Vec<&str> = [s.get("boot", "kernel"), s.get("boot", "initrd")]
        .into_iter()
        .filter(|n| !boot.join(n).is_file())
        .collect();
    let mut checks = Html::new();
    let mut check = |ok: Option<bool>, what: &str, detail: String, fix: &str| {
        let (cls, word) = match ok {
            Some(true) => ("ok", "ok"),
            Some(false) => ("bad", "needs attention"),
            None => ("new", "not checked"),
        };
        checks.push(format_args!(
            "<tr><td>{}</td><td><span class=\"badge {cls}\">{word}</span></td><td>{}",
            Escape(what),
            Escape(&detail)
        ));
        match ok {
            Some(true) => {}
            Some(false) => checks.push(format_args!(" <a href=\"{fix}\">Fix this</a>")),
            None => checks.push(format_args!(" <a href=\"{fix}\">Details</a>")),
        }
        checks.push(format_args!("</td></tr>\n"));
    };
    check(
        Some(missing.is_empty()),
        "Netboot artifacts present",
        if missing.is_empty() {
            format!("kernel and initrd are in {}", boot.display())
        } else {
            format!("missing from {}: {}", boot.display(), missing.join(", "))
        },
        "/ui/netboot",
    );
    check(
        Some(!catalog.is_empty()),
        "Image catalog not empty",
        format!("{} entries", catalog.len()),
        "/ui/images",
    );
    check(
        None,
        "TFTP daemon",
        "bty-web does not run or watch a TFTP daemon yet".into(),
        "/ui/netboot#tftp",
    );
    check(
        Some(!s.default_password()),
        "Admin password changed",
        if s.default_password() {
            "the built-in default password is in use".into()
        } else {
            format!("set ({})", s.source("admin", "password"))
        },
        "/ui/account",
    );
    let body = Html(render(
        DASHBOARD,
        &[
            ("machines", Val::Text(&machines.len().to_string())),
            ("discovered", Val::Text(&discovered.to_string())),
            ("images", Val::Text(&catalog.len().to_string())),
            ("unacked", Val::Text(&unacked.to_string())),
            ("checks", Val::Html(&checks)),
            ("events", Val::Html(&event_table(ctx, &recent, false))),
        ],
    ));
    Ok(page(ctx, "dashboard", "Dashboard", 200, &body))
}

/// The first 12 characters of a digest or reference, for display (cut on a character boundary
/// whatever the stored text holds).
fn short(s: &str) -> &str {
    s.char_indices().nth(12).map(|(i, _)| &s[..i]).unwrap_or(s)
}

/// ref → name of every catalog entry.
fn image_names(catalog: &[CatalogEntry]) -> HashMap<&str, &str> {
    catalog.iter().map(|e| (e.bty_image_ref.as_str(), e.name.as_str())).collect()
}

fn machines(ctx: &Ctx<'_>) -> PageResult {
    let app = ctx.app;
    let all = app.db.machines()?;
    let catalog = app.db.catalog()?;
    let names = image_names(&catalog);
    let progress = app.progress.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let q = ctx.req.param("q").unwrap_or("").trim().to_lowercase();
    let label = ctx.req.param("label").unwrap_or("");
    let status = ctx.req.param("status").unwrap_or("");
    let labels: BTreeSet<&str> =
        all.iter().flat_map(|m| m.labels.iter().map(String::as_str)).collect();
    let mut label_options = Html::new();
    for l in &labels {
        let sel = if *l == label { " selected" } else { "" };
        label_options.push(format_args!("<option{sel}>{}</option>\n", Escape(l)));
    }
    let mut status_options = Html::new();
    for (v, text) in [("", "all"), ("discovered", "discovered only"), ("assigned", "assigned only")]
    {
        let sel = if v == status { " selected" } else { "" };
        status_options.push(format_args!("<option value=\"{v}\"{sel}>{text}</option>\n"));
    }
    let keep = |m: &Machine| {
        if !label.is_empty() && !m.labels.iter().any(|l| l == label) {
            return false;
        }
        match status {
            "discovered" if m.bty_image_ref.is_some() => return false,
            "assigned" if m.bty_image_ref.is_none() => return false,
            _ => {}
        }
        if q.is_empty() {
            return true;
        }
        let image = m.bty_image_ref.as_deref().and_then(|r| names.get(r)).copied().unwrap_or("");
        let hay = format!(
            "{} {} {} {} {}",
            m.mac,
            m.last_seen_ip.as_deref().unwrap_or(""),
            m.boot_mode,
            image,
            m.labels.join(" ")
        );
        hay.to_lowercase().contains(&q)
    };
    let mut rows = Html(String::with_capacity(all.len() * 400));
    let mut shown = 0;
    for m in all.iter().filter(|m| keep(m)) {
        shown += 1;
        machine_row(&mut rows, m, &names, progress.get(&m.mac));
    }
    // For the script's live rows; `<` is escaped so the JSON cannot end the script element.
    let names_json = serde_json::to_string(&names)
        .unwrap_or_else(|_| "{}".into())
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026");
    let count = format!("{shown} of {} machines", all.len());
    let body = Html(render(
        MACHINES,
        &[
            ("q", Val::Text(ctx.req.param("q").unwrap_or(""))),
            ("label_options", Val::Html(&label_options)),
            ("status_options", Val::Html(&status_options)),
            ("count", Val::Text(&count)),
            ("image_names", Val::Html(&Html(names_json))),
            ("rows", Val::Html(&rows)),
        ],
    ));
    Ok(page(ctx, "machines", "Machines", 200, &body))
}

/// One row of the machines table; app.js builds the same row from the live snapshot.
fn machine_row(
    out: &mut Html,
    m: &Machine,
    names: &HashMap<&str, &str>,
    progress: Option<&validate::PxeProgress>,
) {
    let mac = Escape(&m.mac);
    out.push(format_args!(
        "<tr id=\"m-{}\"><td><a class=\"mono\" href=\"/ui/machines/{mac}\">{mac}</a></td><td>",
        m.mac.replace(':', "")
    ));
    if m.bty_image_ref.is_some() {
        out.push(format_args!("<span class=\"badge ok\">assigned</span>"));
    } else {
        out.push(format_args!("<span class=\"badge new\">discovered</span>"));
    }
    if m.last_status.as_deref().is_some_and(|s| s.starts_with("failed")) {
        out.push(format_args!("<span class=\"badge bad\">failed</span>"));
    }
    out.push(format_args!("</td><td>"));
    for l in &m.labels {
        out.push(format_args!("<span class=\"label\">{}</span>", Escape(l)));
    }
    out.push(format_args!("</td><td>{}</td><td>", Escape(&m.boot_mode)));
    match m.bty_image_ref.as_deref() {
        Some(r) => match names.get(r) {
            Some(n) => out.push(format_args!("{}", Escape(n))),
            None => out.push(format_args!("{}", Escape(short(r)))),
        },
        None => out.push(format_args!("-")),
    }
    out.push(format_args!("</td><td>"));
    match (&m.last_seen_at, &m.last_seen_ip) {
        (Some(at), Some(ip)) => out.push(format_args!("{} from {}", Escape(at), Escape(ip))),
        (Some(at), None) => out.push(format_args!("{}", Escape(at))),
        _ => out.push(format_args!("never")),
    }
    out.push(format_args!("</td><td>"));
    match (progress, &m.last_flashed_at) {
        (Some(p), _) => {
            let pct = p.total_bytes.filter(|t| *t > 0).map(|t| p.written_bytes.min(t) * 100 / t);
            match p.total_bytes {
                Some(t) => out.push(format_args!(
                    "<progress max=\"{t}\" value=\"{}\" aria-label=\"flash progress of {mac}\"></progress>",
                    p.written_bytes.min(t)
                )),
                None => out.push(format_args!(
                    "<progress aria-label=\"flash progress of {mac}\"></progress>"
                )),
            }
            out.push(format_args!("<span> {}", Escape(&p.phase)));
            if let Some(pct) = pct {
                out.push(format_args!(" {pct}%"));
            }
            out.push(format_args!("</span>"));
        }
        (None, Some(at)) => out.push(format_args!("done {}", Escape(at))),
        (None, None) => out.push(format_args!("-")),
    }
    out.push(format_args!("</td></tr>\n"));
}

/// What the machine form showed and why it was refused, to render it again.
pub struct FormState {
    pub fields: Vec<(String, String)>,
    /// (field name or "" for the form as a whole, message)
    pub error: (String, String),
}

/// `GET /ui/machines/{mac}`, or the form again with the user's input and the error.
pub fn machine(ctx: &Ctx<'_>, mac: &str, state: Option<FormState>) -> PageResult {
    let app = ctx.app;
    let Some(m) = app.db.machine(mac)? else {
        return Ok(not_found(ctx, &format!("No machine record for {mac}.")));
    };
    let catalog = app.db.catalog()?;
    let events = app.db.events(None, Some(mac), 20, None)?;
    let lshw = app.db.lshw(mac)?.flatten();
    let input = |name: &str, current: Option<&str>| -> String {
        match &state {
            Some(s) => super::field(&s.fields, name).unwrap_or("").to_string(),
            None => current.unwrap_or("").to_string(),
        }
    };
    let image = input("bty_image_ref", m.bty_image_ref.as_deref());
    let serial = input("target_disk_serial", m.target_disk_serial.as_deref());
    let mode = input("boot_mode", Some(&m.boot_mode));
    let labels = match &state {
        Some(s) => super::field(&s.fields, "labels").unwrap_or("").to_string(),
        None => m.labels.join(", "),
    };
    let sanboot = input("sanboot_drive", m.sanboot_drive.as_deref());

    let mut image_options = Html::new();
    image_options.push(format_args!("<option value=\"\">none (not assigned)</option>\n"));
    let mut image_known = image.is_empty();
    for e in &catalog {
        let sel = if e.bty_image_ref == image { " selected" } else { "" };
        image_known |= e.bty_image_ref == image;
        image_options.push(format_args!(
            "<option value=\"{}\"{sel}>{} ({})</option>\n",
            Escape(&e.bty_image_ref),
            Escape(&e.name),
            Escape(&e.src)
        ));
    }
    if !image_known {
        image_options.push(format_args!(
            "<option value=\"{}\" selected>{} (not in the catalog)</option>\n",
            Escape(&image),
            Escape(&image)
        ));
    }
    let disks: Vec<serde_json::Value> =
        m.known_disks.as_ref().and_then(|d| d.as_array().cloned()).unwrap_or_default();
    let s = |d: &serde_json::Value, k: &str| {
        d.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string()
    };
    let mut disk_options = Html::new();
    disk_options.push(format_args!("<option value=\"\">none</option>\n"));
    let mut serial_known = serial.is_empty();
    for d in &disks {
        let ser = s(d, "serial");
        if ser.is_empty() {
            continue;
        }
        let sel = if ser == serial { " selected" } else { "" };
        serial_known |= ser == serial;
        disk_options.push(format_args!(
            "<option value=\"{}\"{sel}>{} {} {} (serial {})</option>\n",
            Escape(&ser),
            Escape(&s(d, "path")),
            Escape(&s(d, "size")),
            Escape(&s(d, "model")),
            Escape(&ser)
        ));
    }
    if !serial_known {
        disk_options.push(format_args!(
            "<option value=\"{}\" selected>serial {} (not in the last inventory)</option>\n",
            Escape(&serial),
            Escape(&serial)
        ));
    }
    let mut mode_options = Html::new();
    for bm in validate::BOOT_MODES {
        let sel = if bm == mode { " selected" } else { "" };
        mode_options.push(format_args!("<option value=\"{bm}\"{sel}>{bm}</option>\n"));
    }

    let mut facts = Html::new();
    let mut fact = |k: &str, v: Option<&str>| {
        facts.push(format_args!(
            "<dt>{}</dt><dd>{}</dd>\n",
            Escape(k),
            Escape(v.filter(|v| !v.is_empty()).unwrap_or("-"))
        ));
    };
    fact("MAC", Some(&m.mac));
    fact(
        "State",
        Some(if m.bty_image_ref.is_some() { "assigned" } else { "discovered, not assigned" }),
    );
    fact("Boot mode", Some(&m.boot_mode));
    fact("Labels", Some(&m.labels.join(", ")));
    fact("Discovered", m.discovered_at.as_deref());
    fact(
        "Last seen",
        m.last_seen_at
            .as_deref()
            .map(|at| format!("{at} from {}", m.last_seen_ip.as_deref().unwrap_or("?")))
            .as_deref(),
    );
    fact("Last flashed", m.last_flashed_at.as_deref());
    fact("Last status", m.last_status.as_deref());
    fact("Inventory posted", m.known_disks_at.as_deref());
    if let Some(p) = app.progress.lock().unwrap_or_else(|p| p.into_inner()).get(mac) {
        let of = p.total_bytes.map(crate::units::bytes).unwrap_or_else(|| "?".into());
        fact(
            "Flash progress",
            Some(&format!("{} {} of {of}", p.phase, crate::units::bytes(p.written_bytes))),
        );
    }
    fact("Updated", Some(&m.updated_at));

    let mut disk_table = Html::new();
    if disks.is_empty() {
        disk_table.push(format_args!(
            "<p>No inventory yet: the live environment posts one when the machine boots it \
             (boot mode bty-inventory).</p>"
        ));
    } else {
        disk_table.push(format_args!(
            "<div class=\"scroll\"><table class=\"list\"><thead><tr><th scope=\"col\">Path</th>\
             <th scope=\"col\">Size</th><th scope=\"col\">Vendor</th><th scope=\"col\">Model</th>\
             <th scope=\"col\">Serial</th><th scope=\"col\">Transport</th><th scope=\"col\">Flags</th>\
             </tr></thead><tbody>\n"
        ));
        for d in &disks {
            let mut flags = Vec::new();
            if d.get("removable").and_then(|v| v.as_bool()) == Some(true) {
                flags.push("removable");
            }
            if d.get("readonly").and_then(|v| v.as_bool()) == Some(true) {
                flags.push("read-only");
            }
            disk_table.push(format_args!(
                "<tr><td class=\"mono\">{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td></tr>\n",
                Escape(&s(d, "path")),
                Escape(&s(d, "size")),
                Escape(&s(d, "vendor")),
                Escape(&s(d, "model")),
                Escape(&s(d, "serial")),
                Escape(&s(d, "tran")),
                flags.join(", ")
            ));
        }
        disk_table.push(format_args!("</tbody></table></div>"));
    }

    let hardware = hardware_summary(&m.mac, lshw.as_deref());
    let err = |name: &str| -> Html {
        let mut h = Html::new();
        if let Some(s) = &state {
            if s.error.0 == name {
                h.push(format_args!(
                    "<p class=\"field-error\" role=\"alert\">{}</p>",
                    Escape(&s.error.1)
                ));
            }
        }
        h
    };
    let body = Html(render(
        MACHINE,
        &[
            ("mac", Val::Text(&m.mac)),
            ("csrf", Val::Text(&ctx.csrf)),
            ("facts", Val::Html(&facts)),
            ("hardware", Val::Html(&hardware)),
            ("disks", Val::Html(&disk_table)),
            ("form_error", Val::Html(&err(""))),
            ("image_options", Val::Html(&image_options)),
            ("err_bty_image_ref", Val::Html(&err("bty_image_ref"))),
            ("disk_options", Val::Html(&disk_options)),
            ("err_target_disk_serial", Val::Html(&err("target_disk_serial"))),
            ("mode_options", Val::Html(&mode_options)),
            ("err_boot_mode", Val::Html(&err("boot_mode"))),
            ("labels", Val::Text(&labels)),
            ("err_labels", Val::Html(&err("labels"))),
            ("sanboot_drive", Val::Text(&sanboot)),
            ("err_sanboot_drive", Val::Html(&err("sanboot_drive"))),
            ("events", Val::Html(&event_table(ctx, &events, true))),
        ],
    ));
    let status = if state.is_some() { 422 } else { 200 };
    Ok(page(ctx, "machines", &format!("Machine {}", m.mac), status, &body))
}

/// The parts of an lshw tree an operator looks for first: system, CPUs, memory, NICs.
fn hardware_summary(mac: &str, lshw: Option<&str>) -> Html {
    let mut h = Html::new();
    let Some(tree) = lshw.and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok()) else {
        h.push(format_args!(
            "<p>No hardware report yet: the live environment sends one (lshw) with its inventory.</p>"
        ));
        return h;
    };
    let text =
        |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let mut cpus = Vec::new();
    let mut memory = 0u64;
    let mut nics = Vec::new();
    let mut stack = vec![&tree];
    let mut seen = 0;
    while let Some(n) = stack.pop() {
        seen += 1;
        if seen > 10_000 {
            break;
        }
        match n.get("class").and_then(|c| c.as_str()) {
            Some("processor") => cpus.extend(text(n, "product")),
            Some("memory")
                if text(n, "id").is_some_and(|i| i == "memory" || i.starts_with("memory:")) =>
            {
                memory += n.get("size").and_then(|s| s.as_u64()).unwrap_or(0)
            }
            Some("network") => nics.push(format!(
                "{} {}",
                text(n, "product").unwrap_or_default(),
                text(n, "serial").unwrap_or_default()
            )),
            _ => {}
        }
        if let Some(c) = n.get("children").and_then(|c| c.as_array()) {
            stack.extend(c.iter());
        }
    }
    let system = format!(
        "{} {}",
        text(&tree, "vendor").unwrap_or_default(),
        text(&tree, "product").unwrap_or_default()
    );
    h.push(format_args!("<dl class=\"facts\">"));
    let mut row = |k: &str, v: &str| {
        h.push(format_args!(
            "<dt>{}</dt><dd>{}</dd>\n",
            Escape(k),
            Escape(if v.trim().is_empty() { "-" } else { v.trim() })
        ))
    };
    row("System", &system);
    row("Serial", &text(&tree, "serial").unwrap_or_default());
    row(
        "CPUs",
        &if cpus.is_empty() { String::new() } else { format!("{} × {}", cpus.len(), cpus[0]) },
    );
    row("Memory", &if memory > 0 { crate::units::bytes(memory) } else { String::new() });
    row("Network", &nics.join("; "));
    h.push(format_args!(
        "</dl><p><a href=\"/machines/{}/lshw.json\">Download the full lshw report</a></p>",
        Escape(mac)
    ));
    h
}

/// Values of the add-by-URL form to show again, with the error.
pub struct AddState {
    pub fields: Vec<(String, String)>,
    pub error: String,
}

pub fn images(ctx: &Ctx<'_>, state: Option<AddState>) -> PageResult {
    let catalog = ctx.app.db.catalog()?;
    let mut entries = Html::new();
    if catalog.is_empty() {
        entries.push(format_args!(
            "<p>The catalog is empty. Add an image by URL, upload a catalog file or fetch the default catalog.</p>"
        ));
    } else {
        entries.push(format_args!(
            "<div class=\"scroll\"><table class=\"list\"><thead><tr><th scope=\"col\">Name</th>\
             <th scope=\"col\">Format</th><th scope=\"col\">Size</th><th scope=\"col\">sha256</th>\
             <th scope=\"col\">Source</th><th scope=\"col\">Added</th><th scope=\"col\">Delete</th>\
             </tr></thead><tbody>\n"
        ));
        for e in &catalog {
            let sha = e.disk_image_sha.as_deref().map(short).unwrap_or("not pinned");
            let size = e.size_bytes.and_then(|n| u64::try_from(n).ok()).map(crate::units::bytes);
            entries.push(format_args!(
                "<tr><td>{}{}</td><td>{}</td><td>{}</td><td class=\"mono\" title=\"{}\">{}</td>\
                 <td class=\"mono\">{}</td><td>{}</td><td>\
                 <form method=\"post\" action=\"/ui/catalog/delete\" data-confirm=\"Delete {}?\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                 <input type=\"hidden\" name=\"src\" value=\"{}\">\
                 <button type=\"submit\" class=\"danger\" aria-label=\"Delete {}\">Delete</button></form></td></tr>\n",
                Escape(&e.name),
                e.description
                    .as_deref()
                    .map(|d| format!("<br><span class=\"hint\">{}</span>", Escape(d)))
                    .unwrap_or_default(),
                Escape(&e.format),
                Escape(size.as_deref().unwrap_or("-")),
                Escape(e.disk_image_sha.as_deref().unwrap_or("")),
                Escape(sha),
                Escape(&e.src),
                Escape(&e.added_at),
                Escape(&e.name),
                Escape(&ctx.csrf),
                Escape(&e.src),
                Escape(&e.name),
            ));
        }
        entries.push(format_args!("</tbody></table></div>"));
    }
    let f = |k: &str| -> String {
        state.as_ref().and_then(|s| super::field(&s.fields, k)).unwrap_or("").to_string()
    };
    let mut add_error = Html::new();
    if let Some(s) = &state {
        add_error
            .push(format_args!("<p class=\"field-error\" role=\"alert\">{}</p>", Escape(&s.error)));
    }
    let body = Html(render(
        IMAGES,
        &[
            ("csrf", Val::Text(&ctx.csrf)),
            ("default_catalog", Val::Text(&upstream(ctx)?.0)),
            ("entries", Val::Html(&entries)),
            ("add_error", Val::Html(&add_error)),
            ("image_url", Val::Text(&f("image_url"))),
            ("sha_url", Val::Text(&f("sha_url"))),
            ("name", Val::Text(&f("name"))),
            ("description", Val::Text(&f("description"))),
        ],
    ));
    Ok(page(ctx, "images", "Images", if state.is_some() { 422 } else { 200 }, &body))
}

/// A table of events; with acknowledge buttons when `ack`.
fn event_table(ctx: &Ctx<'_>, events: &[Event], ack: bool) -> Html {
    let mut h = Html::new();
    if events.is_empty() {
        h.push(format_args!("<p>No events.</p>"));
        return h;
    }
    h.push(format_args!(
        "<div class=\"scroll\"><table class=\"list\"><thead><tr><th scope=\"col\">#</th>\
         <th scope=\"col\">Time</th><th scope=\"col\">Kind</th><th scope=\"col\">Subject</th>\
         <th scope=\"col\">Message</th><th scope=\"col\">Acknowledged</th></tr></thead><tbody>\n"
    ));
    for e in events {
        h.push(format_args!(
            "<tr><td>{}</td><td>{}</td><td><a href=\"/ui/events?kind={}\">{}</a></td><td>",
            e.id,
            Escape(&e.at),
            Escape(&super::percent_encode(&e.kind)),
            Escape(&e.kind)
        ));
        if let Some(s) = &e.subject_id {
            if validate::normalize_mac(s).is_ok() {
                h.push(format_args!(
                    "<a class=\"mono\" href=\"/ui/machines/{0}\">{0}</a>",
                    Escape(s)
                ));
            } else {
                h.push(format_args!("<span class=\"mono\">{}</span>", Escape(short(s))));
            }
        }
        h.push(format_args!("</td><td>{}</td><td>", Escape(&e.message)));
        if e.acknowledged {
            h.push(format_args!("yes"));
        } else if ack {
            h.push(format_args!(
                "<form method=\"post\" action=\"/ui/events/{}/ack\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                 <button type=\"submit\" class=\"link\">Acknowledge</button></form>",
                e.id,
                Escape(&ctx.csrf)
            ));
        } else {
            h.push(format_args!("no"));
        }
        h.push(format_args!("</td></tr>\n"));
    }
    h.push(format_args!("</tbody></table></div>"));
    h
}

fn events(ctx: &Ctx<'_>) -> PageResult {
    let p = |k| ctx.req.param(k).map(str::trim).filter(|v| !v.is_empty());
    let kind = p("kind");
    let subject = p("subject_id");
    let unacked = p("unacked").is_some();
    let before = p("before_id").and_then(|b| b.parse::<i64>().ok());
    let page_size = 100;
    let mut list =
        ctx.app.db.events(kind, subject, if unacked { 500 } else { page_size }, before)?;
    let full = list.len() as u32 >= page_size && !unacked;
    if unacked {
        list.retain(|e| !e.acknowledged);
    }
    let mut more = Html::new();
    if let (true, Some(last)) = (full, list.last()) {
        let mut q = format!("before_id={}", last.id);
        if let Some(k) = kind {
            q.push_str(&format!("&kind={}", super::percent_encode(k)));
        }
        if let Some(s) = subject {
            q.push_str(&format!("&subject_id={}", super::percent_encode(s)));
        }
        more.push(format_args!("<p><a href=\"/ui/events?{}\">Older events</a></p>", Escape(&q)));
    }
    let body = Html(render(
        EVENTS,
        &[
            ("kind", Val::Text(kind.unwrap_or(""))),
            ("subject_id", Val::Text(subject.unwrap_or(""))),
            ("unacked_checked", Val::Text(if unacked { " checked" } else { "" })),
            ("events", Val::Html(&event_table(ctx, &list, true))),
            ("more", Val::Html(&more)),
        ],
    ));
    Ok(page(ctx, "events", "Events", 200, &body))
}

fn base_url(ctx: &Ctx<'_>) -> String {
    format!("http://{}", crate::web::routes::host_for_scripts(ctx.req.host()).unwrap_or("HOST"))
}

fn netboot(ctx: &Ctx<'_>) -> PageResult {
    let s = &ctx.app.settings;
    let dir = s.boot_dir();
    let expected = [s.get("boot", "kernel"), s.get("boot", "initrd")];
    let mut files: Vec<(String, Option<std::fs::Metadata>)> =
        expected.iter().map(|n| (n.to_string(), std::fs::metadata(dir.join(n)).ok())).collect();
    if let Ok(rd) = std::fs::read_dir(&dir) {
        let mut extra: Vec<(String, Option<std::fs::Metadata>)> = rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                (!name.starts_with('.') && !expected.contains(&name.as_str()))
                    .then(|| (name, e.metadata().ok().filter(|m| m.is_file())))
            })
            .filter(|(_, m)| m.is_some())
            .collect();
        extra.sort_by(|a, b| a.0.cmp(&b.0));
        files.extend(extra);
    }
    let (_, repo, tag) = upstream(ctx)?;
    let mut t = Html::new();
    t.push(format_args!(
        "<div class=\"scroll\"><table class=\"list\"><thead><tr><th scope=\"col\">File</th>\
         <th scope=\"col\">Role</th><th scope=\"col\">State</th><th scope=\"col\">Size</th>\
         <th scope=\"col\">Modified (UTC)</th></tr></thead><tbody>\n"
    ));
    for (i, (name, meta)) in files.iter().enumerate() {
        let role = match i {
            0 => "live kernel",
            1 => "live initrd",
            _ => "other",
        };
        let state = match meta {
            Some(_) => "<span class=\"badge ok\">present</span>",
            None => "<span class=\"badge bad\">missing</span>",
        };
        let size =
            meta.as_ref().map(|m| crate::units::bytes(m.len())).unwrap_or_else(|| "-".into());
        let time = meta
            .as_ref()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| crate::units::iso8601(d.as_secs()))
            .unwrap_or_else(|| "-".into());
        t.push(format_args!(
            "<tr><td class=\"mono\">{}</td><td>{role}</td><td>{state}</td><td>{}</td><td>{}</td></tr>\n",
            Escape(name),
            Escape(&size),
            Escape(&time)
        ));
    }
    t.push(format_args!("</tbody></table></div>"));
    let body = Html(render(
        NETBOOT,
        &[
            ("boot_dir", Val::Text(&dir.display().to_string())),
            ("artifacts", Val::Html(&t)),
            ("csrf", Val::Text(&ctx.csrf)),
            ("max_upload", Val::Text(&crate::units::bytes(s.max_upload()))),
            ("base", Val::Text(&base_url(ctx))),
            ("release_repo", Val::Text(&repo)),
            ("release_tag", Val::Text(&tag)),
        ],
    ));
    Ok(page(ctx, "netboot", "Netboot", 200, &body))
}

fn backups(ctx: &Ctx<'_>) -> PageResult {
    let mut list = Vec::new();
    for kind in ["backup.created", "backup.failed", "backup.pruned"] {
        list.extend(ctx.app.db.events(Some(kind), None, 20, None)?);
    }
    list.sort_by_key(|e| std::cmp::Reverse(e.id));
    let db = ctx.app.db.path().display().to_string();
    let body = Html(render(
        BACKUPS,
        &[("db", Val::Text(&db)), ("events", Val::Html(&event_table(ctx, &list, true)))],
    ));
    Ok(page(ctx, "backups", "Backups", 200, &body))
}

/// The upstream sources as the operator set them on the settings page, else the defaults:
/// (catalog URL, netboot release repo, release tag).
pub fn upstream(ctx: &Ctx<'_>) -> crate::error::Result<(String, String, String)> {
    let db = &ctx.app.db;
    let s = &ctx.app.settings;
    Ok((
        db.setting("catalog_url")?.unwrap_or_else(|| DEFAULT_CATALOG.to_string()),
        db.setting("release_repo")?.unwrap_or_else(|| s.get("boot", "release_repo").to_string()),
        db.setting("release_tag")?.unwrap_or_else(|| s.get("boot", "release_tag").to_string()),
    ))
}

pub fn settings(ctx: &Ctx<'_>, state: Option<FormState>) -> PageResult {
    let s = &ctx.app.settings;
    let mut rows = Html::new();
    for (name, value, source, help) in s.rows() {
        // Rows from a TOML file get an inline form; secrets never (their value is not shown).
        if source.starts_with("toml ") && !name.starts_with("[admin]") {
            let id = name.replace(['[', ']', ' '], "");
            rows.push(format_args!(
                "<tr><td class=\"mono\"><label for=\"cfg-{id}\">{}</label></td><td>\
                 <form method=\"post\" action=\"/ui/settings/config/edit\" class=\"inline\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                 <input type=\"hidden\" name=\"name\" value=\"{}\">\
                 <input id=\"cfg-{id}\" name=\"value\" value=\"{}\">\
                 <button type=\"submit\">Save</button></form></td><td>{}</td><td>{}</td></tr>\n",
                Escape(&name),
                Escape(&ctx.csrf),
                Escape(&name),
                Escape(&value),
                Escape(&source),
                Escape(help)
            ));
            continue;
        }
        rows.push(format_args!(
            "<tr><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td></tr>\n",
            Escape(&name),
            Escape(&value),
            Escape(&source),
            Escape(help)
        ));
    }
    let files: Vec<String> = s.files.iter().map(|f| f.display().to_string()).collect();
    let files = if files.is_empty() {
        "no configuration file (defaults and environment only)".into()
    } else {
        files.join(", ")
    };
    let host = ctx.req.host();
    let hostname = crate::web::routes::host_for_scripts(host)
        .map(|h| match h.rsplit_once(':') {
            // host:port, [v6]:port; a bare v6 address has colons but no brackets.
            Some((name, port))
                if port.bytes().all(|b| b.is_ascii_digit())
                    && (!name.contains(':') || name.ends_with(']')) =>
            {
                name
            }
            _ => h,
        })
        .unwrap_or("HOST");
    let mut addresses = Html::new();
    let list = host_addresses();
    if list.is_empty() {
        addresses.push(format_args!("none found"));
    }
    for (i, a) in list.iter().enumerate() {
        let sep = if i > 0 { ", " } else { "" };
        addresses.push(format_args!("{sep}<code>{}</code>", Escape(a)));
    }
    let (catalog_url, repo, tag) = upstream(ctx)?;
    let value = |k: &str, current: &str| -> String {
        match &state {
            Some(st) => super::field(&st.fields, k).unwrap_or("").to_string(),
            None => current.to_string(),
        }
    };
    let mut upstream_error = Html::new();
    if let Some(st) = &state {
        upstream_error.push(format_args!(
            "<p class=\"field-error\" role=\"alert\">{}</p>",
            Escape(&st.error.1)
        ));
    }
    let body = Html(render(
        SETTINGS,
        &[
            ("csrf", Val::Text(&ctx.csrf)),
            ("upstream_error", Val::Html(&upstream_error)),
            ("catalog_url", Val::Text(&value("catalog_url", &catalog_url))),
            ("release_repo", Val::Text(&value("release_repo", &repo))),
            ("release_tag", Val::Text(&value("release_tag", &tag))),
            ("files", Val::Text(&files)),
            ("rows", Val::Html(&rows)),
            ("host", Val::Text(host)),
            ("hostname", Val::Text(hostname)),
            ("addresses", Val::Html(&addresses)),
            ("base", Val::Text(&base_url(ctx))),
        ],
    ));
    let status = if state.is_some() { 422 } else { 200 };
    Ok(page(ctx, "settings", "Settings", status, &body))
}

/// This host's IPv4 addresses (the kernel's local routes) and global IPv6 addresses, from
/// /proc, for the DHCP cheatsheet; loopback left out.
fn host_addresses() -> Vec<String> {
    let mut out = BTreeSet::new();
    if let Ok(trie) = std::fs::read_to_string("/proc/net/fib_trie") {
        let mut last = "";
        for line in trie.lines() {
            let t = line.trim_start();
            if let Some(a) = t.strip_prefix("|-- ") {
                last = a.trim();
            } else if t.starts_with("/32 host LOCAL") && !last.starts_with("127.") {
                out.insert(last.to_string());
            }
        }
    }
    let mut v6 = Vec::new();
    if let Ok(list) = std::fs::read_to_string("/proc/net/if_inet6") {
        for line in list.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Scope 00 is global; link-local and loopback addresses are no use to DHCP.
            if f.len() >= 4 && f[3] == "00" && f[0].len() == 32 {
                if let Ok(a) = u128::from_str_radix(f[0], 16) {
                    v6.push(std::net::Ipv6Addr::from(a).to_string());
                }
            }
        }
    }
    out.into_iter().chain(v6).collect()
}

fn account(ctx: &Ctx<'_>) -> PageResult {
    let s = &ctx.app.settings;
    let state = if s.default_password() {
        "The built-in default password is in use: anyone who knows bty can log in. Change it."
            .to_string()
    } else {
        format!("The password is set ({}).", s.source("admin", "password"))
    };
    let secret = s.state_dir().join("session-secret").display().to_string();
    let body = Html(render(
        ACCOUNT,
        &[
            ("csrf", Val::Text(&ctx.csrf)),
            ("password_state", Val::Text(&state)),
            ("secret", Val::Text(&secret)),
        ],
    ));
    Ok(page(ctx, "account", "Account", 200, &body))
}
