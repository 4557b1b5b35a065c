//! Human-readable sizes, rates and durations for messages and progress lines.

use std::time::Duration;

/// Formats a byte count with binary units and one decimal: "512 B", "1.5 GiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    // Move up while the value would print as "1024.0": 1048575 bytes reads better as "1.0 MiB".
    while v >= 1023.95 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Formats a byte count exactly as lsblk prints a size ("256G", "1.8T", "512M", "0B"): binary
/// units with a one-letter suffix and at most one decimal, rounded half up (util-linux
/// `size_to_human_string` with `SIZE_SUFFIX_1LETTER`, arithmetic included, so that bty-web shows
/// the same strings whether a machine reported through bty or through lsblk).
pub fn lsblk_size(n: u64) -> String {
    const LETTERS: [char; 7] = ['B', 'K', 'M', 'G', 'T', 'P', 'E'];
    let mut exp = 0;
    for shift in (10..=60).step_by(10) {
        if n < 1u64 << shift {
            break;
        }
        exp = shift;
    }
    let letter = LETTERS[exp / 10];
    let mut dec = n >> exp;
    let mut frac = if exp > 0 { n & ((1u64 << exp) - 1) } else { 0 };
    if frac > 0 {
        // Thousandths, computed as util-linux does to stay clear of overflow for exabytes.
        frac = if frac >= u64::MAX / 1000 {
            (frac / 1024) * 1000 / (1u64 << (exp - 10))
        } else {
            frac * 1000 / (1u64 << exp)
        };
        frac = (frac + 50) / 100;
        if frac == 10 {
            dec += 1;
            frac = 0;
        }
    }
    if frac > 0 { format!("{dec}.{frac}{letter}") } else { format!("{dec}{letter}") }
}

/// Formats a rate in decimal megabytes per second, as dd and the benchmarks report it.
pub fn rate(bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return "- MB/s".into();
    }
    format!("{:.0} MB/s", bytes as f64 / secs / 1e6)
}

/// Formats a duration as "1h02m03s", "2m05s" or "4.2s".
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Civil date and time (year, month, day, hour, minute, second) of seconds since the Unix epoch,
/// UTC, by Howard Hinnant's days-from-civil inverse: no time crate needed.
fn civil(secs: u64) -> (i64, i64, i64, u64, u64, u64) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, rem / 3600, rem / 60 % 60, rem % 60)
}

/// Formats seconds since the Unix epoch as ISO 8601 UTC, "2026-11-23T10:48:00Z".
pub fn iso8601(secs: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// Formats seconds since the Unix epoch as an HTTP date, "Mon, 23 Nov 2026 10:48:00 GMT".
pub fn http_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (y, mo, d, h, mi, s) = civil(secs);
    let wd = DAYS[(secs / 86_400 % 7) as usize];
    let mon = MONTHS[(mo - 1) as usize];
    format!("{wd}, {d:02} {mon} {y:04} {h:02}:{mi:02}:{s:02} GMT")
}

/// Seconds since the Unix epoch now (0 if the clock is before 1970).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The current time as ISO 8601 UTC.
pub fn now_iso8601() -> String {
    iso8601(now_secs())
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_sizes_as_lsblk_does() {
        use super::lsblk_size;
        assert_eq!(lsblk_size(0), "0B");
        assert_eq!(lsblk_size(512), "512B");
        assert_eq!(lsblk_size(1023), "1023B");
        assert_eq!(lsblk_size(1024), "1K");
        assert_eq!(lsblk_size(1536), "1.5K");
        assert_eq!(lsblk_size(512 << 20), "512M");
        assert_eq!(lsblk_size(256 << 30), "256G");
        // A "2 TB" disk and a "500 GB" one, as vendors count.
        assert_eq!(lsblk_size(2_000_398_934_016), "1.8T");
        assert_eq!(lsblk_size(500_107_862_016), "465.8G");
        // 1.96 rounds up to 2; 1023.96 K to "1024K", as lsblk prints it.
        assert_eq!(lsblk_size((1 << 30) + (1 << 30) * 96 / 100), "2G");
        assert_eq!(lsblk_size(1023 * 1024 + 1000), "1024K");
        // 1.04 rounds down; the exabyte branch stays in range.
        assert_eq!(lsblk_size((1 << 20) + (1 << 20) * 4 / 100), "1M");
        assert_eq!(lsblk_size(u64::MAX), "16E");
        assert_eq!(lsblk_size((1 << 60) + (1 << 59)), "1.5E");
    }

    #[test]
    fn formats_iso8601() {
        assert_eq!(super::iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::iso8601(1_795_430_880), "2026-11-23T10:48:00Z");
    }

    use super::*;

    #[test]
    fn formats_sizes() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(2 << 30), "2.0 GiB");
    }

    #[test]
    fn formats_sizes_rounding_up_to_the_next_unit() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(1 << 20), "1.0 MiB");
        assert_eq!(bytes(511 << 20), "511.0 MiB");
        assert_eq!(bytes((1 << 20) - 1), "1.0 MiB");
        assert_eq!(bytes(2 << 30), "2.0 GiB");
        assert_eq!(bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn formats_durations() {
        assert_eq!(duration(Duration::from_millis(4200)), "4.2s");
        assert_eq!(duration(Duration::from_secs(125)), "2m05s");
        assert_eq!(duration(Duration::from_secs(3723)), "1h02m03s");
    }
}
