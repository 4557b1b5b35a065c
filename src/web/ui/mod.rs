//! The browser UI under `/ui`: hand-written pages from `html/`, forms that work without
//! JavaScript (POST, then 303 back with a flash message), and the static assets.
//!
//! Defences, all here so no page can forget them: every page needs a session (else 303 to the
//! login page); every state-changing POST must come from our own origin (the `Origin` header,
//! or the per-session token in the form's `csrf` field for clients that send no `Origin`), on
//! top of the SameSite=Strict cookie; every response carries a Content-Security-Policy that
//! allows only same-origin scripts and styles and no inline script or handler.

use std::io::Read;
use std::sync::Arc;

use crate::source::percent_decode;
use crate::web::app::App;
use crate::web::auth::{self, Session};
use crate::web::http::{Req, Resp};

mod boot_paths;
mod bulk;
mod config_edit;
mod forms;
mod machines;
mod multipart;
mod pages;
pub mod template;

pub use forms::CATALOG_UPLOAD_MAX;
use template::{Html, Val};

/// What the browser may load: our own scripts, styles and images, nothing inline, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const LAYOUT: &str = include_str!("../../../html/layout.html");
const LOGIN: &str = include_str!("../../../html/login.html");
const STYLE: &str = include_str!("../../../html/style.css");
const SCRIPT: &str = include_str!("../../../html/app.js");

/// The pages of the main navigation: (path segment, title).
const NAV: [(&str, &str); 8] = [
    ("dashboard", "Dashboard"),
    ("machines", "Machines"),
    ("images", "Images"),
    ("netboot", "Netboot"),
    ("backups", "Backups"),
    ("events", "Events"),
    ("settings", "Settings"),
    ("account", "Account"),
];

/// What a form showed and why it was refused, to render it again.
pub struct FormState {
    pub fields: Vec<(String, String)>,
    /// (field name or "" for the form as a whole, message)
    pub error: (String, String),
}

/// What a page handler knows about the request.
pub struct Ctx<'a> {
    pub app: &'a Arc<App>,
    pub req: &'a Req,
    /// This session's anti-CSRF token, for hidden form fields.
    pub csrf: String,
    /// The message a form post left for this page view: (is an error, text).
    pub flash: Option<(bool, String)>,
}

/// Answers `/ui` and everything below it.
pub fn route(app: &Arc<App>, req: &Req, segs: &[&str], body: &mut dyn Read) -> Resp {
    secure(route_inner(app, req, segs, body))
}

fn route_inner(app: &Arc<App>, req: &Req, segs: &[&str], body: &mut dyn Read) -> Resp {
    let cookies = req.header("cookie");
    let session = app.auth.check(cookies);
    let logged_in = matches!(session, Session::Valid { .. });
    let m = match req.method.as_str() {
        "HEAD" => "GET",
        m => m,
    };
    match (m, segs) {
        ("GET", ["ui"] | ["ui", ""]) => {
            return redirect(if logged_in { "/ui/dashboard" } else { "/ui/login" });
        }
        ("GET", ["ui", "login"]) if logged_in => return redirect("/ui/dashboard"),
        ("GET", ["ui", "login"]) => return login_page(200, ""),
        // Login and logout have no session token to check; a foreign Origin is still refused,
        // so another site cannot log a browser into or out of this server.
        ("POST", ["ui", "login"]) if origin_ok(req, app.settings().public_url()) != Some(false) => {
            return login(app, req);
        }
        ("POST", ["ui", "logout"])
            if origin_ok(req, app.settings().public_url()) != Some(false) =>
        {
            return logout(app, logged_in);
        }
        ("POST", ["ui", "login" | "logout"]) => return refused(),
        _ => {}
    }
    let Session::Valid { renew } = session else {
        return match m {
            "GET" | "POST" => redirect("/ui/login"),
            _ => method_not_allowed(),
        };
    };
    let ctx = Ctx {
        app,
        req,
        csrf: app.auth.csrf_token(cookies),
        flash: cookies.and_then(|c| auth::cookie(c, "bty-flash")).and_then(read_flash),
    };
    let mut resp = match m {
        "GET" => pages::get(&ctx, &segs[1..]),
        "POST" => {
            // The upload forms carry their token inside the multipart body; their handlers
            // check it there before they read any file data. Every other post is checked here,
            // whatever its content type claims.
            let upload = matches!(segs, ["ui", "catalog" | "netboot", "upload"]);
            if !upload && !post_allowed(&ctx, &form(&req.body)) {
                return refused();
            }
            forms::post(&ctx, &segs[1..], body)
        }
        _ => method_not_allowed(),
    };
    if ctx.flash.is_some() && resp.status != 303 {
        resp = resp.with_header("Set-Cookie", "bty-flash=; Path=/ui; Max-Age=0; SameSite=Strict");
    }
    match renew {
        Some(v) => resp.with_header("Set-Cookie", &v),
        None => resp,
    }
}

