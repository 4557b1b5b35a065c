//! Bulk assignment: one change (image, boot mode, labels, target disk) to many machines at
//! once, chosen by MAC, by label or by the machines page's filter. `plan` works out each
//! machine's before and after without writing; `run` then writes every change in one
//! transaction with one `machine.updated` event per changed machine, or nothing.
//!
//! Every machine's result goes through the single PUT's `normalize_upsert`, so a bulk change
//! can set nothing a PUT could not; one machine failing it refuses the whole request. A target
//! disk rule that finds no single disk on a machine is not a refusal: that machine is left as
//! it was and listed with the reason, because a rack rarely has one uniform inventory and the
//! operator should not have to split the request by hand.

use std::collections::HashMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::web::app::App;
use crate::web::db::{BulkWrite, Machine, MachineKey, MachineUpsert};
use crate::web::http::Resp;
use crate::web::validate::{self, Invalid};
use crate::wire::{BootMode, InventoryDisk};

/// Which machines.
#[derive(Clone, Debug)]
pub enum Select {
    /// These, each of which must have a record.
    Macs(Vec<String>),
    /// Every machine with this label.
    Label(String),
    /// Every machine the machines page shows with this filter.
    Filter(Filter),
}

/// The machines page's filter: `q` matches MAC, IP, boot mode, image name and labels
/// (case-insensitive), `label` one label exactly, `status` discovered or assigned.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub q: String,
    pub label: String,
    pub status: String,
}

impl Filter {
    /// Whether the page shows `m`; `names` maps image refs to catalog names.
    pub fn keep(&self, m: &Machine, names: &HashMap<&str, &str>) -> bool {
        let image = m.bty_image_ref.as_deref();
        self.matches(&m.mac, m.last_seen_ip.as_deref(), m.boot_mode, image, &m.labels, names)
    }

    /// `keep` on the few columns a text filter reads, for the machines page's scan of a fleet.
    pub fn keep_key(&self, k: &MachineKey, names: &HashMap<&str, &str>) -> bool {
        let image = k.bty_image_ref.as_deref();
        self.matches(&k.mac, k.last_seen_ip.as_deref(), k.boot_mode, image, &k.labels, names)
    }

    fn matches(
        &self,
        mac: &str,
        ip: Option<&str>,
        mode: BootMode,
        image: Option<&str>,
        labels: &[String],
        names: &HashMap<&str, &str>,
    ) -> bool {
        if !self.label.is_empty() && !labels.contains(&self.label) {
            return false;
        }
        match self.status.as_str() {
            "discovered" if image.is_some() => return false,
            "assigned" if image.is_none() => return false,
            _ => {}
        }
        let q = self.q.trim().to_lowercase();
        if q.is_empty() {
            return true;
        }
        let image = image.and_then(|r| names.get(r)).copied().unwrap_or("");
        let hay = format!("{mac} {} {mode} {image} {}", ip.unwrap_or(""), labels.join(" "));
        hay.to_lowercase().contains(&q)
    }
}

/// How to pick each machine's target disk.
#[derive(Clone, Debug)]
pub enum Rule {
    /// The inventory's only fixed disk (not removable, not USB, not read-only).
    OnlyFixed,
    /// The smallest fixed disk by size.
    Smallest,
    /// The largest fixed disk by size.
    Largest,
    /// The one writable disk of this model (case-insensitive).
    Model(String),
}

impl Rule {
    pub fn describe(&self) -> String {
        match self {
            Rule::OnlyFixed => "the only fixed disk".into(),
            Rule::Smallest => "the smallest fixed disk".into(),
            Rule::Largest => "the largest fixed disk".into(),
            Rule::Model(m) => format!("the disk of model {m:?}"),
        }
    }
}

#[derive(Clone, Debug)]
pub enum Disk {
    Serial(String),
    Clear,
    Rule(Rule),
}

/// What to change; `None` leaves a field as each machine has it.
#[derive(Clone, Debug, Default)]
pub struct Set {
    pub image: Option<Option<String>>,
    pub boot_mode: Option<BootMode>,
    pub add: Vec<String>,
    pub remove: Vec<String>,
    pub disk: Option<Disk>,
}

