//! The routes of firmware and the live environment: the per-MAC iPXE script, the plan, the
//! bootstrap script, and the live environment's posts (inventory, progress, status, done).
//! Open to any Host and without a session (see `guard::Access::Pxe`).

use crate::web::app::{App, bad, internal};
use crate::web::db::{Capped, CatalogEntry, Contacted, Decided, InventoryStored, Machine, PxeMark};
use crate::web::http::{Req, Resp};
use crate::web::{catalog, guard, pxe, validate};
use crate::wire::{Plan, Status};

/// What a PXE contact decided, for the script or the plan.
struct Contact {
    machine: Machine,
    decision: pxe::Decision,
    /// The catalog entry of the machine's image, when it has one.
    image: Option<CatalogEntry>,
    /// This server's name as the client reached it, safe to put in a script.
    host: String,
}

/// A PXE contact: records it (discovering unknown MACs) and decides, in one transaction; the
/// script route also applies the decision's mark and logs it.
fn decide(app: &App, req: &Req, mac: &str, offer: bool) -> Result<Contact, Resp> {
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
            &app.offers,
            || app.discovery.admit(peer),
            |m, image| {
                let d = pxe::decide(m, image);
                let mark = match d {
                    pxe::Decision::Disk { once: true, .. } if offer => Some(PxeMark::DiskBooted),
                    _ => None,
                };
                let reason = offer.then(|| d.reason().to_string());
                Decided { decision: d, mark, offered: reason }
            },
        )
        .map_err(internal)?;
    let Contacted { machine: m, image, decision: d, wrote } = match contact {
        Ok(c) => c,
        Err(cap) => return Err(discovery_refused(app, cap, ip.as_deref().unwrap_or("?"), offer)),
    };
    if wrote {
        app.hub.changed(&mac);
    }
    Ok(Contact { machine: m, decision: d, image, host })
}

/// An unknown MAC past a growth cap: nothing recorded, and an answer that leaves the machine
/// as if bty-web were not there (the firmware's next boot entry), saying why on its console.
/// Not the inventory an unknown machine gets below the cap: without a row its inventory post
/// would be refused, and the live environment would boot again and again.
fn discovery_refused(app: &App, cap: Capped, ip: &str, script: bool) -> Resp {
    let s = &app.settings();
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

pub(super) fn script(app: &App, req: &Req, mac: &str) -> Resp {
    let Contact { machine: m, decision: d, host, .. } = match decide(app, req, mac, true) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let counter = match d {
        pxe::Decision::Disk { .. } => &app.metrics.offers_disk,
        pxe::Decision::LiveEnv { .. } => &app.metrics.offers_live,
        pxe::Decision::Exit { .. } => &app.metrics.offers_exit,
    };
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Only the live environment's branch names the files: the disk and exit answers, most of
    // a PXE storm, skip reading which pair is active.
    let [x86_64, arm64] = match d {
        pxe::Decision::LiveEnv { .. } => crate::web::release::active_all(app),
        _ => Default::default(),
    };
    let live = pxe::LiveFiles {
        x86_64: (x86_64.0.as_str(), x86_64.1.as_str()),
        arm64: (arm64.0.as_str(), arm64.1.as_str()),
    };
    Resp::text(200, pxe::script(&d, &m, &host, &live))
}

pub(super) fn plan(app: &App, req: &Req, mac: &str) -> Resp {
    match decide(app, req, mac, false) {
        Ok(Contact { machine: m, decision: d, mut image, host }) => {
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

/// What the live environment posts to `/pxe/{mac}/...`.
#[derive(Clone, Copy)]
pub(super) enum Report {
    Inventory,
    Done,
    Status,
    Progress,
}

impl Report {
    fn name(self) -> &'static str {
        match self {
            Report::Inventory => "inventory",
            Report::Done => "done",
            Report::Status => "status",
            Report::Progress => "progress",
        }
    }
}

/// POSTs from the live environment: inventory, done, status, progress. `body` is what the
/// request layer did not hold: the rest of an inventory longer than `guard::INVENTORY_HELD`.
pub(super) fn post(
    app: &App,
    req: &Req,
    mac: &str,
    report: Report,
    body: &mut dyn std::io::Read,
) -> Resp {
    let what = report.name();
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
    let found = match report {
        Report::Inventory => match inventory(req, body) {
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
                            app.settings().get("pxe", "max_lshw_total_mib")
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
        Report::Done => {
            done = true;
            app.db.pxe_mark(&mac, PxeMark::FlashDone)
        }
        Report::Status => match validate::pxe_status(&req.body) {
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
        Report::Progress => match validate::pxe_progress(&req.body) {
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
    };
    match found {
        Ok(true) => {
            app.hub.changed(&mac);
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

/// An inventory body: held whole, or, longer than `guard::INVENTORY_HELD`, its held head and
/// the rest read through.
fn inventory(
    req: &Req,
    rest: &mut dyn std::io::Read,
) -> Result<validate::Inventory, validate::Invalid> {
    if req.body.len() > guard::INVENTORY_HELD {
        validate::inventory_stream(&req.body, rest)
    } else {
        validate::inventory(&req.body)
    }
}

/// The static script dnsmasq points iPXE at: chain back to this server, by the name the client
/// used to reach it when that name is ours (see `guard::script_host`).
pub(super) fn bootstrap(app: &App, req: &Req) -> Resp {
    match guard::script_host(app, req) {
        Some(host) => {
            Resp::text(200, format!("#!ipxe\nchain http://{host}/pxe/${{net0/mac:hexhyp}}\n"))
        }
        None => Resp::error(400, "invalid Host header"),
    }
}