/// `GET /static/{name}`: the stylesheet and the script, with ETags so browsers revalidate
/// instead of downloading them again.
pub fn static_asset(req: &Req, name: &str) -> Resp {
    let (body, ctype) = match name {
        "style.css" => (STYLE, "text/css; charset=utf-8"),
        "app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        _ => return Resp::error(404, "Not Found"),
    };
    let etag = etag(body);
    let resp = if req
        .header("if-none-match")
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        Resp { status: 304, headers: Vec::new(), body: crate::web::http::Body::Bytes(Vec::new()) }
    } else {
        Resp::new(200, ctype, body)
    };
    resp.with_header("ETag", &etag)
        .with_header("Cache-Control", "no-cache")
        .with_header("X-Content-Type-Options", "nosniff")
}

/// A strong ETag from the content (a few KiB hashed per request costs microseconds).
fn etag(body: &str) -> String {
    use sha2::{Digest, Sha256};
    format!("\"{}\"", &crate::hex::encode(&Sha256::digest(body.as_bytes()))[..16])
}

/// Adds the headers every UI response carries.
fn secure(resp: Resp) -> Resp {
    resp.with_header("Content-Security-Policy", CSP)
        .with_header("X-Content-Type-Options", "nosniff")
        .with_header("Referrer-Policy", "same-origin")
        .with_header("X-Frame-Options", "DENY")
        .with_header("Cache-Control", "no-store")
}

/// Whether the request's `Origin` is this server: None when the client sent none.
fn origin_ok(req: &Req, public_url: Option<&str>) -> Option<bool> {
    let origin = req.header("origin")?;
    Some(crate::web::guard::own_origin(req.host(), public_url, origin.trim()))
}

/// The CSRF rule for a form post: a same-origin `Origin`, or, when the client sent none, the
/// session's token in the `csrf` field.
fn post_allowed(ctx: &Ctx<'_>, fields: &[(String, String)]) -> bool {
    match origin_ok(ctx.req, ctx.app.settings().public_url()) {
        Some(ok) => ok,
        None => {
            field(fields, "csrf").is_some_and(|t| ctx.app.auth.csrf_ok(ctx.req.header("cookie"), t))
        }
    }
}

fn refused() -> Resp {
    Resp::new(
        403,
        "text/html; charset=utf-8",
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Refused · bty</title>\
         </head><body><h1>Refused</h1><p>This form was not sent from a bty-web page of this \
         server (cross-site request). Reload the page and try again.</p>\
         <p><a href=\"/ui/dashboard\">Dashboard</a></p></body></html>\n",
    )
}

fn method_not_allowed() -> Resp {
    Resp::error(405, "method not allowed").with_header("Allow", "GET, HEAD, POST")
}

