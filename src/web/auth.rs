//! Operator authentication: one admin password, a signed `bty-token` cookie, sliding 7-day
//! expiry inside an absolute 30-day lifetime, server-side revocation, and login limiting per
//! client and across all clients. No session table: the cookie is the session.
//!
//! Cookies are signed with a key derived from the per-instance secret (`<state>/session-secret`),
//! the admin password and the session epoch (`session_epoch` in state.db's settings). Changing
//! the password or bumping the epoch (every logout does) invalidates every cookie at once,
//! across restarts, without a table of sessions to keep.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};
use std::path::Path;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Context, Result};
use crate::units::now_secs;
use crate::web::config::{Settings, Source};

/// Cookie lifetime; every authenticated request that is more than a day into it renews it.
pub const SESSION_SECS: u64 = 7 * 24 * 3600;
const RENEW_AFTER_SECS: u64 = 24 * 3600;
/// However often it is renewed, a session ends this long after its login.
pub const ABSOLUTE_SECS: u64 = 30 * 24 * 3600;
/// The state.db setting that holds the session epoch.
pub const EPOCH_SETTING: &str = "session_epoch";

/// Writes a fresh random `<state>/session-secret` (mode 0600 from its first byte), replacing
/// any old one in one rename: at first start, and after a restore, which ends every session
/// signed before it (a restored state.db brings back an older session epoch).
pub fn new_secret(state_dir: &Path) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let secret = state_dir.join("session-secret");
    let tmp = state_dir.join(format!(".session-secret-{}", std::process::id()));
    let mut bytes = [0u8; 32];
    crate::sys::random_bytes(&mut bytes).context("drawing random bytes for the session secret")?;
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(crate::hex::encode(&bytes).as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &secret).with_context(|| format!("renaming to {}", secret.display()))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Failed logins allowed per client (an IPv4 address, or an IPv6 /64, which one host owns
/// whole) in `FAIL_WINDOW` before it must wait.
const MAX_FAILURES: usize = 10;
const FAIL_WINDOW: Duration = Duration::from_secs(300);
/// Failures from all clients together in `FAIL_WINDOW` above which password checks are
/// rationed: ten times what one client may do, so only many clients together reach it.
const GLOBAL_FAILURES: usize = 100;
/// While rationed, one password check per this interval for clients that have not logged in
/// before: a botnet of any size then guesses at most 150 times in five minutes.
const GLOBAL_SPACING: Duration = Duration::from_secs(2);
/// Clients whose failures are remembered at once (about 1 KiB each at most); the one with the
/// oldest last failure is forgotten first.
const MAX_CLIENTS: usize = 10_000;
/// Clients that logged in successfully, remembered so the operator is not rationed with the
/// botnet.
const MAX_KNOWN: usize = 64;

type HmacSha256 = Hmac<Sha256>;

/// The authenticator: the password, the signing keys, and the login limiter.
pub struct Auth {
    password: String,
    secret: Vec<u8>,
    /// Cookies get `Secure` (`[server] public_url` is https).
    secure: bool,
    /// (epoch, cookie key derived from the secret, the password and the epoch)
    session: RwLock<(u64, Vec<u8>)>,
    limiter: Mutex<Limiter>,
}

/// Outcome of checking a request's cookie.
#[derive(Debug, PartialEq, Eq)]
pub enum Session {
    /// Valid; `renew` carries a fresh `Set-Cookie` value when the sliding window should move.
    Valid {
        renew: Option<String>,
    },
    Missing,
}

/// Outcome of a login attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Login<T = String> {
    /// The password is right: the `Set-Cookie` value of a new session.
    Ok(T),
    /// The password is wrong; `backoff_started` when this failure turned on the global rationing.
    Wrong { backoff_started: bool },
    /// Not checked: too many failures; try again in `retry_after` seconds.
    Limited { retry_after: u64, global: bool },
}

/// Recent failed logins, per client and in all.
#[derive(Default)]
struct Limiter {
    clients: HashMap<IpAddr, VecDeque<Instant>>,
    /// The last `GLOBAL_FAILURES` failures from anyone.
    global: VecDeque<Instant>,
    /// While rationed: when the next check of an unknown client may run.
    next_check: Option<Instant>,
    known: VecDeque<IpAddr>,
}

