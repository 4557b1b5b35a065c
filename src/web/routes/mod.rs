//! The route table: every route bty-web answers, each with its methods, its path, who may call
//! it (`Access`) and how its body is taken (`Body`), in one place. It is closed by default: a
//! request that matches no row gets 404 before a byte of its body is read, and a row cannot be
//! written without saying who may call it. `admit` reads a request's row to refuse it from the
//! head alone; `route` calls the row's handler. The handlers live beside: `api` (the operator's
//! JSON API), `pxe` (firmware and the live environment).

use std::io::Read;
use std::sync::Arc;

use crate::web::app::App;
use crate::web::auth::Session;
use crate::web::guard::{self, Access, Body};
use crate::web::http::{BodyPolicy, Req, Resp};
use crate::web::{boot, ui};

mod api;
mod pxe;

use pxe::Report;

/// Answers a request matched to its row; `params` are the path's `{...}` parts, in order.
type Handler = fn(app: &Arc<App>, req: &Req, params: &[&str], body: &mut dyn Read) -> Resp;

/// One row of the table.
pub struct Route {
    /// The methods it answers (HEAD only where listed: the event stream has none).
    pub methods: &'static [&'static str],
    /// `/literal/{param}/...`; a last `{*param}` takes the rest of the path, slashes included.
    pub path: &'static str,
    pub access: Access,
    pub body: Body,
    handler: Handler,
}

const READ: &[&str] = &["GET", "HEAD"];
const GET: &[&str] = &["GET"];
const POST: &[&str] = &["POST"];
const PUT: &[&str] = &["PUT"];
const DELETE: &[&str] = &["DELETE"];

const fn row(
    methods: &'static [&'static str],
    path: &'static str,
    access: Access,
    body: Body,
    handler: Handler,
) -> Route {
    Route { methods, path, access, body, handler }
}

/// A UI page or form: `ui::route` has its own dispatch below this row.
fn page(app: &Arc<App>, req: &Req, _: &[&str], body: &mut dyn Read) -> Resp {
    ui::route(app, req, &segments(&req.path), body)
}

