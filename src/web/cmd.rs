//! bty-web's command line: its flags, `--help`, and the subcommands (`config`, `restore`,
//! `export`, `import`, `tftp`, `cache`, `health`, `dhcp`, `init`, `deploy`, `upgrade`); serving is
//! `serve::serve`.

use std::io::Write;
use std::process::ExitCode;

use lexopt::prelude::*;

use crate::error::{Context, Result};
use crate::web::config::Settings;
use crate::web::serve::{lock_state_dir, serve};
use crate::web::*;

const HELP: &str = "\
bty-web: the bty lab server

Usage: bty-web [--listen HOST:PORT] [--state-dir DIR]   serve
       bty-web config [--listen ...] [--state-dir ...]  print every setting and its source
       bty-web restore FILE [--state-dir DIR]       put a backup back (bty-web stopped)
       bty-web export DIR [--state-dir DIR]         write DIR/inventory.json (version 3)
       bty-web import DIR|FILE [--state-dir DIR]    add the machines of an export, or of
                                                    the reference's state.db (stopped)
       bty-web tftp [--state-dir DIR]                   serve only the boot dir over TFTP
       bty-web cache add FILE...                        put images into [cache] dir (air gap)
       bty-web cache ls                                 list the cached images
       bty-web health                                   exit 0 if the local server answers /healthz
       bty-web routes                                   list every route and who may call it
       bty-web dhcp [--mode tftp|http-boot|proxy|all] [--addr IP] [--dnsmasq|--isc]
                                                        print the lab DHCP server's boot options
       bty-web init DIR [--host-addr IP] [--image REF] [--force] [--dry-run]
       bty-web deploy DIR [same flags]                  init, then start the stack
       bty-web upgrade DIR [--image REF] [--pull] [--dry-run]
                                                        regenerate and restart (pull if asked)
       bty-web --version | --help

  --listen HOST:PORT  address to serve on (default 0.0.0.0:8080; [server] host/port)
  --state-dir DIR     state directory (default /var/lib/bty; [paths] state_dir)