#[derive(Clone, Debug)]
pub struct Request {
    pub select: Select,
    pub set: Set,
    pub dry_run: bool,
    /// The fingerprint of the preview the operator saw: applying refuses if the plan differs.
    pub expect: Option<String>,
}

/// A machine's operator settings, as the preview shows them.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct View {
    pub bty_image_ref: Option<String>,
    pub boot_mode: BootMode,
    pub labels: Vec<String>,
    pub target_disk_serial: Option<String>,
    pub sanboot_drive: Option<String>,
}

impl From<&MachineUpsert> for View {
    fn from(m: &MachineUpsert) -> View {
        View {
            bty_image_ref: m.bty_image_ref.clone(),
            boot_mode: m.boot_mode,
            labels: m.labels.clone(),
            target_disk_serial: m.target_disk_serial.clone(),
            sanboot_drive: m.sanboot_drive.clone(),
        }
    }
}

/// The disk a rule picked on one machine.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Picked {
    pub serial: String,
    pub path: String,
    pub size: Option<String>,
    pub model: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Item {
    pub mac: String,
    pub before: View,
    pub after: View,
    pub changed: bool,
    /// The disk a rule resolved to (absent when the request named no rule).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_disk: Option<Picked>,
    #[serde(skip)]
    from: MachineUpsert,
    #[serde(skip)]
    to: MachineUpsert,
}

/// A machine the rule found no single disk on: left as it was.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Unresolved {
    pub mac: String,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub machines: Vec<Item>,
    pub unresolved: Vec<Unresolved>,
    /// Identifies this plan's before and after of every machine: `expect` it when applying.
    pub fingerprint: String,
}

impl Plan {
    pub fn changed(&self) -> usize {
        self.machines.iter().filter(|i| i.changed).count()
    }
}

/// Why a bulk request changed nothing.
#[derive(Debug)]
pub enum Refused {
    /// 422 (or 400): the request or one machine's result fails a check.
    Invalid(Invalid),
    /// 404: a named MAC has no record.
    Missing(String),
    /// 409: the machines moved since the plan or the preview.
    Conflict(String),
    Internal(crate::error::Error),
}

impl Refused {
    pub fn resp(self) -> Resp {
        match self {
            Refused::Invalid(e) => crate::web::app::bad(e),
            Refused::Missing(m) => Resp::error(404, &m),
            Refused::Conflict(m) => Resp::error(409, &m),
            Refused::Internal(e) => crate::web::app::internal(e),
        }
    }

    pub fn message(&self) -> String {
        match self {
            Refused::Invalid(e) => e.to_string(),
            Refused::Missing(m) | Refused::Conflict(m) => m.clone(),
            Refused::Internal(_) => "internal error (see the server log)".into(),
        }
    }
}

impl From<crate::error::Error> for Refused {
    fn from(e: crate::error::Error) -> Refused {
        Refused::Internal(e)
    }
}

/// The machines `select` names, in MAC order.
fn selected<'m>(
    all: &'m [Machine],
    select: &Select,
    names: &HashMap<&str, &str>,
) -> Result<Vec<&'m Machine>, Refused> {
    let chosen: Vec<&Machine> = match select {
        Select::Macs(macs) => {
            let by_mac: HashMap<&str, &Machine> = all.iter().map(|m| (m.mac.as_str(), m)).collect();
            let mut v = Vec::with_capacity(macs.len());
            for (i, mac) in macs.iter().enumerate() {
                match by_mac.get(mac.as_str()) {
                    Some(m) => v.push(*m),
                    None => {
                        return Err(Refused::Missing(format!(
                            "select.macs[{i}]: no machine record for {mac}"
                        )));
                    }
                }
            }
            v.sort_by(|a, b| a.mac.cmp(&b.mac));
            v
        }
        Select::Label(l) => all.iter().filter(|m| m.labels.contains(l)).collect(),
        Select::Filter(f) => all.iter().filter(|m| f.keep(m, names)).collect(),
    };
    if chosen.is_empty() {
        let what = match select {
            Select::Label(l) => format!("no machine has the label {l:?}"),
            _ => "no machine matches the filter".into(),
        };
        return Err(Refused::Invalid(Invalid::new("select", what)));
    }
    Ok(chosen)
}

