//! Growing an exFAT file system in place, keeping every file (Microsoft's exFAT specification,
//! the parts a grow needs: the boot region, the FAT, the allocation bitmap, the root directory).
//!
//! exFAT cannot simply be made longer: the FAT and the allocation bitmap are sized for the
//! cluster count when the file system is made. So the grown file system gets a new FAT, a new
//! bitmap and a new cluster heap, all placed past the end of the old file system, and every
//! allocated cluster is copied to the same cluster number in the new heap. Cluster numbers do
//! not change, so no directory entry and no FAT chain needs rewriting, except the bitmap's own
//! entry. The old file system stays whole until the last write, the boot region, which
//! switches to the new one; an interruption before it leaves the old file system readable.
//! The first old-size bytes of the partition are given up for this (32 MiB on a stick of
//! gigabytes).

use crate::error::Result;

pub const SECTOR: u64 = 512;
/// The boot region: main boot sector, 8 extended boot sectors, OEM parameters, reserved,
/// checksum; then its backup.
const BOOT_SECTORS: usize = 12;
/// Alignment of the FAT and the heap in the grown file system (as mkfs.exfat aligns them).
const ALIGN: u64 = 2048;
/// The largest cluster count exFAT allows.
const MAX_CLUSTERS: u64 = 0xffff_fff5;
const END_OF_CHAIN: u32 = 0xffff_ffff;

/// The fields of the main boot sector the grow reads and writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Boot {
    pub volume_sectors: u64,
    pub fat_offset: u32,
    pub fat_sectors: u32,
    pub heap_offset: u32,
    pub clusters: u32,
    pub root_cluster: u32,
    pub serial: u32,
    pub sector_shift: u8,
    pub cluster_shift: u8,
    pub fats: u8,
}

impl Boot {
    pub fn cluster_bytes(&self) -> u64 {
        SECTOR << self.cluster_shift
    }

