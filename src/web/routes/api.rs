//! The operator's JSON API: machines, events, the catalog, workers, metrics, and the open
//! image list. Each function answers one row of the table in `routes/mod.rs`, which has checked
//! who may call it.

use std::sync::Arc;

use crate::web::app::{App, bad, internal};
use crate::web::auth::Session;
use crate::web::db::{JobKind, JobState};
use crate::web::http::{Body, Req, Resp};
use crate::web::{catalog, guard, sse, validate};

/// `GET /`: the dashboard, or the login page without a session.
pub(super) fn home(app: &App, req: &Req) -> Resp {
    let logged_in = matches!(app.auth.check(req.header("cookie")), Session::Valid { .. });
    crate::web::ui::redirect(if logged_in { "/ui/dashboard" } else { "/ui/login" })
}

/// `GET /machines`: the shared, cached serialisation (see `App::machines_json`).
pub(super) fn machines(app: &App) -> Resp {
    match app.machines_json() {
        Ok(json) => Resp {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: Body::Shared(json),
        },
        Err(e) => internal(e),
    }
}

/// `GET /events/machines`: server-sent `machines-update` events (the whole fleet), the first
/// one now; with `?since=V`, `machines-delta` events from fleet version V on (see `sse`). A
/// reconnecting EventSource's Last-Event-ID (the last delta's version) wins over the `since`
/// its URL still carries.
pub(super) fn event_stream(app: &App, req: &Req) -> Resp {
    let events = |rx| Resp { status: 200, headers: Vec::new(), body: Body::Events(rx) };
    let Some(since) = req.param("since") else {
        return match app.snapshot() {
            Ok(s) => events(app.hub.subscribe(sse::Feed::Whole, sse::event("machines-update", &s))),
            Err(e) => internal(e),
        };
    };
    match req.header("last-event-id").unwrap_or(since).trim().parse::<u64>() {
        Ok(v) => events(app.hub.subscribe_delta(v)),
        Err(_) => Resp::error(422, "since: expected a fleet version (a number)"),
    }
}

/// `GET /metrics`, in Prometheus' text format.
pub(super) fn metrics(app: &App) -> Resp {
    match app.db.machines_by_mode() {
        Ok(modes) => Resp::new(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            app.metrics.render(
                &modes,
                app.hub.subscribers(),
                (app.db.unclaimed(), app.db.lshw_bytes()),
            ),
        ),
        Err(e) => internal(e),
    }
}

/// `GET /images`: the catalog as `ImageEntry`s, with the cache's URL where it serves one.
pub(super) fn images(app: &App, req: &Req) -> Resp {
    match app.db.catalog() {
        Ok(all) => {
            let host = guard::script_host(app, req).unwrap_or_default();
            Resp::json(
                200,
                &all.iter().map(|e| catalog::image_entry(app, &host, e)).collect::<Vec<_>>(),
            )
        }
        Err(e) => internal(e),
    }
}

/// `GET /catalog.toml`. With `?via=cache` (the interactive plan's catalog), srcs the cache can
/// serve point at it, so the wizard in an air-gapped lab flashes from here too.
pub(super) fn catalog_toml(app: &App, req: &Req) -> Resp {
    match app.db.catalog() {
        Ok(mut all) => {
            if req.param("via") == Some("cache") {
                let host = guard::script_host(app, req).unwrap_or_default();
                for e in &mut all {
                    if let Some(url) = catalog::cache_url(app, &host, e) {
                        e.src = url;
                    }
                }
            }
            Resp::new(200, "application/toml", catalog::to_toml(&all))
        }
        Err(e) => internal(e),
    }
}

pub(super) fn catalog_entries(app: &App) -> Resp {
    match app.db.catalog() {
        Ok(all) => Resp::json(200, &all),
        Err(e) => internal(e),
    }
}

