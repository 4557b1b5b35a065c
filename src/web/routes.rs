//! The URL map: one `match` on (method, path segments), each arm a small function.

use std::io::Read;
use std::sync::Arc;

use crate::web::app::{App, bad, internal};
use crate::web::auth::Session;
use crate::web::db::{Capped, CatalogEntry, Contacted, InventoryStored, Machine, PxeMark};
use crate::web::http::{Body, BodyPolicy, Req, Resp};
use crate::web::sse;
use crate::web::{boot, catalog, guard, pxe, ui, validate};
use crate::wire::{Plan, Status};

/// How each route takes its body: artifact uploads stream to disk (the route applies the
/// configured size limit), inventory with lshw gets a few MiB, the rest little.
pub fn body_policy(method: &str, path: &str) -> BodyPolicy {
    match (method, path) {
        ("PUT", p) if p.starts_with("/boot/") => BodyPolicy::Stream(u64::MAX),
        ("POST", p) if p.starts_with("/pxe/") && p.ends_with("/inventory") => {
            BodyPolicy::Buffer(4 << 20)
        }
        // A catalog file, plus the multipart framing around it.
        ("POST", "/ui/catalog/upload") => BodyPolicy::Buffer(ui::CATALOG_UPLOAD_MAX + (64 << 10)),
        // Artifact uploads from the netboot page stream to disk like PUT /boot/{name}.
        ("POST", "/ui/netboot/upload") => BodyPolicy::Stream(u64::MAX),
        _ => BodyPolicy::Buffer(64 << 10),
    }
}

fn segments(path: &str) -> Vec<&str> {
    path.trim_start_matches('/').split('/').collect()
}

/// The API routes that need a session cookie.
fn protected(method: &str, segs: &[&str]) -> bool {
    matches!(segs.first(), Some(&"machines" | &"events" | &"catalog" | &"metrics" | &"workers"))
        || (method == "PUT" && segs.first() == Some(&"boot"))
        || segs == ["boot", "releases"]
}

/// The checks that need only the request head, run by the HTTP layer before it reads or
/// buffers a byte of the body: a protected route without a valid session gets 401 (a page
/// form post 303 to the login page), so an anonymous client cannot make the server hold its
/// body. Each further check (Host, Origin) is one more early return here.
pub fn admit(app: &App, req: &Req) -> Option<Resp> {
    let segs = segments(&req.path);
    // Host and Origin first: a rebinding page gets 421, not a hint that a session is needed.
    if let Some(refused) = guard::check(app, req, &segs) {
        return Some(refused);
    }
    let m = req.method.as_str();
    let logged_in = || matches!(app.auth.check(req.header("cookie")), Session::Valid { .. });
    if protected(m, &segs) && !logged_in() {
        return Some(Resp::error(401, "login required"));
    }
    // Every page post but login and logout needs a session; the UI answers the same way.
    let ui_post = m == "POST"
        && segs.first() == Some(&"ui")
        && !matches!(segs.as_slice(), ["ui", "login" | "logout"]);
    if ui_post && !logged_in() {
        return Some(ui::redirect("/ui/login"));
    }
    None
}

