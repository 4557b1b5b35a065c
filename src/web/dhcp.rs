//! The DHCP configuration a lab needs to boot its machines into bty-web, as `bty-web dhcp`
//! prints it: a dnsmasq snippet or an ISC dhcpd snippet for a given bty-web address and HTTP
//! port. One generator, so docs/pxe.md, `bty-web dhcp` and the tests' dnsmasq
//! (tests/it/lab.rs) say the same thing.
//!
//! The modes:
//!
//! - `tftp`: PXE firmware loads iPXE over bty-web's TFTP (BIOS `undionly.kpxe` by client
//!   architecture (option 93) 0, UEFI `ipxe.efi` by architecture 7 or 9, arm64 UEFI
//!   `ipxe-arm64.efi` by architecture 11), and iPXE, known by its user class (option 77)
//!   `iPXE`, loads the generated `autoexec.ipxe`, also over TFTP.
//! - `http-boot`: UEFI HTTP Boot firmware (vendor class `HTTPClient`) is answered with
//!   `http://ADDR:PORT/boot/ipxe.efi` (arm64, architecture 19: `ipxe-arm64.efi`) and option 60
//!   `HTTPClient`; iPXE with `http://ADDR:PORT/pxe-bootstrap.ipxe`. No TFTP.
//! - `all`: both, for the lab's address-giving DHCP server (the default).
//! - `proxy`: a second dnsmasq next to the lab's router that gives no addresses, only boot
//!   options (proxyDHCP: `dhcp-range=ADDR,proxy` and `pxe-service` lines). ISC dhcpd has no
//!   proxy mode.

use std::net::Ipv4Addr;

use crate::error::Result;

/// Which firmware paths the configuration answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Tftp,
    HttpBoot,
    All,
    Proxy,
}

impl Mode {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Tftp => "tftp",
            Mode::HttpBoot => "http-boot",
            Mode::All => "all",
            Mode::Proxy => "proxy",
        }
    }

    fn tftp(self) -> bool {
        matches!(self, Mode::Tftp | Mode::All)
    }

    fn http_boot(self) -> bool {
        matches!(self, Mode::HttpBoot | Mode::All)
    }
}

impl std::str::FromStr for Mode {
    type Err = crate::error::Error;

    fn from_str(s: &str) -> Result<Mode> {
        match s {
            "tftp" => Ok(Mode::Tftp),
            "http-boot" => Ok(Mode::HttpBoot),
            "all" => Ok(Mode::All),
            "proxy" => Ok(Mode::Proxy),
            _ => crate::bail!("invalid DHCP mode {s:?}: expected tftp, http-boot, proxy or all"),
        }
    }
}

/// Where machines reach bty-web: its address (next-server, TFTP) and HTTP port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub addr: Ipv4Addr,
    pub port: u16,
}

impl Target {
    fn http(&self) -> String {
        format!("http://{}:{}", self.addr, self.port)
    }
}