    /// Byte offset of cluster `c` (2 is the first) from the start of the file system.
    fn cluster_at(&self, c: u32) -> u64 {
        u64::from(self.heap_offset) * SECTOR + u64::from(c - 2) * self.cluster_bytes()
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// Reads the main boot sector (the first 512 bytes of the file system).
pub fn parse_boot(s: &[u8]) -> Result<Boot> {
    crate::ensure!(s.len() >= 512, "the boot sector is short");
    crate::ensure!(&s[3..11] == b"EXFAT   ", "not an exFAT file system (no EXFAT signature)");
    crate::ensure!(
        s[510] == 0x55 && s[511] == 0xaa,
        "the exFAT boot sector has no 55 AA signature"
    );
    let b = Boot {
        volume_sectors: u64_at(s, 72),
        fat_offset: u32_at(s, 80),
        fat_sectors: u32_at(s, 84),
        heap_offset: u32_at(s, 88),
        clusters: u32_at(s, 92),
        root_cluster: u32_at(s, 96),
        serial: u32_at(s, 100),
        sector_shift: s[108],
        cluster_shift: s[109],
        fats: s[110],
    };
    crate::ensure!(
        b.sector_shift == 9,
        "the file system has {}-byte sectors; only 512 is handled",
        1u64 << b.sector_shift.min(63)
    );
    crate::ensure!(b.cluster_shift <= 16, "cluster size shift {} is out of range", b.cluster_shift);
    crate::ensure!(b.fats == 1, "the file system has {} FATs; only one is handled", b.fats);
    // Byte offsets are sectors times 512 in a u64.
    crate::ensure!(
        b.volume_sectors < 1 << 55,
        "the volume length {} sectors is out of range",
        b.volume_sectors
    );
    crate::ensure!(
        u64::from(b.clusters) <= MAX_CLUSTERS,
        "the cluster count {} is more than exFAT allows",
        b.clusters
    );
    crate::ensure!(
        u64::from(b.fat_offset) >= BOOT_SECTORS as u64 * 2
            && u64::from(b.fat_offset) + u64::from(b.fat_sectors) <= u64::from(b.heap_offset)
            && u64::from(b.heap_offset) + (u64::from(b.clusters) << b.cluster_shift)
                <= b.volume_sectors
            && u64::from(b.fat_sectors) * SECTOR >= (u64::from(b.clusters) + 2) * 4,
        "the boot sector's layout is inconsistent (FAT {}+{}, heap {}, {} clusters, {} sectors)",
        b.fat_offset,
        b.fat_sectors,
        b.heap_offset,
        b.clusters,
        b.volume_sectors
    );
    crate::ensure!(
        b.root_cluster >= 2 && b.root_cluster < b.clusters + 2,
        "the root directory cluster {} is out of range",
        b.root_cluster
    );
    Ok(b)
}

/// The boot region checksum over sectors 0-10, without VolumeFlags and PercentInUse (which
/// change without the checksum being rewritten).
pub fn checksum(region: &[u8]) -> u32 {
    let mut sum = 0u32;
    for (i, &byte) in region[..11 * SECTOR as usize].iter().enumerate() {
        if i == 106 || i == 107 || i == 112 {
            continue;
        }
        sum = sum.rotate_right(1).wrapping_add(u32::from(byte));
    }
    sum
}

/// Checks the checksum sector (11) against sectors 0-10.
pub fn verify_boot_region(region: &[u8]) -> Result<()> {
    crate::ensure!(region.len() >= BOOT_SECTORS * SECTOR as usize, "the boot region is short");
    let want = checksum(region);
    let sector = &region[11 * SECTOR as usize..12 * SECTOR as usize];
    crate::ensure!(
        sector.chunks(4).all(|c| u32_at(c, 0) == want),
        "the exFAT boot region's checksum does not match (a damaged file system)"
    );
    Ok(())
}

/// Where the grown file system's structures go, in sectors from the start of the partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub volume_sectors: u64,
    pub fat_offset: u64,
    pub fat_sectors: u64,
    pub heap_offset: u64,
    pub clusters: u64,
}

fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

/// The grown layout for a volume of `volume_sectors`: the FAT starts past the old file system
/// (so writing it touches nothing the old one uses), sized for every cluster the rest holds.
pub fn layout(old: &Boot, volume_sectors: u64) -> Result<Layout> {
    let fat_offset = round_up(old.volume_sectors, ALIGN);
    let spc = 1u64 << old.cluster_shift;
    crate::ensure!(
        volume_sectors > fat_offset + 2 * ALIGN,
        "the partition ({volume_sectors} sectors) leaves no room past the old file system ({} sectors)",
        old.volume_sectors
    );
    // An upper bound of the cluster count gives a FAT large enough; the heap then starts
    // after it and holds at most that many clusters.
    let bound = ((volume_sectors - fat_offset) / spc).min(MAX_CLUSTERS);
    let fat_sectors = round_up((bound + 2) * 4, SECTOR) / SECTOR;
    let heap_offset = round_up(fat_offset + fat_sectors, ALIGN);
    crate::ensure!(
        heap_offset < volume_sectors,
        "the partition ({volume_sectors} sectors) is too small for the grown FAT"
    );
    let clusters = ((volume_sectors - heap_offset) / spc).min(MAX_CLUSTERS);
    crate::ensure!(
        clusters > u64::from(old.clusters) * 2,
        "the partition would hold {clusters} clusters, not much more than the {} it has",
        old.clusters
    );
    crate::ensure!(
        heap_offset <= u64::from(u32::MAX) && fat_sectors <= u64::from(u32::MAX),
        "the grown layout does not fit exFAT's 32-bit fields"
    );
    Ok(Layout { volume_sectors, fat_offset, fat_sectors, heap_offset, clusters })
}

/// What the grow writes, in the order it must be written (offsets in bytes from the start of
/// the partition): zeros over the new FAT, then the new FAT's used head, bitmap and clusters,
/// then the backup boot region, then the main boot region.
pub struct Plan {
    pub layout: Layout,
    pub zero: (u64, u64),
    pub writes: Vec<(u64, Vec<u8>)>,
    pub backup_boot: (u64, Vec<u8>),
    pub main_boot: (u64, Vec<u8>),
    /// Clusters copied, bytes they hold.
    pub copied: (u64, u64),
}

/// Follows a FAT chain from `first`, at most `limit` clusters.
fn chain(fat: &[u8], first: u32, limit: u32) -> Result<Vec<u32>> {
    let mut out = vec![first];
    let mut c = first;
    loop {
        let at = c as usize * 4;
        crate::ensure!(at + 4 <= fat.len(), "the FAT chain leaves the FAT at cluster {c}");
        let next = u32_at(fat, at);
        if next >= 0xffff_fff8 || next == 0 {
            return Ok(out);
        }
        crate::ensure!(
            next >= 2 && next < limit + 2,
            "the FAT chain points at cluster {next}, out of range"
        );
        crate::ensure!(out.len() <= limit as usize, "the FAT chain from cluster {first} loops");
        out.push(next);
        c = next;
    }
}

/// Plans the grow of the file system whose every byte is `old` (the old volume, read whole)
/// into a volume of `volume_sectors`, with the new serial `serial`.
pub fn plan(old: &[u8], volume_sectors: u64, serial: u32) -> Result<Plan> {
    let boot = parse_boot(old)?;
    crate::ensure!(
        old.len() as u64 >= boot.volume_sectors * SECTOR,
        "read {} bytes of a {}-sector file system",
        old.len(),
        boot.volume_sectors
    );
    verify_boot_region(old)?;
    let new = layout(&boot, volume_sectors)?;
    let cb = boot.cluster_bytes();
    let fat_start = boot.fat_offset as usize * SECTOR as usize;
    let fat = &old[fat_start..fat_start + boot.fat_sectors as usize * SECTOR as usize];

    // The root directory, and in it the allocation bitmap's entry.
    let root = chain(fat, boot.root_cluster, boot.clusters)?;
    let mut bitmap_entry = None;
    'dir: for &c in &root {
        let at = boot.cluster_at(c) as usize;
        for e in (0..cb as usize).step_by(32) {
            match old[at + e] {
                0x00 => break 'dir,
                0x81 if old[at + e + 1] & 1 == 0 => {
                    bitmap_entry = Some((c, e));
                    break 'dir;
                }
                _ => {}
            }
        }
    }
    let (entry_cluster, entry_offset) = bitmap_entry.ok_or_else(|| {
        crate::error::Error::msg("the root directory has no allocation bitmap entry")
    })?;
    let entry_at = boot.cluster_at(entry_cluster) as usize + entry_offset;
    let bitmap_first = u32_at(old, entry_at + 20);
    let bitmap_len = u64_at(old, entry_at + 24);
    crate::ensure!(
        bitmap_len == u64::from(boot.clusters).div_ceil(8),
        "the allocation bitmap is {bitmap_len} bytes for {} clusters",
        boot.clusters
    );
    crate::ensure!(
        bitmap_first >= 2 && bitmap_first < boot.clusters + 2,
        "the allocation bitmap starts at cluster {bitmap_first}, out of range"
    );
    let old_bitmap_clusters = bitmap_len.div_ceil(cb) as u32;
    let old_bitmap: Vec<u32> = if u32_at(fat, bitmap_first as usize * 4) == 0 {
        (bitmap_first..bitmap_first + old_bitmap_clusters).collect()
    } else {
        chain(fat, bitmap_first, boot.clusters)?
    };
    crate::ensure!(
        old_bitmap.len() as u32 == old_bitmap_clusters
            && old_bitmap.iter().all(|&c| c < boot.clusters + 2),
        "the allocation bitmap's clusters do not match its size"
    );
    let bits_at = boot.cluster_at(bitmap_first) as usize;
    let allocated = |c: u32| -> bool {
        let i = (c - 2) as usize;
        old[bits_at + i / 8] & (1 << (i % 8)) != 0
    };

