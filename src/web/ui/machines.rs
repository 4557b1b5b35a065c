//! The machines pages: the live table and one machine's detail with its assignment form.

use std::collections::{BTreeSet, HashMap};

use crate::web::bulk::Filter;
use crate::web::db::{CatalogEntry, Machine};
use crate::web::ui::pages::{PageResult, event_table, not_found};
use crate::web::ui::template::{Escape, Html, Val, render};
use crate::web::ui::{Ctx, FormState, page, short};
use crate::wire::{BootMode, Progress};

const MACHINES: &str = include_str!("../../../html/machines.html");
const MACHINE: &str = include_str!("../../../html/machine.html");

/// ref → name of every catalog entry.
fn image_names(catalog: &[CatalogEntry]) -> HashMap<&str, &str> {
    catalog.iter().map(|e| (e.bty_image_ref.as_str(), e.name.as_str())).collect()
}

/// Rows a page shows unless `per` says otherwise, and the most it may ask for.
const PER_PAGE: usize = 100;
const MAX_PER_PAGE: usize = 500;

/// `GET /ui/machines`, filtered by `q` (text), `label` and `status`, one page of `per` rows
/// (`page` from 1). The table carries the fleet version it shows, read before the machines,
/// from which app.js follows the delta feed.
pub fn list(ctx: &Ctx<'_>) -> PageResult {
    let app = ctx.app;
    let version = app.hub.version();
    let catalog = app.db.catalog()?;
    let names = image_names(&catalog);
    let q = ctx.req.param("q").unwrap_or("").trim().to_lowercase();
    let label = ctx.req.param("label").unwrap_or("");
    let status = ctx.req.param("status").unwrap_or("");
    let per = ctx
        .req
        .param("per")
        .and_then(|v| v.parse().ok())
        .filter(|n| (1..=MAX_PER_PAGE).contains(n))
        .unwrap_or(PER_PAGE);
    let asked = ctx.req.param("page").and_then(|v| v.parse::<usize>().ok()).unwrap_or(1).max(1);
    let (all_labels, total) = app.db.labels_and_count()?;
    let labels: BTreeSet<&str> = all_labels.iter().map(String::as_str).collect();
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
    let filter = Filter { q: q.clone(), label: label.to_string(), status: status.to_string() };
    // A page past the end (the fleet shrank since the link was made) shows the last one.
    let last = |shown: usize| shown.div_ceil(per).max(1);
    let (shown, page_no, on_page) = if q.is_empty() {
        // Label and state only: SQL reads the page's rows and a count, not the fleet.
        let assigned = match status {
            "assigned" => Some(true),
            "discovered" => Some(false),
            _ => None,
        };
        let label = Some(label).filter(|l| !l.is_empty());
        // The page number comes from the URL: past the end (however far) is the last page.
        let (shown, rows) =
            app.db.machines_page(label, assigned, (asked - 1).saturating_mul(per), per)?;
        let page_no = asked.min(last(shown));
        if page_no == asked {
            (shown, page_no, rows)
        } else {
            let (shown, rows) = app.db.machines_page(label, assigned, (page_no - 1) * per, per)?;
            (shown, page_no, rows)
        }
    } else {
        // The text also matches image names, with Unicode case folding: the same
        // `Filter::keep` as the bulk change's "all matching the filter", over every machine.
        // The scan reads only the columns the filter needs; the page's rows are read whole.
        let keys = app.db.machine_keys()?;
        let shown: Vec<&str> =
            keys.iter().filter(|k| filter.keep_key(k, &names)).map(|k| k.mac.as_str()).collect();
        let page_no = asked.min(last(shown.len()));
        let mut rows = Vec::with_capacity(per);
        for mac in shown.iter().skip((page_no - 1) * per).take(per) {
            // One deleted since the scan is left out, as a later load would.
            rows.extend(app.db.machine(mac)?);
        }
        (shown.len(), page_no, rows)
    };
    let pages = last(shown);
    let first = (page_no - 1) * per;
    let mut rows = Html::with_capacity(on_page.len() * 400);
    {
        let progress = app.progress.lock().unwrap_or_else(|p| p.into_inner());
        for m in &on_page {
            machine_row(&mut rows, m, &names, progress.get(&m.mac));
        }
    }
    // For the script's live rows; `<` is escaped so the JSON cannot end the script element.
    let names_json = Html::script_json(&names);
    let count = if on_page.is_empty() {
        format!("0 of {total} machines")
    } else {
        format!(
            "rows {}–{} of {shown} matching, {total} machines in all",
            first + 1,
            first + on_page.len(),
        )
    };
    let pager = pager(ctx, page_no, pages, per);
    let bulk_form = super::bulk::form(ctx, &catalog, &labels, &filter, shown);
    let body = render(
        MACHINES,
        &[
            ("q", Val::Text(ctx.req.param("q").unwrap_or(""))),
            ("label_options", Val::Html(&label_options)),
            ("status_options", Val::Html(&status_options)),
            ("count", Val::Text(&count)),
            ("image_names", Val::Html(&names_json)),
            ("version", Val::Text(&version.to_string())),
            ("first_page", Val::Text(if page_no == 1 { "1" } else { "" })),
            ("last_page", Val::Text(if page_no == pages { "1" } else { "" })),
            ("rows", Val::Html(&rows)),
            ("pager", Val::Html(&pager)),
            ("bulk", Val::Html(&bulk_form)),
        ],
    );
    Ok(page(ctx, "machines", "Machines", 200, &body))
}

