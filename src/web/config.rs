//! bty-web configuration: `bty.toml` (found through `BTY_CONFIG_FILE`, `BTY_CONFIG_DIR` or the
//! default search list), then what operators saved on the Settings page (`settings.toml` in the
//! state dir, a file bty-web owns), then `BTY_<SECTION>_<KEY>` environment overrides and
//! command-line flags. Every setting remembers where its value came from, for `bty-web config`
//! and the UI, and whether bty-web applies a change at once or reads it only at start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Context, Result};

/// Where a setting's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    /// A TOML file, by path.
    File(PathBuf),
    /// An environment variable, by name.
    Env(String),
    /// A command-line flag, by name.
    Flag(&'static str),
    /// Saved from the Settings page, in the state dir's `settings.toml`.
    Saved(PathBuf),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "toml {}", p.display()),
            Source::Env(v) => write!(f, "env {v}"),
            Source::Flag(n) => write!(f, "flag {n}"),
            Source::Saved(p) => write!(f, "saved {}", p.display()),
        }
    }
}

/// One known setting: `[section] key`, its default and whether to hide its value when shown.
struct Key {
    section: &'static str,
    key: &'static str,
    default: fn(&Settings) -> String,
    secret: bool,
    help: &'static str,
}

/// Every setting bty-web knows. Adding one is one line here plus its accessor.
const KEYS: &[Key] = &[
    Key {
        section: "server",
        key: "host",
        default: |_| "0.0.0.0".into(),
        secret: false,
        help: "listen address",
    },
    Key {
        section: "server",
        key: "port",
        default: |_| "8080".into(),
        secret: false,
        help: "listen port",
    },
    Key {
        section: "server",
        key: "public_url",
        default: |_| String::new(),
        secret: false,
        help: "base URL machines reach bty-web at, e.g. http://10.0.0.5:8080, for the autoexec.ipxe TFTP hands out (empty: http://${next-server}:<listen port>)",
    },
    Key {
        section: "server",
        key: "allowed_hosts",
        default: |_| String::new(),
        secret: false,
        help: "more names (comma-separated, no ports) the UI and API answer to, besides localhost, the hostname, the listen and interface addresses and public_url's host; other Host headers get 421",
    },
    Key {
        section: "server",
        key: "max_connections",
        default: |_| "512".into(),
        secret: false,
        help: "open connections at once; more get 503",
    },
    Key {
        section: "server",
        key: "max_connections_per_ip",
        default: |_| "64".into(),
        secret: false,
        help: "open connections from one address (IPv6: one /64); more get 503",
    },
    Key {
        section: "server",
        key: "header_timeout",
        default: |_| "10".into(),
        secret: false,
        help: "seconds a client has to send a whole request head",
    },
    Key {
        section: "server",
        key: "min_body_rate",
        default: |_| "1024".into(),
        secret: false,
        help: "bytes/s a request body must average once body_grace has passed; slower gets 408",
    },
    Key {
        section: "server",
        key: "body_grace",
        default: |_| "10".into(),
        secret: false,
        help: "seconds a request body may take before min_body_rate applies",
    },
    Key {
        section: "server",
        key: "max_buffered_mib",
        default: |_| "64".into(),
        secret: false,
        help: "MiB all request bodies held in memory may take at once; more get 503",
    },
    Key {
        section: "server",
        key: "idle_timeout",
        default: |_| "60".into(),
        secret: false,
        help: "seconds an idle keep-alive connection is kept",
    },
    Key {
        section: "server",
        key: "io_timeout",
        default: |_| "30".into(),
        secret: false,
        help: "seconds a client may stall mid-body (reading ours or sending its own) before it is dropped",
    },
    Key {
        section: "paths",
        key: "state_dir",
        default: |_| "/var/lib/bty".into(),
        secret: false,
        help: "state.db, session-secret, catalog.toml, backups/",
    },
    Key {
        section: "paths",
        key: "boot_dir",
        default: |s| format!("{}/boot", s.get("paths", "state_dir")),
        secret: false,
        help: "netboot artifacts served at /boot/{name}",
    },
    Key {
        section: "admin",
        key: "password",
        default: |_| DEFAULT_PASSWORD.into(),
        secret: true,
        help: "operator password (UI and API)",
    },
    Key {
        section: "boot",
        key: "release_repo",
        default: |_| "safl/bty".into(),
        secret: false,
        help: "where netboot artifacts are fetched from",
    },
    Key {
        section: "boot",
        key: "release_tag",
        default: |_| "latest".into(),
        secret: false,
        help: "release tag of the netboot artifacts",
    },
    Key {
        section: "boot",
        key: "release_url",
        default: |_| String::new(),
        secret: false,
        help: "http(s) base URL or local directory holding release.toml and the assets it lists, which the netboot fetch reads (empty: the GitHub release of release_repo/release_tag)",
    },
    Key {
        section: "boot",
        key: "kernel",
        default: |_| format!("bty-netboot-pc-x86_64-v{}.vmlinuz", crate::VERSION),
        secret: false,
        help: "live-environment kernel file name the boot scripts name; when left unset, the one the last netboot fetch installed (else the default)",
    },
    Key {
        section: "boot",
        key: "initrd",
        default: |_| format!("bty-netboot-pc-x86_64-v{}.initrd", crate::VERSION),
        secret: false,
        help: "live-environment initrd file name the boot scripts name; when left unset, the one the last netboot fetch installed (else the default)",
    },
    Key {
        section: "boot",
        key: "kernel_arm64",
        default: |_| format!("bty-netboot-arm64-v{}.vmlinuz", crate::VERSION),
        secret: false,
        help: "arm64 live-environment kernel file name the boot scripts name for arm64 machines (iPXE's ${buildarch}); when left unset, the one the last netboot fetch installed (else the default)",
    },
    Key {
        section: "boot",
        key: "initrd_arm64",
        default: |_| format!("bty-netboot-arm64-v{}.initrd", crate::VERSION),
        secret: false,
        help: "arm64 live-environment initrd file name the boot scripts name for arm64 machines; when left unset, the one the last netboot fetch installed (else the default)",
    },
    Key {
        section: "boot",
        key: "ipxe_dir",
        default: |_| "/usr/share/bty/ipxe".into(),
        secret: false,
        help: "iPXE binaries (undionly.kpxe, ipxe.efi, ipxe-arm64.efi) served over TFTP and /boot/{name} when the boot dir has no file of that name",
    },
    Key {
        section: "boot",
        key: "max_upload_mib",
        default: |_| "2048".into(),
        secret: false,
        help: "largest artifact PUT /boot/{name} accepts, in MiB",
    },
    Key {
        section: "cache",
        key: "dir",
        default: |_| String::new(),
        secret: false,
        help: "directory of the image cache (empty: no cache; flashes stream from the origin)",
    },
    Key {
        section: "cache",
        key: "max_gib",
        default: |_| "50".into(),
        secret: false,
        help: "size cap of the image cache in GiB; least recently used images go first",
    },
    Key {
        section: "cache",
        key: "upstreams",
        default: |_| String::new(),
        secret: false,
        help: "other bty-web servers (http(s)://host[:port], comma-separated or a TOML list) a cache miss is fetched from, in order, before the image's origin; their bytes are checked against the pin like the origin's",
    },
    Key {
        section: "registry",
        key: "hosts_dir",
        default: |_| crate::source::mirrors::DEFAULT_HOSTS_DIR.into(),
        secret: false,
        help: "containerd-style registry hosts directory (<registry>/hosts.toml) naming the mirrors oras:// pulls (cache fills, catalogs) go through; read only if present",
    },
    Key {
        section: "tftp",
        key: "enabled",
        default: |_| "false".into(),
        secret: false,
        help: "serve the boot dir over TFTP too (legacy PXE firmware)",
    },
    Key {
        section: "tftp",
        key: "listen",
        default: |_| "0.0.0.0:69".into(),
        secret: false,
        help: "UDP address of the TFTP server",
    },
    Key {
        section: "pxe",
        key: "max_discovered",
        default: |_| "10000".into(),
        secret: false,
        help: "machines discovered by PXE and not yet claimed kept at most; beyond it unknown MACs are answered (exit to the firmware boot order) but not recorded (0: no cap)",
    },
    Key {
        section: "pxe",
        key: "discoveries_per_minute",
        default: |_| "60".into(),
        secret: false,
        help: "unknown MACs recorded per source address (IPv6: per /64) per minute; more are answered but not recorded (0: no limit)",
    },
    Key {
        section: "pxe",
        key: "max_lshw_total_mib",
        default: |_| "256".into(),
        secret: false,
        help: "total MiB of lshw reports stored; beyond it an inventory keeps its disks and drops the new lshw blob (0: no cap)",
    },
    Key {
        section: "pxe",
        key: "discovered_ttl_days",
        default: |_| "0".into(),
        secret: false,
        help: "delete discovered machines never claimed and not seen for this many days (0: never)",
    },
];