    // The new bitmap: the old clusters' bits, minus the old bitmap, plus the new bitmap, which
    // takes the first clusters past the old range, contiguous (Linux reads it as one run).
    let new_bitmap_len = new.clusters.div_ceil(8);
    let new_bitmap_clusters = new_bitmap_len.div_ceil(cb) as u32;
    let new_bitmap_first = boot.clusters + 2;
    let mut bitmap = vec![0u8; (u64::from(new_bitmap_clusters) * cb) as usize];
    let mut fat_head = vec![0u8; (u64::from(new_bitmap_first + new_bitmap_clusters) * 4) as usize];
    fat_head[..4].copy_from_slice(&0xffff_fff8u32.to_le_bytes());
    fat_head[4..8].copy_from_slice(&END_OF_CHAIN.to_le_bytes());
    fat_head[8..(boot.clusters as usize + 2) * 4]
        .copy_from_slice(&fat[8..(boot.clusters as usize + 2) * 4]);
    let mut writes = Vec::new();
    let mut copied = (0u64, 0u64);
    let heap = new.heap_offset * SECTOR;
    let new_cluster_at = |c: u32| heap + u64::from(c - 2) * cb;
    for c in 2..boot.clusters + 2 {
        if !allocated(c) {
            continue;
        }
        if old_bitmap.contains(&c) {
            fat_head[c as usize * 4..c as usize * 4 + 4].fill(0);
            continue;
        }
        let i = (c - 2) as usize;
        bitmap[i / 8] |= 1 << (i % 8);
        let at = boot.cluster_at(c) as usize;
        let mut data = old[at..at + cb as usize].to_vec();
        if c == entry_cluster {
            data[entry_offset + 20..entry_offset + 24]
                .copy_from_slice(&new_bitmap_first.to_le_bytes());
            data[entry_offset + 24..entry_offset + 32]
                .copy_from_slice(&new_bitmap_len.to_le_bytes());
        }
        copied = (copied.0 + 1, copied.1 + cb);
        writes.push((new_cluster_at(c), data));
    }
    for k in 0..new_bitmap_clusters {
        let c = new_bitmap_first + k;
        let i = (c - 2) as usize;
        bitmap[i / 8] |= 1 << (i % 8);
        let next = if k + 1 == new_bitmap_clusters { END_OF_CHAIN } else { c + 1 };
        fat_head[c as usize * 4..c as usize * 4 + 4].copy_from_slice(&next.to_le_bytes());
    }
    let in_use: u64 = bitmap.iter().map(|b| u64::from(b.count_ones())).sum();
    writes.insert(0, (new_cluster_at(new_bitmap_first), bitmap));
    writes.insert(0, (new.fat_offset * SECTOR, fat_head));

