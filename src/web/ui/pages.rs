//! The pages (GET) but the machines' (machines.rs): each gathers what it shows and fills its
//! template. Tables are built here
//! with every value escaped; templates hold the fixed markup.

use std::collections::BTreeSet;

use crate::web::app::internal;
use crate::web::db::{Event, JobKind};
use crate::web::http::Resp;
use crate::web::ui::template::{Escape, Html, Val, render};
use crate::web::ui::{Ctx, FormState, boot_paths, machines, page, short};
use crate::web::validate;

const DASHBOARD: &str = include_str!("../../../html/dashboard.html");
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
        ["machines"] => machines::list(ctx),
        ["machines", mac] => match validate::normalize_mac(mac) {
            Ok(mac) => machines::detail(ctx, &mac, None),
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

pub type PageResult = crate::error::Result<Resp>;

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
    let s = &app.settings();
    let boot = s.boot_dir();
    let [(kernel, initrd), (kernel_arm64, initrd_arm64)] = crate::web::release::active_all(app);
    let missing: Vec<&str> = [kernel.as_str(), initrd.as_str()]
        .into_iter()
        .filter(|n| !boot.join(n).is_file())
        .collect();
    let mut checks = Html::new();
    let mut check = |v: Verdict, what: &str, detail: String, fix: &str| {
        let (cls, word, link) = match v {
            Verdict::Ok => ("ok", "ok", None),
            Verdict::Bad => ("bad", "needs attention", Some("Fix this")),
            Verdict::Warn => ("new", "warning", Some("Details")),
        };
        checks.push(format_args!(
            "<tr><td>{}</td><td><span class=\"badge {cls}\">{word}</span></td><td>{}",
            Escape(what),
            Escape(&detail)
        ));
        if let Some(link) = link {
            checks.push(format_args!(" <a href=\"{fix}\">{link}</a>"));
        }
        checks.push(format_args!("</td></tr>\n"));
    };
    check(
        Verdict::from(missing.is_empty()),
        "Netboot artifacts present",
        if missing.is_empty() {
            format!("kernel and initrd are in {}", boot.display())
        } else {
            format!("missing from {}: {}", boot.display(), missing.join(", "))
        },
        "/ui/netboot",
    );
    // arm64 is a second kind of machine, not part of every lab: what it lacks is a warning on
    // its own row, so a lab of x86_64 machines does not look broken for it.
    let mut arm64_missing: Vec<&str> = [kernel_arm64.as_str(), initrd_arm64.as_str()]
        .into_iter()
        .filter(|n| !boot.join(n).is_file())
        .collect();
    if boot_paths::ipxe_binary(s, boot_paths::IPXE_ARM64).is_none() {
        arm64_missing.push(boot_paths::IPXE_ARM64);
    }
    check(
        Verdict::from(arm64_missing.is_empty()).or_warn(),
        "arm64 netboot artifacts present",
        if arm64_missing.is_empty() {
            format!("{kernel_arm64}, {initrd_arm64} and {} are installed", boot_paths::IPXE_ARM64)
        } else {
            format!(
                "arm64 machines cannot netboot until {} installed (a netboot fetch of a release \
                 with arm64, or make ipxe); x86_64 machines are not affected",
                arm64_missing.join(", ")
            )
        },
        "/ui/netboot",
    );
    check(
        Verdict::from(!catalog.is_empty()),
        "Image catalog not empty",
        format!("{} entries", catalog.len()),
        "/ui/images",
    );
    let (tftp_ok, tftp_detail) = tftp_check(s);
    check(
        Verdict::from(tftp_ok),
        "TFTP reachable or not configured",
        tftp_detail,
        "/ui/netboot#tftp",
    );
    let (found, missing) = boot_paths::binaries(s);
    check(
        Verdict::from(missing.is_empty()),
        "iPXE binaries present",
        if missing.is_empty() {
            found.join(", ")
        } else {
            format!("missing: {} (make ipxe, or [boot] ipxe_dir)", missing.join(", "))
        },
        "/ui/netboot#dhcp",
    );
    let host = crate::web::guard::script_host(app, ctx.req).unwrap_or_default();
    let paths = boot_paths::paths(s, boot_paths::target(s, &host));
    let served: Vec<String> = paths
        .iter()
        .filter_map(|p| p.served.as_ref().ok().map(|how| format!("{}: {how}", p.name)))
        .collect();
    check(
        Verdict::from(!served.is_empty()),
        "A network boot setup served",
        if served.is_empty() {
            "none: turn on TFTP or provide ipxe.efi for UEFI HTTP Boot".to_string()
        } else {
            served.join("; ")
        },
        "/ui/netboot#dhcp",
    );
    check(
        Verdict::from(!s.default_password()),
        "Admin password changed",
        if s.default_password() {
            let why: String = s.ignored.iter().map(|i| format!("; {i}, which sets none")).collect();
            format!("the built-in default password is in use{why}")
        } else {
            format!("set ({})", s.source("admin", "password"))
        },
        "/ui/account",
    );
    let body = render(
        DASHBOARD,
        &[
            ("machines", Val::Text(&machines.len().to_string())),
            ("discovered", Val::Text(&discovered.to_string())),
            ("images", Val::Text(&catalog.len().to_string())),
            ("unacked", Val::Text(&unacked.to_string())),
            ("checks", Val::Html(&checks)),
            ("events", Val::Html(&event_table(ctx, &recent, false))),
        ],
    );
    Ok(page(ctx, "dashboard", "Dashboard", 200, &body))
}