/// Answers one request that `admit` let through.
pub fn route(app: &Arc<App>, req: &Req, body: &mut dyn Read) -> Resp {
    let segs = segments(&req.path);
    let m = req.method.as_str();
    // `admit` checked the session of a protected route; a valid one may be due for renewal.
    let renew = match protected(m, &segs) {
        true => match app.auth.check(req.header("cookie")) {
            Session::Valid { renew } => renew,
            Session::Missing => None,
        },
        false => None,
    };
    let resp = match (m, segs.as_slice()) {
        ("GET" | "HEAD", [""]) => {
            let logged_in = matches!(app.auth.check(req.header("cookie")), Session::Valid { .. });
            redirect(if logged_in { "/ui/dashboard" } else { "/ui/login" })
        }
        (_, ["ui", ..]) => ui::route(app, req, &segs, body),
        ("GET" | "HEAD", ["static", name]) => ui::static_asset(req, name),
        ("GET" | "HEAD", ["machines"]) => match app.machines_json() {
            Ok(json) => Resp {
                status: 200,
                headers: vec![("Content-Type".into(), "application/json".into())],
                body: Body::Shared(json),
            },
            Err(e) => internal(e),
        },
        (_, ["machines", mac]) => machine(app, req, mac),
        ("GET" | "HEAD", ["machines", mac, "disks.json"]) => machine_disks(app, mac),
        ("GET" | "HEAD", ["machines", mac, "lshw.json"]) => machine_lshw(app, mac),
        ("GET" | "HEAD", ["events"]) => events(app, req),
        ("GET", ["events", "machines"]) => match app.snapshot() {
            Ok(s) => Resp {
                status: 200,
                headers: Vec::new(),
                body: Body::Events(app.hub.subscribe(sse::event("machines-update", &s))),
            },
            Err(e) => internal(e),
        },
        ("GET" | "HEAD", ["metrics"]) => match app.db.machines_by_mode() {
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
        },
        ("GET" | "HEAD", ["images"]) => match app.db.catalog() {
            Ok(all) => {
                let host = guard::script_host(app, req).unwrap_or_default();
                Resp::json(
                    200,
                    &all.iter().map(|e| catalog::image_entry(app, &host, e)).collect::<Vec<_>>(),
                )
            }
            Err(e) => internal(e),
        },
        ("GET" | "HEAD", ["catalog.toml"]) => match app.db.catalog() {
            // `?via=cache` (the interactive plan's catalog): srcs the cache can serve point at
            // it, so the wizard in an air-gapped lab flashes from here too.
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
        },
        ("GET" | "HEAD", ["catalog", "entries"]) => match app.db.catalog() {
            Ok(all) => Resp::json(200, &all),
            Err(e) => internal(e),
        },
        ("POST", ["catalog", "entries"]) => catalog::add(app, req),
        ("POST", ["catalog", "import"]) => catalog::import(app, req),
        ("DELETE", ["catalog", "entries"]) => match req.param("src") {
            None => Resp::error(422, "src: required query parameter"),
            Some(src) => match app.db.delete_catalog_entry(src) {
                Ok(true) => Resp::no_content(),
                Ok(false) => Resp::error(404, &format!("no catalog entry with src {src}")),
                Err(e) => internal(e),
            },
        },
        ("GET" | "HEAD", ["pxe", mac]) => pxe_script(app, req, mac),
        ("GET" | "HEAD", ["pxe", mac, "plan"]) => pxe_plan(app, req, mac),
        ("POST", ["pxe", mac, what]) => pxe_post(app, req, mac, what),
        ("POST", ["boot", "releases"]) => match crate::web::release::start(app) {
            Ok(Some(id)) => Resp::json(202, &serde_json::json!({ "job": id, "state": "queued" })),
            Ok(None) => Resp::error(409, "a netboot release fetch is already running"),
            Err(e) => internal(e),
        },
        ("GET" | "HEAD", ["boot", "releases"]) => match app.db.jobs(Some("release"), 20) {
            Ok(jobs) => Resp::json(200, &serde_json::json!({ "jobs": jobs })),
            Err(e) => internal(e),
        },
        ("GET" | "HEAD", ["boot", name]) => boot::serve(app, req, name),
        ("GET" | "HEAD", ["images", sha256, _name]) => crate::web::cache::serve(app, req, sha256),
        // A name with a slash reaches here in pieces; it is refused as a name (400), not a 404.
        ("PUT", ["boot", rest @ ..]) => boot::upload(app, req, &rest.join("/"), body),
        ("POST", ["events", id, "ack"]) => ack_event(app, id),
        ("GET" | "HEAD", ["workers", "backups"]) => backups(app),
        ("POST", ["workers", "backups"]) => match crate::web::backup::start(app) {
            Ok(Some(id)) => Resp::json(202, &serde_json::json!({ "job": id, "state": "queued" })),
            Ok(None) => Resp::error(409, "a backup is already running"),
            Err(e) => internal(e),
        },
        ("DELETE", ["workers", "backups", id]) => match id.parse::<i64>() {
            Ok(id) if app.jobs.cancel(id) => Resp::no_content(),
            Ok(id) => Resp::error(404, &format!("no running backup job {id}")),
            Err(_) => Resp::error(422, &format!("job id: expected a number, got {id:?}")),
        },
        _ => fixed(app, req, &segs),
    };
    match renew {
        Some(v) => resp.with_header("Set-Cookie", &v),
        None => resp,
    }
}

