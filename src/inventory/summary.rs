//! bty's own hardware summary, for machines without lshw (the netbooted live environment): an
//! lshw-shaped JSON tree built from /sys/class/dmi/id, /proc/cpuinfo, /proc/meminfo and
//! /sys/class/net.
//!
//! The shape follows `lshw -json` (a "system" node, a "core" bus holding firmware, processors
//! and memory, network nodes with `logicalname` and `serial` = MAC) with lshw's key names, so
//! what reads an lshw tree (bty-web's machine page, `jq '.children[]'`) reads this one too.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde_json::{Map, Value, json};

use crate::disks::sysfs::{clean, read_trim};

/// What the summary is built from; read from the running system by [`Facts::read`].
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// The kernel's host name; the tree's root id, as lshw makes it.
    pub hostname: String,
    /// /sys/class/dmi/id attributes by file name ("sys_vendor", "product_name", ...).
    pub dmi: BTreeMap<String, String>,
    /// One map per processor block of /proc/cpuinfo.
    pub cpuinfo: Vec<BTreeMap<String, String>>,
    /// MemTotal from /proc/meminfo, in bytes.
    pub memory: Option<u64>,
    /// Network interfaces with a device behind them, by name.
    pub nics: Vec<Nic>,
}

/// A network interface backed by a device (virtual ones such as lo, bridges and tunnels are
/// left out, as lshw leaves them out).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Nic {
    /// Interface name ("eth0", "enp3s0").
    pub name: String,
    /// Hardware address as the kernel prints it.
    pub mac: Option<String>,
    /// Kernel driver bound to the device ("e1000e", "virtio_net").
    pub driver: Option<String>,
    /// Bus address of the device ("0000:00:03.0" for PCI).
    pub bus: Option<String>,
    /// Link speed in Mbit/s, when the link is up and the driver knows it.
    pub speed_mbps: Option<u64>,
    /// operstate is "up".
    pub link_up: bool,
    /// A Wi-Fi interface (lshw describes it differently).
    pub wireless: bool,
}

/// The DMI attributes read; serials and the UUID need root, and are simply absent otherwise.
const DMI_KEYS: [&str; 17] = [
    "sys_vendor",
    "product_name",
    "product_version",
    "product_serial",
    "product_uuid",
    "product_family",
    "product_sku",
    "chassis_type",
    "chassis_vendor",
    "chassis_serial",
    "board_vendor",
    "board_name",
    "board_version",
    "board_serial",
    "bios_vendor",
    "bios_version",
    "bios_date",
];

impl Facts {
    /// Reads the running system; whatever cannot be read is left out.
    pub fn read() -> Facts {
        let dmi_dir = Path::new("/sys/class/dmi/id");
        let dmi = DMI_KEYS
            .iter()
            .filter_map(|k| clean(&read_trim(&dmi_dir.join(k))).map(|v| (k.to_string(), v)))
            .collect();
        let text = |p: &str| fs::read_to_string(p).unwrap_or_default();
        Facts {
            hostname: read_trim(Path::new("/proc/sys/kernel/hostname")),
            dmi,
            cpuinfo: parse_cpuinfo(&text("/proc/cpuinfo")),
            memory: parse_meminfo(&text("/proc/meminfo")).get("MemTotal").copied(),
            nics: read_nics(Path::new("/sys/class/net")),
        }
    }
}

/// The summary tree of the running system.
pub fn tree() -> Value {
    build(&Facts::read())
}

/// Parses /proc/cpuinfo: blocks separated by blank lines, `key<tabs>: value` lines.
pub fn parse_cpuinfo(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    let mut cur = BTreeMap::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            cur.insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Parses /proc/meminfo into bytes per key: "MemTotal:  24684084 kB" is 24684084 KiB; a
/// value without unit (HugePages_Total) is a count and kept as it is.
pub fn parse_meminfo(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else { continue };
        let mut words = v.split_whitespace();
        let Some(Ok(n)) = words.next().map(str::parse::<u64>) else { continue };
        let n = match words.next() {
            Some("kB") => n.saturating_mul(1024),
            _ => n,
        };
        out.insert(k.trim().to_string(), n);
    }
    out
}

