//! The form posts (POST /ui/...): each validates, acts through the same code as the JSON API,
//! and answers 303 back to its page with a flash message, or the form again with the input and
//! the error (422). CSRF has been checked by the caller for urlencoded forms; multipart forms
//! are checked here, from their `csrf` part, before any file data is read.

use std::io::Read;

use crate::web::app::internal;
use crate::web::db::{JobKind, MachineUpsert};
use crate::web::http::{Body, Req, Resp};
use crate::web::ui::multipart::{self, Multipart};
use crate::web::ui::pages::{self, AddState};
use crate::web::ui::{Ctx, FormState, field, form, machines, redirect_with};
use crate::web::{boot, catalog, validate};
use crate::wire::BootMode;

/// Largest catalog file the upload form accepts (the body policy buffers this much).
pub const CATALOG_UPLOAD_MAX: usize = 4 << 20;

/// Answers `POST /ui/<segs>`.
pub fn post(ctx: &Ctx<'_>, segs: &[&str], body: &mut dyn Read) -> Resp {
    let fields = || form(&ctx.req.body);
    match segs {
        ["machines", "bulk", "preview"] => super::bulk::preview(ctx, &fields()),
        ["machines", "bulk", "apply"] => super::bulk::apply(ctx, &fields()),
        ["machines", mac] => save_machine(ctx, mac, fields()),
        ["machines", mac, "delete"] => delete_machine(ctx, mac, &fields()),
        ["catalog", "entries"] => add_entry(ctx, fields()),
        ["catalog", "delete"] => delete_entry(ctx, &fields()),
        ["catalog", "upload"] => upload_catalog(ctx),
        ["catalog", "fetch-release"] => match pages::upstream(ctx) {
            Ok((url, ..)) => import(ctx, &url),
            Err(e) => internal(e),
        },
        ["settings", "upstream"] => save_upstream(ctx, fields()),
        ["settings", "config", "edit"] => edit_config(ctx, &fields()),
        ["events", id, "ack"] => ack(ctx, id, &fields()),
        ["netboot", "upload"] => upload_artifact(ctx, body),
        ["netboot", "fetch-release"] => match crate::web::release::start(ctx.app) {
            Ok(Some(id)) => {
                redirect_with("/ui/netboot#fetch", false, &format!("Fetch started (job {id})."))
            }
            Ok(None) => redirect_with("/ui/netboot#fetch", true, "A fetch is already running."),
            Err(e) => internal(e),
        },
        ["backups", "run"] => match crate::web::backup::start(ctx.app) {
            Ok(Some(id)) => {
                redirect_with("/ui/backups#jobs", false, &format!("Backup started (job {id})."))
            }
            Ok(None) => redirect_with("/ui/backups#jobs", true, "A backup is already running."),
            Err(e) => internal(e),
        },
        ["backups", id, "cancel"] => cancel_job(ctx, JobKind::Backup, id, "/ui/backups#jobs"),
        ["netboot", "fetch-release", id, "cancel"] => {
            cancel_job(ctx, JobKind::Release, id, "/ui/netboot#fetch")
        }
        ["settings", "backup"] => save_backup_schedule(ctx, &fields()),
        _ => pages::not_found(ctx, "There is no such form."),
    }
}

/// `POST /ui/backups/{id}/cancel`, `POST /ui/netboot/fetch-release/{id}/cancel`: asks the
/// running job to stop, as the API's DELETE does, and goes `back` with what happened.
fn cancel_job(ctx: &Ctx<'_>, kind: JobKind, id: &str, back: &str) -> Resp {
    let what = match kind {
        JobKind::Backup => "backup",
        JobKind::Release => "netboot fetch",
    };
    match crate::web::jobs::parse_id(id) {
        Err(e) => redirect_with(back, true, &format!("Not cancelled: {e}.")),
        // The job's end is recorded as its `job.cancelled` event, as for the API's DELETE.
        Ok(n) if ctx.app.jobs.cancel(n, kind) => redirect_with(
            back,
            false,
            &format!("Cancelling {what} job {n}: it stops within a second."),
        ),
        Ok(n) => redirect_with(
            back,
            true,
            &format!("Not cancelled: no {what} job {n} is running (it may have ended already)."),
        ),
    }
}