/// Routes that need no state.
fn fixed(app: &App, req: &Req, segs: &[&str]) -> Resp {
    match (req.method.as_str(), segs) {
        ("GET" | "HEAD", ["healthz"]) => Resp::json(200, &serde_json::json!({"status": "ok"})),
        ("GET" | "HEAD", ["version"]) => {
            Resp::json(200, &serde_json::json!({"version": crate::VERSION}))
        }
        ("GET" | "HEAD", ["pxe-bootstrap.ipxe"]) => pxe_bootstrap(app, req),
        (_, ["healthz"] | ["version"] | ["pxe-bootstrap.ipxe"]) => {
            Resp::error(405, "method not allowed").with_header("Allow", "GET, HEAD")
        }
        _ => Resp::error(404, "Not Found"),
    }
}

/// A PXE contact: records it (discovering unknown MACs) and decides, in one transaction; the
/// script route also applies the decision's mark and logs it.
fn pxe_decide(
    app: &App,
    req: &Req,
    mac: &str,
    offer: bool,
) -> Result<(Machine, pxe::Decision, Option<CatalogEntry>, String), Resp> {
    let mac = validate::normalize_mac(mac).map_err(bad)?;
    let host =
        guard::script_host(app, req).ok_or_else(|| Resp::error(400, "invalid Host header"))?;
    let peer = req.peer.map(|p| p.ip());
    let ip = peer.map(|p| p.to_string());
    let contact = app
        .db
        .pxe_contact(
            &mac,
            ip.as_deref(),
            || app.discovery.admit(peer),
            |m, image| {
                let d = pxe::decide(m, image);
                let mark = match d {
                    pxe::Decision::Disk { once: true, .. } if offer => Some(PxeMark::DiskBooted),
                    _ => None,
                };
                let reason = offer.then(|| d.reason().to_string());
                (d, mark, reason)
            },
        )
        .map_err(internal)?;
    let Contacted { machine: m, image, decision: d, wrote } = match contact {
        Ok(c) => c,
        Err(cap) => return Err(discovery_refused(app, cap, ip.as_deref().unwrap_or("?"), offer)),
    };
    if wrote {
        app.hub.changed();
    }
    Ok((m, d, image, host))
}

/// An unknown MAC past a growth cap: nothing recorded, and an answer that leaves the machine
/// as if bty-web were not there (the firmware's next boot entry), saying why on its console.
/// Not the inventory an unknown machine gets below the cap: without a row its inventory post
/// would be refused, and the live environment would boot again and again.
fn discovery_refused(app: &App, cap: Capped, ip: &str, script: bool) -> Resp {
    let s = &app.settings;
    let (limit, why) = match cap {
        Capped::Rate => (
            format!(
                "[pxe] discoveries_per_minute = {} from {ip}",
                s.get("pxe", "discoveries_per_minute")
            ),
            "too many new machines from this address: not recorded",
        ),
        _ => (
            format!("[pxe] max_discovered = {}", s.get("pxe", "max_discovered")),
            "bty-web holds as many unclaimed machines as it may: not recorded",
        ),
    };
    app.discovery.refused(&app.db, &app.metrics, cap, &limit);
    if !script {
        return Resp::json(200, &Plan::Exit);
    }
    app.metrics.offers_exit.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Resp::text(200, pxe::exit_script(&format!("{why} ({limit}); booting the firmware order")))
}

