//! The partition table (GPT or MBR) found in the first bytes of a disk image, for `bty inspect`.
//!
//! Parsing works on a byte slice only (normally the image's first MiB) and never panics: every read
//! goes through bounds-checked helpers, and counts and sizes from the disk are capped before use.
//!
//! Which table wins follows the Linux kernel and libblkid: a GPT is believed only when the MBR is
//! protective (has a type 0xEE entry) or there is no valid MBR at all; an MBR without 0xEE next to a
//! stale GPT header is an MBR disk. When the GPT is damaged but the protective MBR is fine, the MBR
//! with its lone "GPT protective" entry is reported instead of guessing.

use std::fmt;

/// What kind of table the disk carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    /// GUID partition table (header at LBA 1).
    Gpt,
    /// DOS/MBR partition table (signature 0x55AA at byte 510).
    Mbr,
    /// Neither was found (a bare filesystem, an empty or unknown image).
    None,
}

/// A disk's partition table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionTable {
    /// GPT, MBR or none.
    pub kind: TableKind,
    /// The GPT disk GUID, upper-case canonical form; `None` for MBR and no table.
    pub disk_guid: Option<String>,
    /// Logical sector size the table was found with (512 or 4096; 512 for MBR and no table).
    pub sector_size: u32,
    /// Non-empty partitions in table order.
    pub partitions: Vec<Partition>,
}

/// One partition.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Partition {
    /// 1-based slot number as Linux numbers it (GPT slot; MBR primaries 1-4, logicals from 5).
    pub number: u32,
    /// GPT type GUID in upper-case canonical form, or the MBR type byte as "0x83".
    pub type_id: String,
    /// Human name of the type ("EFI System", "Linux filesystem", "Linux", ...), or "unknown".
    pub type_name: String,
    /// GPT partition label; "" for MBR.
    pub name: String,
    /// Offset of the first byte, in bytes.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// MBR boot flag (0x80), or the GPT "legacy BIOS bootable" attribute (bit 2).
    pub bootable: bool,
    /// GPT only: the partition's unique GUID as stored on disk (mixed-endian), which a UEFI
    /// boot entry names the partition by.
    #[serde(skip)]
    pub unique_guid: Option<[u8; 16]>,
}

/// Most GPT entries we accept. The UEFI default is 128; 1024 leaves room for odd tools while
/// keeping a hostile count from making us walk megabytes of garbage.
const GPT_MAX_ENTRIES: u32 = 1024;
/// Largest GPT entry size we accept (UEFI says 128 × 2^n; real tables use 128).
const GPT_MAX_ENTRY_SIZE: u32 = 4096;
/// Bound on the EBR chain, against loops and hostile chains.
const MAX_LOGICAL: usize = 256;
/// MBR LBA fields count 512-byte sectors (4K-native disks with an MBR are not handled).
const MBR_SECTOR: u64 = 512;

/// Parses the table from the first bytes of a disk (normally 1 MiB). Never panics on any input.
///
/// GPT is tried with 512-byte sectors (header at byte 512), then 4096 (header at byte 4096). The
/// header CRC must match; the entries array's CRC is checked when the whole array lies in `first`.
/// When it does not (a table placed beyond the bytes given), the entries that do fit (maybe none)
/// are listed unverified, on the grounds that the header itself was verified and a partial listing
/// is more use to a person inspecting an image than none.
pub fn parse(first: &[u8]) -> PartitionTable {
    let mbr = parse_mbr(first);
    let gpt_allowed = match &mbr {
        None => true,
        Some(t) => t.partitions.iter().any(|p| p.type_id == "0xee"),
    };
    if gpt_allowed {
        for ss in [512, 4096] {
            if let Some(t) = parse_gpt(first, ss) {
                return t;
            }
        }
    }
    mbr.unwrap_or(PartitionTable {
        kind: TableKind::None,
        disk_guid: None,
        sector_size: 512,
        partitions: Vec::new(),
    })
}

