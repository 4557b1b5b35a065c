//! A small, seeded input mutator for the parser fuzz tests (`cargo test`, stable Rust, no
//! nightly or external fuzzer). The seed set is fixed so CI runs the same inputs every time;
//! `BTY_FUZZ_ITERS` raises the count for a longer run on a developer's machine, and
//! `BTY_FUZZ_SEED` picks another sequence. A failing case prints its seed and iteration.

/// xorshift64*: tiny, deterministic, good enough to pick mutations (not for secrets).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // xorshift has one fixed point (0); any other seed walks the full period.
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }

    // Endless, so not an Iterator: `next` returning a bare u64 reads better at the call sites.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Iterations for a fuzz test: `default`, or `BTY_FUZZ_ITERS` when set.
pub fn iterations(default: usize) -> usize {
    std::env::var("BTY_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The base seed: fixed, or `BTY_FUZZ_SEED`.
pub fn seed() -> u64 {
    std::env::var("BTY_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x6274_792d_6675_7a7a)
}

/// Bytes that tend to matter to parsers: delimiters, NUL, high bytes, digits, signs.
const INTERESTING: &[u8] = b"\0\r\n\t :;=/\\.-+\"'[]{}#%0129\x7f\x80\xff";

/// One mutation of `input`: flip, insert, delete, duplicate or truncate, repeated a few times.
/// The result is never longer than `max_len`, so memory stays bounded however many rounds run.
pub fn mutate(rng: &mut Rng, input: &[u8], max_len: usize) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(8) {
        let len = out.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                out[i] = *rng.pick(INTERESTING);
            }
            2 => {
                let i = rng.below(len + 1);
                out.insert(i, *rng.pick(INTERESTING));
            }
            3 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(16)).min(len);
                out.drain(start..end);
            }
            4 if len > 0 => {
                // Repeat a slice: long runs, repeated headers, nested structures.
                let start = rng.below(len);
                let end = (start + 1 + rng.below(64)).min(len);
                let chunk: Vec<u8> = out[start..end].to_vec();
                let at = rng.below(len + 1);
                for _ in 0..=rng.below(8) {
                    out.splice(at..at, chunk.iter().copied());
                }
            }
            5 => out.truncate(rng.below(len + 1)),
            _ => {
                let i = rng.below(len + 1);
                let n = rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                out.splice(i..i, bytes);
            }
        }
        out.truncate(max_len);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_are_deterministic_and_bounded() {
        let run = || {
            let mut rng = Rng::new(7);
            (0..500).map(|_| mutate(&mut rng, b"GET / HTTP/1.1\r\n\r\n", 64)).collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        assert!(a.iter().all(|m| m.len() <= 64));
        assert!(a.iter().filter(|m| m.as_slice() != b"GET / HTTP/1.1\r\n\r\n").count() > 400);
    }
}