/// `POST /ui/settings/backup`: enabled, interval_hours, keep; the scheduler reads them on its
/// next one-minute tick.
fn save_backup_schedule(ctx: &Ctx<'_>, fields: &[(String, String)]) -> Resp {
    let enabled = field(fields, "enabled") == Some("true");
    let number = |k: &str, max: u64| {
        field(fields, k)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|n| (1..=max).contains(n))
    };
    let (Some(interval), Some(keep)) = (number("interval_hours", 8760), number("keep", 1000))
    else {
        return redirect_with(
            "/ui/backups#schedule",
            true,
            "The schedule needs whole numbers: every 1 to 8760 hours, keep 1 to 1000 backups.",
        );
    };
    let db = &ctx.app.db;
    let saved = db
        .set_setting("backup.enabled", if enabled { "true" } else { "false" })
        .and_then(|_| db.set_setting("backup.interval_hours", &interval.to_string()))
        .and_then(|_| db.set_setting("backup.keep", &keep.to_string()));
    match saved {
        Ok(()) => {
            let msg = if enabled {
                format!("Backups every {interval} h, keeping {keep}.")
            } else {
                format!("Scheduled backups off; keeping {keep}.")
            };
            db.event("settings.backup", None, &msg, None);
            redirect_with("/ui/backups#schedule", false, &msg)
        }
        Err(e) => internal(e),
    }
}

/// The `detail` of one of our JSON error responses.
fn detail(resp: &Resp) -> String {
    let Body::Bytes(b) = &resp.body else { return format!("status {}", resp.status) };
    serde_json::from_slice::<serde_json::Value>(b)
        .ok()
        .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_string))
        .unwrap_or_else(|| format!("status {}", resp.status))
}

fn json_body(resp: &Resp) -> serde_json::Value {
    match &resp.body {
        Body::Bytes(b) => serde_json::from_slice(b).unwrap_or(serde_json::Value::Null),
        _ => serde_json::Value::Null,
    }
}

fn save_machine(ctx: &Ctx<'_>, mac: &str, fields: Vec<(String, String)>) -> Resp {
    let mac = match validate::normalize_mac(mac) {
        Ok(m) => m,
        Err(e) => return pages::not_found(ctx, &e.to_string()),
    };
    let opt =
        |k: &str| field(&fields, k).map(str::trim).filter(|v| !v.is_empty()).map(str::to_string);
    let checked = (|| {
        let boot_mode = match opt("boot_mode") {
            Some(s) => validate::boot_mode(&s)?,
            None => BootMode::default(),
        };
        validate::normalize_upsert(MachineUpsert {
            bty_image_ref: opt("bty_image_ref"),
            labels: field(&fields, "labels")
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect(),
            boot_mode,
            sanboot_drive: opt("sanboot_drive"),
            target_disk_serial: opt("target_disk_serial"),
        })
    })();
    let upsert = match checked {
        Ok(u) => u,
        Err(e) => {
            // labels[2] is reported next to the labels field.
            let name = e.field().map(|f| f.split('[').next().unwrap_or(f)).unwrap_or("");
            let error = (name.to_string(), e.to_string());
            return machines::detail(ctx, &mac, Some(FormState { fields, error }))
                .unwrap_or_else(internal);
        }
    };
    match ctx.app.db.machine(&mac) {
        Ok(Some(_)) => {}
        Ok(None) => return pages::not_found(ctx, &format!("No machine record for {mac}.")),
        Err(e) => return internal(e),
    }
    match ctx.app.db.put_machine(&mac, &upsert) {
        Ok(m) => {
            ctx.app.hub.changed(&mac);
            ctx.app.db.event(
                "machine.updated",
                Some(&mac),
                &format!("{mac} saved: boot mode {}", m.boot_mode),
                None,
            );
            redirect_with(&format!("/ui/machines/{mac}"), false, &format!("Saved {mac}."))
        }
        Err(e) => internal(e),
    }
}