/// The dnsmasq lines for `mode` (a snippet for a conf file or `/etc/dnsmasq.d/`).
pub fn dnsmasq(t: Target, mode: Mode) -> String {
    let a = t.addr;
    let http = t.http();
    let mut s = format!(
        "# bty-web dhcp --mode {} --dnsmasq: bty-web at {a}, HTTP port {}\n",
        mode.name(),
        t.port
    );
    s.push_str(
        "# iPXE says who it is with its user class (option 77): it gets the second stage.\n\
         dhcp-userclass=set:ipxe,iPXE\n",
    );
    if mode == Mode::Proxy {
        s.push_str(&format!(
            "# proxyDHCP: the lab's own DHCP server gives the addresses, this one only boot options.\n\
             dhcp-range={a},proxy\n\
             # PXE firmware loads iPXE over bty-web's TFTP (the PXE layer suffix is not added to\n\
             # a name with a dot).\n\
             pxe-service=tag:!ipxe,x86PC,\"bty: iPXE (BIOS)\",undionly.kpxe,{a}\n\
             pxe-service=tag:!ipxe,X86-64_EFI,\"bty: iPXE (UEFI)\",ipxe.efi,{a}\n\
             pxe-service=tag:!ipxe,BC_EFI,\"bty: iPXE (UEFI)\",ipxe.efi,{a}\n\
             pxe-service=tag:!ipxe,ARM64_EFI,\"bty: iPXE (arm64 UEFI)\",ipxe-arm64.efi,{a}\n\
             # iPXE: the generated autoexec.ipxe over TFTP, which chains {http}/pxe-bootstrap.ipxe.\n\
             dhcp-boot=tag:ipxe,autoexec.ipxe,,{a}\n"
        ));
        return s;
    }
    if mode.tftp() {
        s.push_str(&format!(
            "# PXE firmware: iPXE over bty-web's TFTP, by client architecture (option 93).\n\
             dhcp-match=set:bios,option:client-arch,0\n\
             dhcp-match=set:efi64,option:client-arch,7\n\
             dhcp-match=set:efi64,option:client-arch,9\n\
             dhcp-match=set:arm64,option:client-arch,11\n\
             dhcp-boot=tag:bios,tag:!ipxe,undionly.kpxe,,{a}\n\
             dhcp-boot=tag:efi64,tag:!ipxe,ipxe.efi,,{a}\n\
             dhcp-boot=tag:arm64,tag:!ipxe,ipxe-arm64.efi,,{a}\n\
             # iPXE: the generated autoexec.ipxe over TFTP, which chains {http}/pxe-bootstrap.ipxe.\n\
             dhcp-boot=tag:ipxe,autoexec.ipxe,,{a}\n"
        ));
    }
    if mode.http_boot() {
        s.push_str(&format!(
            "# UEFI HTTP Boot (vendor class HTTPClient): iPXE over HTTP; it runs the autoexec.ipxe\n\
             # beside it. The answer must carry option 60 HTTPClient too. arm64 firmware says\n\
             # client architecture 19; the tags keep the two answers apart.\n\
             dhcp-vendorclass=set:httpboot,HTTPClient\n\
             dhcp-match=set:arm64http,option:client-arch,19\n\
             dhcp-boot=tag:httpboot,tag:!arm64http,tag:!ipxe,{http}/boot/ipxe.efi\n\
             dhcp-boot=tag:httpboot,tag:arm64http,tag:!ipxe,{http}/boot/ipxe-arm64.efi\n\
             dhcp-option-force=tag:httpboot,tag:!ipxe,60,HTTPClient\n"
        ));
        if !mode.tftp() {
            s.push_str(&format!(
                "# iPXE: bty-web's bootstrap script over HTTP.\n\
                 dhcp-boot=tag:ipxe,{http}/pxe-bootstrap.ipxe\n"
            ));
        }
    }
    s
}

/// The ISC dhcpd statements for `mode` (inside a `subnet` or at global scope). ISC dhcpd
/// cannot be a proxyDHCP server: that mode is an error that says to use dnsmasq.
pub fn isc(t: Target, mode: Mode) -> Result<String> {
    crate::ensure!(
        mode != Mode::Proxy,
        "ISC dhcpd has no proxyDHCP mode: use `bty-web dhcp --mode proxy --dnsmasq`"
    );
    let a = t.addr;
    let http = t.http();
    let mut s = format!(
        "# bty-web dhcp --mode {} --isc: bty-web at {a}, HTTP port {}\n\
         option client-arch code 93 = unsigned integer 16;\n",
        mode.name(),
        t.port
    );
    let ipxe = if mode.tftp() {
        "autoexec.ipxe".to_string()
    } else {
        format!("{http}/pxe-bootstrap.ipxe")
    };
    s.push_str(&format!(
        "# iPXE says who it is with its user class (option 77): it gets the second stage.\n\
         if exists user-class and option user-class = \"iPXE\" {{\n  \
           next-server {a};\n  \
           filename \"{ipxe}\";\n\
         }}"
    ));
    if mode.tftp() {
        s.push_str(&format!(
            " elsif option client-arch = 00:00 {{\n  \
               # BIOS PXE firmware: iPXE over bty-web's TFTP.\n  \
               next-server {a};\n  \
               filename \"undionly.kpxe\";\n\
             }} elsif option client-arch = 00:07 or option client-arch = 00:09 {{\n  \
               # UEFI PXE firmware: iPXE over bty-web's TFTP.\n  \
               next-server {a};\n  \
               filename \"ipxe.efi\";\n\
             }} elsif option client-arch = 00:0b {{\n  \
               # arm64 UEFI PXE firmware: iPXE over bty-web's TFTP.\n  \
               next-server {a};\n  \
               filename \"ipxe-arm64.efi\";\n\
             }}"
        ));
    }
    if mode.http_boot() {
        // arm64 first: the x86_64 branch's test matches every HTTP Boot client.
        s.push_str(&format!(
            " elsif substring (option vendor-class-identifier, 0, 10) = \"HTTPClient\" \
               and option client-arch = 00:13 {{\n  \
               # arm64 UEFI HTTP Boot: iPXE over HTTP; it runs the autoexec.ipxe beside it.\n  \
               option vendor-class-identifier \"HTTPClient\";\n  \
               filename \"{http}/boot/ipxe-arm64.efi\";\n\
             }} elsif substring (option vendor-class-identifier, 0, 10) = \"HTTPClient\" {{\n  \
               # UEFI HTTP Boot: iPXE over HTTP; it runs the autoexec.ipxe beside it.\n  \
               option vendor-class-identifier \"HTTPClient\";\n  \
               filename \"{http}/boot/ipxe.efi\";\n\
             }}"
        ));
    }
    s.push('\n');
    Ok(s)
}