fn read_nics(dir: &Path) -> Vec<Nic> {
    let Ok(rd) = fs::read_dir(dir) else { return Vec::new() };
    let mut nics: Vec<Nic> = rd
        .flatten()
        .filter(|e| e.path().join("device").exists())
        .map(|e| {
            let p = e.path();
            let device = fs::canonicalize(p.join("device")).ok();
            let file_name = |q: &Path| q.file_name().map(|n| n.to_string_lossy().into_owned());
            let link_up = read_trim(&p.join("operstate")) == "up";
            Nic {
                name: e.file_name().to_string_lossy().into_owned(),
                mac: clean(&read_trim(&p.join("address"))),
                driver: fs::read_link(p.join("device/driver")).ok().and_then(|d| file_name(&d)),
                bus: device.as_deref().and_then(file_name),
                // The kernel reports -1 (or EINVAL) when the link is down or the speed unknown.
                speed_mbps: read_trim(&p.join("speed")).parse::<u64>().ok().filter(|_| link_up),
                link_up,
                wireless: p.join("wireless").exists() || p.join("phy80211").exists(),
            }
        })
        .collect();
    nics.sort_by(|a, b| a.name.cmp(&b.name));
    nics
}

/// lshw's names for the CPU vendor ids of /proc/cpuinfo.
fn cpu_vendor(id: &str) -> String {
    match id {
        "GenuineIntel" => "Intel Corp.".into(),
        "AuthenticAMD" => "Advanced Micro Devices [AMD]".into(),
        other => other.into(),
    }
}

/// SMBIOS chassis types (DSP0134 7.4.1) lshw turns into the system's description.
fn chassis(kind: &str) -> &'static str {
    match kind {
        "3" | "4" | "6" | "7" | "13" | "35" | "36" => "Desktop Computer",
        "8" | "9" | "10" | "14" | "31" | "32" => "Notebook",
        "17" | "23" | "28" => "Rack Mount Chassis",
        "30" => "Tablet",
        _ => "Computer",
    }
}

/// Builds the lshw-shaped tree; keys with nothing to say are left out, as lshw leaves them.
pub fn build(f: &Facts) -> Value {
    let dmi = |k: &str| f.dmi.get(k).cloned();
    let mut root = node(&[
        ("id", Some(if f.hostname.is_empty() { "computer".into() } else { f.hostname.clone() })),
        ("class", Some("system".into())),
        ("description", Some(chassis(f.dmi.get("chassis_type").map_or("", String::as_str)).into())),
        ("product", dmi("product_name")),
        ("vendor", dmi("sys_vendor")),
        ("version", dmi("product_version")),
        ("serial", dmi("product_serial")),
    ]);
    root.insert("width".into(), json!(usize::BITS));
    let mut conf = strings(&[
        ("uuid", dmi("product_uuid")),
        ("family", dmi("product_family")),
        ("sku", dmi("product_sku")),
    ]);
    conf.insert("generator".into(), json!(format!("bty {} (lshw not run)", crate::VERSION)));
    root.insert("configuration".into(), Value::Object(conf));

    let mut core_children = Vec::new();
    if f.dmi.contains_key("bios_vendor") || f.dmi.contains_key("bios_version") {
        core_children.push(Value::Object(node(&[
            ("id", Some("firmware".into())),
            ("class", Some("memory".into())),
            ("description", Some("BIOS".into())),
            ("vendor", dmi("bios_vendor")),
            ("version", dmi("bios_version")),
            ("date", dmi("bios_date")),
        ])));
    }
    core_children.extend(processors(&f.cpuinfo));
    if let Some(size) = f.memory {
        let mut m = node(&[
            ("id", Some("memory".into())),
            ("class", Some("memory".into())),
            ("description", Some("System memory".into())),
            ("units", Some("bytes".into())),
        ]);
        m.insert("size".into(), json!(size));
        core_children.push(Value::Object(m));
    }
    core_children.extend(f.nics.iter().enumerate().map(|(i, n)| network(i, n)));
    let mut core = node(&[
        ("id", Some("core".into())),
        ("class", Some("bus".into())),
        ("description", Some("Motherboard".into())),
        ("product", dmi("board_name")),
        ("vendor", dmi("board_vendor")),
        ("version", dmi("board_version")),
        ("serial", dmi("board_serial")),
    ]);
    core.insert("children".into(), Value::Array(core_children));
    root.insert("children".into(), json!([Value::Object(core)]));
    Value::Object(root)
}