impl Auth {
    /// Reads the secret from `<state>/session-secret` (created at start); `epoch` is the stored
    /// session epoch.
    pub fn new(password: &str, state_dir: &Path, epoch: u64, secure: bool) -> Result<Auth> {
        let p = state_dir.join("session-secret");
        let secret = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        crate::ensure!(secret.len() >= 32, "{} is too short to be a signing key", p.display());
        let key = derive_key(&secret, password, epoch);
        Ok(Auth {
            password: password.to_string(),
            secret,
            secure,
            session: RwLock::new((epoch, key)),
            limiter: Mutex::new(Limiter::default()),
        })
    }

    fn session_mac(&self) -> HmacSha256 {
        let s = self.session.read().unwrap_or_else(|p| p.into_inner());
        // HMAC takes keys of any length; this cannot fail.
        HmacSha256::new_from_slice(&s.1).expect("HMAC accepts any key length")
    }

    /// Compares a password in constant time (through HMACs of both, so lengths do not leak).
    fn password_ok(&self, given: &str) -> bool {
        let mac = || HmacSha256::new_from_slice(&self.secret).expect("HMAC accepts any key length");
        let mut want = mac();
        want.update(b"password\0");
        want.update(self.password.as_bytes());
        let want = want.finalize().into_bytes();
        let mut got = mac();
        got.update(b"password\0");
        got.update(given.as_bytes());
        got.verify_slice(&want).is_ok()
    }

    /// Ends every session: a new epoch, so a new cookie key. `persist` stores the new epoch
    /// (under the same lock, so concurrent logouts store them in order); it is in force in
    /// memory even when storing fails.
    pub fn revoke_all(&self, persist: impl FnOnce(u64) -> Result<()>) -> Result<()> {
        let mut s = self.session.write().unwrap_or_else(|p| p.into_inner());
        let epoch = s.0.wrapping_add(1);
        *s = (epoch, derive_key(&self.secret, &self.password, epoch));
        persist(epoch)
    }

    /// The `Set-Cookie` value of a new session, logged in now.
    pub fn issue(&self) -> String {
        let now = now_secs();
        self.set_cookie(&self.token_at(now, now), SESSION_SECS)
    }

    /// "<issued>.<expiry>.<hex hmac>", expiring 7 days from `now` or 30 from `issued`.
    fn token_at(&self, issued: u64, now: u64) -> String {
        let expiry = (now + SESSION_SECS).min(issued + ABSOLUTE_SECS);
        format!("{issued}.{expiry}.{}", crate::hex::encode(&self.sign(issued, expiry)))
    }

    fn sign(&self, issued: u64, expiry: u64) -> Vec<u8> {
        let mut m = self.session_mac();
        m.update(format!("bty-token\0{issued}.{expiry}").as_bytes());
        m.finalize().into_bytes().to_vec()
    }

    /// Checks the `bty-token` cookie of a `Cookie` header.
    pub fn check(&self, cookie_header: Option<&str>) -> Session {
        self.check_at(cookie_header, now_secs())
    }

    fn check_at(&self, cookie_header: Option<&str>, now: u64) -> Session {
        let Some(token) = cookie_header.and_then(|h| cookie(h, "bty-token")) else {
            return Session::Missing;
        };
        let mut parts = token.splitn(3, '.');
        let (Some(Ok(issued)), Some(Ok(expiry)), Some(sig)) = (
            parts.next().map(str::parse::<u64>),
            parts.next().map(str::parse::<u64>),
            parts.next().filter(|s| s.len() <= 128).and_then(crate::hex::decode),
        ) else {
            return Session::Missing;
        };
        let mut m = self.session_mac();
        m.update(format!("bty-token\0{issued}.{expiry}").as_bytes());
        if m.verify_slice(&sig).is_err()
            || expiry <= now
            || expiry > now.saturating_add(SESSION_SECS)
            || expiry > issued.saturating_add(ABSOLUTE_SECS)
        {
            return Session::Missing;
        }
        let renewed = (now + SESSION_SECS).min(issued + ABSOLUTE_SECS);
        let renew = (expiry < now + SESSION_SECS - RENEW_AFTER_SECS && renewed > expiry)
            .then(|| self.set_cookie(&self.token_at(issued, now), renewed - now));
        Session::Valid { renew }
    }