/// Where machines reach this bty-web: `given` (`--addr`), else `default_addr`, else `fallback`
/// (the address a browser used); the HTTP port of `public_url`, else `[server] port`. Shared
/// by `bty-web dhcp` and the netboot page, so both print the same configuration.
pub fn target(
    s: &crate::web::config::Settings,
    given: Option<Ipv4Addr>,
    fallback: Option<Ipv4Addr>,
) -> Result<Target> {
    let public = s.public_url().and_then(public_url_parts);
    let port = match public {
        Some((_, port)) => port,
        None => {
            let v = s.get("server", "port");
            v.parse().map_err(|_| {
                crate::error::Error::msg(format!("invalid [server] port {v:?} for bty-web dhcp"))
            })?
        }
    };
    let addr = given
        .or_else(|| default_addr(public.map(|p| p.0), s.get("server", "host")))
        .or(fallback)
        .ok_or_else(|| {
            crate::error::Error::msg(
                "bty-web dhcp: cannot tell which IPv4 address machines reach bty-web at \
                 (no IPv4 public_url, listen address or default route): pass --addr IP",
            )
        })?;
    Ok(Target { addr, port })
}

/// The address machines reach bty-web at, when `--addr` is not given: `[server] public_url`'s
/// host when it is an IPv4 address, else the listen address when it is one machines can reach,
/// else the address of the interface the default route leaves from.
pub fn default_addr(public_host: Option<&str>, listen_host: &str) -> Option<Ipv4Addr> {
    if let Some(ip) = public_host.and_then(|h| h.parse::<Ipv4Addr>().ok()) {
        return Some(ip);
    }
    if let Ok(ip) = listen_host.parse::<Ipv4Addr>()
        && !ip.is_unspecified()
        && !ip.is_loopback()
    {
        return Some(ip);
    }
    match crate::web::deploy::detect_host_addr() {
        Some(std::net::IpAddr::V4(ip)) if !ip.is_loopback() => Some(ip),
        _ => None,
    }
}