/// The human table for `bty inspect`: a header line ("GPT, disk GUID …, 3 partitions", "MBR, 2
/// partitions", "no partition table"), then one aligned row per partition: number (`*` when
/// bootable), start, size, type name and label. No trailing newline.
impl fmt::Display for PartitionTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.partitions.len();
        let count = format!("{n} partition{}", if n == 1 { "" } else { "s" });
        match self.kind {
            TableKind::None => f.write_str("no partition table")?,
            TableKind::Mbr => write!(f, "MBR, {count}")?,
            TableKind::Gpt => {
                f.write_str("GPT")?;
                if self.sector_size != 512 {
                    write!(f, " ({}-byte sectors)", self.sector_size)?;
                }
                if let Some(g) = &self.disk_guid {
                    write!(f, ", disk GUID {g}")?;
                }
                write!(f, ", {count}")?;
            }
        }
        let rows: Vec<[String; 4]> = self
            .partitions
            .iter()
            .map(|p| {
                let num = format!("{}{}", p.number, if p.bootable { "*" } else { "" });
                [
                    num,
                    crate::units::bytes(p.start),
                    crate::units::bytes(p.size),
                    p.type_name.clone(),
                ]
            })
            .collect();
        let mut w = [0usize; 4];
        for r in &rows {
            for (wi, c) in w.iter_mut().zip(r) {
                *wi = (*wi).max(c.chars().count());
            }
        }
        for (r, p) in rows.iter().zip(&self.partitions) {
            let line = format!(
                "  {:>w0$}  {:>w1$}  {:>w2$}  {:<w3$}  {}",
                r[0],
                r[1],
                r[2],
                r[3],
                p.name,
                w0 = w[0],
                w1 = w[1],
                w2 = w[2],
                w3 = w[3]
            );
            write!(f, "\n{}", line.trim_end())?;
        }
        Ok(())
    }
}

fn le_u16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off.checked_add(2)?)?.try_into().ok()?))
}

fn le_u32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off.checked_add(4)?)?.try_into().ok()?))
}

fn le_u64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off.checked_add(8)?)?.try_into().ok()?))
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = flate2::Crc::new();
    c.update(data);
    c.sum()
}

/// Formats 16 on-disk GUID bytes: the first three fields are little-endian, the rest as stored.
fn guid(b: &[u8]) -> Option<String> {
    let b = b.get(..16)?;
    let tail: String = b[8..].iter().map(|x| format!("{x:02X}")).collect();
    Some(format!(
        "{:08X}-{:04X}-{:04X}-{}-{}",
        le_u32(b, 0)?,
        le_u16(b, 4)?,
        le_u16(b, 6)?,
        &tail[..4],
        &tail[4..]
    ))
}

fn gpt_type_name(type_guid: &str) -> &'static str {
    match type_guid {
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => "EFI System",
        "21686148-6449-6E6F-744E-656564454649" => "BIOS boot",
        "024DEE41-33E7-11D3-9D69-0008C781F39F" => "MBR partition scheme",
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => "Linux filesystem",
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => "Linux swap",
        "E6D6D379-F507-44C2-A23C-238F2A3DF928" => "Linux LVM",
        "A19D880F-05FC-4D3B-A006-743F0F84911E" => "Linux RAID",
        "CA7D7CCB-63ED-4C53-861C-1742536059CC" => "Linux LUKS",
        "44479540-F297-41B2-9AF7-D131D5F0458A" => "Linux root (x86)",
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" => "Linux root (x86-64)",
        "69DAD710-2CE4-4E3C-B16C-21A1D49ABED3" => "Linux root (ARM)",
        "B921B045-1DF0-41C3-AF44-4C6F280D3FAE" => "Linux root (ARM64)",
        "72EC70A6-CF74-40E6-BD49-4BDA08E8F224" => "Linux root (RISC-V 64)",
        "8484680C-9521-48C6-9C11-B0720656F69E" => "Linux /usr (x86-64)",
        "B0E01050-EE5F-4390-949A-9101B17104E9" => "Linux /usr (ARM64)",
        "933AC7E1-2EB4-4F13-B844-0E14E2AEF915" => "Linux /home",
        "3B8F8425-20E0-4F3B-907F-1A25A76F98E8" => "Linux /srv",
        "4D21B016-B534-45C2-A9FB-5C16E091FD2D" => "Linux /var",
        "7EC6F557-3BC5-4ACA-B293-16EF5DF639D1" => "Linux /var/tmp",
        "BC13C2FF-59E6-4262-A352-B275FD6F7172" => "Linux extended boot",
        "8DA63339-0007-60C0-C436-083AC8230908" => "Linux reserved",
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => "Microsoft basic data",
        "E3C9E316-0B5C-4DB8-817D-F92DF00215AE" => "Microsoft reserved",
        "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC" => "Windows recovery",
        "48465300-0000-11AA-AA11-00306543ECAC" => "Apple HFS/HFS+",
        "7C3457EF-0000-11AA-AA11-00306543ECAC" => "Apple APFS",
        "FE3A2A5D-4F32-41A7-B725-ACCC3285A309" => "ChromeOS kernel",
        "3CB8E202-3B7E-47DD-8A3C-7FF2A13CFCEC" => "ChromeOS root",
        _ => "unknown",
    }
}

