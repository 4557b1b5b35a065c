//! Live updates. `GET /events/machines` has two feeds:
//!
//! - whole (the spec's): a `machines-update` event with the whole fleet on connect and after
//!   every change;
//! - delta (`?since=V`, what the machines page uses): `machines-delta` events carrying only the
//!   rows changed since the last event the client got, each with the fleet version it brings
//!   the client to, and `machines-reset` when the client's version can no longer be brought up
//!   to date (older than the changes kept, from before a restart, or the client fell behind).
//!
//! Changes only note the MACs they touched; one publisher thread sends at most five events a
//! second, so a boot storm costs one event per tick per subscriber, and a delta event's size
//! follows the rows changed in that tick, not the fleet. A whole subscriber whose queue is
//! full (a slow client) is dropped, as its next snapshot would repeat everything; a delta one
//! is told to reset instead, since it cannot catch up from a later delta alone.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Events queued per subscriber before it counts as slow.
const QUEUE: usize = 8;
/// Coalescing interval of the publisher.
const TICK: Duration = Duration::from_millis(200);
/// Bytes of row JSON the ring of recent changes keeps for replays: a 1,000-machine storm of
/// ~400-byte rows several times over, and a bounded cost however many machines change.
const RING_BYTES: usize = 4 << 20;

/// Which events a subscriber takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feed {
    /// `/events/machines` without `since`: whole snapshots, and the jobs' events as always.
    Whole,
    /// `/events/jobs`: the jobs' events only.
    Jobs,
    /// `/events/machines?since=V`: deltas and resets.
    Delta,
}

struct Sub {
    tx: SyncSender<Arc<str>>,
    feed: Feed,
    /// A delta subscriber whose queue was full: it owes a reset, sent when there is room.
    behind: bool,
}

/// One machine's change at one version; `row` None is a removal.
struct Change {
    version: u64,
    mac: String,
    row: Option<Arc<str>>,
}

impl Change {
    /// What it counts against the ring's byte budget.
    fn bytes(&self) -> usize {
        self.mac.len() + self.row.as_ref().map_or(0, |r| r.len())
    }
}

struct State {
    subs: Vec<Sub>,
    /// The fleet version: bumped once per published tick.
    version: u64,
    /// The oldest `since` the ring can bring up to date: every change after it is in `ring`.
    floor: u64,
    ring: VecDeque<Change>,
    ring_bytes: usize,
}

/// The subscribers, the MACs changed since the last tick, and the recent changes.
pub struct Hub {
    state: Mutex<State>,
    dirty: Mutex<BTreeSet<String>>,
}

impl Default for Hub {
    /// Versions start at the start time in milliseconds: they then only grow across restarts
    /// too (at most five a second, slower than the clock), so a version a client got from an
    /// earlier run is below this run's floor and gets a reset, never a wrong replay.
    fn default() -> Hub {
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Hub::starting_at(start)
    }
}