fn pxe_script(app: &App, req: &Req, mac: &str) -> Resp {
    let (m, d, _, host) = match pxe_decide(app, req, mac, true) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let counter = match d {
        pxe::Decision::Disk { .. } => &app.metrics.offers_disk,
        pxe::Decision::LiveEnv { .. } => &app.metrics.offers_live,
        pxe::Decision::Exit { .. } => &app.metrics.offers_exit,
    };
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let s = &app.settings;
    Resp::text(200, pxe::script(&d, &m, &host, s.get("boot", "kernel"), s.get("boot", "initrd")))
}

fn pxe_plan(app: &App, req: &Req, mac: &str) -> Resp {
    match pxe_decide(app, req, mac, false) {
        Ok((m, d, mut image, host)) => {
            // The plan hands out where to fetch from: this server's cache when it can serve
            // the image (a cached or cacheable pinned entry), else the origin.
            if let Some(img) = image.as_mut() {
                if let Some(url) = catalog::cache_url(app, &host, img) {
                    img.src = url;
                }
            }
            let mut plan = pxe::plan(&d, &m, image.as_ref(), &host);
            if let (Some(_), Plan::Interactive { catalog }) = (&app.cache, &mut plan) {
                *catalog = Some(format!("http://{host}/catalog.toml?via=cache"));
            }
            Resp::json(200, &plan)
        }
        Err(r) => r,
    }
}

/// POSTs from the live environment: inventory, done, status, progress.
fn pxe_post(app: &App, req: &Req, mac: &str, what: &str) -> Resp {
    let mac = match validate::normalize_mac(mac) {
        Ok(m) => m,
        Err(e) => return bad(e),
    };
    let orphan = |app: &App| {
        if let Some(skipped) = app.discovery.orphan_event() {
            let more = match skipped {
                0 => String::new(),
                n => format!(" ({n} more such posts since the last one were not logged)"),
            };
            app.db.event(
                "pxe.orphan",
                Some(&mac),
                &format!("{what} from {mac}, which has no machine record{more}"),
                None,
            );
        }
        Resp::error(404, &format!("no machine record for {mac}"))
    };
    let mut done = false;
    let found = match what {
        "inventory" => match validate::inventory(&req.body) {
            Ok(inv) => {
                if inv.lshw_dropped {
                    crate::warn!(
                        "{mac}: lshw blob over the size cap dropped; keeping the previous one"
                    );
                }
                let disks = match serde_json::to_value(&inv.report.disks) {
                    Ok(d) => d,
                    Err(e) => return internal(e.into()),
                };
                match app.db.set_inventory(&mac, &disks, inv.report.lshw.as_ref()) {
                    Ok(InventoryStored::WithoutLshw) => {
                        let limit = format!(
                            "[pxe] max_lshw_total_mib = {}",
                            app.settings.get("pxe", "max_lshw_total_mib")
                        );
                        app.discovery.refused(&app.db, &app.metrics, Capped::LshwTotal, &limit);
                        Ok(true)
                    }
                    Ok(stored) => Ok(stored != InventoryStored::NoMachine),
                    Err(e) => Err(e),
                }
            }
            Err(e) => return bad(e),
        },
        "done" => {
            done = true;
            app.db.pxe_mark(&mac, PxeMark::FlashDone)
        }
        "status" => match validate::pxe_status(&req.body) {
            Ok(Status::Done) => {
                done = true;
                app.db.pxe_mark(&mac, PxeMark::FlashDone)
            }
            Ok(Status::Failed { reason }) => {
                let r = app.db.flash_failed(&mac, &reason);
                if let Ok(true) = r {
                    app.metrics.flashes_failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    app.db.event(
                        "flash.failed",
                        Some(&mac),
                        &format!("{mac}: flash failed: {reason}"),
                        None,
                    );
                }
                r
            }
            Err(e) => return bad(e),
        },
        "progress" => match validate::pxe_progress(&req.body) {
            Ok(p) => match app.db.machine(&mac) {
                Ok(Some(_)) => {
                    app.progress.lock().unwrap_or_else(|p| p.into_inner()).insert(mac.clone(), p);
                    Ok(true)
                }
                Ok(None) => Ok(false),
                Err(e) => Err(e),
            },
            Err(e) => return bad(e),
        },
        _ => return Resp::error(404, "Not Found"),
    };
    match found {
        Ok(true) => {
            app.hub.changed();
            if done {
                app.metrics.flashes_done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                app.db.event("flash.done", Some(&mac), &format!("{mac}: flash done"), None);
            }
            Resp::no_content()
        }
        Ok(false) => orphan(app),
        Err(e) => internal(e),
    }
}