fn mbr_type_name(t: u8) -> &'static str {
    match t {
        0x01 => "FAT12",
        0x04 => "FAT16 <32M",
        0x05 => "Extended",
        0x06 => "FAT16",
        0x07 => "NTFS/exFAT",
        0x0b => "W95 FAT32",
        0x0c => "FAT32 (LBA)",
        0x0e => "W95 FAT16 (LBA)",
        0x0f => "Extended (LBA)",
        0x27 => "Windows recovery",
        0x82 => "Linux swap",
        0x83 => "Linux",
        0x85 => "Linux extended",
        0x8e => "Linux LVM",
        0xa5 => "FreeBSD",
        0xa6 => "OpenBSD",
        0xa9 => "NetBSD",
        0xaf => "HFS/HFS+",
        0xda => "Non-FS data",
        0xee => "GPT protective",
        0xef => "EFI System",
        0xfd => "Linux RAID",
        _ => "unknown",
    }
}

fn is_extended(t: u8) -> bool {
    matches!(t, 0x05 | 0x0f | 0x85)
}

/// Parses the GPT whose header sits at LBA 1 for sector size `ss`.
fn parse_gpt(first: &[u8], ss: usize) -> Option<PartitionTable> {
    let hdr = first.get(ss..ss.checked_add(92)?)?;
    if &hdr[..8] != b"EFI PART" {
        return None;
    }
    let hsize = le_u32(hdr, 12)? as usize;
    if !(92..=ss).contains(&hsize) {
        return None;
    }
    let hdr = first.get(ss..ss + hsize)?;
    let mut zeroed = hdr.to_vec();
    zeroed.get_mut(16..20)?.fill(0);
    if crc32(&zeroed) != le_u32(hdr, 16)? {
        return None;
    }
    // MyLBA must be 1: a header that says otherwise was found with the wrong sector size (or is the
    // backup header copied to the front).
    if le_u64(hdr, 24)? != 1 {
        return None;
    }
    let entries_lba = le_u64(hdr, 72)?;
    let count = le_u32(hdr, 80)?;
    let esize = le_u32(hdr, 84)?;
    let entries_crc = le_u32(hdr, 88)?;
    if count > GPT_MAX_ENTRIES || esize < 128 || esize % 8 != 0 || esize > GPT_MAX_ENTRY_SIZE {
        return None;
    }
    // The array cannot start inside the MBR or the header.
    if entries_lba < 2 {
        return None;
    }
    let esize = esize as usize;
    let start = usize::try_from(entries_lba.checked_mul(ss as u64)?).ok()?;
    let total = count as usize * esize; // at most 1024 * 4096: no overflow
    let array: &[u8] = match first.get(start..start.checked_add(total)?) {
        Some(a) => {
            if crc32(a) != entries_crc {
                return None;
            }
            a
        }
        // Only part of the array was given: list the whole entries that fit (see `parse`).
        None => {
            let rest = first.get(start..).unwrap_or(&[]);
            &rest[..rest.len() - rest.len() % esize]
        }
    };
    let mut partitions = Vec::new();
    for (i, e) in array.chunks_exact(esize).enumerate() {
        let type_bytes = e.get(..16)?;
        if type_bytes.iter().all(|&b| b == 0) {
            continue;
        }
        let type_id = guid(type_bytes)?;
        let first_lba = le_u64(e, 32)?;
        let last_lba = le_u64(e, 40)?;
        let attrs = le_u64(e, 48)?;
        let units: Vec<u16> = e
            .get(56..128)?
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        let name = char::decode_utf16(units)
            .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect::<String>();
        let sectors = last_lba.checked_sub(first_lba).map_or(0, |d| d.saturating_add(1));
        partitions.push(Partition {
            number: i as u32 + 1,
            type_name: gpt_type_name(&type_id).to_string(),
            type_id,
            name,
            start: first_lba.saturating_mul(ss as u64),
            size: sectors.saturating_mul(ss as u64),
            bootable: attrs & (1 << 2) != 0,
            unique_guid: e.get(16..32).and_then(|g| g.try_into().ok()),
        });
    }
    Some(PartitionTable {
        kind: TableKind::Gpt,
        disk_guid: guid(hdr.get(56..72)?),
        sector_size: ss as u32,
        partitions,
    })
}