/// Works out every selected machine's change without writing anything.
pub fn plan(app: &App, req: &Request) -> Result<Plan, Refused> {
    let all = app.db.machines()?;
    let catalog = app.db.catalog()?;
    let names: HashMap<&str, &str> =
        catalog.iter().map(|e| (e.bty_image_ref.as_str(), e.name.as_str())).collect();
    let mut machines = Vec::new();
    let mut unresolved = Vec::new();
    for m in selected(&all, &req.select, &names)? {
        let from = MachineUpsert {
            bty_image_ref: m.bty_image_ref.clone(),
            labels: m.labels.clone(),
            boot_mode: m.boot_mode,
            sanboot_drive: m.sanboot_drive.clone(),
            target_disk_serial: m.target_disk_serial.clone(),
        };
        let mut to = from.clone();
        let s = &req.set;
        if let Some(image) = &s.image {
            to.bty_image_ref = image.clone();
        }
        if let Some(mode) = s.boot_mode {
            to.boot_mode = mode;
        }
        to.labels.retain(|l| !s.remove.contains(l));
        to.labels.extend(s.add.iter().cloned());
        let mut picked = None;
        match &s.disk {
            None => {}
            Some(Disk::Clear) => to.target_disk_serial = None,
            Some(Disk::Serial(serial)) => to.target_disk_serial = Some(serial.clone()),
            Some(Disk::Rule(rule)) => match resolve(m.known_disks.as_ref(), rule) {
                Ok(p) => {
                    to.target_disk_serial = Some(p.serial.clone());
                    picked = Some(p);
                }
                Err(reason) => {
                    unresolved.push(Unresolved { mac: m.mac.clone(), reason });
                    continue;
                }
            },
        }
        // The single PUT's rules, on what this machine would become.
        let to = validate::normalize_upsert(to).map_err(|e| {
            Refused::Invalid(Invalid::new(m.mac.clone(), format!("would be refused: {e}")))
        })?;
        machines.push(Item {
            mac: m.mac.clone(),
            before: View::from(&from),
            after: View::from(&to),
            changed: to != from,
            target_disk: picked,
            from,
            to,
        });
    }
    let fingerprint = fingerprint(&machines, &unresolved);
    Ok(Plan { machines, unresolved, fingerprint })
}

fn fingerprint(machines: &[Item], unresolved: &[Unresolved]) -> String {
    let text = serde_json::json!({ "machines": machines, "unresolved": unresolved }).to_string();
    crate::hex::encode(&Sha256::digest(text.as_bytes()))[..32].to_string()
}

/// Plans, then (unless `dry_run`) writes every change in one transaction with one event per
/// changed machine. Returns the plan and whether it was written.
pub fn run(app: &App, req: &Request) -> Result<(Plan, bool), Refused> {
    let plan = plan(app, req)?;
    if req.dry_run {
        return Ok((plan, false));
    }
    if let Some(want) = &req.expect {
        if *want != plan.fingerprint {
            return Err(Refused::Conflict(format!(
                "the machines changed since the preview (fingerprint {want}, now {}): preview \
                 again",
                plan.fingerprint
            )));
        }
    }
    let writes: Vec<BulkWrite> = plan
        .machines
        .iter()
        .filter(|i| i.changed)
        .map(|i| BulkWrite {
            mac: i.mac.clone(),
            before: i.from.clone(),
            after: i.to.clone(),
            message: format!("{} saved by a bulk change: boot mode {}", i.mac, i.to.boot_mode),
            details: serde_json::json!({
                "bulk": true, "before": i.before, "after": i.after, "target_disk": i.target_disk,
            }),
        })
        .collect();
    if writes.is_empty() {
        return Ok((plan, true));
    }
    if let Some(mac) = app.db.put_machines(&writes)? {
        return Err(Refused::Conflict(format!(
            "{mac} changed while the bulk change was being saved; nothing was saved: preview again"
        )));
    }
    app.hub.changed_macs(writes.iter().map(|w| w.mac.as_str()));
    Ok((plan, true))
}