/// Every route. The first row whose path and method match answers; a path that matches rows
/// but none of their methods gets 405 with the methods it has.
pub static ROUTES: &[Route] = {
    use Access::{Open, Page, Public, Pxe, Session};
    use Body::{Catalog, CatalogForm, Form, Inventory, Json, None, Upload, UploadForm};
    &[
        // Open: what firmware, the live environment and health checks use (any Host).
        row(READ, "/healthz", Open, None, |_, _, _, _| {
            Resp::json(200, &serde_json::json!({"status": "ok"}))
        }),
        row(READ, "/version", Open, None, |_, _, _, _| {
            Resp::json(200, &serde_json::json!({"version": crate::VERSION}))
        }),
        row(READ, "/pxe-bootstrap.ipxe", Open, None, |a, r, _, _| pxe::bootstrap(a, r)),
        row(READ, "/static/{name}", Open, None, |_, r, p, _| ui::static_asset(r, p[0])),
        row(READ, "/images", Open, None, |a, r, _, _| api::images(a, r)),
        row(READ, "/images/{sha256}/{name}", Open, None, |a, r, p, _| {
            crate::web::cache::serve(a, r, p[0])
        }),
        row(READ, "/catalog.toml", Open, None, |a, r, _, _| api::catalog_toml(a, r)),
        row(READ, "/boot/releases", Session, None, |a, _, _, _| api::releases(a)),
        row(POST, "/boot/releases", Session, Json, |a, _, _, _| api::fetch_release(a)),
        row(DELETE, "/boot/releases/{id}", Session, None, |a, _, p, _| {
            api::cancel_release(a, p[0])
        }),
        row(READ, "/boot/{name}", Open, None, |a, r, p, _| boot::serve(a, r, p[0])),
        // A name with a slash is refused as a name (400), not as a missing route.
        row(PUT, "/boot/{*name}", Session, Upload, |a, r, p, b| boot::upload(a, r, p[0], b)),
        // The live environment and iPXE: no session, any Host, no Origin on a change.
        row(READ, "/pxe/{mac}", Pxe, None, |a, r, p, _| pxe::script(a, r, p[0])),
        row(READ, "/pxe/{mac}/plan", Pxe, None, |a, r, p, _| pxe::plan(a, r, p[0])),
        row(POST, "/pxe/{mac}/inventory", Pxe, Inventory, |a, r, p, b| {
            pxe::post(a, r, p[0], Report::Inventory, b)
        }),
        row(POST, "/pxe/{mac}/done", Pxe, Json, |a, r, p, b| {
            pxe::post(a, r, p[0], Report::Done, b)
        }),
        row(POST, "/pxe/{mac}/status", Pxe, Json, |a, r, p, b| {
            pxe::post(a, r, p[0], Report::Status, b)
        }),
        row(POST, "/pxe/{mac}/progress", Pxe, Json, |a, r, p, b| {
            pxe::post(a, r, p[0], Report::Progress, b)
        }),
        // The operator's API: a session cookie, an allowed Host, changes only from our origin.
        row(READ, "/machines", Session, None, |a, _, _, _| api::machines(a)),
        row(POST, "/machines/bulk", Session, Json, |a, r, _, _| crate::web::bulk::api(a, &r.body)),
        row(&["GET", "HEAD", "PUT", "DELETE"], "/machines/{mac}", Session, Json, |a, r, p, _| {
            api::machine(a, r, p[0])
        }),
        row(READ, "/machines/{mac}/disks.json", Session, None, |a, _, p, _| {
            api::machine_disks(a, p[0])
        }),
        row(READ, "/machines/{mac}/lshw.json", Session, None, |a, _, p, _| {
            api::machine_lshw(a, p[0])
        }),
        row(READ, "/events", Session, None, |a, r, _, _| api::events(a, r)),
        row(GET, "/events/machines", Session, None, |a, r, _, _| api::event_stream(a, r)),
        row(GET, "/events/jobs", Session, None, |a, _, _, _| api::job_stream(a)),
        row(POST, "/events/{id}/ack", Session, Json, |a, _, p, _| api::ack_event(a, p[0])),
        row(READ, "/metrics", Session, None, |a, _, _, _| api::metrics(a)),
        row(READ, "/catalog/entries", Session, None, |a, _, _, _| api::catalog_entries(a)),
        row(POST, "/catalog/entries", Session, Json, |a, r, _, _| crate::web::catalog::add(a, r)),
        row(DELETE, "/catalog/entries", Session, None, |a, r, _, _| {
            api::delete_catalog_entry(a, r)
        }),
        row(POST, "/catalog/import", Session, Catalog, |a, r, _, _| {
            crate::web::catalog::import(a, r)
        }),
        row(READ, "/workers/backups", Session, None, |a, _, _, _| api::backups(a)),
        row(POST, "/workers/backups", Session, Json, |a, _, _, _| api::start_backup(a)),
        row(DELETE, "/workers/backups/{id}", Session, None, |a, _, p, _| {
            api::cancel_backup(a, p[0])
        }),
        // The browser: `/` and the login pages need no session but answer only our names;
        // every other page and form needs one (ui checks its forms' tokens itself).
        row(READ, "/", Public, None, |a, r, _, _| api::home(a, r)),
        row(READ, "/ui", Public, None, page),
        row(READ, "/ui/", Public, None, page),
        row(READ, "/ui/login", Public, None, page),
        row(POST, "/ui/login", Public, Form, page),
        row(POST, "/ui/logout", Public, Form, page),
        row(READ, "/ui/dashboard", Page, None, page),
        row(READ, "/ui/machines", Page, None, page),
        row(READ, "/ui/machines/{mac}", Page, None, page),
        row(READ, "/ui/images", Page, None, page),
        row(READ, "/ui/events", Page, None, page),
        row(READ, "/ui/netboot", Page, None, page),
        row(READ, "/ui/backups", Page, None, page),
        row(READ, "/ui/settings", Page, None, page),
        row(READ, "/ui/account", Page, None, page),
        row(POST, "/ui/machines/{mac}", Page, Form, page),
        row(POST, "/ui/machines/{mac}/delete", Page, Form, page),
        row(POST, "/ui/machines/bulk/preview", Page, Form, page),
        row(POST, "/ui/machines/bulk/apply", Page, Form, page),
        row(POST, "/ui/catalog/entries", Page, Form, page),
        row(POST, "/ui/catalog/delete", Page, Form, page),
        row(POST, "/ui/catalog/upload", Page, CatalogForm, page),
        row(POST, "/ui/catalog/fetch-release", Page, Form, page),
        row(POST, "/ui/settings/upstream", Page, Form, page),
        row(POST, "/ui/settings/config/edit", Page, Form, page),
        row(POST, "/ui/settings/backup", Page, Form, page),
        row(POST, "/ui/events/{id}/ack", Page, Form, page),
        row(POST, "/ui/netboot/upload", Page, UploadForm, page),
        row(POST, "/ui/netboot/fetch-release", Page, Form, page),
        row(POST, "/ui/backups/run", Page, Form, page),
        row(POST, "/ui/backups/{id}/cancel", Page, Form, page),
        row(POST, "/ui/netboot/fetch-release/{id}/cancel", Page, Form, page),
    ]
};