fn delete_machine(ctx: &Ctx<'_>, mac: &str, fields: &[(String, String)]) -> Resp {
    let mac = match validate::normalize_mac(mac) {
        Ok(m) => m,
        Err(e) => return pages::not_found(ctx, &e.to_string()),
    };
    if field(fields, "confirm") != Some("yes") {
        return redirect_with(
            &format!("/ui/machines/{mac}"),
            true,
            "Not deleted: tick the confirmation box first.",
        );
    }
    match ctx.app.db.delete_machine(&mac) {
        Ok(true) => {
            ctx.app.hub.changed(&mac);
            ctx.app.db.event("machine.deleted", Some(&mac), &format!("{mac} deleted"), None);
            redirect_with("/ui/machines", false, &format!("Deleted {mac}."))
        }
        Ok(false) => redirect_with("/ui/machines", true, &format!("No machine record for {mac}.")),
        Err(e) => internal(e),
    }
}

/// A request for the catalog routes, which take their input as JSON or query parameters.
fn inner_req(ctx: &Ctx<'_>, body: Vec<u8>, query: Vec<(String, String)>) -> Req {
    Req {
        method: "POST".into(),
        path: ctx.req.path.clone(),
        query,
        headers: Vec::new(),
        body,
        peer: ctx.req.peer,
        local: ctx.req.local,
    }
}

fn add_entry(ctx: &Ctx<'_>, fields: Vec<(String, String)>) -> Resp {
    let v = |k: &str| {
        field(&fields, k)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| serde_json::Value::String(s.to_string()))
            .unwrap_or(serde_json::Value::Null)
    };
    let json = serde_json::json!({
        "image_url": v("image_url"), "sha_url": v("sha_url"),
        "name": v("name"), "description": v("description"),
    });
    let resp = catalog::add(ctx.app, &inner_req(ctx, json.to_string().into_bytes(), Vec::new()));
    match resp.status {
        200 | 201 => {
            let e = json_body(&resp);
            let name = e.get("name").and_then(|n| n.as_str()).unwrap_or("the image");
            let msg = if resp.status == 201 {
                format!("Added {name}.")
            } else {
                format!("{name} is already in the catalog.")
            };
            redirect_with("/ui/images", false, &msg)
        }
        s if s >= 500 => resp,
        _ => pages::images(ctx, Some(AddState { fields, error: detail(&resp) }))
            .unwrap_or_else(internal),
    }
}

fn delete_entry(ctx: &Ctx<'_>, fields: &[(String, String)]) -> Resp {
    let Some(src) = field(fields, "src") else {
        return redirect_with("/ui/images", true, "No entry named.");
    };
    match ctx.app.db.delete_catalog_entry(src) {
        Ok(true) => {
            ctx.app.db.event("catalog.deleted", None, &format!("{src} deleted"), None);
            redirect_with("/ui/images", false, &format!("Deleted {src}."))
        }
        Ok(false) => {
            redirect_with("/ui/images", true, &format!("No catalog entry with src {src}."))
        }
        Err(e) => internal(e),
    }
}

/// Imports a catalog through `POST /catalog/import` and reports its counts.
fn import(ctx: &Ctx<'_>, source: &str) -> Resp {
    let resp = catalog::import(
        ctx.app,
        &inner_req(ctx, Vec::new(), vec![("source".into(), source.to_string())]),
    );
    import_report(resp)
}