/// Previous and next links, keeping the filter and the page size.
fn pager(ctx: &Ctx<'_>, page_no: usize, pages: usize, per: usize) -> Html {
    let mut h = Html::new();
    if pages == 1 {
        return h;
    }
    let href = |n: usize| {
        let mut url = format!("/ui/machines?page={n}");
        for k in ["q", "label", "status"] {
            if let Some(v) = ctx.req.param(k).filter(|v| !v.is_empty()) {
                url.push_str(&format!("&{k}={}", super::percent_encode(v)));
            }
        }
        if per != PER_PAGE {
            url.push_str(&format!("&per={per}"));
        }
        url
    };
    h.push(format_args!("<nav class=\"pager\" aria-label=\"pages of machines\">"));
    if page_no > 1 {
        h.push(format_args!(
            "<a rel=\"prev\" href=\"{}\">previous</a> ",
            Escape(&href(page_no - 1))
        ));
    }
    h.push(format_args!("<span>page {page_no} of {pages}</span>"));
    if page_no < pages {
        h.push(format_args!(" <a rel=\"next\" href=\"{}\">next</a>", Escape(&href(page_no + 1))));
    }
    h.push(format_args!("</nav>\n"));
    h
}

/// One row of the machines table; app.js builds the same row from the live snapshot.
fn machine_row(
    out: &mut Html,
    m: &Machine,
    names: &HashMap<&str, &str>,
    progress: Option<&Progress>,
) {
    let mac = Escape(&m.mac);
    // The checkbox belongs to the bulk form under the table (`form=`), as forms cannot nest.
    out.push(format_args!(
        "<tr id=\"m-{}\" data-mac=\"{mac}\"><td><input type=\"checkbox\" name=\"mac\" value=\"{mac}\" \
         form=\"bulk\" aria-label=\"select {mac}\"></td>\
         <td><a class=\"mono\" href=\"/ui/machines/{mac}\">{mac}</a></td><td>",
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
    out.push(format_args!("</td><td>{}</td><td>", Escape(m.boot_mode.as_str())));
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

/// `GET /ui/machines/{mac}`, or the form again with the user's input and the error.
pub fn detail(ctx: &Ctx<'_>, mac: &str, state: Option<FormState>) -> PageResult {
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
    let mode = input("boot_mode", Some(m.boot_mode.as_str()));
    let labels = match &state {
        Some(s) => super::field(&s.fields, "labels").unwrap_or("").to_string(),
        None => m.labels.join(", "),
    };
    let sanboot = input("sanboot_drive", m.sanboot_drive.as_deref());

    let image_options = image_options(&catalog, &image);
    let disks: Vec<serde_json::Value> =
        m.known_disks.as_ref().and_then(|d| d.as_array().cloned()).unwrap_or_default();
    let disk_options = disk_options(&disks, &serial);
    let mode_options = mode_options(&mode);

    let facts = facts(ctx, &m);

    let disk_table = disk_table(&disks);

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
    let body = render(
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
    );
    let status = if state.is_some() { 422 } else { 200 };
    Ok(page(ctx, "machines", &format!("Machine {}", m.mac), status, &body))
}

/// A string field of an inventory disk, empty when it has none.
fn s(d: &serde_json::Value, k: &str) -> String {
    d.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string()
}

/// The image `<select>`: the catalog, and the current ref when the catalog no longer has it.
fn image_options(catalog: &[CatalogEntry], image: &str) -> Html {
    let mut image_options = Html::new();
    image_options.push(format_args!("<option value=\"\">none (not assigned)</option>\n"));
    let mut image_known = image.is_empty();
    for e in catalog {
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
            Escape(image),
            Escape(image)
        ));
    }
    image_options
}

/// The target disk `<select>`: the disks of the last inventory that have a serial, and the
/// current serial when that inventory does not list it.
fn disk_options(disks: &[serde_json::Value], serial: &str) -> Html {
    let mut disk_options = Html::new();
    disk_options.push(format_args!("<option value=\"\">none</option>\n"));
    let mut serial_known = serial.is_empty();
    for d in disks {
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
            Escape(serial),
            Escape(serial)
        ));
    }
    disk_options
}

fn mode_options(mode: &str) -> Html {
    let mut mode_options = Html::new();
    for bm in BootMode::ALL.map(BootMode::as_str) {
        let sel = if bm == mode { " selected" } else { "" };
        mode_options.push(format_args!("<option value=\"{bm}\"{sel}>{bm}</option>\n"));
    }
    mode_options
}

/// The facts list at the top of the page, with the live flash progress.
fn facts(ctx: &Ctx<'_>, m: &Machine) -> Html {
    let mac = m.mac.as_str();
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
    fact("Boot mode", Some(m.boot_mode.as_str()));
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
    fact("Updated", Some(&m.updated_at));
    // app.js keeps this one current from the delta feed from `version`, in the same words.
    let version = ctx.app.hub.version();
    let progress = match ctx.app.progress.lock().unwrap_or_else(|p| p.into_inner()).get(mac) {
        Some(p) => match p.total_bytes.filter(|t| *t > 0) {
            Some(t) => format!("{} {}%", p.phase, p.written_bytes.min(t) * 100 / t),
            None => format!("{} {} bytes", p.phase, p.written_bytes),
        },
        None => "-".to_string(),
    };
    facts.push(format_args!(
        "<dt>Flash progress</dt><dd id=\"live-progress\" data-mac=\"{}\" \
         data-version=\"{version}\">{}</dd>\n",
        Escape(&m.mac),
        Escape(&progress)
    ));
    facts
}

/// The disks of the last inventory, as a table.
fn disk_table(disks: &[serde_json::Value]) -> Html {
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
        for d in disks {
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
    disk_table
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