/// `POST /machines/bulk`.
pub fn api(app: &App, body: &[u8]) -> Resp {
    let req = match validate::bulk_request(body) {
        Ok(r) => r,
        Err(e) => return crate::web::app::bad(e),
    };
    match run(app, &req) {
        Ok((plan, applied)) => Resp::json(
            200,
            &serde_json::json!({
                "dry_run": req.dry_run,
                "applied": applied,
                "changed": if applied { plan.changed() } else { 0 },
                "would_change": plan.changed(),
                "machines": plan.machines,
                "unresolved": plan.unresolved,
                "fingerprint": plan.fingerprint,
            }),
        ),
        Err(r) => r.resp(),
    }
}

/// A disk the target may be: not removable, not on USB, writable.
fn fixed(d: &InventoryDisk) -> bool {
    !d.removable && !d.readonly && !d.tran.as_deref().is_some_and(|t| t.eq_ignore_ascii_case("usb"))
}

/// lsblk's size text ("500G", "1.8T", "931,5G", "0B") in bytes; binary units as lsblk prints.
fn size_bytes(s: &str) -> Option<f64> {
    let s = s.trim().replace(',', ".");
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let exp = match unit.trim().trim_end_matches(['B', 'b', 'i']) {
        "" => 0,
        "K" | "k" => 1,
        "M" => 2,
        "G" => 3,
        "T" => 4,
        "P" => 5,
        "E" => 6,
        _ => return None,
    };
    Some(n * 1024f64.powi(exp))
}

fn pick(d: &InventoryDisk, why: &str) -> Result<Picked, String> {
    let serial = d.serial.as_deref().map(str::trim).unwrap_or("");
    if serial.is_empty() {
        return Err(format!("{why} ({}) reports no serial to pin the flash to", d.path));
    }
    let serial = validate::target_disk_serial(serial)
        .map_err(|e| format!("{why} ({}) has an unusable serial: {e}", d.path))?;
    Ok(Picked { serial, path: d.path.clone(), size: d.size.clone(), model: d.model.clone() })
}

fn paths(v: &[&InventoryDisk]) -> String {
    v.iter().map(|d| d.path.as_str()).collect::<Vec<_>>().join(", ")
}