/// The Images page's flash message for an import's answer.
fn import_report(resp: Resp) -> Resp {
    if resp.status != 200 {
        return redirect_with("/ui/images", true, &format!("Import failed: {}", detail(&resp)));
    }
    let v = json_body(&resp);
    let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    let errors: Vec<&str> = v
        .get("errors")
        .and_then(|e| e.as_array())
        .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    let mut msg =
        format!("Imported {} entries, skipped {} already present.", n("imported"), n("skipped"));
    if !errors.is_empty() {
        msg.push_str(&format!(" Errors: {}", errors.join("; ")));
    }
    redirect_with("/ui/images", !errors.is_empty(), &msg)
}

/// The session token of a multipart form, checked before the file part is read.
fn multipart_allowed(ctx: &Ctx<'_>, token: Option<&str>) -> bool {
    match super::origin_ok(ctx.req, ctx.app.settings().public_url()) {
        Some(ok) => ok,
        None => token.is_some_and(|t| ctx.app.auth.csrf_ok(ctx.req.header("cookie"), t)),
    }
}

/// Reads the parts before the file: returns the csrf token and leaves `m` at the file part.
fn until_file(m: &mut Multipart<'_>) -> Result<(Option<String>, multipart::Part), String> {
    let mut token = None;
    loop {
        match m.next_part() {
            Ok(Some(p)) if p.filename.is_some() => return Ok((token, p)),
            Ok(Some(p)) if p.name == "csrf" => {
                token = Some(m.text(256).map_err(|e| e.to_string())?)
            }
            Ok(Some(_)) => {}
            Ok(None) => return Err("the form carried no file".into()),
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn upload_catalog(ctx: &Ctx<'_>) -> Resp {
    let Some(b) = ctx.req.header("content-type").and_then(multipart::boundary) else {
        return redirect_with("/ui/images", true, "Upload failed: not a multipart form.");
    };
    let mut raw: &[u8] = &ctx.req.body;
    let mut m = Multipart::new(&mut raw, &b);
    let (token, part) = match until_file(&mut m) {
        Ok(x) => x,
        Err(e) => return redirect_with("/ui/images", true, &format!("Upload failed: {e}")),
    };
    if !multipart_allowed(ctx, token.as_deref()) {
        return super::refused();
    }
    let mut bytes = Vec::new();
    if let Err(e) = m.take(CATALOG_UPLOAD_MAX as u64 + 1).read_to_end(&mut bytes) {
        return redirect_with("/ui/images", true, &format!("Upload failed: {e}"));
    }
    if bytes.is_empty() {
        return redirect_with("/ui/images", true, "Upload failed: the file is empty.");
    }
    let name = part.filename.unwrap_or_default();
    import_report(catalog::import_upload(ctx.app, &bytes, &name))
}

fn ack(ctx: &Ctx<'_>, id: &str, fields: &[(String, String)]) -> Resp {
    // Back to the list the button was on, if that is one of our pages.
    let back = field(fields, "back")
        .filter(|b| b.starts_with("/ui/") && b.bytes().all(|c| c.is_ascii_graphic()))
        .unwrap_or("/ui/events");
    let Ok(id) = id.parse::<i64>() else {
        return redirect_with(back, true, "Not an event number.");
    };
    match ctx.app.db.ack_event(id) {
        Ok(true) => redirect_with(back, false, &format!("Event {id} acknowledged.")),
        Ok(false) => redirect_with(back, true, &format!("No event {id}.")),
        Err(e) => internal(e),
    }
}

/// `POST /ui/netboot/upload`: the file part streams into `PUT /boot/{name}`'s code.
fn upload_artifact(ctx: &Ctx<'_>, body: &mut dyn Read) -> Resp {
    let back = "/ui/netboot";
    let Some(b) = ctx.req.header("content-type").and_then(multipart::boundary) else {
        return redirect_with(back, true, "Upload failed: not a multipart form.");
    };
    let mut m = Multipart::new(body, &b);
    let (token, part) = match until_file(&mut m) {
        Ok(x) => x,
        Err(e) => return redirect_with(back, true, &format!("Upload failed: {e}")),
    };
    if !multipart_allowed(ctx, token.as_deref()) {
        return super::refused();
    }
    // Browsers send the bare file name; some older ones a whole path.
    let name = part.filename.unwrap_or_default();
    let name = name.rsplit(['/', '\\']).next().unwrap_or("").to_string();
    let resp = boot::upload(ctx.app, ctx.req, &name, &mut m);
    if resp.status == 200 {
        let v = json_body(&resp);
        let size = v.get("size_bytes").and_then(|s| s.as_u64()).unwrap_or(0);
        redirect_with(back, false, &format!("Uploaded {name} ({}).", crate::units::bytes(size)))
    } else {
        redirect_with(back, true, &format!("Upload failed: {}", detail(&resp)))
    }
}

/// `POST /ui/settings/upstream`: the default catalog and the netboot release, kept in the state
/// database; an empty field goes back to the default.
fn save_upstream(ctx: &Ctx<'_>, fields: Vec<(String, String)>) -> Resp {
    let get = |k: &str| field(&fields, k).unwrap_or("").trim().to_string();
    let (url, repo, tag) = (get("catalog_url"), get("release_repo"), get("release_tag"));
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 100
            && !s.starts_with('.')
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    let problem = if url.len() > 2048 || url.chars().any(char::is_control) {
        Some(("catalog_url", "at most 2048 characters, no control characters".to_string()))
    } else if let Some(why) = (!url.is_empty()).then(|| catalog::check_source(&url).err()).flatten()
    {
        Some(("catalog_url", why))
    } else if !repo.is_empty()
        && !repo.split_once('/').is_some_and(|(o, n)| name_ok(o) && name_ok(n))
    {
        Some(("release_repo", format!("{repo}: expected owner/name")))
    } else if !tag.is_empty() && !name_ok(&tag) {
        Some(("release_tag", format!("{tag}: letters, digits, '.', '_' and '-' only")))
    } else {
        None
    };
    if let Some((name, msg)) = problem {
        let error = (name.to_string(), format!("{name}: {msg}"));
        return pages::settings(ctx, Some(FormState { fields, error })).unwrap_or_else(internal);
    }
    let db = &ctx.app.db;
    let saved = db
        .set_setting("catalog_url", if url == pages::DEFAULT_CATALOG { "" } else { &url })
        .and_then(|_| {
            let settings = ctx.app.settings();
            let default_repo = settings.get("boot", "release_repo");
            db.set_setting("release_repo", if repo == default_repo { "" } else { &repo })
        })
        .and_then(|_| {
            let settings = ctx.app.settings();
            let default_tag = settings.get("boot", "release_tag");
            db.set_setting("release_tag", if tag == default_tag { "" } else { &tag })
        });
    match saved {
        Ok(()) => {
            db.event("settings.updated", None, "upstream sources saved", None);
            redirect_with("/ui/settings", false, "Upstream sources saved.")
        }
        Err(e) => internal(e),
    }
}

/// `POST /ui/settings/config/edit`: one setting, saved in the state dir's settings.toml, in
/// force at once where bty-web reads it where it uses it.
fn edit_config(ctx: &Ctx<'_>, fields: &[(String, String)]) -> Resp {
    let name = field(fields, "name").unwrap_or("");
    let value = field(fields, "value").unwrap_or("");
    match super::config_edit::save(&ctx.app.settings(), name, value) {
        Ok(saved) => {
            let when = match saved.now {
                Some(now) => {
                    ctx.app.set_settings(now);
                    "in force now"
                }
                None => "bty-web reads it at start: restart it to apply",
            };
            let msg = format!("Saved {name} = {} in {}; {when}.", value.trim(), saved.file);
            ctx.app.db.event("settings.config.edited", None, &msg, None);
            redirect_with("/ui/settings#config", false, &msg)
        }
        Err(e) => redirect_with("/ui/settings#config", true, &format!("Not saved: {e}")),
    }
}