/// One 16-byte MBR/EBR entry: (boot flag, type, start LBA, sector count).
fn mbr_entry(sector: &[u8], i: usize) -> Option<(u8, u8, u32, u32)> {
    let e = sector.get(446 + 16 * i..446 + 16 * (i + 1))?;
    Some((e[0], e[4], le_u32(e, 8)?, le_u32(e, 12)?))
}

/// A FAT/NTFS/exFAT boot sector also ends in 0x55AA; libblkid likewise refuses to read its boot
/// code as a partition table.
fn looks_like_vbr(s: &[u8]) -> bool {
    let at = |off: usize, sig: &[u8]| s.get(off..off + sig.len()) == Some(sig);
    at(3, b"NTFS    ") || at(3, b"EXFAT   ") || at(0x36, b"FAT1") || at(0x52, b"FAT32   ")
}

fn mbr_partition(number: u32, boot: u8, t: u8, start_lba: u64, sectors: u32) -> Partition {
    Partition {
        number,
        type_id: format!("0x{t:02x}"),
        type_name: mbr_type_name(t).to_string(),
        name: String::new(),
        start: start_lba * MBR_SECTOR,
        size: u64::from(sectors) * MBR_SECTOR,
        bootable: boot == 0x80,
        unique_guid: None,
    }
}

fn parse_mbr(first: &[u8]) -> Option<PartitionTable> {
    let sector = first.get(..512)?;
    if sector[510..] != [0x55, 0xAA] || looks_like_vbr(sector) {
        return None;
    }
    let entries: Vec<_> = (0..4).map(|i| mbr_entry(sector, i)).collect::<Option<_>>()?;
    // Boot flags other than 0x00/0x80 mean this is boot code, not a table.
    if entries.iter().any(|e| e.0 != 0 && e.0 != 0x80) {
        return None;
    }
    let mut partitions = Vec::new();
    let mut extended = None;
    for (i, &(boot, t, start, sectors)) in entries.iter().enumerate() {
        if t == 0 {
            continue;
        }
        partitions.push(mbr_partition(i as u32 + 1, boot, t, u64::from(start), sectors));
        if is_extended(t) && extended.is_none() {
            extended = Some(u64::from(start));
        }
    }
    if let Some(ext) = extended {
        walk_ebrs(first, ext, &mut partitions);
    }
    Some(PartitionTable {
        kind: TableKind::Mbr,
        disk_guid: None,
        sector_size: MBR_SECTOR as u32,
        partitions,
    })
}