    /// The anti-CSRF token of the session in this `Cookie` header, for the hidden field of every
    /// form: an HMAC of the session cookie, so it is useless without the session and another
    /// site cannot compute it.
    pub fn csrf_token(&self, cookie_header: Option<&str>) -> String {
        let token = cookie_header.and_then(|h| cookie(h, "bty-token")).unwrap_or("");
        let mut m = self.session_mac();
        m.update(b"csrf\0");
        m.update(token.as_bytes());
        crate::hex::encode(&m.finalize().into_bytes())
    }

    /// Whether `given` is the anti-CSRF token of this session (compared in constant time).
    pub fn csrf_ok(&self, cookie_header: Option<&str>, given: &str) -> bool {
        let token = cookie_header.and_then(|h| cookie(h, "bty-token")).unwrap_or("");
        let Some(given) = Some(given).filter(|g| g.len() == 64).and_then(crate::hex::decode) else {
            return false;
        };
        let mut m = self.session_mac();
        m.update(b"csrf\0");
        m.update(token.as_bytes());
        m.verify_slice(&given).is_ok()
    }

    /// A login attempt from `ip` with `password`. The limits are checked, the password compared
    /// and the outcome recorded under one lock, so parallel attempts cannot slip past the limit.
    pub fn login(&self, ip: Option<IpAddr>, password: &str) -> Login {
        let outcome = self.attempt_at(ip, password, Instant::now());
        match outcome {
            Login::Ok(()) => Login::Ok(self.issue()),
            Login::Wrong { backoff_started } => Login::Wrong { backoff_started },
            Login::Limited { retry_after, global } => Login::Limited { retry_after, global },
        }
    }

    fn attempt_at(&self, ip: Option<IpAddr>, password: &str, now: Instant) -> Login<()> {
        let client = client_key(ip);
        let mut l = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        let recent = |t: &Instant| now.saturating_duration_since(*t) < FAIL_WINDOW;
        if let Some(list) = l.clients.get_mut(&client) {
            while list.front().is_some_and(|t| !recent(t)) {
                list.pop_front();
            }
            if list.len() >= MAX_FAILURES {
                let oldest = list.front().copied().unwrap_or(now);
                let wait = FAIL_WINDOW.saturating_sub(now.saturating_duration_since(oldest));
                return Login::Limited { retry_after: secs_up(wait), global: false };
            }
        }
        let rationed = l.global.len() >= GLOBAL_FAILURES && l.global.front().is_some_and(recent);
        if rationed && !l.known.contains(&client) {
            if let Some(next) = l.next_check.filter(|n| *n > now) {
                return Login::Limited { retry_after: secs_up(next - now), global: true };
            }
            l.next_check = Some(now + GLOBAL_SPACING);
        }
        if self.password_ok(password) {
            l.clients.remove(&client);
            l.known.retain(|k| *k != client);
            if l.known.len() >= MAX_KNOWN {
                l.known.pop_front();
            }
            l.known.push_back(client);
            return Login::Ok(());
        }
        if !l.clients.contains_key(&client) && l.clients.len() >= MAX_CLIENTS {
            l.clients.retain(|_, list| list.back().is_some_and(recent));
            if l.clients.len() >= MAX_CLIENTS {
                let stalest = l.clients.iter().min_by_key(|(_, list)| list.back().copied());
                if let Some(k) = stalest.map(|(k, _)| *k) {
                    l.clients.remove(&k);
                }
            }
        }
        l.clients.entry(client).or_default().push_back(now);
        l.global.push_back(now);
        if l.global.len() > GLOBAL_FAILURES {
            l.global.pop_front();
        }
        let now_rationed =
            l.global.len() >= GLOBAL_FAILURES && l.global.front().is_some_and(recent);
        Login::Wrong { backoff_started: now_rationed && !rationed }
    }

    /// `Set-Cookie` value that stores a session for `max_age` seconds.
    fn set_cookie(&self, token: &str, max_age: u64) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!("bty-token={token}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}")
    }

    /// `Set-Cookie` value that deletes the session cookie.
    pub fn clear_cookie(&self) -> String {
        self.set_cookie("", 0)
    }
}