/// A readiness row's state.
#[derive(Clone, Copy)]
enum Verdict {
    Ok,
    Bad,
    /// Something a part of the lab lacks, while the rest works.
    Warn,
}

impl Verdict {
    fn from(ok: bool) -> Verdict {
        if ok { Verdict::Ok } else { Verdict::Bad }
    }

    fn or_warn(self) -> Verdict {
        match self {
            Verdict::Bad => Verdict::Warn,
            v => v,
        }
    }
}

/// Values of the add-by-URL form to show again, with the error.
pub struct AddState {
    pub fields: Vec<(String, String)>,
    pub error: String,
}

pub fn images(ctx: &Ctx<'_>, state: Option<AddState>) -> PageResult {
    let catalog = ctx.app.db.catalog()?;
    let mut entries = Html::new();
    match &ctx.app.cache {
        Some(c) => {
            let u = c.usage();
            entries.push(format_args!(
                "<p class=\"hint\">Image cache: {} images, {} of {} in <span class=\"mono\">{}</span>. \
                 Pinned images are pulled from their origin once, at their first flash, and flashed \
                 from this server after that.</p>",
                u.files,
                Escape(&crate::units::bytes(u.bytes)),
                Escape(&crate::units::bytes(ctx.app.settings().cache_max_bytes())),
                Escape(&c.dir().display().to_string()),
            ));
        }
        None => entries.push(format_args!(
            "<p class=\"hint\">The image cache is off: flashes stream from each image's origin. \
             Set <span class=\"mono\">[cache] dir</span> (BTY_CACHE_DIR) to pull pinned images once \
             and flash them from this server.</p>"
        )),
    }
    if catalog.is_empty() {
        entries.push(format_args!(
            "<p>The catalog is empty. Add an image by URL, upload a catalog file or fetch the default catalog.</p>"
        ));
    } else {
        entries.push(format_args!(
            "<div class=\"scroll\"><table class=\"list\"><thead><tr><th scope=\"col\">Name</th>\
             <th scope=\"col\">Format</th><th scope=\"col\">Size</th><th scope=\"col\">sha256</th>\
             <th scope=\"col\">Source</th><th scope=\"col\">Cache</th><th scope=\"col\">Added</th>\
             <th scope=\"col\">Delete</th>\
             </tr></thead><tbody>\n"
        ));
        for e in &catalog {
            let sha = e.disk_image_sha.as_deref().map(short).unwrap_or("not pinned");
            let size = e.size_bytes.and_then(|n| u64::try_from(n).ok()).map(crate::units::bytes);
            let cache = match &ctx.app.cache {
                None => "off",
                Some(_) if crate::web::catalog::is_cached(ctx.app, e) => "cached",
                Some(_) if e.disk_image_sha.is_none() => "not pinned: from its origin",
                Some(c) if c.can_serve(e) => "at its first flash",
                Some(_) => "larger than the cap: from its origin",
            };
            entries.push(format_args!(
                "<tr><td>{}{}</td><td>{}</td><td>{}</td><td class=\"mono\" title=\"{}\">{}</td>\
                 <td class=\"mono\">{}</td><td>{}</td><td>{}</td><td>\
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
                Escape(cache),
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
    let body = render(
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
    );
    Ok(page(ctx, "images", "Images", if state.is_some() { 422 } else { 200 }, &body))
}

/// This page's path and query, for forms that should come back to it.
fn here(ctx: &Ctx<'_>) -> String {
    let q: Vec<String> = ctx
        .req
        .query
        .iter()
        .map(|(k, v)| format!("{}={}", super::percent_encode(k), super::percent_encode(v)))
        .collect();
    if q.is_empty() { ctx.req.path.clone() } else { format!("{}?{}", ctx.req.path, q.join("&")) }
}

/// A table of events; with acknowledge buttons when `ack`.
pub fn event_table(ctx: &Ctx<'_>, events: &[Event], ack: bool) -> Html {
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
                 <input type=\"hidden\" name=\"back\" value=\"{}\">\
                 <button type=\"submit\" class=\"link\">Acknowledge</button></form>",
                e.id,
                Escape(&ctx.csrf),
                Escape(&here(ctx))
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
    let body = render(
        EVENTS,
        &[
            ("kind", Val::Text(kind.unwrap_or(""))),
            ("subject_id", Val::Text(subject.unwrap_or(""))),
            ("unacked_checked", Val::Text(if unacked { " checked" } else { "" })),
            ("events", Val::Html(&event_table(ctx, &list, true))),
            ("more", Val::Html(&more)),
        ],
    );
    Ok(page(ctx, "events", "Events", 200, &body))
}

fn base_url(ctx: &Ctx<'_>) -> String {
    let host = crate::web::guard::script_host(ctx.app, ctx.req);
    format!("http://{}", host.as_deref().unwrap_or("HOST"))
}

fn netboot(ctx: &Ctx<'_>) -> PageResult {
    let s = &ctx.app.settings();
    let dir = s.boot_dir();
    let [(kernel, initrd), (kernel_arm64, initrd_arm64)] = crate::web::release::active_all(ctx.app);
    let expected = [kernel.as_str(), initrd.as_str(), kernel_arm64.as_str(), initrd_arm64.as_str()];
    let mut files: Vec<(String, Option<std::fs::Metadata>)> =
        expected.iter().map(|n| (n.to_string(), std::fs::metadata(dir.join(n)).ok())).collect();
    // The operator may name one file for both architectures; it is listed once, as x86_64's.
    if kernel_arm64 == kernel || kernel_arm64 == initrd {
        files[2].0.clear();
    }
    if initrd_arm64 == kernel || initrd_arm64 == initrd || initrd_arm64 == kernel_arm64 {
        files[3].0.clear();
    }
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
        if name.is_empty() {
            continue;
        }
        let role = match i {
            0 => "live kernel",
            1 => "live initrd",
            2 => "arm64 live kernel",
            3 => "arm64 live initrd",
            _ => "other",
        };
        // Without the arm64 pair only arm64 machines cannot netboot: a warning, not an error.
        let state = match (meta, i) {
            (Some(_), _) => "<span class=\"badge ok\">present</span>",
            (None, 2 | 3) => "<span class=\"badge new\">missing</span>",
            (None, _) => "<span class=\"badge bad\">missing</span>",
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
    let body = render(
        NETBOOT,
        &[
            ("boot_dir", Val::Text(&dir.display().to_string())),
            ("artifacts", Val::Html(&t)),
            (
                "dhcp",
                Val::Html(&boot_paths::card(
                    s,
                    &crate::web::guard::script_host(ctx.app, ctx.req).unwrap_or_default(),
                )),
            ),
            ("csrf", Val::Text(&ctx.csrf)),
            ("max_upload", Val::Text(&crate::units::bytes(s.max_upload()))),
            ("base", Val::Text(&base_url(ctx))),
            ("release_from", Val::Text(&crate::web::release::origin(ctx.app, &repo, &tag))),
            (
                "jobs",
                Val::Html(&job_table(
                    ctx,
                    JobKind::Release,
                    &ctx.app.db.jobs(Some(JobKind::Release), 5)?,
                )),
            ),
            ("tftp", Val::Text(&tftp_status(&ctx.app.settings()))),
        ],
    );
    Ok(page(ctx, "netboot", "Netboot", 200, &body))
}

fn backups(ctx: &Ctx<'_>) -> PageResult {
    let mut list = Vec::new();
    for kind in ["backup.created", "backup.failed", "backup.pruned"] {
        list.extend(ctx.app.db.events(Some(kind), None, 20, None)?);
    }
    list.sort_by_key(|e| std::cmp::Reverse(e.id));
    let db = ctx.app.db.path().display().to_string();
    let state = ctx.app.settings().state_dir();
    let mut files = Html::new();
    let present = crate::web::backup::list(&state)?;
    if present.is_empty() {
        files.push(format_args!("<p>No backups yet.</p>"));
    } else {
        files.push(format_args!(
            "<div class=\"scroll\"><table class=\"list\"><thead><tr><th scope=\"col\">File</th>\
             <th scope=\"col\">Size</th></tr></thead><tbody>\n"
        ));
        for b in &present {
            files.push(format_args!(
                "<tr><td class=\"mono\">{}</td><td>{}</td></tr>\n",
                Escape(&b.name),
                Escape(&crate::units::bytes(b.size_bytes))
            ));
        }
        files.push(format_args!("</tbody></table></div>"));
    }
    let setting = |k: &str| ctx.app.db.setting(k);
    let enabled = setting("backup.enabled")?.is_some_and(|v| v == "true");
    let interval = setting("backup.interval_hours")?.unwrap_or_else(|| "24".into());
    let keep = crate::web::backup::keep(ctx.app).to_string();
    let dir = crate::web::backup::dir(&state).display().to_string();
    let checked = if enabled { Html::literal(" checked") } else { Html::new() };
    let body = render(
        BACKUPS,
        &[
            ("db", Val::Text(&db)),
            ("dir", Val::Text(&dir)),
            ("csrf", Val::Text(&ctx.csrf)),
            ("files", Val::Html(&files)),
            ("enabled", Val::Html(&checked)),
            ("interval", Val::Text(&interval)),
            ("keep", Val::Text(&keep)),
            (
                "jobs",
                Val::Html(&job_table(
                    ctx,
                    JobKind::Backup,
                    &ctx.app.db.jobs(Some(JobKind::Backup), 10)?,
                )),
            ),
            ("events", Val::Html(&event_table(ctx, &list, true))),
        ],
    );
    Ok(page(ctx, "backups", "Backups", 200, &body))
}

/// Recent jobs of `kind` as a table: state, progress, times, error, and a Cancel form for a
/// job still running. app.js keeps the rows current from `GET /events/jobs`: it finds them by
/// `id` and the cells by position, and builds the rows of jobs that start later from the
/// table's `data-jobs` (the kind) and `data-cancel` (the cancel form's action, `{id}` for the
/// job's number).
fn job_table(ctx: &Ctx<'_>, kind: JobKind, jobs: &[crate::web::db::Job]) -> Html {
    let cancel = match kind {
        JobKind::Backup => "/ui/backups/{id}/cancel",
        JobKind::Release => "/ui/netboot/fetch-release/{id}/cancel",
    };
    let mut h = Html::new();
    h.push(format_args!(
        "<div class=\"scroll\"><table class=\"list jobs\" id=\"jobs-{kind}\" data-jobs=\"{kind}\" \
         data-cancel=\"{cancel}\"><thead><tr><th scope=\"col\">Job</th>\
         <th scope=\"col\">State</th><th scope=\"col\">Progress</th><th scope=\"col\">Started</th>\
         <th scope=\"col\">Finished</th><th scope=\"col\">Error</th><th scope=\"col\">Cancel</th>\
         </tr></thead><tbody>\n"
    ));
    if jobs.is_empty() {
        h.push(format_args!("<tr class=\"jobs-empty\"><td colspan=\"7\">No jobs yet.</td></tr>\n"));
    }
    for j in jobs {
        let id = j.id;
        let known = j.total_bytes.filter(|t| *t > 0);
        // An indeterminate bar says "working"; on an ended job without a total it would
        // animate for ever.
        let bar = match known {
            Some(t) => format!("<progress max=\"{t}\" value=\"{}\"", j.progress_bytes.min(t)),
            None if !j.state.finished() => "<progress".to_string(),
            None => String::new(),
        };
        if !bar.is_empty() {
            h.push(format_args!(
                "<tr id=\"job-{id}\"><td>{id}</td><td>{}</td><td>{bar} aria-label=\"progress of job {id}\"></progress> ",
                Escape(j.state.as_str())
            ));
        } else {
            h.push(format_args!(
                "<tr id=\"job-{id}\"><td>{id}</td><td>{}</td><td>",
                Escape(j.state.as_str())
            ));
        }
        h.push(format_args!(
            "<span class=\"job-bytes\">{}</span></td><td>{}</td><td>{}</td><td>{}</td><td>",
            Escape(&progress_text(j.progress_bytes, known)),
            Escape(j.started_at.as_deref().unwrap_or("-")),
            Escape(j.finished_at.as_deref().unwrap_or("-")),
            Escape(j.error.as_deref().unwrap_or(""))
        ));
        if j.state.finished() {
            h.push(format_args!("-"));
        } else {
            h.push(format_args!(
                "<form method=\"post\" action=\"{}\" class=\"inline\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                 <button type=\"submit\" class=\"danger\" aria-label=\"Cancel {kind} job {id}\">Cancel</button></form>",
                cancel.replace("{id}", &id.to_string()),
                Escape(&ctx.csrf)
            ));
        }
        h.push(format_args!("</td></tr>\n"));
    }
    h.push(format_args!("</tbody></table></div>"));
    h
}

/// A job's progress for people, as app.js writes it: "1.5 MiB of 6.0 MiB (25%)", or the bytes
/// alone when the total is not known.
fn progress_text(done: u64, total: Option<u64>) -> String {
    match total {
        Some(t) => format!(
            "{} of {} ({}%)",
            crate::units::bytes(done),
            crate::units::bytes(t),
            done.min(t) * 100 / t
        ),
        None => crate::units::bytes(done),
    }
}

/// The readiness row for TFTP: off is fine (HTTP boot or another TFTP server), on must answer.
/// The probe asks for a file that cannot exist and expects TFTP's error packet back.
fn tftp_check(s: &crate::web::config::Settings) -> (bool, String) {
    if !s.tftp_enabled() {
        return (true, "not configured: bty-web's TFTP server is off ([tftp] enabled)".into());
    }
    let mut at = s.tftp_listen();
    if at.ip().is_unspecified() {
        at.set_ip(if at.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let probe = || -> std::io::Result<bool> {
        let bind = if at.is_ipv4() { "127.0.0.1:0" } else { "[::1]:0" };
        let sock = std::net::UdpSocket::bind(bind)?;
        sock.set_read_timeout(Some(std::time::Duration::from_millis(500)))?;
        sock.send_to(b"\0\x01.readiness-probe\0octet\0", at)?;
        let mut buf = [0u8; 512];
        let (n, _) = sock.recv_from(&mut buf)?;
        // Opcode 5: ERROR, the answer for a name that cannot be served.
        Ok(n >= 4 && buf[..2] == [0, 5])
    };
    match probe() {
        Ok(true) => (true, format!("answering on {}", s.tftp_listen())),
        Ok(false) => (false, format!("{at} answered something other than TFTP")),
        Err(e) => (false, format!("no answer on {at}: {e}")),
    }
}

/// What the netboot page says about TFTP and where the iPXE binaries come from.
fn tftp_status(s: &crate::web::config::Settings) -> String {
    let boot = s.boot_dir();
    let ipxe = s.ipxe_dir();
    let found: Vec<String> = ["undionly.kpxe", "ipxe.efi"]
        .iter()
        .map(|n| match (boot.join(n).is_file(), ipxe.join(n).is_file()) {
            (true, _) => format!("{n} from {}", boot.display()),
            (false, true) => format!("{n} from {}", ipxe.display()),
            (false, false) => {
                format!("{n} missing (neither in {} nor in {})", boot.display(), ipxe.display())
            }
        })
        .collect();
    let binaries = format!(
        "iPXE binaries: {}; autoexec.ipxe, which chains to /pxe-bootstrap.ipxe, is generated.",
        found.join(", ")
    );
    if s.tftp_enabled() {
        format!(
            "bty-web serves the boot dir and the iPXE binaries over TFTP on {} (read only). {binaries}",
            s.tftp_listen()
        )
    } else {
        format!(
            "bty-web's TFTP server is off ([tftp] enabled = false). Turn it on for firmware that loads its \
             first bootfile only over TFTP, or run `bty-web tftp` as a sidecar. {binaries}"
        )
    }
}

/// The upstream sources as the operator set them on the settings page, else the defaults:
/// (catalog URL, netboot release repo, release tag).
pub fn upstream(ctx: &Ctx<'_>) -> crate::error::Result<(String, String, String)> {
    let (repo, tag) = crate::web::release::repo_and_tag(ctx.app);
    let catalog = ctx.app.db.setting("catalog_url")?.unwrap_or_else(|| DEFAULT_CATALOG.to_string());
    Ok((catalog, repo, tag))
}

pub fn settings(ctx: &Ctx<'_>, state: Option<FormState>) -> PageResult {
    let s = &ctx.app.settings();
    let mut rows = Html::new();
    // What the next start would see: saves that wait for a restart show beside the value.
    let next = s.reload().ok();
    for (name, value, source, help) in s.rows() {
        let Some((section, key)) = super::config_edit::parse_name(&name) else { continue };
        let applies = match crate::web::config::Settings::applies_now(section, key) {
            Some(true) => "now".to_string(),
            _ => match next.as_ref().map(|n| n.get(section, key)) {
                Some(v) if v != s.get(section, key) => {
                    format!("at restart (saved: {v})")
                }
                _ => "at restart".to_string(),
            },
        };
        if s.editable(section, key).is_ok() {
            let id = name.replace(['[', ']', ' '], "");
            rows.push(format_args!(
                "<tr><td class=\"mono\"><label for=\"cfg-{id}\">{}</label></td><td>\
                 <form method=\"post\" action=\"/ui/settings/config/edit\" class=\"inline\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                 <input type=\"hidden\" name=\"name\" value=\"{}\">\
                 <input id=\"cfg-{id}\" name=\"value\" value=\"{}\">\
                 <button type=\"submit\">Save</button></form></td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                Escape(&name),
                Escape(&ctx.csrf),
                Escape(&name),
                Escape(&value),
                Escape(&source),
                Escape(&applies),
                Escape(help)
            ));
            continue;
        }
        rows.push(format_args!(
            "<tr><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            Escape(&name),
            Escape(&value),
            Escape(&source),
            Escape(&applies),
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
    let hostname = crate::web::guard::host_for_scripts(host)
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
    let body = render(
        SETTINGS,
        &[
            ("csrf", Val::Text(&ctx.csrf)),
            ("upstream_error", Val::Html(&upstream_error)),
            ("catalog_url", Val::Text(&value("catalog_url", &catalog_url))),
            ("release_repo", Val::Text(&value("release_repo", &repo))),
            ("release_tag", Val::Text(&value("release_tag", &tag))),
            ("files", Val::Text(&files)),
            ("saved", Val::Text(&s.saved_path().display().to_string())),
            ("rows", Val::Html(&rows)),
            ("host", Val::Text(host)),
            ("hostname", Val::Text(hostname)),
            ("addresses", Val::Html(&addresses)),
            ("base", Val::Text(&base_url(ctx))),
        ],
    );
    let status = if state.is_some() { 422 } else { 200 };
    Ok(page(ctx, "settings", "Settings", status, &body))
}

/// This host's addresses for the DHCP cheatsheet: IPv4 first, then IPv6 without loopback and
/// link-local ones, which are no use to DHCP.
fn host_addresses() -> Vec<String> {
    let all = crate::sys::interface_addresses().unwrap_or_else(|e| {
        crate::warn!("listing the interface addresses: {e}");
        Vec::new()
    });
    let v4: BTreeSet<std::net::Ipv4Addr> = all
        .iter()
        .filter_map(|a| match a {
            std::net::IpAddr::V4(v4) if !v4.is_loopback() => Some(*v4),
            _ => None,
        })
        .collect();
    let v6: BTreeSet<std::net::Ipv6Addr> = all
        .iter()
        .filter_map(|a| match a {
            std::net::IpAddr::V6(v6) if !v6.is_loopback() && !v6.is_unicast_link_local() => {
                Some(*v6)
            }
            _ => None,
        })
        .collect();
    v4.iter().map(ToString::to_string).chain(v6.iter().map(ToString::to_string)).collect()
}

fn account(ctx: &Ctx<'_>) -> PageResult {
    let s = &ctx.app.settings();
    let state = if s.default_password() {
        "The built-in default password is in use: anyone who knows bty can log in. Change it."
            .to_string()
    } else {
        format!("The password is set ({}).", s.source("admin", "password"))
    };
    let secret = s.state_dir().join("session-secret").display().to_string();
    let body = render(
        ACCOUNT,
        &[
            ("csrf", Val::Text(&ctx.csrf)),
            ("password_state", Val::Text(&state)),
            ("secret", Val::Text(&secret)),
        ],
    );
    Ok(page(ctx, "account", "Account", 200, &body))
}
