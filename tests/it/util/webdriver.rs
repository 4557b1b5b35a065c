//! A small W3C WebDriver client over ureq, for headless Chromium through Debian's
//! chromium-driver: start a driver on a free 127.0.0.1 port, open a session, find elements,
//! type, click, take screenshots.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Flags that keep Chromium quiet on a closed network and independent of the machine's profile.
const CHROMIUM_ARGS: [&str; 10] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
];

pub struct Driver {
    child: Child,
    base: String,
    session: String,
    agent: ureq::Agent,
    profile: PathBuf,
}

impl Driver {
    /// Starts chromedriver and a headless Chromium session. Without them installed the test
    /// fails (`make deps` installs them): a browser test that quietly skips proves nothing.
    pub fn start(name: &str) -> Driver {
        let (driver, chromium) = ("/usr/bin/chromedriver", "/usr/bin/chromium");
        assert!(
            std::path::Path::new(driver).exists() && std::path::Path::new(chromium).exists(),
            "the browser test needs chromium and chromium-driver (make deps installs them)"
        );
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let profile =
            std::env::temp_dir().join(format!("bty-chromium-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        let mut d = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            agent,
            profile,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while d
            .agent
            .get(&format!("{}/status", d.base))
            .call()
            .map(|r| r.status() != 200)
            .unwrap_or(true)
        {
            assert!(Instant::now() < deadline, "chromedriver did not start within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", d.profile.display()));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let v = d.raw("POST", "/session", Some(caps));
        d.session =
            v["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {v}")).to_string();
        d
    }

    /// One command; returns the whole response object.
    fn raw(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let resp = match method {
            "GET" => self.agent.get(&url).call(),
            "DELETE" => self.agent.delete(&url).call(),
            _ => self
                .agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.unwrap_or(json!({})).to_string()),
        };
        let mut resp = resp.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        v.get("value").map(|_| ()).unwrap_or_else(|| panic!("{method} {path}: {text}"));
        // sessionId sits inside value for new sessions.
        if v["value"]["sessionId"].is_string() { v["value"].clone() } else { v }
    }

    /// A session command; panics on a WebDriver error.
    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let v = self.raw(method, &format!("/session/{}{path}", self.session), body);
        if let Some(e) = v["value"]["error"].as_str() {
            panic!("{method} {path}: {e}: {}", v["value"]["message"]);
        }
        v["value"].clone()
    }

    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({"url": url})));
    }

    pub fn url(&self) -> String {
        self.cmd("GET", "/url", None).as_str().unwrap_or("").to_string()
    }

    pub fn source(&self) -> String {
        self.cmd("GET", "/source", None).as_str().unwrap_or("").to_string()
    }

    /// The elements matching a CSS selector.
    pub fn find_all(&self, css: &str) -> Vec<String> {
        let v = self.cmd("POST", "/elements", Some(json!({"using": "css selector", "value": css})));
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_object()?.values().next()?.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The first element matching, or a panic naming the selector.
    pub fn find(&self, css: &str) -> String {
        self.find_all(css)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no element {css} on {}", self.url()))
    }

    pub fn click(&self, el: &str) {
        self.cmd("POST", &format!("/element/{el}/click"), Some(json!({})));
    }

    pub fn clear(&self, el: &str) {
        self.cmd("POST", &format!("/element/{el}/clear"), Some(json!({})));
    }

    pub fn type_into(&self, el: &str, text: &str) {
        self.cmd("POST", &format!("/element/{el}/value"), Some(json!({"text": text})));
    }

    pub fn text(&self, el: &str) -> String {
        self.cmd("GET", &format!("/element/{el}/text"), None).as_str().unwrap_or("").to_string()
    }

    /// The text of the first element matching, "" when there is none or it was replaced
    /// between finding and reading (live pages redraw under the test).
    pub fn text_of(&self, css: &str) -> String {
        let Some(el) = self.find_all(css).into_iter().next() else { return String::new() };
        let v = self.raw("GET", &format!("/session/{}/element/{el}/text", self.session), None);
        v["value"].as_str().unwrap_or("").to_string()
    }

    /// Runs `script` in the page as a function body; what it returns, as JSON.
    pub fn js(&self, script: &str) -> Value {
        self.cmd("POST", "/execute/sync", Some(json!({"script": script, "args": []})))
    }

    /// Picks the option with this value in a select element.
    pub fn select(&self, select_css: &str, value: &str) {
        let el = self.find(&format!("{select_css} option[value=\"{value}\"]"));
        self.click(&el);
    }

    /// Whether a JavaScript dialog (alert) is open.
    pub fn alert_open(&self) -> bool {
        let v = self.raw("GET", &format!("/session/{}/alert/text", self.session), None);
        v["value"]["error"].as_str().is_none()
    }

    pub fn set_window(&self, width: u32, height: u32) {
        self.cmd("POST", "/window/rect", Some(json!({"width": width, "height": height})));
    }

    /// Presses Tab once.
    pub fn tab(&self) {
        let tab = "\u{E004}";
        self.cmd(
            "POST",
            "/actions",
            Some(json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
                {"type": "keyDown", "value": tab}, {"type": "keyUp", "value": tab}]}]})),
        );
    }

    /// The text of the element that has the keyboard focus.
    pub fn focused_text(&self) -> String {
        let v = self.cmd("GET", "/element/active", None);
        let id =
            v.as_object().and_then(|o| o.values().next()).and_then(|v| v.as_str()).unwrap_or("");
        self.text(id)
    }

    /// Makes pages see `prefers-color-scheme: dark` (or light), through Chromium's DevTools.
    pub fn color_scheme(&self, scheme: &str) {
        self.cmd(
            "POST",
            "/goog/cdp/execute",
            Some(json!({"cmd": "Emulation.setEmulatedMedia",
                "params": {"features": [{"name": "prefers-color-scheme", "value": scheme}]}})),
        );
    }

    /// Saves a PNG screenshot as target/ui-screens/<name>.png for a person to look at.
    pub fn screenshot(&self, name: &str) {
        let b64 = self.cmd("GET", "/screenshot", None);
        let png = base64_decode(b64.as_str().unwrap_or(""));
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ui-screens");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// On the login page: types the tests' password, submits, and lands on the dashboard.
    pub fn submit_login(&self) {
        self.type_into(&self.find("#password"), "pw-for-tests");
        self.click(&self.find("form button[type=submit]"));
        let landed = self.wait(Duration::from_secs(5), |d| d.url().ends_with("/ui/dashboard"));
        assert!(landed, "{}", self.url());
    }

    /// Logs in to the bty-web at `base` (`http://HOST:PORT`).
    pub fn log_in(&self, base: &str) {
        self.goto(&format!("{base}/ui/login"));
        self.submit_login();
    }

    /// Polls `f` every 50 ms until it holds or `limit` passes; whether it held.
    pub fn wait(&self, limit: Duration, f: impl Fn(&Driver) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if f(self) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.agent.delete(&format!("{}/session/{}", self.base, self.session)).call();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
