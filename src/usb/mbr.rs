//! The MBR partition table of the USB medium (xorriso writes one around the ISO 9660 file
//! system): reading its four entries, and the one change the grow step makes, a new size for
//! the last partition.

use crate::error::Result;

/// One primary partition entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: u8,
    /// First sector (LBA, 512-byte sectors).
    pub start: u32,
    pub sectors: u32,
}

impl Entry {
    pub fn end(&self) -> u64 {
        u64::from(self.start) + u64::from(self.sectors)
    }
}

/// Where the table starts in sector 0, and the size of an entry.
const TABLE: usize = 446;
const ENTRY: usize = 16;
/// The GPT protective partition: a disk with it is partitioned by its GPT, not by this table.
pub const GPT_PROTECTIVE: u8 = 0xee;

/// The four entries of the table in `sector0` (512 bytes).
pub fn parse(sector0: &[u8]) -> Result<[Entry; 4]> {
    crate::ensure!(sector0.len() >= 512, "the first sector is short ({} bytes)", sector0.len());
    crate::ensure!(
        sector0[510] == 0x55 && sector0[511] == 0xaa,
        "the first sector has no MBR signature (55 AA)"
    );
    let mut out = [Entry { kind: 0, start: 0, sectors: 0 }; 4];
    for (i, e) in out.iter_mut().enumerate() {
        let b = &sector0[TABLE + i * ENTRY..TABLE + (i + 1) * ENTRY];
        *e = Entry {
            kind: b[4],
            start: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            sectors: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        };
    }
    Ok(out)
}

/// Sets the size of entry `index` (0-based) in `sector0`. The end's CHS address becomes the
/// "beyond CHS" marker (as fdisk writes it for large disks): firmware and kernels use the LBA
/// fields.
pub fn set_sectors(sector0: &mut [u8], index: usize, sectors: u32) {
    let b = &mut sector0[TABLE + index * ENTRY..TABLE + (index + 1) * ENTRY];
    b[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
    b[12..16].copy_from_slice(&sectors.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(u8, u32, u32)]) -> Vec<u8> {
        let mut s = vec![0u8; 512];
        for (i, (kind, start, sectors)) in entries.iter().enumerate() {
            let b = &mut s[TABLE + i * ENTRY..TABLE + (i + 1) * ENTRY];
            b[4] = *kind;
            b[8..12].copy_from_slice(&start.to_le_bytes());
            b[12..16].copy_from_slice(&sectors.to_le_bytes());
        }
        s[510] = 0x55;
        s[511] = 0xaa;
        s
    }

    #[test]
    fn reads_and_resizes_the_last_entry() {
        let mut s = table(&[(0x83, 0, 29196), (0xef, 29196, 1792), (0x07, 30988, 65536)]);
        let e = parse(&s).unwrap();
        assert_eq!(e[2], Entry { kind: 7, start: 30988, sectors: 65536 });
        assert_eq!(e[3].kind, 0);
        set_sectors(&mut s, 2, 4_000_000);
        let e2 = parse(&s).unwrap();
        assert_eq!(e2[2].sectors, 4_000_000);
        assert_eq!(e2[2].start, 30988);
        assert_eq!(&e2[..2], &e[..2]);
    }

    #[test]
    fn refuses_a_sector_without_the_signature() {
        let mut s = table(&[(0x83, 0, 1)]);
        s[511] = 0;
        assert!(parse(&s).unwrap_err().to_string().contains("55 AA"));
        assert!(parse(&s[..100]).is_err());
    }
}