/// Serves a netboot artifact; `?mac=` from the live environment marks that it booted.
/// `GET /workers/backups`: recent backup jobs and the backup files present.
fn backups(app: &App) -> Resp {
    let jobs = match app.db.jobs(Some("backup"), 50) {
        Ok(j) => j,
        Err(e) => return internal(e),
    };
    match crate::web::backup::list(&app.settings.state_dir()) {
        Ok(files) => Resp::json(
            200,
            &serde_json::json!({ "jobs": jobs, "backups": files, "keep": crate::web::backup::keep(app) }),
        ),
        Err(e) => internal(e),
    }
}

fn machine(app: &App, req: &Req, mac: &str) -> Resp {
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
                    app.hub.changed();
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
                app.hub.changed();
                app.db.event("machine.deleted", Some(&mac), &format!("{mac} deleted"), None);
                Resp::no_content()
            }
            Ok(false) => missing(),
            Err(e) => internal(e),
        },
        _ => Resp::error(405, "method not allowed").with_header("Allow", "GET, HEAD, PUT, DELETE"),
    }
}

/// The disks from the machine's last inventory (`[]` before the first one).
fn machine_disks(app: &App, mac: &str) -> Resp {
    let mac = match validate::normalize_mac(mac) {
        Ok(m) => m,
        Err(e) => return bad(e),
    };
    match app.db.machine(&mac) {
        Ok(Some(m)) => Resp::json(200, &m.known_disks.unwrap_or_else(|| serde_json::json!([]))),
        Ok(None) => Resp::error(404, &format!("no machine record for {mac}")),
        Err(e) => internal(e),
    }
}

/// The raw lshw tree the live environment posted, as a download.
fn machine_lshw(app: &App, mac: &str) -> Resp {
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

fn events(app: &App, req: &Req) -> Resp {
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

fn ack_event(app: &App, id: &str) -> Resp {
    let Ok(id) = id.parse::<i64>() else { return Resp::error(422, "event id: expected a number") };
    match app.db.ack_event(id) {
        Ok(true) => Resp::json(200, &serde_json::json!({"id": id, "acknowledged": true})),
        Ok(false) => Resp::error(404, &format!("no event {id}")),
        Err(e) => internal(e),
    }
}

fn redirect(to: &str) -> Resp {
    Resp::new(303, "text/plain", "").with_header("Location", to)
}

/// The static script dnsmasq points iPXE at: chain back to this server, by the name the client
/// used to reach it when that name is ours (see `guard::script_host`).
fn pxe_bootstrap(app: &App, req: &Req) -> Resp {
    match guard::script_host(app, req) {
        Some(host) => {
            Resp::text(200, format!("#!ipxe\nchain http://{host}/pxe/${{net0/mac:hexhyp}}\n"))
        }
        None => Resp::error(400, "invalid Host header"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_policies_per_route() {
        assert_eq!(
            body_policy("POST", "/pxe/aa:bb:cc:dd:ee:ff/inventory"),
            BodyPolicy::Buffer(4 << 20)
        );
        assert_eq!(body_policy("PUT", "/machines/aa:bb:cc:dd:ee:ff"), BodyPolicy::Buffer(64 << 10));
        assert_eq!(body_policy("PUT", "/boot/x.initrd"), BodyPolicy::Stream(u64::MAX));
    }
}