/// Settings bty-web reads where it uses them (each request, each fetch, each worker round), so
/// a change applies at once. Every other one is read at start: sockets, limits, paths, the
/// cache and the PXE caps are set up from it, and a change applies at the next restart.
const LIVE: &[(&str, &str)] = &[
    ("server", "public_url"),
    ("server", "allowed_hosts"),
    ("boot", "release_repo"),
    ("boot", "release_tag"),
    ("boot", "release_url"),
    ("boot", "kernel"),
    ("boot", "initrd"),
    ("boot", "kernel_arm64"),
    ("boot", "initrd_arm64"),
    ("boot", "max_upload_mib"),
    ("pxe", "discovered_ttl_days"),
];

/// The file of the Settings page's changes, in the state dir.
pub const SAVED_FILE: &str = "settings.toml";

/// A setting given as a flag: (section, key, value, the flag's name).
pub type Flag = (&'static str, &'static str, String, &'static str);

/// The password used when none is configured; bty-web warns about it at start.
pub const DEFAULT_PASSWORD: &str = "bty-lab";

/// The resolved settings, each with its source.
#[derive(Clone, Debug)]
pub struct Settings {
    values: BTreeMap<(&'static str, &'static str), (String, Source)>,
    /// The TOML files that were read, in order.
    pub files: Vec<PathBuf>,
    /// Keys found in the files that bty-web does not know (reported as warnings).
    pub unknown: Vec<String>,
    /// Secrets given empty, and so left unset (an empty `BTY_ADMIN_PASSWORD=` is no password).
    pub ignored: Vec<String>,
    /// What it was loaded from (the `BTY_` variables and the flags), to load it again.
    inputs: (BTreeMap<String, String>, Vec<Flag>),
}

impl Settings {
    /// Resolves the settings from files, the environment (`env`, usually std::env::vars) and
    /// command-line overrides (section, key, value, flag name).
    pub fn load(env: &BTreeMap<String, String>, flags: &[Flag]) -> Result<Settings> {
        let ours = env.iter().filter(|(k, _)| k.starts_with("BTY_"));
        let mut s = Settings {
            values: BTreeMap::new(),
            files: Vec::new(),
            unknown: Vec::new(),
            ignored: Vec::new(),
            inputs: (ours.map(|(k, v)| (k.clone(), v.clone())).collect(), flags.to_vec()),
        };
        // Flags and env that place the state dir decide where <state_dir>/bty.toml is looked for.
        let state_hint = flags
            .iter()
            .find(|f| (f.0, f.1) == ("paths", "state_dir"))
            .map(|f| f.2.clone())
            .or_else(|| env.get("BTY_PATHS_STATE_DIR").cloned())
            .unwrap_or_else(|| "/var/lib/bty".into());
        for file in config_files(env, Path::new(&state_hint))? {
            s.read_file(&file)?;
            s.files.push(file);
        }
        for k in KEYS {
            let var =
                format!("BTY_{}_{}", k.section.to_ascii_uppercase(), k.key.to_ascii_uppercase());
            if let Some(v) = env.get(&var) {
                if k.secret && v.is_empty() {
                    s.ignored.push(format!("{var} is empty (an empty password is never used)"));
                    continue;
                }
                s.values.insert((k.section, k.key), (v.clone(), Source::Env(var)));
            }
        }
        for (section, key, value, flag) in flags {
            s.values.insert((section, key), (value.clone(), Source::Flag(flag)));
        }
        // Defaults last: some derive from other settings (boot_dir from state_dir).
        for k in KEYS {
            if !s.values.contains_key(&(k.section, k.key)) {
                let v = (k.default)(&s);
                s.values.insert((k.section, k.key), (v, Source::Default));
            }
        }
        // The Settings page's changes, in the state dir the above settled: over the files and
        // the defaults, under the environment and the flags (a deployment's own overrides).
        let saved = s.saved_path();
        if saved.is_file() {
            s.read_saved(&saved)?;
        }
        s.validate()?;
        Ok(s)
    }

    /// The same settings read again from the same files, variables and flags: what the next
    /// start would see.
    pub fn reload(&self) -> Result<Settings> {
        Settings::load(&self.inputs.0, &self.inputs.1)
    }

    /// Where the Settings page saves its changes.
    pub fn saved_path(&self) -> PathBuf {
        self.state_dir().join(SAVED_FILE)
    }

    /// Whether a change of `[section] key` applies at once (else at the next start); None for
    /// a setting bty-web does not know.
    pub fn applies_now(section: &str, key: &str) -> Option<bool> {
        KEYS.iter()
            .any(|k| k.section == section && k.key == key)
            .then(|| LIVE.contains(&(section, key)))
    }

    /// Whether the Settings page may change `[section] key`, and if not why: the password is
    /// changed in a file, the state dir holds the saved file itself, and a value from the
    /// environment or a flag wins over the page.
    pub fn editable(&self, section: &str, key: &str) -> std::result::Result<(), String> {
        let Some(k) = KEYS.iter().find(|k| k.section == section && k.key == key) else {
            return Err(format!("[{section}] {key} is not a setting bty-web knows"));
        };
        if k.secret {
            return Err("the password is not changed in the browser; set it in bty.toml or BTY_ADMIN_PASSWORD".into());
        }
        if (section, key) == ("paths", "state_dir") {
            return Err("[paths] state_dir holds the page's own saved settings; set it in bty.toml or BTY_PATHS_STATE_DIR".into());
        }
        // The directories bty-web serves files from (to anyone, for the boot ones) are the
        // host's business: a browser session, stolen or not, must not point them elsewhere.
        if section == "paths" || matches!((section, key), ("boot", "ipxe_dir") | ("cache", "dir")) {
            return Err(format!(
                "[{section}] {key} is a directory bty-web serves files from; set it in bty.toml or the environment"
            ));
        }
        // The hosts files name the CAs trusted for each mirror: the host's business too.
        if (section, key) == ("registry", "hosts_dir") {
            return Err("[registry] hosts_dir names which mirrors and CAs registry pulls trust; set it in bty.toml or BTY_REGISTRY_HOSTS_DIR".into());
        }
        match self.source(section, key) {
            Source::Env(v) => Err(format!(
                "[{section}] {key} is set by the environment ({v}), which wins over this page; change it there"
            )),
            Source::Flag(f) => Err(format!(
                "[{section}] {key} is set by the flag {f}, which wins over this page; change it there"
            )),
            _ => Ok(()),
        }
    }

    /// A copy with `[section] key` set as the page saved it, checked as at start.
    pub fn with_saved(&self, section: &str, key: &str, value: &str) -> Result<Settings> {
        let mut s = self.clone();
        let k = KEYS
            .iter()
            .find(|k| k.section == section && k.key == key)
            .with_context(|| format!("[{section}] {key} is not a setting bty-web knows"))?;
        s.values.insert((k.section, k.key), (value.to_string(), Source::Saved(self.saved_path())));
        s.validate()?;
        Ok(s)
    }

    /// Applies the saved file: each of its settings that the environment and the flags leave
    /// to it. What the page cannot set (the password, the state dir, unknown keys) is reported
    /// and ignored, as a hand edit of the file could put it there.
    fn read_saved(&mut self, path: &Path) -> Result<()> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let table: toml::Table =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        for (section, v) in &table {
            for (key, value) in v.as_table().into_iter().flatten() {
                if let Err(why) = self.editable(section, key) {
                    self.ignored.push(format!("{}: {why}", path.display()));
                    continue;
                }
                let Some(k) = KEYS.iter().find(|k| k.section == section && k.key == key) else {
                    continue;
                };
                let Some(value) = value.as_str() else {
                    crate::bail!("parsing {}: [{section}] {key} must be a string", path.display());
                };
                self.values
                    .insert((k.section, k.key), (value.to_string(), Source::Saved(path.into())));
            }
        }
        Ok(())
    }

    fn read_file(&mut self, path: &Path) -> Result<()> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let table: toml::Table =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        for (section, v) in table {
            let Some(inner) = v.as_table() else {
                self.unknown.push(format!(
                    "{}: top-level key {section:?} (expected [section] tables)",
                    path.display()
                ));
                continue;
            };
            for (key, value) in inner {
                let Some(k) = KEYS.iter().find(|k| k.section == section && k.key == key) else {
                    self.unknown.push(format!("{}: [{section}] {key}", path.display()));
                    continue;
                };
                let value = match value {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    // A list of strings, as `upstreams = ["http://a", "http://b"]`, is the
                    // comma-separated value the environment would give.
                    toml::Value::Array(a) if a.iter().all(toml::Value::is_str) => {
                        a.iter().filter_map(toml::Value::as_str).collect::<Vec<_>>().join(",")
                    }
                    other => crate::bail!(
                        "parsing {}: [{section}] {key} must be a string or a number (or a list of strings), not {}",
                        path.display(),
                        other.type_str()
                    ),
                };
                if k.secret && value.is_empty() {
                    self.ignored.push(format!(
                        "[{section}] {key} in {} is empty (an empty password is never used)",
                        path.display()
                    ));
                    continue;
                }
                self.values.insert((k.section, k.key), (value, Source::File(path.to_path_buf())));
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<()> {
        let (port, src) = self.entry("server", "port");
        crate::ensure!(
            port.parse::<u16>().is_ok(),
            "invalid [server] port {port:?} (from {src}): expected a number from 0 to 65535"
        );
        for (section, key) in [
            ("server", "max_connections"),
            ("server", "max_connections_per_ip"),
            ("server", "header_timeout"),
            ("server", "min_body_rate"),
            ("server", "body_grace"),
            ("server", "max_buffered_mib"),
            ("server", "idle_timeout"),
            ("server", "io_timeout"),
            ("boot", "max_upload_mib"),
        ] {
            let (v, src) = self.entry(section, key);
            crate::ensure!(
                v.parse::<u64>().is_ok_and(|n| n > 0),
                "invalid [{section}] {key} {v:?} (from {src}): expected a whole number above 0"
            );
        }
        for key in [
            "max_discovered",
            "discoveries_per_minute",
            "max_lshw_total_mib",
            "discovered_ttl_days",
        ] {
            let (v, src) = self.entry("pxe", key);
            crate::ensure!(
                v.parse::<u32>().is_ok(),
                "invalid [pxe] {key} {v:?} (from {src}): expected a whole number (0: no limit)"
            );
        }
        let (v, src) = self.entry("cache", "max_gib");
        crate::ensure!(
            v.parse::<f64>().is_ok_and(|n| n > 0.0 && n < 1e9),
            "invalid [cache] max_gib {v:?} (from {src}): expected a number of GiB above 0 (0.5 is 512 MiB)"
        );
        let (v, src) = self.entry("cache", "upstreams");
        if let Err(e) = crate::web::cache::parse_upstreams(v) {
            crate::bail!("invalid [cache] upstreams (from {src}): {e}");
        }
        let (v, src) = self.entry("tftp", "enabled");
        crate::ensure!(
            parse_bool(v).is_some(),
            "invalid [tftp] enabled {v:?} (from {src}): expected true or false"
        );
        let (v, src) = self.entry("tftp", "listen");
        crate::ensure!(
            v.parse::<std::net::SocketAddr>().is_ok(),
            "invalid [tftp] listen {v:?} (from {src}): expected IP:PORT, e.g. 0.0.0.0:69"
        );
        let (v, src) = self.entry("server", "public_url");
        crate::ensure!(
            v.is_empty() || public_url_ok(v),
            "invalid [server] public_url {v:?} (from {src}): expected http://HOST[:PORT] or \
             https://HOST[:PORT] with no path, e.g. http://10.0.0.5:8080"
        );
        let (v, src) = self.entry("server", "allowed_hosts");
        if let Err(e) = crate::web::guard::allowed_hosts(v) {
            crate::bail!("invalid [server] allowed_hosts (from {src}): {e}");
        }
        for key in ["state_dir", "boot_dir"] {
            let (v, src) = self.entry("paths", key);
            crate::ensure!(!v.is_empty(), "invalid [paths] {key} (from {src}): empty path");
        }
        // These names are joined to the boot dir by the release fetch and embedded in every
        // per-MAC script: the upload rule keeps both a plain file name.
        for key in ["kernel", "initrd", "kernel_arm64", "initrd_arm64"] {
            let (v, src) = self.entry("boot", key);
            if let Err(e) = crate::web::validate::boot_file_name(v) {
                crate::bail!("invalid [boot] {key} (from {src}): {e}");
            }
        }
        Ok(())
    }

    fn entry(&self, section: &str, key: &str) -> (&str, &Source) {
        match self.values.iter().find(|((s, k), _)| *s == section && *k == key) {
            Some((_, (v, src))) => (v, src),
            None => ("", &Source::Default),
        }
    }

    /// The value of a known setting ("" for an unknown one, which is a programming error).
    pub fn get(&self, section: &str, key: &str) -> &str {
        self.entry(section, key).0
    }

    /// Where a setting came from.
    pub fn source(&self, section: &str, key: &str) -> &Source {
        self.entry(section, key).1
    }

    /// `host:port` to listen on.
    pub fn listen(&self) -> String {
        let host = self.get("server", "host");
        let port = self.get("server", "port");
        if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    }

    /// A setting that `validate` checked to be a positive whole number.
    pub fn number(&self, section: &str, key: &str) -> u64 {
        self.get(section, key).parse().unwrap_or(1)
    }

    /// The connection limits of the HTTP server.
    pub fn limits(&self) -> crate::web::http::Limits {
        let secs = |k| std::time::Duration::from_secs(self.number("server", k));
        crate::web::http::Limits {
            max_connections: usize::try_from(self.number("server", "max_connections"))
                .unwrap_or(usize::MAX),
            max_connections_per_ip: usize::try_from(
                self.number("server", "max_connections_per_ip"),
            )
            .unwrap_or(usize::MAX),
            header_timeout: secs("header_timeout"),
            min_body_rate: self.number("server", "min_body_rate"),
            body_grace: secs("body_grace"),
            max_buffered: usize::try_from(
                self.number("server", "max_buffered_mib").saturating_mul(1 << 20),
            )
            .unwrap_or(usize::MAX),
            idle_timeout: secs("idle_timeout"),
            io_timeout: secs("io_timeout"),
            ..Default::default()
        }
    }

    /// A `[pxe]` growth limit that `validate` checked to be a whole number (0: none).
    pub fn pxe_limit(&self, key: &str) -> u64 {
        self.get("pxe", key).parse().unwrap_or(0)
    }

    /// Largest boot artifact upload, in bytes.
    pub fn max_upload(&self) -> u64 {
        self.number("boot", "max_upload_mib").saturating_mul(1 << 20)
    }

    pub fn state_dir(&self) -> PathBuf {
        PathBuf::from(self.get("paths", "state_dir"))
    }

    pub fn boot_dir(&self) -> PathBuf {
        PathBuf::from(self.get("paths", "boot_dir"))
    }

    /// Where the iPXE binaries are looked for after the boot dir (`[boot] ipxe_dir`).
    pub fn ipxe_dir(&self) -> PathBuf {
        PathBuf::from(self.get("boot", "ipxe_dir"))
    }

    /// `[server] public_url` without a trailing slash, if set (validated).
    pub fn public_url(&self) -> Option<&str> {
        Some(self.get("server", "public_url").trim_end_matches('/')).filter(|u| !u.is_empty())
    }

    /// Whether bty-web serves the boot dir over TFTP as well (`[tftp] enabled`, validated).
    pub fn tftp_enabled(&self) -> bool {
        parse_bool(self.get("tftp", "enabled")).unwrap_or(false)
    }

    /// The UDP address of the TFTP server (`[tftp] listen`, validated).
    pub fn tftp_listen(&self) -> std::net::SocketAddr {
        self.get("tftp", "listen")
            .parse()
            .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 69)))
    }

    /// The image cache's directory, when the cache is on (`[cache] dir`).
    pub fn cache_dir(&self) -> Option<PathBuf> {
        Some(self.get("cache", "dir")).filter(|d| !d.is_empty()).map(PathBuf::from)
    }

    /// The image cache's size cap in bytes (`[cache] max_gib`, validated).
    pub fn cache_max_bytes(&self) -> u64 {
        let gib = self.get("cache", "max_gib").parse::<f64>().unwrap_or(50.0);
        (gib * f64::from(1u32 << 30)) as u64
    }

    /// The bty-web servers a cache miss is fetched from before the origin (`[cache] upstreams`,
    /// validated): base URLs without a trailing slash.
    pub fn cache_upstreams(&self) -> Vec<String> {
        crate::web::cache::parse_upstreams(self.get("cache", "upstreams")).unwrap_or_default()
    }

    /// The registry hosts directory (`[registry] hosts_dir`); empty (`BTY_REGISTRY_HOSTS_DIR=`)
    /// is the default, as `bty` reads the variable.
    pub fn registry_hosts_dir(&self) -> PathBuf {
        match self.get("registry", "hosts_dir") {
            "" => PathBuf::from(crate::source::mirrors::DEFAULT_HOSTS_DIR),
            dir => PathBuf::from(dir),
        }
    }

    /// Whether the admin password is the built-in default (unset, set empty, or set to it).
    pub fn default_password(&self) -> bool {
        let (v, src) = self.entry("admin", "password");
        *src == Source::Default || v == DEFAULT_PASSWORD
    }

    /// Every setting as rows for `bty-web config` and the settings page: (name, shown value,
    /// source, help). Secrets are shown as "(set)", never their value.
    pub fn rows(&self) -> Vec<(String, String, String, &'static str)> {
        KEYS.iter()
            .map(|k| {
                let (v, src) = self.entry(k.section, k.key);
                let shown = if k.secret {
                    if *src == Source::Default || v == DEFAULT_PASSWORD {
                        format!("{v} (built-in default: change it)")
                    } else {
                        "(set)".into()
                    }
                } else {
                    v.to_string()
                };
                (format!("[{}] {}", k.section, k.key), shown, src.to_string(), k.help)
            })
            .collect()
    }
}