Settings come from bty.toml: BTY_CONFIG_FILE, else every *.toml in BTY_CONFIG_DIR,
else the first of /etc/bty/conf.d/*.toml, /etc/bty/bty.toml, <state_dir>/bty.toml.
BTY_<SECTION>_<KEY> environment variables override the files (BTY_SERVER_PORT,
BTY_PATHS_STATE_DIR, BTY_ADMIN_PASSWORD, ...), and flags override both.
On a listen address that is not loopback, bty-web refuses to start without an admin password
(BTY_ADMIN_PASSWORD or [admin] password; empty is none, the built-in default does not count).

The first line on stdout is \"listening on http://HOST:PORT\" once the socket is bound.
With [tftp] enabled = true (BTY_TFTP_ENABLED=1) bty-web also serves the boot dir over TFTP
(then the iPXE binaries of [boot] ipxe_dir, and a generated autoexec.ipxe)
on [tftp] listen (default 0.0.0.0:69) and prints \"tftp listening on udp://HOST:PORT\" next;
`bty-web tftp` serves only that (the TFTP sidecar of the compose and Quadlet stacks).

With [cache] dir set (BTY_CACHE_DIR), catalog images pinned by sha256 are fetched from their
origin once and served from there at GET /images/SHA256/NAME (Range supported); GET /images
and the PXE plans hand out those URLs. [cache] max_gib caps it (least recently used first).
`bty-web cache add` copies local image files in under their sha256, so an air-gapped lab
flashes catalog entries pinned to those digests without reaching their origin.

Outbound fetches (cache fills, catalog sha_url and oras:// entries, releases) honour
http_proxy, https_proxy, all_proxy and no_proxy (or HTTP_PROXY, HTTPS_PROXY, ALL_PROXY,
NO_PROXY) as curl does; `bty-web health` always connects to 127.0.0.1 directly.

init writes DIR/compose.yaml, DIR/quadlet/*.{container,volume}, DIR/bty.toml and DIR/envvars
(mode 0600: HOST_ADDR, detected from the default route unless --host-addr, and a generated
BTY_ADMIN_PASSWORD) and touches nothing else; it refuses an existing stack without --force.
deploy starts it: as root with Quadlet units in /etc/containers/systemd and systemctl, as a
user with podman compose or docker compose (no TFTP, no autostart), and says what it skipped.
The image is --image, else envvars' BTY_IMAGE, else localhost/bty-web:VERSION, the tag of
`make image` (load it with `podman load -i target/image/bty-web-VERSION.oci.tar`).
upgrade keeps envvars, bty.toml and the bty-data volume, rewrites the other files for this
version and restarts the stack on the image this machine has: it pulls only with --pull or
when the image is absent, and a localhost/ image, which no registry serves, must be loaded.
--dry-run prints every command instead of writing or running (it does look for the image).
`bty-web dhcp` prints the DHCP configuration that boots machines into this bty-web (dnsmasq by
default, --isc for ISC dhcpd): tftp (PXE firmware loads iPXE over TFTP), http-boot (UEFI HTTP
Boot), all (both; the default) or proxy (a dnsmasq proxyDHCP beside the lab's DHCP server).
The address is --addr, else [server] public_url's host, else the listen address, else the
address of the default route's interface; the port is public_url's, else the listen port.
`bty-web routes` prints every route: its methods, path, who may call it (open: anyone; pxe:
firmware and the live environment, no Origin on a change; public: the login pages, our own
names only; page: a UI page or form with a session; session: the JSON API with a session
cookie) and how its body is taken. Any other path is 404 before its body is read.
Browser UI: /ui/ (log in at /ui/login).
SIGTERM or SIGINT stops it after the requests in flight (at most 5 s).
";

use crate::web::config::Flag;

pub(super) fn run() -> Result<ExitCode> {
    let (mode, flags) = match parse_args()? {
        Parsed::Done(code) => return Ok(code),
        Parsed::Run(mode, flags) => (mode, flags),
    };
    let env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    let settings = Settings::load(&env, &flags)?;
    for u in &settings.unknown {
        crate::warn!("unknown setting ignored: {u}");
    }
    for i in &settings.ignored {
        crate::warn!("setting ignored: {i}");
    }
    // Every oras:// pull of this process (cache fills, catalogs, imports) goes through the
    // mirrors bty.toml or the environment names, as `bty` does with BTY_REGISTRY_HOSTS_DIR.
    crate::source::mirrors::use_hosts_dir(settings.registry_hosts_dir());
    let state = settings.state_dir();
    match mode {
        Mode::Config => {
            print_config(&settings);
            Ok(ExitCode::SUCCESS)
        }
        Mode::Tftp => serve_tftp_only(&settings),
        Mode::Dhcp(args) => dhcp_config(&settings, &args),
        Mode::Health => health(&settings),
        Mode::CacheList => cache_list(&settings),
        Mode::CacheAdd(files) => cache_add(&settings, &files),
        Mode::Serve => serve(&settings),
        Mode::Restore(file) => {
            for line in backup::restore(&file, &state)? {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Mode::Export(dir) => {
            let db = db::Db::open(&state)?;
            let n = export::export(&db, &dir)?;
            println!("exported {n} machines to {}", dir.join("inventory.json").display());
            Ok(ExitCode::SUCCESS)
        }
        Mode::Import(dir) => import(&state, &dir),
    }
}

/// What the command line asks for: something already done (help, version, routes, the deploy
/// commands, which parse their own flags), or a mode to run with the settings the flags give.
enum Parsed {
    Done(ExitCode),
    Run(Mode, Vec<Flag>),
}

fn parse_args() -> Result<Parsed> {
    // Every subcommand's --help is this text (it documents them all), whatever operands the
    // subcommand would otherwise take first.
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let before_operands = args.iter().take_while(|a| *a != "--");
    if before_operands.into_iter().any(|a| a == "--help" || a == "-h") {
        print!("{HELP}");
        return Ok(Parsed::Done(ExitCode::SUCCESS));
    }
    let mut flags: Vec<Flag> = Vec::new();
    let mut mode = Mode::Serve;
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => {
                print!("{HELP}");
                return Ok(Parsed::Done(ExitCode::SUCCESS));
            }
            Short('V') | Long("version") => {
                println!("bty-web {}", crate::VERSION);
                return Ok(Parsed::Done(ExitCode::SUCCESS));
            }
            Long("listen") => {
                let v = parser.value()?.string()?;
                let (host, port) = v.rsplit_once(':').ok_or_else(|| {
                    crate::error::Error::msg(format!("invalid --listen {v:?}: expected HOST:PORT"))
                })?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                flags.push(("server", "host", host.to_string(), "--listen"));
                flags.push(("server", "port", port.to_string(), "--listen"));
            }
            Long("state-dir") => {
                flags.push(("paths", "state_dir", parser.value()?.string()?, "--state-dir"))
            }
            Value(cmd) if cmd == "restore" => {
                mode = Mode::Restore(operand(&mut parser, "restore")?)
            }
            Value(cmd) if cmd == "export" => mode = Mode::Export(operand(&mut parser, "export")?),
            Value(cmd) if cmd == "import" => mode = Mode::Import(operand(&mut parser, "import")?),
            Value(cmd) if cmd == "config" => mode = Mode::Config,
            Value(cmd) if cmd == "tftp" => mode = Mode::Tftp,
            Value(cmd) if cmd == "cache" => {
                mode = match parser.next()? {
                    Some(Value(v)) if v == "ls" => Mode::CacheList,
                    Some(Value(v)) if v == "add" => Mode::CacheAdd(Vec::new()),
                    _ => crate::bail!("bty-web cache: expected `add FILE...` or `ls`"),
                }
            }
            Value(cmd) if cmd == "health" => mode = Mode::Health,
            Value(cmd) if cmd == "dhcp" => mode = Mode::Dhcp(DhcpArgs::default()),
            Long("mode") if matches!(mode, Mode::Dhcp(_)) => {
                let v = parser.value()?.string()?;
                if let Mode::Dhcp(a) = &mut mode {
                    a.mode = v.parse()?;
                }
            }
            Long("addr") if matches!(mode, Mode::Dhcp(_)) => {
                let v = parser.value()?.string()?;
                let ip = v.parse().map_err(|_| {
                    crate::error::Error::msg(format!(
                        "invalid --addr {v:?}: expected bty-web's IPv4 address"
                    ))
                })?;
                if let Mode::Dhcp(a) = &mut mode {
                    a.addr = Some(ip);
                }
            }
            Long(f @ ("dnsmasq" | "isc")) if matches!(mode, Mode::Dhcp(_)) => {
                let isc = f == "isc";
                if let Mode::Dhcp(a) = &mut mode {
                    a.isc = isc;
                }
            }
            Value(cmd) if cmd == "routes" => {
                print!("{}", crate::web::routes::describe());
                return Ok(Parsed::Done(ExitCode::SUCCESS));
            }
            Value(cmd) if cmd == "init" || cmd == "deploy" || cmd == "upgrade" => {
                let action = match cmd.to_str() {
                    Some("init") => deploy::Action::Init,
                    Some("deploy") => deploy::Action::Deploy,
                    _ => deploy::Action::Upgrade,
                };
                return deploy::command(action, &mut parser).map(Parsed::Done);
            }
            Value(file) if matches!(mode, Mode::CacheAdd(_)) => {
                if let Mode::CacheAdd(files) = &mut mode {
                    files.push(file.into());
                }
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    if let Mode::CacheAdd(files) = &mode {
        crate::ensure!(!files.is_empty(), "bty-web cache add needs image files (see --help)");
    }
    Ok(Parsed::Run(mode, flags))
}

fn open_cache(settings: &Settings) -> Result<cache::Cache> {
    let Some(dir) = settings.cache_dir() else {
        crate::bail!("the image cache is off: set [cache] dir (BTY_CACHE_DIR)");
    };
    cache::Cache::open(&dir, settings.cache_max_bytes(), false)
        .with_context(|| format!("opening the image cache {}", dir.display()))
}

/// `bty-web cache add FILE...`
fn cache_add(settings: &Settings, files: &[std::path::PathBuf]) -> Result<ExitCode> {
    let c = open_cache(settings)?;
    for f in files {
        let (hex, len) = c.add_file(f)?;
        println!("{hex}  {:>10}  {}", crate::units::bytes(len), f.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `bty-web cache ls`
fn cache_list(settings: &Settings) -> Result<ExitCode> {
    let c = open_cache(settings)?;
    for (hex, len, used) in c.list() {
        println!("{hex}  {:>10}  last used {used}", crate::units::bytes(len));
    }
    let u = c.usage();
    println!(
        "{} images, {} of {} in {}",
        u.files,
        crate::units::bytes(u.bytes),
        crate::units::bytes(settings.cache_max_bytes()),
        settings.cache_dir().unwrap_or_default().display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `bty-web import DIR|FILE`: the machines of an export, or of the reference server's
/// state.db, with the server stopped.
fn import(state: &std::path::Path, dir: &std::path::Path) -> Result<ExitCode> {
    // Importing the state dir's own database would clear every binding it holds.
    let own = state.join("state.db");
    if let (Ok(a), Ok(b)) = (std::fs::canonicalize(dir), std::fs::canonicalize(&own)) {
        crate::ensure!(
            a != b,
            "{} is the database of the state dir being imported into; import another server's \
             state.db (or a state.db.*.bak archive) or an export",
            dir.display()
        );
    }
    let found = export::parse(dir)?;
    let n = found.machines.len();
    let _lock = lock_state_dir(state)?;
    let db = db::Db::open(state)?;
    db.import_machines(&found.machines)?;
    db.event(
        "machines.imported",
        None,
        &format!("{n} machines imported from {}", found.source),
        None,
    );
    println!(
        "imported {n} machines from {} as bty-inventory (image, boot mode and target disk cleared)",
        found.source
    );
    Ok(ExitCode::SUCCESS)
}

enum Mode {
    Serve,
    Config,
    Tftp,
    Dhcp(DhcpArgs),
    Health,
    CacheList,
    CacheAdd(Vec<std::path::PathBuf>),
    Restore(std::path::PathBuf),
    Export(std::path::PathBuf),
    Import(std::path::PathBuf),
}

/// The flags of `bty-web dhcp`.
struct DhcpArgs {
    mode: dhcp::Mode,
    addr: Option<std::net::Ipv4Addr>,
    isc: bool,
}

impl Default for DhcpArgs {
    fn default() -> DhcpArgs {
        DhcpArgs { mode: dhcp::Mode::All, addr: None, isc: false }
    }
}

/// `bty-web dhcp`: prints the DHCP server's configuration for this bty-web.
fn dhcp_config(settings: &Settings, args: &DhcpArgs) -> Result<ExitCode> {
    let target = dhcp::target(settings, args.addr, None)?;
    let text =
        if args.isc { dhcp::isc(target, args.mode)? } else { dhcp::dnsmasq(target, args.mode) };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// `bty-web health`: asks the local server's /healthz, for container healthchecks (the image
/// has no curl). Exit 0 when it answers 200, 1 otherwise.
fn health(settings: &Settings) -> Result<ExitCode> {
    use std::io::Read;
    let port = settings.get("server", "port");
    let addr = format!("127.0.0.1:{port}");
    let timeout = std::time::Duration::from_secs(3);
    let answer = (|| -> std::io::Result<String> {
        let sock =
            addr.parse().map_err(|_| std::io::Error::other(format!("invalid address {addr}")))?;
        let mut s = std::net::TcpStream::connect_timeout(&sock, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut head = [0u8; 64];
        let n = s.read(&mut head)?;
        Ok(String::from_utf8_lossy(&head[..n]).into_owned())
    })();
    match answer {
        Ok(a) if a.starts_with("HTTP/1.1 200") || a.starts_with("HTTP/1.0 200") => {
            println!("ok");
            Ok(ExitCode::SUCCESS)
        }
        Ok(a) => {
            let line = a.lines().next().unwrap_or("");
            crate::error!("GET http://{addr}/healthz answered {line:?}");
            Ok(ExitCode::from(1))
        }
        Err(e) => {
            crate::error!("GET http://{addr}/healthz: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// `bty-web tftp`: only the TFTP server, for a sidecar container or a host that keeps HTTP
/// elsewhere; it needs the boot dir and nothing of the state dir.
fn serve_tftp_only(settings: &Settings) -> Result<ExitCode> {
    let boot = settings.boot_dir();
    crate::ensure!(boot.is_dir(), "TFTP root {}: no such directory", boot.display());
    crate::sys::catch_cancel_signals().context("installing the SIGTERM/SIGINT handler")?;
    let sock = tftp::bind(settings.tftp_listen())?;
    let addr = sock.local_addr().context("reading the bound TFTP address")?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "tftp listening on udp://{addr}");
        let _ = out.flush();
    }
    crate::info!("tftp: serving {}", boot.display());
    // The sidecar cannot see which port HTTP got; the configured one is what it was told.
    let port = settings.get("server", "port").parse().unwrap_or(8080);
    tftp::serve(sock, tftp_files(settings, port), crate::sys::cancel_flag());
    crate::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// What TFTP hands out. Its `autoexec.ipxe` chains to `[server] public_url`, else to the
/// TFTP server itself (`${next-server}`, as DHCP told the machine) on the HTTP port: the
/// server that answered TFTP is this bty-web, and iPXE knows its address when we do not (a
/// wildcard socket does not say which of the host's addresses a request came to).
pub(super) fn tftp_files(settings: &Settings, http_port: u16) -> tftp::Files {
    let base = match settings.public_url() {
        Some(u) => u.to_string(),
        None => format!("http://${{next-server}}:{http_port}"),
    };
    tftp::Files::new(settings.boot_dir(), pxe::autoexec(&base), settings.ipxe_dir())
}

/// The operand of a subcommand (a file or directory).
fn operand(parser: &mut lexopt::Parser, what: &str) -> Result<std::path::PathBuf> {
    match parser.next()? {
        Some(lexopt::Arg::Value(v)) => Ok(v.into()),
        _ => crate::bail!("bty-web {what} needs a file or directory (see bty-web --help)"),
    }
}

fn print_config(settings: &Settings) {
    let files: Vec<String> = settings.files.iter().map(|f| f.display().to_string()).collect();
    println!(
        "# config files: {}",
        if files.is_empty() { "none found".to_string() } else { files.join(", ") }
    );
    let rows = settings.rows();
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let w2 = rows.iter().map(|r| r.2.len()).max().unwrap_or(0);
    for (name, value, source, help) in rows {
        println!("{name:<w0$}  {value:<w1$}  {source:<w2$}  # {help}");
    }
}