/// One "processor" node per socket ("physical id"), as lshw has one per populated socket.
fn processors(cpuinfo: &[BTreeMap<String, String>]) -> Vec<Value> {
    let mut sockets: BTreeMap<u64, Vec<&BTreeMap<String, String>>> = BTreeMap::new();
    for p in cpuinfo.iter().filter(|p| p.contains_key("processor")) {
        let id = p.get("physical id").and_then(|s| s.parse().ok()).unwrap_or(0);
        sockets.entry(id).or_default().push(p);
    }
    let many = sockets.len() > 1;
    sockets
        .iter()
        .map(|(id, threads)| {
            let first = threads[0];
            let get = |k: &str| first.get(k).and_then(|v| clean(v));
            // x86 says "model name"; arm64 has none, only the implementer and part numbers.
            let product = get("model name").or_else(|| get("cpu model")).or_else(|| {
                let (imp, part) = (get("CPU implementer")?, get("CPU part")?);
                Some(format!("implementer {imp} part {part}"))
            });
            let version = match (get("cpu family"), get("model"), get("stepping")) {
                (Some(f), Some(m), Some(s)) => Some(format!("{f}.{m}.{s}")),
                _ => None,
            };
            let mut n = node(&[
                ("id", Some(if many { format!("cpu:{id}") } else { "cpu".into() })),
                ("class", Some("processor".into())),
                ("product", product),
                ("vendor", get("vendor_id").map(|v| cpu_vendor(&v))),
                ("version", version),
                ("businfo", Some(format!("cpu@{id}"))),
            ]);
            n.insert("width".into(), json!(usize::BITS));
            let conf = strings(&[
                ("cores", get("cpu cores")),
                ("threads", Some(threads.len().to_string())),
                ("microcode", get("microcode")),
            ]);
            n.insert("configuration".into(), Value::Object(conf));
            Value::Object(n)
        })
        .collect()
}

fn network(i: usize, nic: &Nic) -> Value {
    let description = if nic.wireless { "Wireless interface" } else { "Ethernet interface" };
    let mut n = node(&[
        ("id", Some(format!("network:{i}"))),
        ("class", Some("network".into())),
        ("description", Some(description.into())),
        ("logicalname", Some(nic.name.clone())),
        ("serial", nic.mac.clone()),
        ("businfo", nic.bus.as_ref().filter(|b| b.contains(':')).map(|b| format!("pci@{b}"))),
    ]);
    if let Some(mbps) = nic.speed_mbps {
        n.insert("units".into(), json!("bit/s"));
        n.insert("size".into(), json!(mbps.saturating_mul(1_000_000)));
    }
    let conf = strings(&[
        ("driver", nic.driver.clone()),
        ("link", Some(if nic.link_up { "yes" } else { "no" }.into())),
    ]);
    n.insert("configuration".into(), Value::Object(conf));
    Value::Object(n)
}

/// A node with `claimed` set (lshw marks nodes a driver or probe claimed) and the given
/// string keys that have a value.
fn node(kv: &[(&str, Option<String>)]) -> Map<String, Value> {
    let mut m = strings(kv);
    m.insert("claimed".into(), Value::Bool(true));
    m
}

fn strings(kv: &[(&str, Option<String>)]) -> Map<String, Value> {
    kv.iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), Value::String(v.clone()))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPUINFO: &str = "processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
stepping\t: 1
microcode\t: 0x1000065
physical id\t: 0
siblings\t: 2
cpu cores\t: 2
flags\t\t: fpu vme de

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
stepping\t: 1
physical id\t: 0
cpu cores\t: 2
power management:

";

    const ARM64: &str = "processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU part\t: 0xd08

