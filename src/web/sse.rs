//! Live updates: `GET /events/machines` streams `machines-update` events. Changes only mark the
//! snapshot dirty; one publisher thread sends at most five snapshots a second to every
//! subscriber, so a boot storm costs the same as one change. A subscriber whose queue is full
//! (a slow client) is dropped instead of slowing anyone else.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Events queued per subscriber before it counts as slow and is dropped.
const QUEUE: usize = 8;
/// Coalescing interval of the publisher.
const TICK: Duration = Duration::from_millis(200);

/// The subscribers and the dirty mark.
#[derive(Default)]
pub struct Hub {
    subs: Mutex<Vec<SyncSender<Arc<str>>>>,
    dirty: AtomicBool,
}

impl Hub {
    /// Notes that the machines table changed.
    pub fn changed(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    /// A new subscriber, which gets `first` (the current snapshot) at once.
    pub fn subscribe(&self, first: Arc<str>) -> Receiver<Arc<str>> {
        let (tx, rx) = sync_channel(QUEUE);
        let _ = tx.try_send(first);
        self.subs.lock().unwrap_or_else(|p| p.into_inner()).push(tx);
        rx
    }

    /// Number of connected subscribers.
    pub fn subscribers(&self) -> usize {
        self.subs.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Sends `event` to every subscriber, dropping the gone and the slow.
    pub fn publish(&self, event: Arc<str>) {
        self.subs.lock().unwrap_or_else(|p| p.into_inner()).retain(|s| {
            match s.try_send(Arc::clone(&event)) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    crate::info!("dropping a live-update client that does not keep up");
                    false
                }
                Err(TrySendError::Disconnected(_)) => false,
            }
        });
    }

    /// Runs the publisher until `stop`: when dirty, builds one snapshot with `snapshot` and
    /// sends it to all.
    pub fn run_publisher(
        self: Arc<Self>,
        snapshot: impl Fn() -> Option<String> + Send + 'static,
        stop: &'static AtomicBool,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new().name("sse".into()).spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(TICK);
                if self.dirty.swap(false, Ordering::AcqRel) && self.subscribers() > 0 {
                    if let Some(s) = snapshot() {
                        self.publish(event("machines-update", &s));
                    }
                }
            }
        })
    }
}

/// Formats one server-sent event (the data is one line of JSON).
pub fn event(name: &str, data: &str) -> Arc<str> {
    Arc::from(format!("event: {name}\ndata: {data}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_subscribers_are_dropped_and_others_keep_receiving() {
        let hub = Hub::default();
        let slow = hub.subscribe(event("x", "0"));
        let fast = hub.subscribe(event("x", "0"));
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
}
