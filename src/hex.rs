//! Hex encoding for digests, secrets and cookie signatures.

/// Lower-case hex of bytes.
pub fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of a hex string (either case); None for odd length or a non-hex digit.
pub fn decode(s: &str) -> Option<Vec<u8>> {
    // Checked up front: from_str_radix would take a leading '+' as a sign.
    if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_bad_input() {
        assert_eq!(encode(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(decode("00ABff"), Some(vec![0, 0xab, 0xff]));
        for bad in ["0", "zz", "+1", "0g", "é0"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
        assert_eq!(decode(""), Some(vec![]));
    }
}