    // The boot region: the old one (boot code, extended sectors, OEM parameters) with the new
    // geometry and serial, a clean volume, and its checksum.
    let mut region = old[..BOOT_SECTORS * SECTOR as usize].to_vec();
    region[72..80].copy_from_slice(&new.volume_sectors.to_le_bytes());
    region[80..84].copy_from_slice(&(new.fat_offset as u32).to_le_bytes());
    region[84..88].copy_from_slice(&(new.fat_sectors as u32).to_le_bytes());
    region[88..92].copy_from_slice(&(new.heap_offset as u32).to_le_bytes());
    region[92..96].copy_from_slice(&(new.clusters as u32).to_le_bytes());
    region[100..104].copy_from_slice(&serial.to_le_bytes());
    region[106..108].fill(0);
    region[112] = (in_use * 100 / new.clusters) as u8;
    let sum = checksum(&region).to_le_bytes();
    for c in region[11 * SECTOR as usize..].chunks_mut(4) {
        c.copy_from_slice(&sum);
    }
    Ok(Plan {
        zero: (new.fat_offset * SECTOR, new.fat_sectors * SECTOR),
        layout: new,
        writes,
        backup_boot: (BOOT_SECTORS as u64 * SECTOR, region.clone()),
        main_boot: (0, region),
        copied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot(volume: u64, clusters: u32) -> Boot {
        Boot {
            volume_sectors: volume,
            fat_offset: 2048,
            fat_sectors: 64,
            heap_offset: 4096,
            clusters,
            root_cluster: 4,
            serial: 0xb7e1_0001,
            sector_shift: 9,
            cluster_shift: 6,
            fats: 1,
        }
    }

    /// A small exFAT as mkfs.exfat lays one out: 2 MiB, 4 KiB clusters, the FAT at sector 32,
    /// the heap at 64; the bitmap in cluster 2, the up-case table in 3, the root directory in
    /// 4; and one file of two clusters (5, 6) whose bytes are `file`.
    fn small_exfat(file: &[u8; 8192]) -> Vec<u8> {
        let mut v = vec![0u8; 2 << 20];
        v[0..3].copy_from_slice(&[0xeb, 0x76, 0x90]);
        v[3..11].copy_from_slice(b"EXFAT   ");
        v[72..80].copy_from_slice(&4096u64.to_le_bytes());
        for (at, x) in [(80, 32u32), (84, 8), (88, 64), (92, 504), (96, 4), (100, 0xb7e1_0001)] {
            v[at..at + 4].copy_from_slice(&x.to_le_bytes());
        }
        v[104..106].copy_from_slice(&0x0100u16.to_le_bytes());
        (v[108], v[109], v[110]) = (9, 3, 1);
        v[510..512].copy_from_slice(&[0x55, 0xaa]);
        let sum = checksum(&v).to_le_bytes();
        for c in v[11 * 512..12 * 512].chunks_mut(4) {
            c.copy_from_slice(&sum);
        }
        v.copy_within(0..12 * 512, 12 * 512);
        let fat = 32 * 512;
        let set = |v: &mut Vec<u8>, c: usize, x: u32| {
            v[fat + c * 4..fat + c * 4 + 4].copy_from_slice(&x.to_le_bytes())
        };
        for (c, x) in [
            (0, 0xffff_fff8),
            (1, END_OF_CHAIN),
            (2, END_OF_CHAIN),
            (3, END_OF_CHAIN),
            (4, END_OF_CHAIN),
            (5, 6),
            (6, END_OF_CHAIN),
        ] {
            set(&mut v, c, x);
        }
        let cluster = |c: usize| 64 * 512 + (c - 2) * 4096;
        v[cluster(2)] = 0b1_1111; // clusters 2-6 in use
        let root = cluster(4);
        v[root] = 0x83; // volume label, empty
        v[root + 32] = 0x81;
        v[root + 32 + 20..root + 32 + 24].copy_from_slice(&2u32.to_le_bytes());
        v[root + 32 + 24..root + 32 + 32].copy_from_slice(&63u64.to_le_bytes());
        v[root + 64] = 0x82;
        v[root + 64 + 20..root + 64 + 24].copy_from_slice(&3u32.to_le_bytes());
        v[cluster(5)..cluster(5) + 8192].copy_from_slice(file);
        v
    }

    /// The bytes the plan puts at `at` (partition offset), if a write covers them.
    fn planned(p: &Plan, at: u64, len: usize) -> Option<Vec<u8>> {
        p.writes.iter().find_map(|(o, d)| {
            (at >= *o && at + len as u64 <= o + d.len() as u64)
                .then(|| d[(at - o) as usize..(at - o) as usize + len].to_vec())
        })
    }

    #[test]
    fn the_plan_keeps_cluster_numbers_and_moves_the_bitmap_past_the_old_clusters() {
        let mut file = [0u8; 8192];
        for (i, b) in file.iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        let old = small_exfat(&file);
        let p = plan(&old, 200_000, 0x1234_5678).unwrap();
        let l = &p.layout;
        assert_eq!(l.fat_offset, 4096, "the new FAT starts past the old 2 MiB");
        let heap = l.heap_offset * SECTOR;
        let at = |c: u64| heap + (c - 2) * 4096;
        // The file's two clusters keep their numbers, and their bytes.
        assert_eq!(planned(&p, at(5), 4096).unwrap(), file[..4096]);
        assert_eq!(planned(&p, at(6), 4096).unwrap(), file[4096..]);
        // The root directory's bitmap entry names the new bitmap: cluster 506 (past the old
        // 504 clusters), sized for the new count; the old bitmap cluster is free.
        let root = planned(&p, at(4), 4096).unwrap();
        assert_eq!(u32::from_le_bytes(root[52..56].try_into().unwrap()), 506);
        assert_eq!(u64::from_le_bytes(root[56..64].try_into().unwrap()), l.clusters.div_ceil(8));
        let bitmap = planned(&p, at(506), 1).unwrap();
        assert_eq!(bitmap[0] & 1, 0, "the old bitmap's cluster 2 is free");
        assert_eq!(bitmap[0] & 0b1_1110, 0b1_1110, "clusters 3-6 stay in use");
        let fat = planned(&p, l.fat_offset * SECTOR, 7 * 4).unwrap();
        assert_eq!(u32::from_le_bytes(fat[8..12].try_into().unwrap()), 0, "cluster 2 freed");
        assert_eq!(u32::from_le_bytes(fat[20..24].try_into().unwrap()), 6, "the file's chain");
        // The boot region: new geometry and serial, a valid checksum, backup equal to main.
        let boot = parse_boot(&p.main_boot.1).unwrap();
        assert_eq!(
            (boot.serial, boot.volume_sectors, boot.clusters as u64),
            (0x1234_5678, 200_000, l.clusters)
        );
        verify_boot_region(&p.main_boot.1).unwrap();
        assert_eq!(p.main_boot.1, p.backup_boot.1);
        assert_eq!(p.backup_boot.0, 12 * SECTOR);
        // Nothing but the boot region is written inside the old file system.
        assert!(p.writes.iter().all(|(o, _)| *o >= old.len() as u64));
        assert!(p.zero.0 >= old.len() as u64);
    }

    /// Hostile sticks: mutated metadata (with the checksum made right again half the time, to
    /// get past it) is refused or planned, never a panic or an out-of-range index.
    #[test]
    fn mutated_file_systems_never_panic_the_plan() {
        use crate::fuzz::{Rng, iterations, mutate, seed};
        let base = small_exfat(&[0x5a; 8192]);
        let meta = 64 * 512 + 5 * 4096;
        let mut rng = Rng::new(seed());
        for _ in 0..iterations(3000) {
            let mut v = base.clone();
            let m = mutate(&mut rng, &v[..meta], meta);
            v[..m.len().min(meta)].copy_from_slice(&m[..m.len().min(meta)]);
            if rng.chance(2) {
                let sum = checksum(&v).to_le_bytes();
                for c in v[11 * 512..12 * 512].chunks_mut(4) {
                    c.copy_from_slice(&sum);
                }
            }
            let _ = plan(&v, 1 + rng.below(1 << 22) as u64, 7);
        }
    }

    #[test]
    fn the_grown_layout_starts_past_the_old_file_system_and_its_fat_fits() {
        let old = boot(65536, 960);
        // A 2 GiB stick less the 15 MiB before the partition.
        let l = layout(&old, (2u64 << 30) / SECTOR - 30988).unwrap();
        assert_eq!(l.fat_offset, 65536);
        assert!(l.fat_offset + l.fat_sectors <= l.heap_offset);
        assert!(l.fat_sectors * SECTOR >= (l.clusters + 2) * 4);
        assert!(l.heap_offset + l.clusters * 64 <= l.volume_sectors);
        assert_eq!(l.heap_offset % ALIGN, 0);
        // All but the 15 MiB before the partition, the 32 MiB given up and the new FAT's 1 MiB
        // (aligned) is cluster heap.
        assert!(l.clusters * 64 * SECTOR >= (2u64 << 30) - (49 << 20), "{l:?}");
        // A 2 TiB stick: the FAT still fits its 32-bit fields.
        let big = layout(&old, u64::from(u32::MAX)).unwrap();
        assert!(big.fat_sectors * SECTOR >= (big.clusters + 2) * 4);
    }

    #[test]
    fn too_little_room_is_refused_with_the_sizes() {
        let old = boot(65536, 960);
        let e = layout(&old, 65536 + 4096).unwrap_err().to_string();
        assert!(e.contains("no room past the old file system"), "{e}");
    }

    #[test]
    fn the_checksum_skips_the_flags_and_percent_in_use() {
        let mut region = vec![0u8; BOOT_SECTORS * SECTOR as usize];
        region[3..11].copy_from_slice(b"EXFAT   ");
        let a = checksum(&region);
        region[106] = 2;
        region[112] = 50;
        assert_eq!(checksum(&region), a);
        region[100] = 1;
        assert_ne!(checksum(&region), a);
        let sum = checksum(&region).to_le_bytes();
        for c in region[11 * SECTOR as usize..].chunks_mut(4) {
            c.copy_from_slice(&sum);
        }
        verify_boot_region(&region).unwrap();
        region[200] ^= 1;
        assert!(verify_boot_region(&region).is_err());
    }

    #[test]
    fn boot_sectors_that_are_not_exfat_or_not_handled_are_refused() {
        let mut s = vec![0u8; 512];
        assert!(parse_boot(&s).unwrap_err().to_string().contains("not an exFAT"));
        s[3..11].copy_from_slice(b"EXFAT   ");
        s[510] = 0x55;
        s[511] = 0xaa;
        s[108] = 12;
        s[110] = 1;
        assert!(parse_boot(&s).unwrap_err().to_string().contains("4096-byte sectors"));
    }
}