/// A public URL goes into iPXE scripts verbatim, so it gets the same allow-list as a Host
/// header there: a scheme, then host and port characters only.
fn public_url_ok(v: &str) -> bool {
    let rest = v.strip_prefix("http://").or_else(|| v.strip_prefix("https://"));
    rest.map(|r| r.trim_end_matches('/')).and_then(crate::web::guard::host_for_scripts).is_some()
}

/// A boolean setting as TOML, env vars and flags spell it.
fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" | "" => Some(false),
        _ => None,
    }
}

/// The TOML files to read: BTY_CONFIG_FILE; else every *.toml of BTY_CONFIG_DIR in name order;
/// else the first of /etc/bty/conf.d/*.toml, /etc/bty/bty.toml, <state_dir>/bty.toml that exists.
fn config_files(env: &BTreeMap<String, String>, state_dir: &Path) -> Result<Vec<PathBuf>> {
    if let Some(f) = env.get("BTY_CONFIG_FILE").filter(|f| !f.is_empty()) {
        let p = PathBuf::from(f);
        crate::ensure!(p.is_file(), "BTY_CONFIG_FILE={f}: no such file");
        return Ok(vec![p]);
    }
    if let Some(d) = env.get("BTY_CONFIG_DIR").filter(|d| !d.is_empty()) {
        let files =
            toml_files_in(Path::new(d)).with_context(|| format!("reading BTY_CONFIG_DIR={d}"))?;
        return Ok(files);
    }
    let conf_d = toml_files_in(Path::new("/etc/bty/conf.d")).unwrap_or_default();
    if !conf_d.is_empty() {
        return Ok(conf_d);
    }
    for p in [PathBuf::from("/etc/bty/bty.toml"), state_dir.join("bty.toml")] {
        if p.is_file() {
            return Ok(vec![p]);
        }
    }
    Ok(Vec::new())
}