/// The cookie key of an epoch: the password and the epoch go into it, so changing either
/// invalidates every cookie signed before.
fn derive_key(secret: &[u8], password: &str, epoch: u64) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    // The epoch is digits and ends at the NUL, so no two (epoch, password) pairs collide.
    m.update(format!("bty-session-key\0{epoch}\0").as_bytes());
    m.update(password.as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// Whom failures are counted against: an IPv4 address, or the /64 of an IPv6 one (a host gets
/// a whole /64 and may rotate within it). Unknown peers share one entry.
fn client_key(ip: Option<IpAddr>) -> IpAddr {
    ip.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), crate::web::http::addr_group)
}

/// Whole seconds, rounded up, at least 1 (for `Retry-After`).
fn secs_up(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether `[server] host` only ever accepts connections from this machine: an address in
/// 127.0.0.0/8 or ::1, or a name that resolves to nothing else. The wildcards 0.0.0.0 and
/// :: are not.
pub fn loopback_only(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip).is_loopback(),
        _ => ip.is_loopback(),
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return loopback(ip);
    }
    match (host, 0).to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(|a| loopback(a.ip()))
        }
        Err(_) => false,
    }
}

/// Decides whether bty-web may serve with its admin password, before anything is written:
/// the built-in default (or nothing) only on loopback. Returns the line that says where the
/// password came from, never the password.
pub fn password_policy(settings: &Settings) -> Result<String> {
    let source = settings.source("admin", "password");
    let ignored: String = settings
        .ignored
        .iter()
        .map(|i| format!(" ({i}: an empty password is never used)"))
        .collect();
    if !settings.default_password() {
        return Ok(format!("admin password from {source}"));
    }
    let what = match source {
        Source::Default => format!("the built-in default admin password{ignored}"),
        _ => format!("the built-in default admin password (set again in {source})"),
    };
    crate::ensure!(
        loopback_only(settings.get("server", "host")),
        "refusing to serve on {} with {what}: anyone on the network could log in. Set a \
         password with BTY_ADMIN_PASSWORD=... (in the environment, or the envvars file of the \
         service) or `[admin] password = \"...\"` in bty.toml, or listen on this machine only \
         (--listen 127.0.0.1:PORT)",
        settings.listen()
    );
    Ok(format!(
        "admin password: {what}, allowed on loopback only; set BTY_ADMIN_PASSWORD or \
         [admin] password before listening on the network"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(name: &str) -> (Auth, std::path::PathBuf) {
        let d = std::env::temp_dir().join(format!("bty-auth-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("session-secret"), [7u8; 32]).unwrap();
        (Auth::new("s3cret", &d, 0, false).unwrap(), d)
    }

    fn cookie_of(set_cookie: &str) -> String {
        set_cookie.split(';').next().unwrap().to_string()
    }

    #[test]
    fn passwords_compare_exactly() {
        let (a, d) = auth("pw");
        assert!(a.password_ok("s3cret"));
        assert!(!a.password_ok("s3cre"));
        assert!(!a.password_ok("s3cret "));
        assert!(!a.password_ok(""));
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn tokens_verify_expire_renew_and_resist_tampering() {
        let (a, d) = auth("tok");
        let now = 1_800_000_000;
        let t = a.token_at(now, now);
        let header = format!("theme=dark; bty-token={t}");
        assert_eq!(a.check_at(Some(&header), now), Session::Valid { renew: None });
        // Two days later it is still valid and gets renewed (sliding expiry).
        match a.check_at(Some(&header), now + 2 * 86_400) {
            Session::Valid { renew: Some(r) } => {
                let prefix = format!("bty-token={now}.{}.", now + 2 * 86_400 + SESSION_SECS);
                assert!(r.starts_with(&prefix), "{r}");
                assert!(r.contains(&format!("Max-Age={SESSION_SECS};")) && !r.contains("Secure"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(a.check_at(Some(&header), now + SESSION_SECS), Session::Missing, "expired");
        // A longer expiry or an earlier login time with the old signature is refused.
        let (_, sig) = t.rsplit_once('.').unwrap();
        for forged in [
            format!("bty-token={now}.{}.{sig}", now + 10 * SESSION_SECS),
            format!("bty-token={}.{}.{sig}", now + 1, now + SESSION_SECS),
        ] {
            assert_eq!(a.check_at(Some(&forged), now), Session::Missing, "{forged}");
        }
        // The old format (before the login time was carried) is refused.
        let old = format!("bty-token={}.{sig}", now + SESSION_SECS);
        assert_eq!(a.check_at(Some(&old), now), Session::Missing);
        for bad in ["bty-token=", "bty-token=abc", "bty-token=1.zz", "bty-token=1.2.zz", "other=1"]
        {
            assert_eq!(a.check_at(Some(bad), now), Session::Missing, "{bad}");
        }
        assert_eq!(a.check_at(None, now), Session::Missing);
        // Another instance's key does not validate our tokens.
        std::fs::write(d.join("session-secret"), [8u8; 32]).unwrap();
        let other = Auth::new("s3cret", &d, 0, false).unwrap();
        assert_eq!(other.check_at(Some(&header), now), Session::Missing);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn sessions_end_thirty_days_after_login_however_often_renewed() {
        let (a, d) = auth("abs");
        let login = 1_800_000_000;
        let mut header = format!("bty-token={}", a.token_at(login, login));
        let mut now = login;
        // Renewed every two days, the session lasts exactly the absolute lifetime.
        loop {
            now += 2 * 86_400;
            match a.check_at(Some(&header), now) {
                Session::Valid { renew: Some(r) } => header = cookie_of(&r),
                Session::Valid { renew: None } => {}
                Session::Missing => break,
            }
            assert!(now < login + 40 * 86_400, "still valid at day {}", (now - login) / 86_400);
        }
        assert!(now >= login + ABSOLUTE_SECS && now < login + ABSOLUTE_SECS + 2 * 86_400);
        // One second before the end it is valid, at the end it is not.
        let last = format!("bty-token={}", a.token_at(login, login + ABSOLUTE_SECS - 86_400));
        assert!(matches!(
            a.check_at(Some(&last), login + ABSOLUTE_SECS - 1),
            Session::Valid { .. }
        ));
        assert_eq!(a.check_at(Some(&last), login + ABSOLUTE_SECS), Session::Missing);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn revocation_and_a_new_password_end_every_session_and_their_csrf_tokens() {
        let (a, d) = auth("revoke");
        let now = now_secs();
        let header = format!("bty-token={}", a.token_at(now, now));
        let csrf = a.csrf_token(Some(&header));
        assert!(a.csrf_ok(Some(&header), &csrf));
        assert!(matches!(a.check(Some(&header)), Session::Valid { .. }));
        let mut stored = None;
        a.revoke_all(|e| {
            stored = Some(e);
            Ok(())
        })
        .unwrap();
        assert_eq!(stored, Some(1));
        assert_eq!(a.check(Some(&header)), Session::Missing);
        assert!(!a.csrf_ok(Some(&header), &csrf));
        // A restart with the stored epoch keeps them revoked; new ones work.
        let again = Auth::new("s3cret", &d, 1, true).unwrap();
        assert_eq!(again.check(Some(&header)), Session::Missing);
        let fresh = again.issue();
        assert!(fresh.ends_with("; Secure"), "{fresh}");
        assert!(matches!(again.check(Some(&cookie_of(&fresh))), Session::Valid { .. }));
        // The same secret and epoch with another password: nothing signed before is valid.
        let other = Auth::new("n3w", &d, 1, false).unwrap();
        assert_eq!(other.check(Some(&cookie_of(&fresh))), Session::Missing);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn failed_logins_are_limited_per_client_and_ipv6_by_its_64() {
        let (a, d) = auth("rate");
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert_eq!(a.attempt_at(Some(ip), "x", t0), Login::Wrong { backoff_started: false });
        }
        // Now even the right password is not checked, until the window has passed.
        assert_eq!(
            a.attempt_at(Some(ip), "s3cret", t0 + Duration::from_secs(10)),
            Login::Limited { retry_after: 290, global: false }
        );
        assert_eq!(a.attempt_at(Some(ip), "s3cret", t0 + FAIL_WINDOW), Login::Ok(()));
        assert_eq!(a.attempt_at(Some("192.0.2.2".parse().unwrap()), "s3cret", t0), Login::Ok(()));
        for i in 0..MAX_FAILURES {
            let v6: IpAddr = format!("2001:db8:1:2::{:x}", i + 1).parse().unwrap();
            assert!(matches!(a.attempt_at(Some(v6), "x", t0), Login::Wrong { .. }));
        }
        let same64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert!(matches!(a.attempt_at(Some(same64), "s3cret", t0), Login::Limited { .. }));
        let next64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(a.attempt_at(Some(next64), "s3cret", t0), Login::Ok(()));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(client_key(Some(mapped)), client_key(Some(ip)));
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn many_clients_together_are_rationed_but_known_clients_are_not_and_memory_is_bounded() {
        let (a, d) = auth("global");
        let t0 = Instant::now();
        let known: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(a.attempt_at(Some(known), "s3cret", t0), Login::Ok(()));
        let bot = |i: u32| Some(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)));
        let mut started = 0;
        for i in 0..GLOBAL_FAILURES as u32 {
            match a.attempt_at(bot(i), "x", t0) {
                Login::Wrong { backoff_started } => started += usize::from(backoff_started),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(started, 1, "the start of the rationing is reported once");
        // One check goes through, the next waits for the spacing, whoever asks.
        assert!(matches!(a.attempt_at(bot(1000), "x", t0), Login::Wrong { .. }));
        assert_eq!(
            a.attempt_at(bot(1001), "s3cret", t0),
            Login::Limited { retry_after: 2, global: true }
        );
        assert_eq!(a.attempt_at(Some(known), "s3cret", t0), Login::Ok(()), "known client");
        assert!(matches!(a.attempt_at(bot(1002), "x", t0 + GLOBAL_SPACING), Login::Wrong { .. }));
        // Once the failures are older than the window, nobody is rationed.
        let later = t0 + FAIL_WINDOW + GLOBAL_SPACING;
        assert_eq!(a.attempt_at(bot(1003), "s3cret", later), Login::Ok(()));
        // The tables stay bounded however many clients fail.
        for i in 0..(MAX_CLIENTS as u32 + 500) {
            let _ =
                a.attempt_at(bot(20_000 + i), "x", later + Duration::from_secs(3 * u64::from(i)));
        }
        let l = a.limiter.lock().unwrap();
        assert!(l.clients.len() <= MAX_CLIENTS, "{}", l.clients.len());
        assert!(l.global.len() <= GLOBAL_FAILURES);
        assert!(l.known.len() <= MAX_KNOWN);
        drop(l);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_full_client_table_forgets_the_stalest_client() {
        let (a, d) = auth("evict");
        let t0 = Instant::now();
        {
            let mut l = a.limiter.lock().unwrap();
            for i in 0..MAX_CLIENTS as u32 {
                let at = t0 + Duration::from_millis(u64::from(i) + 1);
                l.clients.insert(IpAddr::V4(Ipv4Addr::from(i)), VecDeque::from([at]));
            }
        }
        let newcomer: IpAddr = "203.0.113.9".parse().unwrap();
        let now = t0 + Duration::from_secs(60);
        assert!(matches!(a.attempt_at(Some(newcomer), "x", now), Login::Wrong { .. }));
        let l = a.limiter.lock().unwrap();
        assert_eq!(l.clients.len(), MAX_CLIENTS);
        assert!(l.clients.contains_key(&newcomer));
        assert!(!l.clients.contains_key(&IpAddr::V4(Ipv4Addr::from(0))), "the stalest went");
        assert!(l.clients.contains_key(&IpAddr::V4(Ipv4Addr::from(1))));
        drop(l);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn only_loopback_addresses_count_as_loopback() {
        for h in ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "::ffff:127.0.0.1"] {
            assert!(loopback_only(h), "{h}");
        }
        for h in ["0.0.0.0", "::", "[::]", "10.0.0.5", "192.0.2.1", "2001:db8::1", "no such host."]
        {
            assert!(!loopback_only(h), "{h}");
        }
    }
}
