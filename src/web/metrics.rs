//! Counters for `/metrics` (Prometheus text format): lock-free atomics updated on the hot path.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::web::db::Capped;

/// Upper bounds (seconds) of the request latency histogram.
const BUCKETS: [f64; 8] = [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0];

/// Process-lifetime counters.
#[derive(Default)]
pub struct Metrics {
    /// Requests by status class 1xx..5xx.
    requests: [AtomicU64; 5],
    /// Latency histogram counts per bucket, then +Inf.
    latency: [AtomicU64; 9],
    latency_micros: AtomicU64,
    /// PXE offers: disk, live environment, exit.
    pub offers_disk: AtomicU64,
    pub offers_live: AtomicU64,
    pub offers_exit: AtomicU64,
    pub flashes_done: AtomicU64,
    pub flashes_failed: AtomicU64,
    pub boot_bytes: AtomicU64,
    /// Image requests answered from a complete cache file, and from a fetch in flight.
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    /// What the growth caps kept out, by `db::Capped` index: unknown MACs refused by
    /// `max_discovered` and by the per-address rate, lshw blobs dropped by the total cap.
    pub growth_refused: [AtomicU64; 3],
}

impl Metrics {
    /// Records one answered request.
    pub fn request(&self, status: u16, took: Duration) {
        let class = (usize::from(status / 100)).clamp(1, 5) - 1;
        self.requests[class].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let i = BUCKETS.iter().position(|b| secs <= *b).unwrap_or(BUCKETS.len());
        self.latency[i].fetch_add(1, Ordering::Relaxed);
        self.latency_micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Renders everything, with the gauges the caller reads from the database (`growth`: the
    /// unclaimed discovered machines and the stored lshw bytes, the two growth caps' measures).
    pub fn render(
        &self,
        machines_by_mode: &[(String, u64)],
        sse_clients: usize,
        growth: (u64, u64),
    ) -> String {
        let mut o = String::new();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ =
            writeln!(o, "# HELP bty_http_requests_total HTTP requests answered, by status class.");
        let _ = writeln!(o, "# TYPE bty_http_requests_total counter");
        for (i, n) in self.requests.iter().enumerate() {
            let _ = writeln!(o, "bty_http_requests_total{{code=\"{}xx\"}} {}", i + 1, get(n));
        }
        let _ = writeln!(o, "# HELP bty_http_request_duration_seconds Time to answer a request.");
        let _ = writeln!(o, "# TYPE bty_http_request_duration_seconds histogram");
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += get(&self.latency[i]);
            let _ =
                writeln!(o, "bty_http_request_duration_seconds_bucket{{le=\"{b}\"}} {cumulative}");
        }
        cumulative += get(&self.latency[BUCKETS.len()]);
        let _ = writeln!(o, "bty_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(
            o,
            "bty_http_request_duration_seconds_sum {}",
            get(&self.latency_micros) as f64 / 1e6
        );
        let _ = writeln!(o, "bty_http_request_duration_seconds_count {cumulative}");
        let _ = writeln!(o, "# HELP bty_pxe_offers_total PXE scripts served, by decision.");
        let _ = writeln!(o, "# TYPE bty_pxe_offers_total counter");
        for (d, n) in
            [("disk", &self.offers_disk), ("live", &self.offers_live), ("exit", &self.offers_exit)]
        {
            let _ = writeln!(o, "bty_pxe_offers_total{{decision=\"{d}\"}} {}", get(n));
        }
        let _ = writeln!(o, "# HELP bty_flashes_total Flashes reported by live environments.");
        let _ = writeln!(o, "# TYPE bty_flashes_total counter");
        let _ = writeln!(o, "bty_flashes_total{{result=\"done\"}} {}", get(&self.flashes_done));
        let _ = writeln!(o, "bty_flashes_total{{result=\"failed\"}} {}", get(&self.flashes_failed));
        let _ = writeln!(
            o,
            "# HELP bty_boot_bytes_served_total Bytes of netboot artifacts served from /boot."
        );
        let _ = writeln!(o, "# TYPE bty_boot_bytes_served_total counter");
        let _ = writeln!(o, "bty_boot_bytes_served_total {}", get(&self.boot_bytes));
        let _ = writeln!(
            o,
            "# HELP bty_cache_requests_total Image requests to the cache, by whether the image was there."
        );
        let _ = writeln!(o, "# TYPE bty_cache_requests_total counter");
        let _ = writeln!(o, "bty_cache_requests_total{{result=\"hit\"}} {}", get(&self.cache_hits));
        let _ =
            writeln!(o, "bty_cache_requests_total{{result=\"miss\"}} {}", get(&self.cache_misses));
        let _ = writeln!(
            o,
            "# HELP bty_pxe_discoveries_refused_total Unknown MACs not recorded, by the cap that refused them."
        );
        let _ = writeln!(o, "# TYPE bty_pxe_discoveries_refused_total counter");
        for (reason, cap) in [("max_discovered", Capped::MaxDiscovered), ("rate", Capped::Rate)] {
            let n = get(&self.growth_refused[cap as usize]);
            let _ = writeln!(o, "bty_pxe_discoveries_refused_total{{reason=\"{reason}\"}} {n}");
        }
        let _ = writeln!(
            o,
            "# HELP bty_pxe_lshw_dropped_total lshw blobs dropped by [pxe] max_lshw_total_mib."
        );
        let _ = writeln!(o, "# TYPE bty_pxe_lshw_dropped_total counter");
        let _ = writeln!(
            o,
            "bty_pxe_lshw_dropped_total {}",
            get(&self.growth_refused[Capped::LshwTotal as usize])
        );
        let _ = writeln!(o, "# HELP bty_machines Machines in the registry, by boot mode.");
        let _ = writeln!(o, "# TYPE bty_machines gauge");
        for (mode, n) in machines_by_mode {
            // Boot modes are validated names; no label escaping is needed.
            let _ = writeln!(o, "bty_machines{{boot_mode=\"{mode}\"}} {n}");
        }
        let _ = writeln!(
            o,
            "# HELP bty_pxe_unclaimed_machines Machines discovered by PXE and not claimed ([pxe] max_discovered caps them)."
        );
        let _ = writeln!(o, "# TYPE bty_pxe_unclaimed_machines gauge");
        let _ = writeln!(o, "bty_pxe_unclaimed_machines {}", growth.0);
        let _ = writeln!(
            o,
            "# HELP bty_pxe_lshw_bytes Bytes of lshw reports stored ([pxe] max_lshw_total_mib caps them)."
        );
        let _ = writeln!(o, "# TYPE bty_pxe_lshw_bytes gauge");
        let _ = writeln!(o, "bty_pxe_lshw_bytes {}", growth.1);
        let _ = writeln!(o, "# HELP bty_live_update_clients Connected /events/machines clients.");
        let _ = writeln!(o, "# TYPE bty_live_update_clients gauge");
        let _ = writeln!(o, "bty_live_update_clients {sse_clients}");
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_counts_match() {
        let m = Metrics::default();
        m.request(200, Duration::from_micros(300));
        m.request(404, Duration::from_millis(3));
        m.request(500, Duration::from_secs(2));
        let text = m.render(&[("ipxe-exit".into(), 2)], 1, (3, 4096));
        assert!(text.contains("bty_http_requests_total{code=\"2xx\"} 1"));
        assert!(text.contains("bty_http_requests_total{code=\"4xx\"} 1"));
        assert!(text.contains("bty_http_request_duration_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(text.contains("bty_http_request_duration_seconds_bucket{le=\"0.005\"} 2"));
        assert!(text.contains("bty_http_request_duration_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.contains("bty_http_request_duration_seconds_count 3"));
        assert!(text.contains("bty_machines{boot_mode=\"ipxe-exit\"} 2"));
        assert!(text.contains("\nbty_pxe_unclaimed_machines 3\n"));
        assert!(text.contains("\nbty_pxe_lshw_bytes 4096\n"));
    }
}