processor\t: 1
CPU implementer\t: 0x41
CPU part\t: 0xd08
";

    #[test]
    fn parses_cpuinfo_blocks() {
        let c = parse_cpuinfo(CPUINFO);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0]["model name"], "AMD EPYC");
        assert_eq!(c[0]["flags"], "fpu vme de");
        assert_eq!(c[1]["power management"], "");
        assert_eq!(parse_cpuinfo(ARM64)[0]["CPU architecture"], "8");
        assert!(parse_cpuinfo("").is_empty());
    }

    #[test]
    fn parses_meminfo_in_bytes() {
        let m = parse_meminfo(
            "MemTotal:       24684084 kB\nMemFree: 1 kB\nHugePages_Total:       0\nbogus line\nX: y kB\n",
        );
        assert_eq!(m["MemTotal"], 24_684_084 * 1024);
        assert_eq!(m["HugePages_Total"], 0);
        assert_eq!(m.len(), 3);
    }

    fn facts() -> Facts {
        let dmi = [
            ("sys_vendor", "QEMU"),
            ("product_name", "Standard PC (Q35 + ICH9, 2009)"),
            ("chassis_type", "1"),
            ("bios_vendor", "SeaBIOS"),
            ("bios_version", "1.16.3-debian-1.16.3-2"),
            ("bios_date", "04/01/2014"),
        ];
        Facts {
            hostname: "lab-7".into(),
            dmi: dmi.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            cpuinfo: parse_cpuinfo(CPUINFO),
            memory: Some(24 << 30),
            nics: vec![Nic {
                name: "eth0".into(),
                mac: Some("52:54:00:12:34:56".into()),
                driver: Some("virtio_net".into()),
                bus: Some("virtio0".into()),
                speed_mbps: Some(1000),
                link_up: true,
                wireless: false,
            }],
        }
    }

    #[test]
    fn builds_an_lshw_shaped_tree() {
        let t = build(&facts());
        assert_eq!(t["id"], "lab-7");
        assert_eq!(t["class"], "system");
        assert_eq!(t["description"], "Computer");
        assert_eq!(t["product"], "Standard PC (Q35 + ICH9, 2009)");
        assert_eq!(t["vendor"], "QEMU");
        assert!(t.get("serial").is_none());
        let core = &t["children"][0];
        assert_eq!(core["class"], "bus");
        let kids = core["children"].as_array().unwrap();
        let by_class = |c: &str| kids.iter().filter(|k| k["class"] == c).collect::<Vec<_>>();
        assert_eq!(kids[0]["id"], "firmware");
        assert_eq!(kids[0]["date"], "04/01/2014");
        let cpus = by_class("processor");
        assert_eq!(cpus.len(), 1);
        assert_eq!(cpus[0]["product"], "AMD EPYC");
        assert_eq!(cpus[0]["vendor"], "Advanced Micro Devices [AMD]");
        assert_eq!(cpus[0]["version"], "26.2.1");
        assert_eq!(cpus[0]["configuration"]["threads"], "2");
        assert_eq!(cpus[0]["configuration"]["cores"], "2");
        let mem = kids.iter().find(|k| k["id"] == "memory").unwrap();
        assert_eq!(mem["size"], 24u64 << 30);
        let net = &by_class("network")[0];
        assert_eq!(net["logicalname"], "eth0");
        assert_eq!(net["serial"], "52:54:00:12:34:56");
        assert_eq!(net["size"], 1_000_000_000u64);
        assert_eq!(net["configuration"]["driver"], "virtio_net");
        assert!(net.get("businfo").is_none(), "virtio0 is not a PCI address");
    }

    #[test]
    fn two_sockets_and_arm64_cpus() {
        let mut f = facts();
        let mut second = parse_cpuinfo(CPUINFO);
        for p in &mut second {
            p.insert("physical id".into(), "1".into());
        }
        f.cpuinfo.extend(second);
        let t = build(&f);
        let ids: Vec<&Value> = t["children"][0]["children"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["class"] == "processor")
            .map(|k| &k["id"])
            .collect();
        assert_eq!(ids, ["cpu:0", "cpu:1"]);
        let f = Facts { cpuinfo: parse_cpuinfo(ARM64), ..Facts::default() };
        let t = build(&f);
        let cpu = &t["children"][0]["children"][0];
        assert_eq!(cpu["product"], "implementer 0x41 part 0xd08");
        assert_eq!(cpu["configuration"]["threads"], "2");
        assert_eq!(t["id"], "computer");
    }
}