/// One machine's disk by `rule`, from its stored inventory; Err says why there is no single
/// one, in words for the preview.
pub fn resolve(known: Option<&serde_json::Value>, rule: &Rule) -> Result<Picked, String> {
    let Some(known) = known else {
        return Err("no inventory yet (boot it once in bty-inventory mode)".into());
    };
    let disks: Vec<InventoryDisk> = serde_json::from_value(known.clone())
        .map_err(|e| format!("its stored inventory is unreadable: {e}"))?;
    let fixed: Vec<&InventoryDisk> = disks.iter().filter(|d| fixed(d)).collect();
    match rule {
        Rule::OnlyFixed => match fixed.as_slice() {
            [one] => pick(one, "the only fixed disk"),
            [] => Err(format!("no fixed disk among {} disk(s)", disks.len())),
            many => Err(format!(
                "{} fixed disks ({}): the rule needs exactly one",
                many.len(),
                paths(many)
            )),
        },
        Rule::Smallest | Rule::Largest => {
            let sized: Vec<(&InventoryDisk, f64)> = fixed
                .iter()
                .filter_map(|d| Some((*d, d.size.as_deref().and_then(size_bytes)?)))
                .filter(|(_, n)| *n > 0.0)
                .collect();
            let largest = matches!(rule, Rule::Largest);
            let best = sized.iter().map(|(_, n)| *n).fold(None, |acc: Option<f64>, n| {
                Some(match acc {
                    None => n,
                    Some(a) if largest => a.max(n),
                    Some(a) => a.min(n),
                })
            });
            let Some(best) = best else {
                return Err(format!(
                    "no fixed disk with a known size among {} disk(s)",
                    disks.len()
                ));
            };
            let at: Vec<&InventoryDisk> =
                sized.iter().filter(|(_, n)| *n == best).map(|(d, _)| *d).collect();
            let which = if largest { "largest" } else { "smallest" };
            match at.as_slice() {
                [one] => pick(one, &format!("the {which} fixed disk")),
                many => Err(format!(
                    "{} fixed disks tie for {which} ({}): the rule needs exactly one",
                    many.len(),
                    paths(many)
                )),
            }
        }
        Rule::Model(model) => {
            let hits: Vec<&InventoryDisk> = disks
                .iter()
                .filter(|d| !d.readonly)
                .filter(|d| {
                    d.model.as_deref().is_some_and(|m| m.trim().eq_ignore_ascii_case(model))
                })
                .collect();
            match hits.as_slice() {
                [one] => pick(one, &format!("the disk of model {model:?}")),
                [] => Err(format!("no writable disk of model {model:?}")),
                many => Err(format!(
                    "{} disks of model {model:?} ({}): the rule needs exactly one",
                    many.len(),
                    paths(many)
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn disk(
        path: &str,
        size: &str,
        serial: &str,
        model: &str,
        tran: &str,
        removable: bool,
    ) -> serde_json::Value {
        json!({"path": path, "size": size, "serial": serial, "model": model, "tran": tran,
               "removable": removable, "readonly": false, "vendor": null})
    }

    #[test]
    fn sizes_parse_as_lsblk_prints_them() {
        assert_eq!(size_bytes("0B"), Some(0.0));
        assert_eq!(size_bytes("512M"), Some(512.0 * 1024.0 * 1024.0));
        assert_eq!(size_bytes("1.8T"), size_bytes("1,8T"));
        assert!(size_bytes("1.8T") > size_bytes("931.5G"));
        assert_eq!(size_bytes("lots"), None);
        assert_eq!(size_bytes("12X"), None);
    }

    #[test]
    fn rules_resolve_to_one_disk_or_say_why_not() {
        let inv = json!([
            disk("/dev/sda", "500G", "SSD-A", "Fast SSD", "sata", false),
            disk("/dev/nvme0n1", "1.8T", "NV-1", "Big NVMe", "nvme", false),
            disk("/dev/sdb", "4T", "USB-1", "Stick", "usb", false),
            disk("/dev/sdc", "32G", "SD-1", "Card", "usb", true),
        ]);
        let serial = |r: Rule| resolve(Some(&inv), &r).map(|p| p.serial);
        assert_eq!(serial(Rule::Smallest), Ok("SSD-A".into()));
        assert_eq!(serial(Rule::Largest), Ok("NV-1".into()), "USB disks are never the target");
        assert_eq!(serial(Rule::Model("big nvme".into())), Ok("NV-1".into()));
        let e = serial(Rule::OnlyFixed).unwrap_err();
        assert!(e.starts_with("2 fixed disks (/dev/sda, /dev/nvme0n1)"), "{e}");
        assert!(serial(Rule::Model("None".into())).unwrap_err().starts_with("no writable disk"));
        let one = json!([disk("/dev/vda", "8G", "V1", "virt", "virtio", false)]);
        assert_eq!(resolve(Some(&one), &Rule::OnlyFixed).map(|p| p.path), Ok("/dev/vda".into()));
        let tie = json!([
            disk("/dev/a", "8G", "A", "m", "sata", false),
            disk("/dev/b", "8G", "B", "m", "sata", false)
        ]);
        assert!(resolve(Some(&tie), &Rule::Largest).unwrap_err().contains("tie"));
        let noserial = json!([disk("/dev/vda", "8G", "", "virt", "virtio", false)]);
        assert!(resolve(Some(&noserial), &Rule::OnlyFixed).unwrap_err().contains("no serial"));
        assert!(resolve(None, &Rule::OnlyFixed).unwrap_err().starts_with("no inventory"));
        assert!(
            resolve(Some(&json!({"x": 1})), &Rule::OnlyFixed).unwrap_err().contains("unreadable")
        );
    }
}
