use super::*;

/// The routes the spec opens to firmware and the live environment ("Open routes" of the
/// reference, and the PXE posts of api-details.md), by method and path.
const SPEC_OPEN: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/version"),
    ("GET", "/pxe/{mac}"),
    ("GET", "/pxe/{mac}/plan"),
    ("POST", "/pxe/{mac}/done"),
    ("POST", "/pxe/{mac}/status"),
    ("POST", "/pxe/{mac}/inventory"),
    ("GET", "/pxe-bootstrap.ipxe"),
    ("GET", "/boot/{name}"),
    ("GET", "/images"),
    ("GET", "/catalog.toml"),
];

/// Routes we open beyond the spec, each with the reason (README, "Departures").
const OURS_OPEN: &[(&str, &str, &str)] = &[
    ("POST", "/pxe/{mac}/progress", "the live environment's progress: same trust as status"),
    ("GET", "/images/{sha256}/{name}", "the cache: digest-addressed copies of open images"),
    ("GET", "/static/{name}", "the login page's stylesheet and script"),
    ("GET", "/", "redirects to the login page or the dashboard"),
    ("GET", "/ui", "the same redirect"),
    ("GET", "/ui/", "the same redirect"),
    ("GET", "/ui/login", "the login page"),
    ("POST", "/ui/login", "logging in (the spec's POST /ui/login)"),
    ("POST", "/ui/logout", "logging out (the spec's POST /ui/logout)"),
];

/// A path that matches `pattern`, for probing the table.
fn example(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|s| match s {
            s if s.starts_with("{*") => "a/b",
            s if s.starts_with('{') => "x",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn every_route_and_its_guard() {
    // The whole table, printed by `cargo test -- --nocapture routes::tests` and by
    // `bty-web routes`.
    println!("{}", describe());
    let mut open = Vec::new();
    for r in ROUTES {
        assert!(!r.methods.is_empty(), "{} has no method", r.path);
        if matches!(r.access, Access::Open | Access::Pxe | Access::Public) {
            // HEAD goes with GET; listing it is not opening more.
            open.extend(r.methods.iter().filter(|m| **m != "HEAD").map(|m| (*m, r.path)));
        }
        // A row whose path another row's pattern shadows for every method would be dead.
        for m in r.methods {
            match find(m, &example(r.path)) {
                Found::Route(found, _) => {
                    assert!(std::ptr::eq(found, r), "{m} {} is answered by {}", r.path, found.path)
                }
                _ => panic!("{m} {} does not match itself", r.path),
            }
        }
    }
    let allowed = |m: &str, p: &str| {
        SPEC_OPEN.contains(&(m, p)) || OURS_OPEN.iter().any(|(om, op, _)| (*om, *op) == (m, p))
    };
    let unlisted: Vec<String> =
        open.iter().filter(|(m, p)| !allowed(m, p)).map(|(m, p)| format!("{m} {p}")).collect();
    assert!(unlisted.is_empty(), "open routes not in the spec's open list: {unlisted:?}");
    for (m, p) in SPEC_OPEN {
        assert!(open.contains(&(m, p)), "the spec opens {m} {p}, the table does not");
    }
}

#[test]
fn the_specs_protected_routes_need_a_session() {
    // api-details.md: `/machines*`, `/catalog/*` (not `/catalog.toml`), `/events*`,
    // `/workers/*`, `/boot/releases*`, `PUT /boot/*` get 401 without a session.
    for r in ROUTES {
        let protected =
            ["/machines", "/catalog/", "/events", "/workers/", "/boot/releases", "/metrics"]
                .iter()
                .any(|p| r.path.starts_with(p))
                || (r.path.starts_with("/boot/") && r.methods.contains(&"PUT"));
        if protected {
            assert_eq!(r.access, Access::Session, "{} must need a session", r.path);
        }
        if r.path.starts_with("/ui/") && r.access != Access::Public {
            assert_eq!(r.access, Access::Page, "{} is a page", r.path);
        }
    }
}

#[test]
fn paths_match_patterns() {
    assert_eq!(captures("/machines/{mac}", "/machines/aa"), Some(vec!["aa"]));
    assert_eq!(captures("/machines/{mac}", "/machines/"), Some(vec![""]));
    assert_eq!(captures("/machines/{mac}", "/machines"), None);
    assert_eq!(captures("/machines/{mac}", "/machines/aa/b"), None);
    assert_eq!(captures("/machines", "/machines/"), None);
    assert_eq!(captures("/", "/"), Some(vec![]));
    assert_eq!(captures("/", "/x"), None);
    assert_eq!(captures("/ui/", "/ui/"), Some(vec![]));
    assert_eq!(captures("/ui", "/ui/"), None);
    assert_eq!(captures("/boot/{*name}", "/boot/a/b/../c"), Some(vec!["a/b/../c"]));
    assert_eq!(captures("/boot/{*name}", "/boot/x"), Some(vec!["x"]));
    assert_eq!(captures("/healthz", "healthz"), None);
    assert_eq!(captures("/healthz", "*"), None);
}

#[test]
fn unknown_paths_and_methods() {
    assert!(matches!(find("GET", "/nowhere"), Found::Nothing));
    assert!(matches!(find("GET", "/ui/nowhere"), Found::Nothing));
    assert!(matches!(find("DELETE", "/pxe/aa/x"), Found::Nothing));
    match find("POST", "/healthz") {
        Found::Method(m) => assert_eq!(m, ["GET", "HEAD"]),
        _ => panic!("POST /healthz"),
    }
    match find("PATCH", "/machines/aa") {
        Found::Method(m) => assert_eq!(m, ["GET", "HEAD", "PUT", "DELETE"]),
        _ => panic!("PATCH /machines/aa"),
    }
    // GET /events/machines is the event stream; HEAD would subscribe to nothing.
    assert!(matches!(find("HEAD", "/events/machines"), Found::Method(_)));
}

#[test]
fn body_policies_per_route() {
    let policy = |m: &str, p: &str| match find(m, p) {
        Found::Route(r, _) => r.body.policy(),
        _ => panic!("{m} {p} has no route"),
    };
    assert_eq!(
        policy("POST", "/pxe/aa:bb:cc:dd:ee:ff/inventory"),
        BodyPolicy::Spill(4 << 20, 64 << 20)
    );
    assert_eq!(policy("PUT", "/machines/aa:bb:cc:dd:ee:ff"), BodyPolicy::Buffer(64 << 10));
    assert_eq!(policy("POST", "/machines/bulk"), BodyPolicy::Buffer(64 << 10));
    assert_eq!(policy("PUT", "/boot/x.initrd"), BodyPolicy::Stream(u64::MAX));
    assert_eq!(policy("POST", "/ui/netboot/upload"), BodyPolicy::Stream(u64::MAX));
    assert_eq!(
        policy("POST", "/ui/catalog/upload"),
        BodyPolicy::Buffer(ui::CATALOG_UPLOAD_MAX + (64 << 10))
    );
}