/// `DELETE /catalog/entries?src=...`
pub(super) fn delete_catalog_entry(app: &App, req: &Req) -> Resp {
    match req.param("src") {
        None => Resp::error(422, "src: required query parameter"),
        Some(src) => match app.db.delete_catalog_entry(src) {
            Ok(true) => Resp::no_content(),
            Ok(false) => Resp::error(404, &format!("no catalog entry with src {src}")),
            Err(e) => internal(e),
        },
    }
}

/// `POST /boot/releases`: start fetching the netboot artifacts of the upstream release.
pub(super) fn fetch_release(app: &Arc<App>) -> Resp {
    match crate::web::release::start(app) {
        Ok(Some(id)) => {
            Resp::json(202, &serde_json::json!({ "job": id, "state": JobState::Queued }))
        }
        Ok(None) => Resp::error(409, "a netboot release fetch is already running"),
        Err(e) => internal(e),
    }
}

/// `GET /boot/releases`: the recent release fetch jobs.
pub(super) fn releases(app: &App) -> Resp {
    match app.db.jobs(Some(JobKind::Release), 20) {
        Ok(jobs) => Resp::json(200, &serde_json::json!({ "jobs": jobs })),
        Err(e) => internal(e),
    }
}

/// `POST /workers/backups`: start a backup now.
pub(super) fn start_backup(app: &Arc<App>) -> Resp {
    match crate::web::backup::start(app) {
        Ok(Some(id)) => {
            Resp::json(202, &serde_json::json!({ "job": id, "state": JobState::Queued }))
        }
        Ok(None) => Resp::error(409, "a backup is already running"),
        Err(e) => internal(e),
    }
}

/// `DELETE /workers/backups/{id}`: cancel a running backup.
pub(super) fn cancel_backup(app: &App, id: &str) -> Resp {
    cancel_job(app, JobKind::Backup, id)
}

/// `DELETE /boot/releases/{id}`: cancel a running netboot release fetch; it stops at its next
/// check, removes its temp files and installs nothing.
pub(super) fn cancel_release(app: &App, id: &str) -> Resp {
    cancel_job(app, JobKind::Release, id)
}

/// Asks the running job `id` of `kind` to stop (204); 404 when no such job of that kind is
/// running (ended, never was, or another kind's), 422 when `id` is not a job number.
fn cancel_job(app: &App, kind: JobKind, id: &str) -> Resp {
    match crate::web::jobs::parse_id(id) {
        Ok(n) if app.jobs.cancel(n, kind) => Resp::no_content(),
        Ok(n) => Resp::error(404, &format!("no running {kind} job {n}")),
        Err(e) => Resp::error(422, &e),
    }
}

/// `GET /events/jobs`: server-sent `jobs-update` events (the recent jobs with their progress),
/// the first one now, so a page that reconnects after a job ended still learns its end.
pub(super) fn job_stream(app: &App) -> Resp {
    match crate::web::jobs::snapshot(app) {
        Ok(s) => Resp {
            status: 200,
            headers: Vec::new(),
            body: Body::Events(app.hub.subscribe(sse::Feed::Jobs, sse::event("jobs-update", &s))),
        },
        Err(e) => internal(e),
    }
}

/// `GET /workers/backups`: recent backup jobs and the backup files present.
pub(super) fn backups(app: &App) -> Resp {
    let jobs = match app.db.jobs(Some(JobKind::Backup), 50) {
        Ok(j) => j,
        Err(e) => return internal(e),
    };
    match crate::web::backup::list(&app.settings().state_dir()) {
        Ok(files) => Resp::json(
            200,
            &serde_json::json!({ "jobs": jobs, "backups": files, "keep": crate::web::backup::keep(app) }),
        ),
        Err(e) => internal(e),
    }
}

