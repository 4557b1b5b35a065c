//! Operator authentication: one admin password, a signed `bty-token` cookie (HMAC-SHA256 with
//! the per-instance key in `<state>/session-secret`), sliding 7-day expiry, and a per-address
//! limit on failed logins. No session table: the cookie is the session.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::units::now_secs;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Context, Result};

/// Cookie lifetime; every authenticated request that is more than a day into it renews it.
pub const SESSION_SECS: u64 = 7 * 24 * 3600;
const RENEW_AFTER_SECS: u64 = 24 * 3600;
/// Failed logins allowed per client address in `FAIL_WINDOW` before it must wait.
const MAX_FAILURES: usize = 10;
const FAIL_WINDOW: Duration = Duration::from_secs(300);

type HmacSha256 = Hmac<Sha256>;

/// The authenticator: the password and the signing key, and recent failures per address.
pub struct Auth {
    password: String,
    key: Vec<u8>,
    failures: Mutex<HashMap<IpAddr, Vec<Instant>>>,
}

/// Outcome of checking a request's cookie.
#[derive(Debug, PartialEq, Eq)]
pub enum Session {
    /// Valid; `renew` carries a fresh cookie value when the sliding window should move.
    Valid {
        renew: Option<String>,
    },
    Missing,
}

impl Auth {
    /// Reads the signing key from `<state>/session-secret` (created at start).
    pub fn new(password: &str, state_dir: &Path) -> Result<Auth> {
        let p = state_dir.join("session-secret");
        let key = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        crate::ensure!(key.len() >= 32, "{} is too short to be a signing key", p.display());
        Ok(Auth { password: password.to_string(), key, failures: Mutex::new(HashMap::new()) })
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length; this cannot fail.
        HmacSha256::new_from_slice(&self.key).expect("HMAC accepts any key length")
    }

    /// Compares a password in constant time (through HMACs of both, so lengths do not leak).
    pub fn password_ok(&self, given: &str) -> bool {
        let mut want = self.mac();
        want.update(b"password\0");
        want.update(self.password.as_bytes());
        let want = want.finalize().into_bytes();
        let mut got = self.mac();
        got.update(b"password\0");
        got.update(given.as_bytes());
        got.verify_slice(&want).is_ok()
    }

    /// A cookie value valid until now + 7 days: "<expiry>.<hex hmac>".
    pub fn issue(&self) -> String {
        self.issue_at(now_secs())
    }

    fn issue_at(&self, now: u64) -> String {
        let expiry = now + SESSION_SECS;
        format!("{expiry}.{}", crate::hex::encode(&self.sign(expiry)))
    }

    fn sign(&self, expiry: u64) -> Vec<u8> {
        let mut m = self.mac();
        m.update(b"bty-token\0");
        m.update(expiry.to_string().as_bytes());
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
        let Some((exp, sig)) = token.split_once('.') else { return Session::Missing };
        let (Ok(expiry), Some(sig)) =
            (exp.parse::<u64>(), Some(sig).filter(|s| s.len() <= 128).and_then(crate::hex::decode))
        else {
            return Session::Missing;
        };
        let mut m = self.mac();
        m.update(b"bty-token\0");
        m.update(expiry.to_string().as_bytes());
        if m.verify_slice(&sig).is_err() || expiry <= now || expiry > now + SESSION_SECS {
            return Session::Missing;
        }
        let renew = (expiry < now + SESSION_SECS - RENEW_AFTER_SECS).then(|| self.issue_at(now));
        Session::Valid { renew }
    }

    /// The anti-CSRF token of the session in this `Cookie` header, for the hidden field of every
    /// form: an HMAC of the session cookie, so it is useless without the session and another
    /// site cannot compute it.
    pub fn csrf_token(&self, cookie_header: Option<&str>) -> String {
        let token = cookie_header.and_then(|h| cookie(h, "bty-token")).unwrap_or("");
        let mut m = self.mac();
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
        let mut m = self.mac();
        m.update(b"csrf\0");
        m.update(token.as_bytes());
        m.verify_slice(&given).is_ok()
    }

    /// Whether this address may try a login now (fewer than 10 failures in 5 minutes).
    pub fn may_try(&self, ip: Option<IpAddr>) -> bool {
        let Some(ip) = ip else { return true };
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let list = f.entry(ip).or_default();
        list.retain(|t| t.elapsed() < FAIL_WINDOW);
        list.len() < MAX_FAILURES
    }

    /// Records a failed login from this address.
    pub fn failed(&self, ip: Option<IpAddr>) {
        let Some(ip) = ip else { return };
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        // Bound the table: forget addresses with no recent failure when it grows.
        if f.len() > 10_000 {
            f.retain(|_, l| l.iter().any(|t| t.elapsed() < FAIL_WINDOW));
        }
        f.entry(ip).or_default().push(Instant::now());
    }
}

/// `Set-Cookie` value that stores a session.
pub fn set_cookie(value: &str) -> String {
    format!("bty-token={value}; Path=/; Max-Age={SESSION_SECS}; HttpOnly; SameSite=Strict")
}

/// `Set-Cookie` value that deletes the session.
pub fn clear_cookie() -> String {
    "bty-token=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict".into()
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(name: &str) -> (Auth, std::path::PathBuf) {
        let d = std::env::temp_dir().join(format!("bty-auth-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("session-secret"), [7u8; 32]).unwrap();
        (Auth::new("s3cret", &d).unwrap(), d)
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
        let t = a.issue_at(now);
        let header = format!("theme=dark; bty-token={t}");
        assert_eq!(a.check_at(Some(&header), now), Session::Valid { renew: None });
        // Two days later it is still valid and gets renewed (sliding expiry).
        match a.check_at(Some(&header), now + 2 * 86_400) {
            Session::Valid { renew: Some(r) } => {
                assert!(r.starts_with(&(now + 2 * 86_400 + SESSION_SECS).to_string()))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(a.check_at(Some(&header), now + SESSION_SECS), Session::Missing, "expired");
        // A longer expiry with the old signature is refused.
        let (_, sig) = t.split_once('.').unwrap();
        let forged = format!("bty-token={}.{sig}", now + 10 * SESSION_SECS);
        assert_eq!(a.check_at(Some(&forged), now), Session::Missing);
        for bad in ["bty-token=", "bty-token=abc", "bty-token=1.zz", "other=1"] {
            assert_eq!(a.check_at(Some(bad), now), Session::Missing, "{bad}");
        }
        assert_eq!(a.check_at(None, now), Session::Missing);
        // Another instance's key does not validate our tokens.
        std::fs::write(d.join("session-secret"), [8u8; 32]).unwrap();
        let other = Auth::new("s3cret", &d).unwrap();
        assert_eq!(other.check_at(Some(&header), now), Session::Missing);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn failed_logins_are_limited_per_address() {
        let (a, d) = auth("rate");
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert!(a.may_try(Some(ip)));
            a.failed(Some(ip));
        }
        assert!(!a.may_try(Some(ip)));
        assert!(a.may_try(Some("192.0.2.2".parse().unwrap())), "other addresses are not affected");
        let _ = std::fs::remove_dir_all(d);
    }
}