impl Hub {
    fn starting_at(version: u64) -> Hub {
        Hub {
            state: Mutex::new(State {
                subs: Vec::new(),
                version,
                floor: version,
                ring: VecDeque::new(),
                ring_bytes: 0,
            }),
            dirty: Mutex::new(BTreeSet::new()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that the machine `mac` changed (its record, its flash progress, or it went).
    pub fn changed(&self, mac: &str) {
        self.dirty.lock().unwrap_or_else(|p| p.into_inner()).insert(mac.to_string());
    }

    /// Notes that each of `macs` changed.
    pub fn changed_macs<'a>(&self, macs: impl IntoIterator<Item = &'a str>) {
        let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        dirty.extend(macs.into_iter().map(str::to_string));
    }

    /// The fleet version now. A page reads it before it reads the machines: a change published
    /// at or below it was written before that read, so the page shows it; one above it is
    /// replayed to a subscriber that gives this version as `since`.
    pub fn version(&self) -> u64 {
        self.state().version
    }

    /// A whole or jobs subscriber, which gets `first` (the current snapshot) at once.
    pub fn subscribe(&self, feed: Feed, first: Arc<str>) -> Receiver<Arc<str>> {
        let (tx, rx) = sync_channel(QUEUE);
        let _ = tx.try_send(first);
        self.state().subs.push(Sub { tx, feed, behind: false });
        rx
    }

    /// A delta subscriber whose table reflects version `since`: it gets at once one
    /// `machines-delta` with every change after `since` (none when it is current), or, when
    /// the ring no longer holds them all or `since` is not a version of this run, one
    /// `machines-reset` and the end of the stream. Under the lock the publisher sends with,
    /// so no tick falls between the replay and the subscription.
    pub fn subscribe_delta(&self, since: u64) -> Receiver<Arc<str>> {
        let (tx, rx) = sync_channel(QUEUE);
        let mut st = self.state();
        if since < st.floor || since > st.version {
            let _ = tx.try_send(reset(st.version));
            return rx;
        }
        let mut latest: BTreeMap<&str, Option<&Arc<str>>> = BTreeMap::new();
        for c in st.ring.iter().rev().take_while(|c| c.version > since) {
            latest.entry(c.mac.as_str()).or_insert(c.row.as_ref());
        }
        let first = delta(st.version, latest.into_iter());
        let _ = tx.try_send(first);
        st.subs.push(Sub { tx, feed: Feed::Delta, behind: false });
        rx
    }

    /// Number of connected subscribers.
    pub fn subscribers(&self) -> usize {
        self.state().subs.len()
    }

    fn subscribed(&self, feed: Feed) -> bool {
        self.state().subs.iter().any(|s| s.feed == feed)
    }

    /// Sends a jobs event to the whole and jobs subscribers.
    pub fn publish(&self, event: Arc<str>) {
        send(&mut self.state(), &event, |f| f != Feed::Delta);
    }

    /// Publishes one tick's changes: `rows` holds each changed MAC's row JSON, or None for a
    /// machine that is gone. Bumps the version, keeps the changes for replays, and sends them
    /// as one delta; then gives every subscriber that fell behind its reset when it has room.
    fn publish_changes(&self, rows: Vec<(String, Option<String>)>) {
        let mut st = self.state();
        if !rows.is_empty() {
            st.version += 1;
            let version = st.version;
            let changes: Vec<Change> = rows
                .into_iter()
                .map(|(mac, row)| Change { version, mac, row: row.map(Arc::from) })
                .collect();
            let event = delta(version, changes.iter().map(|c| (c.mac.as_str(), c.row.as_ref())));
            for c in changes {
                st.ring_bytes += c.bytes();
                st.ring.push_back(c);
            }
            while st.ring_bytes > RING_BYTES {
                let Some(old) = st.ring.pop_front() else { break };
                st.ring_bytes -= old.bytes();
                st.floor = st.floor.max(old.version);
            }
            send(&mut st, &event, |f| f == Feed::Delta);
        }
        let version = st.version;
        st.subs.retain(|s| {
            if !s.behind {
                return true;
            }
            // Sent, the subscriber goes: its stream ends after the reset it had room for.
            matches!(s.tx.try_send(reset(version)), Err(TrySendError::Full(_)))
        });
    }

    /// Runs the publisher until `stop`. Each tick: the changed MACs' rows from `rows` go to
    /// the delta subscribers, and when there are whole subscribers, one snapshot from
    /// `snapshot` to them. Rows are read before the version is bumped (see `version`).
    pub fn run_publisher(
        self: Arc<Self>,
        rows: impl Fn(&[String]) -> Option<Vec<(String, Option<String>)>> + Send + 'static,
        snapshot: impl Fn() -> Option<String> + Send + 'static,
        stop: &'static AtomicBool,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new().name("sse".into()).spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(TICK);
                let macs: Vec<String> =
                    std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|p| p.into_inner()))
                        .into_iter()
                        .collect();
                if macs.is_empty() {
                    self.publish_changes(Vec::new());
                    continue;
                }
                match rows(&macs) {
                    Some(r) => self.publish_changes(r),
                    // Not lost: the next tick tries these MACs again.
                    None => self.changed_macs(macs.iter().map(String::as_str)),
                }
                if self.subscribed(Feed::Whole) {
                    if let Some(s) = snapshot() {
                        send(&mut self.state(), &event("machines-update", &s), |f| {
                            f == Feed::Whole
                        });
                    }
                }
            }
        })
    }
}

