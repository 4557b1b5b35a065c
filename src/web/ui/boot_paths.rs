//! Which network boot setups the running server serves (PXE over TFTP for BIOS and UEFI, UEFI
//! HTTP Boot, proxyDHCP beside a router), from its own settings and files, and the DHCP
//! configuration for each with its real address: the dashboard's readiness rows and the
//! netboot page's DHCP card. The snippets come from `web::dhcp`, as `bty-web dhcp` prints them.

use std::net::Ipv4Addr;

use crate::web::config::Settings;
use crate::web::dhcp::{self, Mode, Target};
use crate::web::ui::template::{Escape, Html};

/// One setup: its name, and whether this server serves it (the URL or file it uses) or why not.
pub struct Path {
    pub name: &'static str,
    pub served: Result<String, String>,
    /// For arm64 machines only: not serving it leaves the x86_64 lab working.
    pub arm64: bool,
}

/// The arm64 UEFI iPXE binary's name, in the boot dir or `[boot] ipxe_dir`.
pub const IPXE_ARM64: &str = "ipxe-arm64.efi";

/// Where an iPXE binary is found: the boot dir first (an operator's own build), then
/// `[boot] ipxe_dir`, the order bty-web serves them in.
pub fn ipxe_binary(s: &Settings, name: &str) -> Option<std::path::PathBuf> {
    [s.boot_dir().join(name), s.ipxe_dir().join(name)].into_iter().find(|p| p.is_file())
}

/// The iPXE binaries present and missing, for the dashboard.
pub fn binaries(s: &Settings) -> (Vec<String>, Vec<&'static str>) {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for name in ["undionly.kpxe", "ipxe.efi"] {
        match ipxe_binary(s, name) {
            Some(p) => found.push(p.display().to_string()),
            None => missing.push(name),
        }
    }
    (found, missing)
}

/// The address and HTTP port machines reach this server at: `[server] public_url`, else the
/// listen address or the default route's (as `bty-web dhcp`), else the IPv4 address the
/// browser used.
pub fn target(s: &Settings, browser_host: &str) -> Option<Target> {
    let browser = browser_host
        .rsplit_once(':')
        .map_or(browser_host, |(h, _)| h)
        .parse::<Ipv4Addr>()
        .ok()
        .filter(|ip| !ip.is_loopback());
    dhcp::target(s, None, browser).ok()
}

/// Each setup and whether this server serves it now.
pub fn paths(s: &Settings, t: Option<Target>) -> Vec<Path> {
    let tftp = |file: &str| -> Result<String, String> {
        if !s.tftp_enabled() {
            return Err("bty-web's TFTP server is off ([tftp] enabled = true)".into());
        }
        match ipxe_binary(s, file) {
            Some(_) => Ok(format!("{file} over TFTP on {}", s.tftp_listen())),
            None => Err(format!("{file} is in neither the boot dir nor [boot] ipxe_dir")),
        }
    };
    let http_boot = |file: &str| match (ipxe_binary(s, file), t) {
        (None, _) => Err(format!("{file} is in neither the boot dir nor [boot] ipxe_dir")),
        (Some(_), None) => Err("no IPv4 address machines could reach this server at".into()),
        (Some(_), Some(t)) => Ok(format!("http://{}:{}/boot/{file}", t.addr, t.port)),
    };
    let proxy = match (tftp("undionly.kpxe"), tftp("ipxe.efi")) {
        (Ok(_), Ok(_)) => Ok("a second dnsmasq beside the router gives the boot options".into()),
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    let x86 = |name, served| Path { name, served, arm64: false };
    let arm64 = |name, served| Path { name, served, arm64: true };
    vec![
        x86("BIOS PXE over TFTP", tftp("undionly.kpxe")),
        x86("UEFI PXE over TFTP", tftp("ipxe.efi")),
        x86("UEFI HTTP Boot", http_boot("ipxe.efi")),
        x86("proxyDHCP (the router keeps giving addresses)", proxy),
        arm64("arm64 UEFI PXE over TFTP", tftp(IPXE_ARM64)),
        arm64("arm64 UEFI HTTP Boot", http_boot(IPXE_ARM64)),
    ]
}

/// The netboot page's DHCP card: the setups, then the dnsmasq and ISC dhcpd configuration.
pub fn card(s: &Settings, browser_host: &str) -> Html {
    let t = target(s, browser_host);
    let mut h = Html::new();
    h.push(format_args!(
        "<div class=\"scroll\"><table class=\"list\"><thead><tr><th scope=\"col\">Setup</th>\
         <th scope=\"col\">State</th><th scope=\"col\">How</th></tr></thead><tbody>\n"
    ));
    for p in paths(s, t) {
        let (badge, text) = match &p.served {
            Ok(how) => ("<span class=\"badge ok\">served</span>", how),
            Err(why) if p.arm64 => ("<span class=\"badge new\">not served</span>", why),
            Err(why) => ("<span class=\"badge bad\">not served</span>", why),
        };
        h.push(format_args!(
            "<tr><td>{}</td><td>{badge}</td><td>{}</td></tr>\n",
            Escape(p.name),
            Escape(text)
        ));
    }
    h.push(format_args!("</tbody></table></div>\n"));
    let Some(t) = t else {
        h.push(format_args!(
            "<p>No IPv4 address to put in the configuration: set <code>[server] public_url</code>, \
             or run <code>bty-web dhcp --addr IP</code>.</p>"
        ));
        return h;
    };
    let snippet = |h: &mut Html, title: &str, text: &str| {
        h.push(format_args!(
            "<h3>{}</h3>\n<pre class=\"mono\">{}</pre>\n",
            Escape(title),
            Escape(text)
        ));
    };
    snippet(&mut h, "dnsmasq, the lab's DHCP server (bty-web dhcp)", &dhcp::dnsmasq(t, Mode::All));
    snippet(
        &mut h,
        "dnsmasq in proxy mode, beside a router you cannot change (bty-web dhcp --mode proxy)",
        &dhcp::dnsmasq(t, Mode::Proxy),
    );
    match dhcp::isc(t, Mode::All) {
        Ok(text) => snippet(&mut h, "ISC dhcpd (bty-web dhcp --isc)", &text),
        Err(e) => h.push(format_args!("<p>{}</p>", Escape(&e.to_string()))),
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_browsers_address_is_the_last_resort() {
        let env = std::collections::BTreeMap::from([
            ("BTY_SERVER_PUBLIC_URL".to_string(), "http://10.1.2.3:9000".to_string()),
            ("BTY_TFTP_ENABLED".to_string(), "1".to_string()),
        ]);
        let s = Settings::load(&env, &[]).expect("settings");
        let t = target(&s, "192.168.9.9:8080").expect("a target");
        assert_eq!((t.addr, t.port), (Ipv4Addr::new(10, 1, 2, 3), 9000));
        let card = card(&s, "192.168.9.9:8080");
        assert!(card.as_str().contains("dhcp-boot"), "{}", card.as_str());
        assert!(card.as_str().contains("http://10.1.2.3:9000/boot/ipxe.efi"));
        // Without ipxe-arm64.efi its rows are a warning, the x86_64 ones unaffected.
        assert!(
            card.as_str().contains(
                "<td>arm64 UEFI HTTP Boot</td><td><span class=\"badge new\">not served</span>"
            ),
            "{}",
            card.as_str()
        );
    }
}