fn toml_files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bty-config-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn defaults_env_file_and_flags_layer_in_that_order() {
        let d = tmp("layers");
        let f = d.join("bty.toml");
        std::fs::write(
            &f,
            "[server]\nport = 9000\nhost = \"127.0.0.1\"\n[paths]\nstate_dir = \"/srv/bty\"\n",
        )
        .unwrap();
        let e = env(&[("BTY_CONFIG_FILE", f.to_str().unwrap()), ("BTY_SERVER_PORT", "9100")]);
        let s = Settings::load(&e, &[]).unwrap();
        assert_eq!(s.get("server", "port"), "9100");
        assert_eq!(*s.source("server", "port"), Source::Env("BTY_SERVER_PORT".into()));
        assert_eq!(s.get("server", "host"), "127.0.0.1");
        assert_eq!(*s.source("server", "host"), Source::File(f.clone()));
        assert_eq!(s.boot_dir(), PathBuf::from("/srv/bty/boot"), "boot_dir follows state_dir");
        assert!(s.default_password());
        let s = Settings::load(&e, &[("server", "port", "1".into(), "--listen")]).unwrap();
        assert_eq!(s.listen(), "127.0.0.1:1");
        assert_eq!(s.source("server", "port").to_string(), "flag --listen");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn config_dir_merges_files_in_name_order_and_reports_unknown_keys() {
        let d = tmp("dir");
        std::fs::write(d.join("10-a.toml"), "[server]\nport = 1\n[admin]\npassword = \"s3cret\"\n")
            .unwrap();
        std::fs::write(d.join("20-b.toml"), "[server]\nport = 2\n[nonsense]\nx = 1\n").unwrap();
        std::fs::write(d.join("ignored.txt"), "not toml").unwrap();
        let s = Settings::load(&env(&[("BTY_CONFIG_DIR", d.to_str().unwrap())]), &[]).unwrap();
        assert_eq!(s.get("server", "port"), "2");
        assert_eq!(s.files.len(), 2);
        assert_eq!(s.unknown.len(), 1, "{:?}", s.unknown);
        assert!(!s.default_password());
        let rows = s.rows();
        let pw = rows.iter().find(|r| r.0 == "[admin] password").unwrap();
        assert_eq!(pw.1, "(set)", "secrets are never shown");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn boot_artifact_names_are_plain_file_names() {
        for bad in ["../../etc/cron.d/x", "/etc/passwd", "a/b", ".hidden", "k\nchain http://evil/"]
        {
            let e = env(&[("BTY_BOOT_KERNEL", bad)]);
            let err = Settings::load(&e, &[]).unwrap_err().to_string();
            assert!(
                err.contains("invalid [boot] kernel (from env BTY_BOOT_KERNEL)"),
                "{bad}: {err}"
            );
        }
        let e = env(&[("BTY_BOOT_INITRD", "../initrd")]);
        let err = Settings::load(&e, &[]).unwrap_err().to_string();
        assert!(err.contains("invalid [boot] initrd"), "{err}");
        // The arm64 pair goes into the same scripts, through the same check.
        let e = env(&[("BTY_BOOT_KERNEL_ARM64", "a/b")]);
        let err = Settings::load(&e, &[]).unwrap_err().to_string();
        assert!(
            err.contains("invalid [boot] kernel_arm64 (from env BTY_BOOT_KERNEL_ARM64)"),
            "{err}"
        );
        let s = Settings::load(&env(&[]), &[]).unwrap();
        let v = crate::VERSION;
        assert_eq!(s.get("boot", "initrd_arm64"), format!("bty-netboot-arm64-v{v}.initrd"));
        assert!(Settings::load(&env(&[("BTY_BOOT_KERNEL", "vmlinuz-6.1_x86-64")]), &[]).is_ok());
    }

    #[test]
    fn an_empty_password_is_no_password() {
        let d = tmp("empty");
        let f = d.join("bty.toml");
        std::fs::write(&f, "[admin]\npassword = \"\"\n").unwrap();
        let e = env(&[("BTY_CONFIG_FILE", f.to_str().unwrap()), ("BTY_ADMIN_PASSWORD", "")]);
        let s = Settings::load(&e, &[]).unwrap();
        assert!(s.default_password());
        assert_eq!(*s.source("admin", "password"), Source::Default);
        assert_eq!(s.get("admin", "password"), DEFAULT_PASSWORD);
        assert_eq!(s.ignored.len(), 2, "{:?}", s.ignored);
        assert!(s.ignored[1].contains("BTY_ADMIN_PASSWORD is empty"), "{:?}", s.ignored);
        // A password in the file stays when the environment's is empty.
        std::fs::write(&f, "[admin]\npassword = \"s3cret\"\n").unwrap();
        let s = Settings::load(&e, &[]).unwrap();
        assert_eq!(s.get("admin", "password"), "s3cret");
        // The default spelled out is still the default.
        let s = Settings::load(&env(&[("BTY_ADMIN_PASSWORD", DEFAULT_PASSWORD)]), &[]).unwrap();
        assert!(s.default_password());
        let rows = s.rows();
        let pw = rows.iter().find(|r| r.0 == "[admin] password").unwrap();
        assert!(pw.1.contains("built-in default"), "{pw:?}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn bad_files_and_values_name_the_problem() {
        let d = tmp("bad");
        let f = d.join("bty.toml");
        std::fs::write(&f, "[server\nport = 1").unwrap();
        let e = env(&[("BTY_CONFIG_FILE", f.to_str().unwrap())]);
        let err = Settings::load(&e, &[]).unwrap_err().to_string();
        assert!(err.contains(&format!("parsing {}", f.display())), "{err}");
        std::fs::write(&f, "[server]\nport = [1, 2]\n").unwrap();
        let err = Settings::load(&e, &[]).unwrap_err().to_string();
        assert!(err.contains("must be a string or a number"), "{err}");
        std::fs::write(&f, "[cache]\nupstreams = [\"http://a:8080\", \"https://b/\"]\n").unwrap();
        let s = Settings::load(&e, &[]).unwrap();
        assert_eq!(s.cache_upstreams(), ["http://a:8080", "https://b"]);
        let err = Settings::load(&env(&[("BTY_CACHE_UPSTREAMS", "http://u:secret@a/")]), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid [cache] upstreams (from env BTY_CACHE_UPSTREAMS)"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        let s = Settings::load(&env(&[("BTY_REGISTRY_HOSTS_DIR", "")]), &[]).unwrap();
        assert_eq!(s.registry_hosts_dir(), PathBuf::from("/etc/containerd/certs.d"));
        let err =
            Settings::load(&env(&[("BTY_SERVER_PORT", "http")]), &[]).unwrap_err().to_string();
        assert!(err.contains("invalid [server] port \"http\" (from env BTY_SERVER_PORT)"), "{err}");
        let err = Settings::load(&env(&[("BTY_SERVER_PUBLIC_URL", "http://a b/")]), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid [server] public_url"), "{err}");
        let s = Settings::load(&env(&[("BTY_SERVER_PUBLIC_URL", "http://10.0.0.5:8080/")]), &[])
            .unwrap();
        assert_eq!(s.public_url(), Some("http://10.0.0.5:8080"));
        let err = Settings::load(&env(&[("BTY_SERVER_ALLOWED_HOSTS", "bty.lab, a:8080")]), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("invalid [server] allowed_hosts (from env BTY_SERVER_ALLOWED_HOSTS)")
                && err
                    .contains("\"a:8080\": expected a host name or an IP address, without a port"),
            "{err}"
        );
        let err =
            Settings::load(&env(&[("BTY_PXE_MAX_DISCOVERED", "-1")]), &[]).unwrap_err().to_string();
        assert!(err.contains("invalid [pxe] max_discovered \"-1\""), "{err}");
        let s = Settings::load(&env(&[("BTY_PXE_DISCOVERIES_PER_MINUTE", "0")]), &[]).unwrap();
        assert_eq!(s.pxe_limit("discoveries_per_minute"), 0);
        assert_eq!(s.pxe_limit("max_discovered"), 10_000);
        let err = Settings::load(&env(&[("BTY_CONFIG_FILE", "/nonexistent/bty.toml")]), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("no such file"), "{err}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