/// What the table says of a request.
enum Found<'p> {
    Route(&'static Route, Vec<&'p str>),
    /// The path has rows, none for this method: their methods.
    Method(Vec<&'static str>),
    Nothing,
}

fn find<'p>(method: &str, path: &'p str) -> Found<'p> {
    let mut allowed: Vec<&'static str> = Vec::new();
    for r in ROUTES {
        let Some(params) = captures(r.path, path) else { continue };
        if r.methods.contains(&method) {
            return Found::Route(r, params);
        }
        for m in r.methods {
            if !allowed.contains(m) {
                allowed.push(m);
            }
        }
    }
    if allowed.is_empty() { Found::Nothing } else { Found::Method(allowed) }
}

/// The `{...}` parts of `path` when it matches `pattern`, else `None`.
fn captures<'p>(pattern: &str, path: &'p str) -> Option<Vec<&'p str>> {
    let mut rest = path.strip_prefix('/')?;
    let mut params = Vec::new();
    let mut pattern = pattern.strip_prefix('/').unwrap_or(pattern).split('/').peekable();
    while let Some(want) = pattern.next() {
        if want.starts_with("{*") {
            params.push(rest);
            return Some(params);
        }
        let (seg, more) = match rest.split_once('/') {
            Some((seg, more)) => (seg, Some(more)),
            None => (rest, None),
        };
        if want.starts_with('{') {
            params.push(seg);
        } else if want != seg {
            return None;
        }
        match (more, pattern.peek()) {
            (Some(more), Some(_)) => rest = more,
            (None, None) => return Some(params),
            _ => return None,
        }
    }
    None
}

fn segments(path: &str) -> Vec<&str> {
    path.trim_start_matches('/').split('/').collect()
}

fn method_not_allowed(allowed: &[&str]) -> Resp {
    Resp::error(405, "method not allowed").with_header("Allow", &allowed.join(", "))
}

/// The checks that need only the request head, run by the HTTP layer before it reads or
/// buffers a byte of the body: no row (404), no such method (405), then the row's access
/// (Host, Origin, then the session: 401, or a page form's 303 to the login page), so an
/// anonymous client cannot make the server hold its body. Admitted, the row says how the
/// body is taken.
pub fn admit(app: &App, req: &Req) -> Result<BodyPolicy, Resp> {
    let m = req.method.as_str();
    let route = match find(m, &req.path) {
        Found::Route(route, _) => route,
        Found::Method(allowed) => return Err(method_not_allowed(&allowed)),
        Found::Nothing => return Err(Resp::error(404, "Not Found")),
    };
    // Host and Origin first: a rebinding page gets 421, not a hint that a session is needed.
    if let Some(refused) = guard::check(app, req, route.access, route.body) {
        return Err(refused);
    }
    let logged_in = || matches!(app.auth.check(req.header("cookie")), Session::Valid { .. });
    match route.access {
        Access::Session if !logged_in() => return Err(Resp::error(401, "login required")),
        // A page GET without a session is redirected by the UI itself, with its headers.
        Access::Page if m == "POST" && !logged_in() => return Err(ui::redirect("/ui/login")),
        _ => {}
    }
    Ok(route.body.policy())
}

/// Answers one request that `admit` let through.
pub fn route(app: &Arc<App>, req: &Req, body: &mut dyn Read) -> Resp {
    let (route, params) = match find(req.method.as_str(), &req.path) {
        Found::Route(route, params) => (route, params),
        // `admit` answered these; kept total for callers that skip it.
        Found::Method(allowed) => return method_not_allowed(&allowed),
        Found::Nothing => return Resp::error(404, "Not Found"),
    };
    // `admit` checked the session of an API route; a valid one may be due for renewal.
    let renew = match route.access {
        Access::Session => match app.auth.check(req.header("cookie")) {
            Session::Valid { renew } => renew,
            Session::Missing => None,
        },
        _ => None,
    };
    let resp = (route.handler)(app, req, &params, body);
    match renew {
        Some(v) => resp.with_header("Set-Cookie", &v),
        None => resp,
    }
}

/// The table as text, one row per line: `bty-web routes` prints it.
pub fn describe() -> String {
    let mut out = String::new();
    for r in ROUTES {
        let methods = r.methods.join(",");
        out.push_str(&format!(
            "{methods:<20} {:<32} {:<8} {}\n",
            r.path,
            r.access.name(),
            r.body.describe()
        ));
    }
    out
}

#[cfg(test)]
mod tests;
