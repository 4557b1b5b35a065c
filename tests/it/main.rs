//! bty's integration tests, one test binary: each module was a test binary of its own
//! (tests/<name>.rs) and keeps its name as its module path, so one module runs with
//! `cargo test --features test-hooks --test it flash::` and one test with
//! `cargo test --features test-hooks --test it flash::some_test -- --exact`. The filter is a
//! substring: `http::` also runs `source_http::` (add `-- --skip source_http::` to leave it out).
//!
//! The modules share one process and run in parallel threads (cargo's default: one per core).
//! A test must not assume it is alone in the process: no `std::env::set_var` (give the child
//! process its environment instead), no fixed ports (bind 127.0.0.1:0), no fixed temp paths
//! (`util::TestDir`, or a name with the process id and a counter), no fixed loop devices
//! (`losetup -f`), and a listing of the machine's disks must expect loop devices of other
//! tests to come and go.

// The tests run the real `bty`, built with this crate's features. Without `test-hooks` it would
// ignore BTY_TEST_NO_REBOOT and really reboot (or power off) the machine running the tests.
// Clippy only checks (it builds nothing that runs), so `make lint` can lint without the feature.
#[cfg(not(any(feature = "test-hooks", clippy)))]
compile_error!(
    "bty's integration tests need the cargo feature test-hooks: run them with \
     `cargo test --features test-hooks` (as `make test` does); without it the bty under test \
     would really reboot this machine"
);

mod util;

mod agent;
mod api;
mod apt_mirror;
mod arm64;
mod browser;
mod browser_jobs;
mod bulk;
mod cache;
mod cache_chain;
mod deb;
mod deploy;
mod discovery;
mod disks;
mod e2e;
mod e2e_arm64;
mod flash;
mod fleet_view;
mod http;
mod image;
mod images;
mod inspect;
mod lab;
mod man;
mod proxy;
mod qcow2;
mod release;
mod release_fetch;
mod rpi;
mod source_http;
mod source_oras;
mod tftp;
mod ui;
mod usb;
mod web;
mod wizard;
mod workers;
mod zerocopy;