/// Sends `event` to the subscribers of the feeds `to` picks, dropping the gone; a full queue
/// drops a whole or jobs subscriber and marks a delta one behind.
fn send(st: &mut State, event: &Arc<str>, to: impl Fn(Feed) -> bool) {
    st.subs.retain_mut(|s| {
        if !to(s.feed) || s.behind {
            return true;
        }
        match s.tx.try_send(Arc::clone(event)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) if s.feed == Feed::Delta => {
                crate::info!("a live-update client fell behind: it gets a reset");
                s.behind = true;
                true
            }
            Err(TrySendError::Full(_)) => {
                crate::info!("dropping a live-update client that does not keep up");
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    });
}

/// Formats one server-sent event (the data is one line of JSON).
pub fn event(name: &str, data: &str) -> Arc<str> {
    Arc::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// A `machines-delta` event: `{"version": V, "changed": [rows], "removed": [macs]}`, with the
/// version as the event id, which a reconnecting EventSource sends back as Last-Event-ID.
fn delta<'a>(
    version: u64,
    changes: impl Iterator<Item = (&'a str, Option<&'a Arc<str>>)>,
) -> Arc<str> {
    let mut changed = String::new();
    let mut removed = String::new();
    for (mac, row) in changes {
        match row {
            Some(r) => {
                if !changed.is_empty() {
                    changed.push(',');
                }
                changed.push_str(r);
            }
            None => {
                if !removed.is_empty() {
                    removed.push(',');
                }
                removed.push_str(&serde_json::Value::from(mac).to_string());
            }
        }
    }
    Arc::from(format!(
        "id: {version}\nevent: machines-delta\ndata: {{\"version\":{version},\"changed\":[{changed}],\"removed\":[{removed}]}}\n\n"
    ))
}

/// A `machines-reset` event: the client reloads what it shows and subscribes again.
fn reset(version: u64) -> Arc<str> {
    event("machines-reset", &format!("{{\"version\":{version}}}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(mac: &str, n: u32) -> (String, Option<String>) {
        (mac.to_string(), Some(format!("{{\"mac\":\"{mac}\",\"n\":{n}}}")))
    }

    #[test]
    fn slow_whole_subscribers_are_dropped_and_others_keep_receiving() {
        let hub = Hub::starting_at(1);
        let slow = hub.subscribe(Feed::Whole, event("x", "0"));
        let fast = hub.subscribe(Feed::Whole, event("x", "0"));
        let _ = fast.recv();
        for i in 0..QUEUE + 2 {
            hub.publish(event("x", &i.to_string()));
            let _ = fast.try_recv();
        }
        assert_eq!(hub.subscribers(), 1, "the slow one is gone");
        drop(slow);
        hub.publish(event("x", "last"));
        assert_eq!(&*fast.recv().unwrap(), "event: x\ndata: last\n\n");
    }

    #[test]
    fn a_delta_subscriber_gets_the_changes_after_its_version_once_each() {
        let hub = Hub::starting_at(100);
        hub.publish_changes(vec![row("a", 1), row("b", 1)]);
        hub.publish_changes(vec![row("a", 2), ("c".into(), None)]);
        assert_eq!(hub.version(), 102);
        let rx = hub.subscribe_delta(101);
        assert_eq!(
            &*rx.recv().unwrap(),
            "id: 102\nevent: machines-delta\ndata: {\"version\":102,\"changed\":[{\"mac\":\"a\",\"n\":2}],\"removed\":[\"c\"]}\n\n"
        );
        let all = hub.subscribe_delta(100);
        let first = all.recv().unwrap();
        assert!(first.contains("{\"mac\":\"a\",\"n\":2}"), "{first}");
        assert!(!first.contains("{\"mac\":\"a\",\"n\":1}"), "a's older row is left out: {first}");
        assert!(first.contains("{\"mac\":\"b\",\"n\":1}"), "{first}");
        hub.publish_changes(vec![row("b", 3)]);
        assert!(
            rx.recv().unwrap().contains("\"version\":103,\"changed\":[{\"mac\":\"b\",\"n\":3}]")
        );
        let current = hub.subscribe_delta(103);
        assert!(current.recv().unwrap().contains("\"changed\":[],\"removed\":[]"));
    }

    #[test]
    fn versions_the_ring_cannot_bring_up_to_date_get_a_reset_and_the_end() {
        let hub = Hub::starting_at(10);
        for v in [9, 11] {
            let rx = hub.subscribe_delta(v);
            assert_eq!(&*rx.recv().unwrap(), "event: machines-reset\ndata: {\"version\":10}\n\n");
            assert!(rx.recv().is_err(), "the stream ends after a reset");
        }
        let big = "x".repeat(RING_BYTES / 2);
        for i in 0..3 {
            hub.publish_changes(vec![(format!("m{i}"), Some(big.clone()))]);
        }
        assert!(hub.subscribe_delta(10).recv().unwrap().contains("machines-reset"));
        assert!(hub.subscribe_delta(12).recv().unwrap().contains("machines-delta"));
        assert_eq!(hub.subscribers(), 1);
    }

    #[test]
    fn a_delta_subscriber_that_falls_behind_gets_a_reset_when_it_has_room() {
        let hub = Hub::starting_at(1);
        let rx = hub.subscribe_delta(1);
        for i in 0..QUEUE + 3 {
            hub.publish_changes(vec![row("a", i as u32)]);
        }
        assert_eq!(hub.subscribers(), 1, "kept while its queue is full");
        let got: Vec<Arc<str>> = rx.try_iter().collect();
        assert_eq!(got.len(), QUEUE);
        hub.publish_changes(Vec::new());
        assert_eq!(hub.subscribers(), 0);
        let rest: Vec<Arc<str>> = rx.iter().collect();
        assert_eq!(rest.len(), 1);
        assert!(rest[0].starts_with("event: machines-reset\ndata: {\"version\":"), "{}", rest[0]);
    }
}