/// Follows the EBR chain of the extended partition starting at LBA `ext`, as long as each EBR lies
/// within `first`; logical partitions are numbered from 5 as Linux does.
fn walk_ebrs(first: &[u8], ext: u64, out: &mut Vec<Partition>) {
    let mut ebr = ext;
    let mut seen = Vec::new();
    let mut number = 5;
    while seen.len() < MAX_LOGICAL && !seen.contains(&ebr) {
        seen.push(ebr);
        let Some(sector) = usize::try_from(ebr * MBR_SECTOR)
            .ok()
            .and_then(|off| first.get(off..off.checked_add(512)?))
        else {
            return;
        };
        if sector[510..] != [0x55, 0xAA] {
            return;
        }
        let (Some(data), Some(link)) = (mbr_entry(sector, 0), mbr_entry(sector, 1)) else {
            return;
        };
        let (boot, t, rel, sectors) = data;
        if t != 0 && sectors != 0 {
            out.push(mbr_partition(number, boot, t, ebr + u64::from(rel), sectors));
            number += 1;
        }
        // The link's start is relative to the extended partition, not to this EBR.
        let (_, lt, lrel, _) = link;
        if !is_extended(lt) || lrel == 0 {
            return;
        }
        ebr = ext + u64::from(lrel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const MIB: usize = 1 << 20;

    fn put_u32(b: &mut [u8], off: usize, v: u32) {
        b[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn put_u64(b: &mut [u8], off: usize, v: u64) {
        b[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// On-disk bytes of a canonical GUID string (first three fields little-endian).
    fn guid_bytes(s: &str) -> [u8; 16] {
        let hex: Vec<u8> = s
            .split('-')
            .flat_map(|p| {
                (0..p.len()).step_by(2).map(|i| u8::from_str_radix(&p[i..i + 2], 16).unwrap())
            })
            .collect();
        let mut b = [0u8; 16];
        b.copy_from_slice(&hex);
        b[..4].reverse();
        b[4..6].reverse();
        b[6..8].reverse();
        b
    }

    fn protective_mbr(img: &mut [u8]) {
        img[446 + 4] = 0xee;
        put_u32(img, 446 + 8, 1);
        put_u32(img, 446 + 12, u32::MAX);
        img[510] = 0x55;
        img[511] = 0xaa;
    }

    /// A hand-made GPT with sector size `ss`: entries at LBA 2, 128 slots of 128 bytes.
    /// `parts` are (slot, type GUID, first LBA, last LBA, attributes, name).
    fn build_gpt(ss: usize, len: usize, parts: &[(usize, &str, u64, u64, u64, &str)]) -> Vec<u8> {
        let mut img = vec![0u8; len];
        protective_mbr(&mut img);
        let ent = 2 * ss;
        for &(slot, ty, first, last, attrs, name) in parts {
            let e = ent + slot * 128;
            img[e..e + 16].copy_from_slice(&guid_bytes(ty));
            img[e + 16..e + 32]
                .copy_from_slice(&guid_bytes("11111111-2222-3333-4444-555555555555"));
            put_u64(&mut img, e + 32, first);
            put_u64(&mut img, e + 40, last);
            put_u64(&mut img, e + 48, attrs);
            for (i, u) in name.encode_utf16().enumerate() {
                img[e + 56 + 2 * i..e + 58 + 2 * i].copy_from_slice(&u.to_le_bytes());
            }
        }
        let entries_crc = crc32(&img[ent..ent + 128 * 128]);
        let h = ss;
        img[h..h + 8].copy_from_slice(b"EFI PART");
        put_u32(&mut img, h + 8, 0x0001_0000);
        put_u32(&mut img, h + 12, 92);
        put_u64(&mut img, h + 24, 1);
        put_u64(&mut img, h + 32, 999_999);
        put_u64(&mut img, h + 40, 34);
        put_u64(&mut img, h + 48, 999_000);
        img[h + 56..h + 72].copy_from_slice(&guid_bytes("01234567-89AB-CDEF-0123-456789ABCDEF"));
        put_u64(&mut img, h + 72, 2);
        put_u32(&mut img, h + 80, 128);
        put_u32(&mut img, h + 84, 128);
        put_u32(&mut img, h + 88, entries_crc);
        let crc = crc32(&img[h..h + 92]);
        put_u32(&mut img, h + 16, crc);
        img
    }

    const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
    const LINUX: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

    #[test]
    fn hand_made_gpt_512() {
        let img = build_gpt(
            512,
            64 * 1024,
            &[(0, ESP, 2048, 4095, 0, "EFI"), (2, LINUX, 4096, 8191, 4, "rootfs ✓")],
        );
        let t = parse(&img);
        assert_eq!(t.kind, TableKind::Gpt);
        assert_eq!(t.sector_size, 512);
        assert_eq!(t.disk_guid.as_deref(), Some("01234567-89AB-CDEF-0123-456789ABCDEF"));
        assert_eq!(t.partitions.len(), 2);
        let p = &t.partitions[0];
        assert_eq!((p.number, p.start, p.size), (1, MIB as u64, MIB as u64));
        assert_eq!(
            (p.type_id.as_str(), p.type_name.as_str(), p.name.as_str()),
            (ESP, "EFI System", "EFI")
        );
        assert!(!p.bootable);
        let p = &t.partitions[1];
        assert_eq!((p.number, p.start, p.size), (3, 2 * MIB as u64, 2 * MIB as u64));
        assert_eq!((p.type_name.as_str(), p.name.as_str()), ("Linux filesystem", "rootfs ✓"));
        assert!(p.bootable);
        let shown = t.to_string();
        assert!(
            shown
                .starts_with("GPT, disk GUID 01234567-89AB-CDEF-0123-456789ABCDEF, 2 partitions\n")
        );
        assert!(shown.contains("1.0 MiB  EFI System        EFI"), "{shown}");
        assert!(shown.contains("Linux filesystem  rootfs ✓"), "{shown}");
    }

    #[test]
    fn hand_made_gpt_4096() {
        let img = build_gpt(4096, 600 * 1024, &[(0, LINUX, 256, 511, 0, "data")]);
        let t = parse(&img);
        assert_eq!(t.kind, TableKind::Gpt);
        assert_eq!(t.sector_size, 4096);
        assert_eq!((t.partitions[0].start, t.partitions[0].size), (MIB as u64, MIB as u64));
        assert!(t.to_string().starts_with("GPT (4096-byte sectors), disk GUID"));
    }

    #[test]
    fn gpt_with_bad_crcs_falls_back_to_protective_mbr() {
        let good = build_gpt(512, 64 * 1024, &[(0, LINUX, 2048, 4095, 0, "x")]);
        // A flipped byte in the header, and one in the entries array.
        for off in [512 + 40, 1024 + 60] {
            let mut img = good.clone();
            img[off] ^= 1;
            let t = parse(&img);
            assert_eq!(t.kind, TableKind::Mbr, "corrupt byte at {off}");
            assert_eq!(t.partitions.len(), 1);
            assert_eq!(t.partitions[0].type_id, "0xee");
            assert_eq!(t.partitions[0].type_name, "GPT protective");
            assert_eq!(t.to_string().lines().next(), Some("MBR, 1 partition"));
        }
    }

    #[test]
    fn gpt_entries_beyond_the_given_bytes_list_what_fits() {
        let img = build_gpt(
            512,
            64 * 1024,
            &[(0, ESP, 2048, 4095, 0, "a"), (5, LINUX, 4096, 8191, 0, "b")],
        );
        // Header plus the first four 128-byte entries and a half.
        let t = parse(&img[..1024 + 4 * 128 + 64]);
        assert_eq!(t.kind, TableKind::Gpt);
        assert_eq!(t.partitions.len(), 1);
        assert_eq!(t.partitions[0].name, "a");
        // None of the array given: still the (verified) GPT, with nothing to list.
        let t = parse(&img[..1000]);
        assert_eq!((t.kind, t.partitions.len()), (TableKind::Gpt, 0));
    }

    #[test]
    fn gpt_hostile_header_fields_are_rejected() {
        let good = build_gpt(512, 64 * 1024, &[(0, LINUX, 2048, 4095, 0, "x")]);
        let reseal = |img: &mut Vec<u8>| {
            img[512 + 16..512 + 20].fill(0);
            let crc = crc32(&img[512..512 + 92]);
            put_u32(img, 512 + 16, crc);
        };
        for (off, v) in
            [(80, 1_000_000u32), (84, 100), (84, 132), (84, u32::MAX), (12, 10), (12, 600)]
        {
            let mut img = good.clone();
            put_u32(&mut img, 512 + off, v);
            reseal(&mut img);
            assert_eq!(parse(&img).kind, TableKind::Mbr, "field {off} = {v}");
        }
        let mut img = good.clone();
        put_u64(&mut img, 512 + 72, u64::MAX / 3);
        reseal(&mut img);
        assert_eq!(parse(&img).kind, TableKind::Mbr);
        // Last LBA before first LBA: listed with size 0 rather than wrapping.
        let img = build_gpt(512, 64 * 1024, &[(0, LINUX, 4096, 10, 0, "x")]);
        assert_eq!(parse(&img).partitions[0].size, 0);
    }

    fn mbr_entry_bytes(img: &mut [u8], base: usize, i: usize, boot: u8, t: u8, start: u32, n: u32) {
        let e = base + 446 + 16 * i;
        img[e] = boot;
        img[e + 4] = t;
        put_u32(img, e + 8, start);
        put_u32(img, e + 12, n);
        img[base + 510] = 0x55;
        img[base + 511] = 0xaa;
    }

    #[test]
    fn hand_made_mbr_with_logicals() {
        let mut img = vec![0u8; MIB];
        mbr_entry_bytes(&mut img, 0, 0, 0x80, 0x0c, 2048, 2048);
        mbr_entry_bytes(&mut img, 0, 2, 0, 0x05, 100, 10_000);
        // EBR at LBA 100: a logical at +10, link to the next EBR at extended+200.
        mbr_entry_bytes(&mut img, 100 * 512, 0, 0, 0x83, 10, 50);
        mbr_entry_bytes(&mut img, 100 * 512, 1, 0, 0x05, 200, 100);
        // EBR at LBA 300: a swap, and an empty link that ends the chain.
        mbr_entry_bytes(&mut img, 300 * 512, 0, 0, 0x82, 5, 20);
        mbr_entry_bytes(&mut img, 300 * 512, 1, 0, 0x05, 0x0, 0);
        let t = parse(&img);
        assert_eq!(t.kind, TableKind::Mbr);
        let got: Vec<_> = t
            .partitions
            .iter()
            .map(|p| {
                (p.number, p.type_id.as_str(), p.type_name.as_str(), p.start, p.size, p.bootable)
            })
            .collect();
        assert_eq!(
            got,
            [
                (1, "0x0c", "FAT32 (LBA)", MIB as u64, MIB as u64, true),
                (3, "0x05", "Extended", 100 * 512, 10_000 * 512, false),
                (5, "0x83", "Linux", 110 * 512, 50 * 512, false),
                (6, "0x82", "Linux swap", 305 * 512, 20 * 512, false),
            ]
        );
        let shown = t.to_string();
        assert!(shown.starts_with("MBR, 4 partitions\n  1*"), "{shown}");
    }

    #[test]
    fn ebr_loop_is_bounded() {
        let mut img = vec![0u8; 64 * 1024];
        mbr_entry_bytes(&mut img, 0, 0, 0, 0x0f, 10, 1000);
        mbr_entry_bytes(&mut img, 10 * 512, 0, 0, 0x83, 1, 1);
        mbr_entry_bytes(&mut img, 10 * 512, 1, 0, 0x05, 20, 1);
        mbr_entry_bytes(&mut img, 30 * 512, 0, 0, 0x83, 1, 1);
        mbr_entry_bytes(&mut img, 30 * 512, 1, 0, 0x05, 20, 1); // points at itself
        assert_eq!(parse(&img).partitions.len(), 3);
    }

    #[test]
    fn not_a_table() {
        assert_eq!(parse(&[]).kind, TableKind::None);
        assert_eq!(parse(&[0u8; 4096]).kind, TableKind::None);
        assert_eq!(parse(&[0u8; 4096]).to_string(), "no partition table");
        // Boot code in the entry area (flag byte 0x33) is not a table.
        let mut img = vec![0x33u8; 512];
        img[510] = 0x55;
        img[511] = 0xaa;
        assert_eq!(parse(&img).kind, TableKind::None);
        // A FAT32 boot sector ends in 0x55AA too.
        let mut img = vec![0u8; 512];
        img[0x52..0x5a].copy_from_slice(b"FAT32   ");
        mbr_entry_bytes(&mut img, 0, 0, 0, 0x83, 1, 1);
        assert_eq!(parse(&img).kind, TableKind::None);
        // An empty DOS label is still a table.
        let mut img = vec![0u8; 512];
        img[510] = 0x55;
        img[511] = 0xaa;
        assert_eq!(parse(&img).to_string(), "MBR, 0 partitions");
    }

    #[test]
    fn stale_gpt_behind_a_plain_mbr_is_ignored() {
        let mut img = build_gpt(512, 64 * 1024, &[(0, LINUX, 2048, 4095, 0, "x")]);
        img[446..510].fill(0);
        mbr_entry_bytes(&mut img, 0, 0, 0, 0x83, 2048, 2048);
        let t = parse(&img);
        assert_eq!(t.kind, TableKind::Mbr);
        assert_eq!(t.partitions[0].type_name, "Linux");
        // And a GPT with no MBR signature at all is still read.
        img[510] = 0;
        assert_eq!(parse(&img).kind, TableKind::Gpt);
    }

    #[test]
    fn garbage_and_truncation_never_panic() {
        // xorshift: deterministic noise without a dependency.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut noise = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        };
        for _ in 0..200 {
            let mut img = noise(8192);
            let _ = parse(&img).to_string();
            // Noise behind valid signatures, to get deeper into both parsers.
            img[510] = 0x55;
            img[511] = 0xaa;
            img[512..520].copy_from_slice(b"EFI PART");
            let _ = parse(&img).to_string();
        }
        let good = build_gpt(
            512,
            64 * 1024,
            &[(0, ESP, 2048, 4095, 0, "a"), (1, LINUX, 4096, 8191, 0, "b")],
        );
        for len in (0..good.len()).step_by(61) {
            let _ = parse(&good[..len]).to_string();
        }
        let mut img = vec![0u8; 4096];
        mbr_entry_bytes(&mut img, 0, 0, 0x80, 0x05, u32::MAX, u32::MAX);
        mbr_entry_bytes(&mut img, 0, 1, 0x80, 0x83, u32::MAX, u32::MAX);
        let t = parse(&img);
        assert_eq!(t.partitions.len(), 2);
        assert_eq!(t.partitions[1].start, u64::from(u32::MAX) * 512);
    }

    /// A sparse scratch file; removed on drop.
    struct TempImage(std::path::PathBuf);

    impl TempImage {
        fn new(tag: &str, len: u64) -> TempImage {
            let p = std::env::temp_dir().join(format!("bty-part-{tag}-{}.img", std::process::id()));
            std::fs::File::create(&p).unwrap().set_len(len).unwrap();
            TempImage(p)
        }
        fn first_mib(&self) -> Vec<u8> {
            let mut b = std::fs::read(&self.0).unwrap();
            b.truncate(MIB);
            b
        }
    }

    impl Drop for TempImage {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Runs a partitioning tool; a missing tool fails the test (`make deps` installs it).
    fn run(cmd: &str, args: &[&str], stdin: Option<&str>) {
        use std::io::Write;
        let mut c = Command::new(cmd);
        c.args(args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
        c.stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        });
        let mut child = match c.spawn() {
            Ok(ch) => ch,
            Err(e) => panic!("running {cmd} (installed by make deps: gdisk, fdisk): {e}"),
        };
        if let Some(s) = stdin {
            child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{cmd} failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn sgdisk_made_gpt() {
        let img = TempImage::new("sgdisk", 64 << 20);
        let path = img.0.to_str().unwrap();
        let args = [
            "-o",
            "-n",
            "1:2048:+1M",
            "-t",
            "1:ef00",
            "-n",
            "2:0:+2M",
            "-t",
            "2:ef02",
            "-n",
            "3:0:+1M",
            "-t",
            "3:8200",
            "-n",
            "4:0:+1M",
            "-t",
            "4:8e00",
            "-n",
            "5:0:+1M",
            "-t",
            "5:fd00",
            "-n",
            "6:0:+1M",
            "-t",
            "6:8304",
            "-n",
            "7:0:+1M",
            "-t",
            "7:8305",
            "-n",
            "8:0:+1M",
            "-t",
            "8:0700",
            "-n",
            "9:0:+1M",
            "-t",
            "9:8302",
            "-n",
            "10:0:0",
            "-t",
            "10:8300",
            "-c",
            "10:rootfs",
            "-A",
            "10:set:2",
            path,
        ];
        run("sgdisk", &args, None);
        let t = parse(&img.first_mib());
        assert_eq!(t.kind, TableKind::Gpt);
        let names: Vec<_> = t.partitions.iter().map(|p| p.type_name.as_str()).collect();
        assert_eq!(
            names,
            [
                "EFI System",
                "BIOS boot",
                "Linux swap",
                "Linux LVM",
                "Linux RAID",
                "Linux root (x86-64)",
                "Linux root (ARM64)",
                "Microsoft basic data",
                "Linux /home",
                "Linux filesystem"
            ]
        );
        let root = &t.partitions[9];
        assert_eq!((root.number, root.name.as_str(), root.bootable), (10, "rootfs", true));
        assert_eq!(t.partitions[0].start, MIB as u64);
        assert_eq!(t.partitions[0].size, MIB as u64);
        assert_eq!(t.partitions[1].start, 2 * MIB as u64);
        // The last partition runs to the end, less the backup table (33 sectors) and alignment.
        assert_eq!(root.start, 11 * MIB as u64);
        assert!(root.start + root.size <= (64 << 20) - 33 * 512);
        assert!(root.start + root.size > (63 << 20));
        let shown = t.to_string();
        eprintln!("{shown}");
        assert!(
            shown.lines().nth(10).unwrap().ends_with("Linux filesystem      rootfs"),
            "{shown}"
        );
    }

    #[test]
    fn sfdisk_made_mbr() {
        let img = TempImage::new("sfdisk", 32 << 20);
        let script = "label: dos\n,1M,c,*\n,4M,83\n,,5\n,1M,82\n,,83\n";
        run("sfdisk", &["-q", img.0.to_str().unwrap()], Some(script));
        let t = parse(&img.first_mib());
        assert_eq!(t.kind, TableKind::Mbr);
        let got: Vec<_> = t
            .partitions
            .iter()
            .map(|p| (p.number, p.type_name.as_str(), p.start, p.size, p.bootable))
            .collect();
        let m = MIB as u64;
        assert_eq!(got[0], (1, "FAT32 (LBA)", m, m, true));
        assert_eq!(got[1], (2, "Linux", 2 * m, 4 * m, false));
        assert_eq!(got[2], (3, "Extended", 6 * m, 26 * m, false));
        // The EBRs lie beyond the first MiB: only the container is listed from that much...
        assert_eq!(got.len(), 3, "{t}");
        // ...and the logicals appear once the bytes given reach them.
        let whole = std::fs::read(&img.0).unwrap();
        let t = parse(&whole);
        let got: Vec<_> =
            t.partitions.iter().map(|p| (p.number, p.type_id.as_str(), p.start, p.size)).collect();
        assert_eq!(got.len(), 5, "{t}");
        assert_eq!(got[3].0, 5);
        assert_eq!(got[3].1, "0x82");
        assert_eq!(got[4].0, 6);
        assert_eq!(got[4].1, "0x83");
        assert!(got[3].2 > 6 * m && got[3].3 == m);
        assert!(got[4].2 > got[3].2 + m && got[4].2 + got[4].3 <= 32 * m);
    }
}