/// The host and port of a validated `public_url` (`http(s)://HOST[:PORT]`), the port being
/// the scheme's when the URL names none.
pub fn public_url_parts(url: &str) -> Option<(&str, u16)> {
    let (rest, default) = match url.strip_prefix("http://") {
        Some(r) => (r, 80),
        None => (url.strip_prefix("https://")?, 443),
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    if authority.starts_with('[') {
        // An IPv6 literal: no next-server for DHCPv4.
        return None;
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h, p.parse().ok()?)),
        None => Some((authority, default)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Target = Target { addr: Ipv4Addr::new(192, 168, 1, 10), port: 8080 };

    fn lines(s: &str) -> Vec<&str> {
        s.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn tftp_mode_answers_bios_uefi_and_ipxe_as_the_readme_table_says() {
        let d = dnsmasq(T, Mode::Tftp);
        let l = lines(&d);
        for want in [
            "dhcp-match=set:bios,option:client-arch,0",
            "dhcp-match=set:efi64,option:client-arch,7",
            "dhcp-match=set:efi64,option:client-arch,9",
            "dhcp-userclass=set:ipxe,iPXE",
            "dhcp-boot=tag:bios,tag:!ipxe,undionly.kpxe,,192.168.1.10",
            "dhcp-boot=tag:efi64,tag:!ipxe,ipxe.efi,,192.168.1.10",
            "dhcp-match=set:arm64,option:client-arch,11",
            "dhcp-boot=tag:arm64,tag:!ipxe,ipxe-arm64.efi,,192.168.1.10",
            "dhcp-boot=tag:ipxe,autoexec.ipxe,,192.168.1.10",
        ] {
            assert!(l.contains(&want), "{want} in\n{d}");
        }
        assert!(!d.contains("HTTPClient"), "{d}");
        assert!(!d.contains("proxy"), "{d}");

        let i = isc(T, Mode::Tftp).unwrap();
        for want in [
            "option client-arch code 93 = unsigned integer 16;",
            "if exists user-class and option user-class = \"iPXE\" {",
            "filename \"autoexec.ipxe\";",
            "elsif option client-arch = 00:00 {",
            "filename \"undionly.kpxe\";",
            "elsif option client-arch = 00:07 or option client-arch = 00:09 {",
            "filename \"ipxe.efi\";",
            "elsif option client-arch = 00:0b {",
            "filename \"ipxe-arm64.efi\";",
            "next-server 192.168.1.10;",
        ] {
            assert!(i.contains(want), "{want} in\n{i}");
        }
        assert!(!i.contains("HTTPClient"), "{i}");
        assert_eq!(i.matches('{').count(), i.matches('}').count(), "{i}");
    }

    #[test]
    fn http_boot_mode_answers_httpclient_with_the_ipxe_url_and_option_60() {
        let d = dnsmasq(T, Mode::HttpBoot);
        let l = lines(&d);
        for want in [
            "dhcp-vendorclass=set:httpboot,HTTPClient",
            "dhcp-boot=tag:httpboot,tag:!arm64http,tag:!ipxe,http://192.168.1.10:8080/boot/ipxe.efi",
            "dhcp-match=set:arm64http,option:client-arch,19",
            "dhcp-boot=tag:httpboot,tag:arm64http,tag:!ipxe,http://192.168.1.10:8080/boot/ipxe-arm64.efi",
            "dhcp-option-force=tag:httpboot,tag:!ipxe,60,HTTPClient",
            "dhcp-userclass=set:ipxe,iPXE",
            "dhcp-boot=tag:ipxe,http://192.168.1.10:8080/pxe-bootstrap.ipxe",
        ] {
            assert!(l.contains(&want), "{want} in\n{d}");
        }
        // No TFTP at all: neither the binaries' names nor the script over TFTP.
        assert!(!d.contains("undionly.kpxe") && !d.contains("autoexec.ipxe,"), "{d}");

        let i = isc(T, Mode::HttpBoot).unwrap();
        for want in [
            "substring (option vendor-class-identifier, 0, 10) = \"HTTPClient\"",
            "option vendor-class-identifier \"HTTPClient\";",
            "filename \"http://192.168.1.10:8080/boot/ipxe.efi\";",
            "filename \"http://192.168.1.10:8080/pxe-bootstrap.ipxe\";",
            "filename \"http://192.168.1.10:8080/boot/ipxe-arm64.efi\";",
        ] {
            assert!(i.contains(want), "{want} in\n{i}");
        }
        // if/elsif takes the first match: arm64 (architecture 19) must come before the branch
        // every HTTPClient matches.
        let arm64 = i.find("option client-arch = 00:13").expect("the arm64 branch");
        let x86 = i.find("/boot/ipxe.efi").expect("the x86_64 branch");
        assert!(arm64 < x86, "{i}");
        assert!(!i.contains("undionly.kpxe"), "{i}");
        assert_eq!(i.matches('{').count(), i.matches('}').count(), "{i}");
    }

    #[test]
    fn all_is_tftp_and_http_boot_in_one_and_each_rule_only_once() {
        let d = dnsmasq(T, Mode::All);
        let body = |m| lines(&dnsmasq(T, m)).into_iter().map(String::from).collect::<Vec<_>>();
        let all: Vec<String> = lines(&d).into_iter().map(String::from).collect();
        for l in body(Mode::Tftp) {
            assert!(all.contains(&l), "{l} in\n{d}");
        }
        for l in body(Mode::HttpBoot) {
            // Without TFTP iPXE gets the HTTP bootstrap; with it, autoexec.ipxe.
            if !l.contains("pxe-bootstrap.ipxe") {
                assert!(all.contains(&l), "{l} in\n{d}");
            }
        }
        let ipxe_boots = all.iter().filter(|l| l.starts_with("dhcp-boot=tag:ipxe,")).count();
        assert_eq!(ipxe_boots, 1, "{d}");
        let i = isc(T, Mode::All).unwrap();
        assert!(i.contains("undionly.kpxe") && i.contains("HTTPClient"), "{i}");
        assert_eq!(i.matches('{').count(), i.matches('}').count(), "{i}");
    }

    #[test]
    fn proxy_mode_gives_boot_options_only() {
        let d = dnsmasq(T, Mode::Proxy);
        let l = lines(&d);
        for want in [
            "dhcp-range=192.168.1.10,proxy",
            "dhcp-userclass=set:ipxe,iPXE",
            "pxe-service=tag:!ipxe,x86PC,\"bty: iPXE (BIOS)\",undionly.kpxe,192.168.1.10",
            "pxe-service=tag:!ipxe,X86-64_EFI,\"bty: iPXE (UEFI)\",ipxe.efi,192.168.1.10",
            "pxe-service=tag:!ipxe,ARM64_EFI,\"bty: iPXE (arm64 UEFI)\",ipxe-arm64.efi,192.168.1.10",
            "dhcp-boot=tag:ipxe,autoexec.ipxe,,192.168.1.10",
        ] {
            assert!(l.contains(&want), "{want} in\n{d}");
        }
        // Only the proxy range: no addresses handed out.
        assert_eq!(l.iter().filter(|l| l.starts_with("dhcp-range=")).count(), 1, "{d}");
        let err = isc(T, Mode::Proxy).unwrap_err().to_string();
        assert!(err.contains("no proxyDHCP mode") && err.contains("--dnsmasq"), "{err}");
    }

    #[test]
    fn modes_parse_by_their_names() {
        for m in [Mode::Tftp, Mode::HttpBoot, Mode::All, Mode::Proxy] {
            assert_eq!(m.name().parse::<Mode>().unwrap(), m);
        }
        let err = "pxe".parse::<Mode>().unwrap_err().to_string();
        assert!(err.contains("\"pxe\"") && err.contains("http-boot"), "{err}");
    }

    #[test]
    fn the_address_comes_from_public_url_then_the_listen_address() {
        assert_eq!(public_url_parts("http://10.0.0.5:8080"), Some(("10.0.0.5", 8080)));
        assert_eq!(public_url_parts("http://10.0.0.5"), Some(("10.0.0.5", 80)));
        assert_eq!(public_url_parts("https://lab.example/"), Some(("lab.example", 443)));
        assert_eq!(public_url_parts("http://[fd00::5]:8080"), None);
        assert_eq!(public_url_parts("ftp://x"), None);
        let ip = Ipv4Addr::new(10, 0, 0, 5);
        assert_eq!(default_addr(Some("10.0.0.5"), "0.0.0.0"), Some(ip));
        assert_eq!(default_addr(None, "10.0.0.5"), Some(ip));
        assert_eq!(default_addr(Some("lab.example"), "10.0.0.5"), Some(ip));
    }

    /// The DHCP section of docs/pxe.md shows what `bty-web dhcp` prints for its example address,
    /// verbatim: a change here without one there fails.
    #[test]
    fn the_docs_show_what_bty_web_dhcp_prints() {
        let page = include_str!("../../docs/pxe.md");
        for text in [dnsmasq(T, Mode::All), isc(T, Mode::All).unwrap(), dnsmasq(T, Mode::Proxy)] {
            assert!(page.contains(&text), "docs/pxe.md lacks, verbatim:\n{text}");
        }
    }
}