pub(super) fn machine(app: &App, req: &Req, mac: &str) -> Resp {
    let mac = match validate::normalize_mac(mac) {
        Ok(m) => m,
        Err(e) => return bad(e),
    };
    let missing = || Resp::error(404, &format!("no machine record for {mac}"));
    match req.method.as_str() {
        "GET" | "HEAD" => match app.db.machine(&mac) {
            Ok(Some(m)) => Resp::json(200, &m),
            Ok(None) => missing(),
            Err(e) => internal(e),
        },
        "PUT" => {
            let upsert = match validate::machine_upsert(&req.body) {
                Ok(u) => u,
                Err(e) => return bad(e),
            };
            match app.db.put_machine(&mac, &upsert) {
                Ok(m) => {
                    app.hub.changed(&mac);
                    app.db.event(
                        "machine.updated",
                        Some(&mac),
                        &format!("{mac} saved: boot mode {}", m.boot_mode),
                        None,
                    );
                    Resp::json(200, &m)
                }
                Err(e) => internal(e),
            }
        }
        "DELETE" => match app.db.delete_machine(&mac) {
            Ok(true) => {
                app.hub.changed(&mac);
                app.db.event("machine.deleted", Some(&mac), &format!("{mac} deleted"), None);
                Resp::no_content()
            }
            Ok(false) => missing(),
            Err(e) => internal(e),
        },
        _ => Resp::error(405, "method not allowed").with_header("Allow", "GET, HEAD, PUT, DELETE"),
    }
}

/// The disks from the machine's last inventory; 404 until one was posted (the spec's
/// "404 if none posted"), so a client tells "no inventory yet" from "no disks".
pub(super) fn machine_disks(app: &App, mac: &str) -> Resp {
    let mac = match validate::normalize_mac(mac) {
        Ok(m) => m,
        Err(e) => return bad(e),
    };
    match app.db.machine(&mac) {
        Ok(Some(m)) => match m.known_disks {
            Some(disks) => Resp::json(200, &disks),
            None => Resp::error(404, &format!("no inventory for {mac} yet")),
        },
        Ok(None) => Resp::error(404, &format!("no machine record for {mac}")),
        Err(e) => internal(e),
    }
}

/// The raw lshw tree the live environment posted, as a download.
pub(super) fn machine_lshw(app: &App, mac: &str) -> Resp {
    let mac = match validate::normalize_mac(mac) {
        Ok(m) => m,
        Err(e) => return bad(e),
    };
    match app.db.lshw(&mac) {
        Ok(Some(Some(blob))) => Resp::new(200, "application/json", blob).with_header(
            "Content-Disposition",
            &format!("attachment; filename=\"lshw-{}.json\"", mac.replace(':', "")),
        ),
        Ok(Some(None)) => Resp::error(404, &format!("no lshw data for {mac} yet")),
        Ok(None) => Resp::error(404, &format!("no machine record for {mac}")),
        Err(e) => internal(e),
    }
}

pub(super) fn events(app: &App, req: &Req) -> Resp {
    let limit = match req.param("limit").map(str::parse::<u32>) {
        None => 50,
        Some(Ok(n)) if (1..=500).contains(&n) => n,
        Some(_) => return Resp::error(422, "limit: expected a number from 1 to 500"),
    };
    let before = match req.param("before_id").map(str::parse::<i64>) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return Resp::error(422, "before_id: expected a number"),
    };
    match app.db.events(req.param("kind"), req.param("subject_id"), limit, before) {
        Ok(ev) => Resp::json(200, &serde_json::json!({ "events": ev })),
        Err(e) => internal(e),
    }
}

pub(super) fn ack_event(app: &App, id: &str) -> Resp {
    let Ok(id) = id.parse::<i64>() else { return Resp::error(422, "event id: expected a number") };
    match app.db.ack_event(id) {
        Ok(true) => Resp::json(200, &serde_json::json!({"id": id, "acknowledged": true})),
        Ok(false) => Resp::error(404, &format!("no event {id}")),
        Err(e) => internal(e),
    }
}
