//! The PXE offer memory, beside the PXE policy in pxe.rs: which offer each MAC was last logged
//! for and when, so that a firmware in a retry loop gets one `pxe.offered` event for the same
//! boot, not one per try. Kept in memory only: after a restart the first offer is logged again.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A machine offered the same boot again within this long gets no new `pxe.offered` event:
/// firmware in a retry loop would otherwise fill the event log, and every such event costs a
/// write transaction on the PXE path.
const OFFER_REPEAT: Duration = Duration::from_secs(10);
/// MACs remembered for that; beyond it the stale ones are dropped (and if none is, all: a few
/// repeats get logged). About 40 bytes each.
const OFFERS_KEPT: usize = 1 << 16;

/// The last `pxe.offered` event logged per MAC (its reason and when), to log a repeat within
/// `OFFER_REPEAT` once.
#[derive(Default)]
pub struct Offers {
    logged: Mutex<HashMap<u64, (u64, Instant)>>,
}

impl Offers {
    /// Whether this offer to this MAC was logged within `OFFER_REPEAT`.
    pub fn lately(&self, mac: &str, reason: &str) -> bool {
        let (m, r) = key(mac, reason);
        self.lock().get(&m).is_some_and(|(seen, at)| *seen == r && at.elapsed() < OFFER_REPEAT)
    }

    /// Remembers that this offer to this MAC was just logged.
    pub fn logged(&self, mac: &str, reason: &str) {
        let mut offers = self.lock();
        if offers.len() >= OFFERS_KEPT {
            offers.retain(|_, (_, at)| at.elapsed() < OFFER_REPEAT);
            if offers.len() >= OFFERS_KEPT {
                offers.clear();
            }
        }
        let (m, r) = key(mac, reason);
        offers.insert(m, (r, Instant::now()));
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, (u64, Instant)>> {
        // A panic while holding the lock leaves a map that is still a valid memory of offers.
        self.logged.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The key and value of the memory: a MAC and an offer's reason, hashed (a collision can only
/// drop a repeat that would have been logged).
fn key(mac: &str, reason: &str) -> (u64, u64) {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let h = BuildHasherDefault::<DefaultHasher>::default();
    (h.hash_one(mac), h.hash_one(reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logged_offer_is_remembered_per_mac_and_reason() {
        let o = Offers::default();
        assert!(!o.lately("aa:bb:cc:dd:ee:01", "exit"));
        o.logged("aa:bb:cc:dd:ee:01", "exit");
        assert!(o.lately("aa:bb:cc:dd:ee:01", "exit"));
        assert!(!o.lately("aa:bb:cc:dd:ee:01", "disk"), "another offer is news");
        assert!(!o.lately("aa:bb:cc:dd:ee:02", "exit"), "another machine is news");
        o.logged("aa:bb:cc:dd:ee:01", "disk");
        assert!(!o.lately("aa:bb:cc:dd:ee:01", "exit"), "only the last offer is remembered");
    }

    #[test]
    fn a_full_memory_of_fresh_offers_starts_over() {
        let o = Offers::default();
        for i in 0..OFFERS_KEPT {
            o.logged(&i.to_string(), "exit");
        }
        assert!(o.lately("0", "exit"));
        o.logged("new", "exit");
        assert!(o.lately("new", "exit"));
        assert!(!o.lately("0", "exit"), "none was stale, so all were dropped");
        assert_eq!(o.lock().len(), 1);
    }
}