/// A urlencoded form body as (name, value) pairs.
pub fn form(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

/// The first value of a form field.
pub fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The first 12 characters of a digest or reference, for display (cut on a character boundary
/// whatever the stored text holds).
pub fn short(s: &str) -> &str {
    s.char_indices().nth(12).map(|(i, _)| &s[..i]).unwrap_or(s)
}

/// 303 to a page.
pub fn redirect(to: &str) -> Resp {
    Resp::new(303, "text/plain", "").with_header("Location", to)
}

/// 303 to a page that shows `msg` once (a short-lived cookie the page reads and clears).
pub fn redirect_with(to: &str, error: bool, msg: &str) -> Resp {
    let v = format!("{}{}", if error { "e" } else { "o" }, percent_encode(msg));
    redirect(to)
        .with_header("Set-Cookie", &format!("bty-flash={v}; Path=/ui; Max-Age=60; SameSite=Strict"))
}

fn read_flash(v: &str) -> Option<(bool, String)> {
    let (kind, msg) = (v.get(..1)?, v.get(1..)?);
    let msg: String = percent_decode(msg, false).chars().take(500).collect();
    (!msg.is_empty()).then(|| (kind == "e", msg))
}

/// Percent-encodes everything but unreserved characters (for cookie values and query strings).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A full page: the layout around `body`, with the navigation marking `current`.
pub fn page(ctx: &Ctx<'_>, current: &str, title: &str, status: u16, body: &Html) -> Resp {
    let mut nav = Html::new();
    for (seg, name) in NAV {
        let cur = if seg == current { " aria-current=\"page\"" } else { "" };
        nav.push(format_args!("<li><a href=\"/ui/{seg}\"{cur}>{name}</a></li>\n"));
    }
    let mut flash = Html::new();
    if let Some((error, msg)) = &ctx.flash {
        let (cls, role) = if *error { ("flash error", "alert") } else { ("flash", "status") };
        flash
            .push(format_args!("<p class=\"{cls}\" role=\"{role}\">{}</p>", template::Escape(msg)));
    }
    let html = template::render(
        LAYOUT,
        &[
            ("title", Val::Text(title)),
            ("nav", Val::Html(&nav)),
            ("csrf", Val::Text(&ctx.csrf)),
            ("flash", Val::Html(&flash)),
            ("body", Val::Html(body)),
            ("version", Val::Text(crate::VERSION)),
        ],
    );
    Resp::new(status, "text/html; charset=utf-8", html.into_string())
}

fn login_page(status: u16, error: &str) -> Resp {
    let mut err = Html::new();
    if !error.is_empty() {
        err.push(format_args!(
            "<p class=\"flash error\" role=\"alert\">{}</p>",
            template::Escape(error)
        ));
    }
    Resp::new(
        status,
        "text/html; charset=utf-8",
        template::render(LOGIN, &[("error", Val::Html(&err))]).into_string(),
    )
}

fn login(app: &App, req: &Req) -> Resp {
    let ip = req.peer.map(|p| p.ip());
    let fields = form(&req.body);
    let password = field(&fields, "password").unwrap_or_default();
    let who = ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into());
    match app.auth.login(ip, password) {
        auth::Login::Ok(set_cookie) => {
            app.db.event("auth.login.succeeded", None, &format!("login from {who}"), None);
            redirect("/ui/dashboard").with_header("Set-Cookie", &set_cookie)
        }
        auth::Login::Wrong { backoff_started } => {
            app.db.event("auth.login.failed", None, &format!("failed login from {who}"), None);
            if backoff_started {
                app.db.event(
                    "auth.login.backoff",
                    None,
                    "many failed logins from many addresses: password checks are rationed for \
                     5 minutes (addresses that logged in before are not)",
                    None,
                );
            }
            login_page(401, "Wrong password.")
        }
        auth::Login::Limited { retry_after, global } => {
            let msg = if global {
                "Too many failed logins on this server; try again in a few seconds."
            } else {
                "Too many failed logins from this address; wait a few minutes."
            };
            login_page(429, msg).with_header("Retry-After", &retry_after.to_string())
        }
    }
}

/// Logging out ends every session, not only this browser's: the one way to be sure a cookie
/// that leaked (a shared machine, a copied HAR file) is dead. Without a valid session there is
/// nothing to end, and an anonymous client must not be able to log the operator out.
fn logout(app: &App, logged_in: bool) -> Resp {
    if logged_in {
        let revoked = app
            .auth
            .revoke_all(|epoch| app.db.set_setting(auth::EPOCH_SETTING, &epoch.to_string()));
        if let Err(e) = revoked {
            crate::error!("storing the session epoch (sessions are revoked until a restart): {e}");
        }
        app.db.event("auth.logout", None, "logout: every session ended", None);
    }
    redirect("/ui/login").with_header("Set-Cookie", &app.auth.clear_cookie())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_and_flash_messages_round_trip() {
        let f = form(b"a=1+2&b=%3Cx%3E&c&=z");
        assert_eq!(field(&f, "a"), Some("1 2"));
        assert_eq!(field(&f, "b"), Some("<x>"));
        assert_eq!(field(&f, "c"), Some(""));
        let msg = "Saved aa:bb; <b>\"ok\"</b> ✓";
        assert_eq!(read_flash(&format!("o{}", percent_encode(msg))), Some((false, msg.into())));
        assert_eq!(read_flash("e"), None);
    }

    #[test]
    fn origins_must_match_the_host() {
        let mut r =
            Req { headers: vec![("host".into(), "10.0.0.1:8080".into())], ..Default::default() };
        assert_eq!(origin_ok(&r, None), None);
        r.headers.push(("origin".into(), "http://10.0.0.1:8080".into()));
        assert_eq!(origin_ok(&r, None), Some(true));
        r.headers[1].1 = "http://evil.example".into();
        assert_eq!(origin_ok(&r, None), Some(false));
        r.headers[1].1 = "null".into();
        assert_eq!(origin_ok(&r, None), Some(false));
        // Behind a TLS proxy that rewrites the Host, the page's origin is public_url.
        r.headers[1].1 = "https://bty.lab.example".into();
        assert_eq!(origin_ok(&r, None), Some(false));
        assert_eq!(origin_ok(&r, Some("https://bty.lab.example")), Some(true));
    }
}
