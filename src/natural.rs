//! Natural order for names that carry numbers: `img-2` before `img-10`, as people count, where
//! byte order puts `img-10` first. Runs of digits compare by value; everything else by bytes.

use std::cmp::Ordering;

/// Compares `a` and `b` in natural order. Equal values written differently (`img-02`,
/// `img-2`) are ordered by length so the order stays total and stable.
pub fn cmp(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return a.len().cmp(&b.len()).then_with(|| a.cmp(b)),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(p), Some(q)) if p.is_ascii_digit() && q.is_ascii_digit() => {
                let (m, rest_x) = digits(x);
                let (n, rest_y) = digits(y);
                // Leading zeros off, then the longer run is the larger number.
                let (m, n) = (trim_zeros(m), trim_zeros(n));
                let o = m.len().cmp(&n.len()).then_with(|| m.cmp(n));
                if o != Ordering::Equal {
                    return o;
                }
                (x, y) = (rest_x, rest_y);
            }
            (Some(p), Some(q)) => {
                if p != q {
                    return p.cmp(q);
                }
                (x, y) = (&x[1..], &y[1..]);
            }
        }
    }
}

fn digits(s: &[u8]) -> (&[u8], &[u8]) {
    let n = s.iter().take_while(|c| c.is_ascii_digit()).count();
    s.split_at(n)
}

fn trim_zeros(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&c| c == b'0').count();
    &s[n..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_count_as_people_count() {
        let mut v =
            vec!["img-10", "img-2", "img-1", "img-100", "img-20", "a", "img-02", "b1c", "b1b"];
        v.sort_by(|a, b| cmp(a, b));
        assert_eq!(
            v,
            ["a", "b1b", "b1c", "img-1", "img-2", "img-02", "img-10", "img-20", "img-100"]
        );
    }

    #[test]
    fn long_numbers_and_plain_text() {
        assert_eq!(cmp("x99999999999999999999999", "x100000000000000000000000"), Ordering::Less);
        assert_eq!(cmp("debian-12", "debian-12"), Ordering::Equal);
        assert_eq!(cmp("Zed", "abc"), Ordering::Less, "bytes outside numbers, as before");
        assert_eq!(cmp("v1.10.img", "v1.9.img"), Ordering::Greater);
    }
}
