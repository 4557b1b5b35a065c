//! The import rules of ARCHITECTURE.md, checked by reading the sources: a room (`src/<room>/` or
//! `src/<room>.rs`) names another through `crate::<room>`, and some directions are forbidden.
//! Violations to tolerate would be listed by file in `KNOWN` (there are none now): the test
//! fails on any new one, and on a listed one that is gone (so the list only ever shrinks).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// (from, to, why): a room must never name the other.
const FORBIDDEN: &[(&str, &str, &str)] = &[
    ("flash", "web", "the flash engine runs in the live environment, with no server"),
    ("flash", "cli", "the flash engine drives no terminal"),
    ("image", "web", "formats know nothing of the server"),
    ("image", "cli", "formats know nothing of the terminal"),
    ("source", "web", "byte sources know nothing of the server"),
    ("source", "cli", "byte sources know nothing of the terminal"),
    ("image", "source", "image and source share io, not each other"),
    ("source", "image", "image and source share io, not each other"),
    ("web", "cli", "the server never drives a terminal"),
    ("cli", "web", "what the agent and the server share lives in wire"),
    ("disks", "web", "field limits belong to wire"),
    ("inventory", "web", "field limits belong to wire"),
    ("catalog", "web", "catalogs are read by bty and bty-web alike"),
    ("catalog", "cli", "catalogs are read by bty and bty-web alike"),
    ("catalog", "flash", "a catalog names images; it does not flash them"),
    ("usb", "web", "the stick's grow runs in the live environment, with no server"),
    ("usb", "cli", "the stick's grow is called by the command line, not the other way"),
    ("usb", "flash", "growing BTY_IMAGES writes no image"),
];

/// Violations that exist today, by file: issue 17 removes them.
const KNOWN: &[(&str, &str)] = &[];

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reading src/").flatten() {
        let p = entry.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The rooms a file names through `crate::<room>`.
fn named_rooms(text: &str) -> BTreeSet<String> {
    text.match_indices("crate::")
        .map(|(i, m)| {
            text[i + m.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|r| !r.is_empty())
        .collect()
}

#[test]
fn rooms_import_only_downwards() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    let known: BTreeSet<(String, String)> =
        KNOWN.iter().map(|(f, t)| (f.to_string(), t.to_string())).collect();
    let (mut found, mut new) = (BTreeSet::new(), Vec::new());
    for file in &files {
        let rel = file.strip_prefix(root).expect("a path under the crate").to_string_lossy();
        let Some(room) = rel.strip_prefix("src/").and_then(|r| r.split(['/', '.']).next()) else {
            continue;
        };
        let text = std::fs::read_to_string(file).expect("reading a source file");
        for to in named_rooms(&text) {
            let Some((_, _, why)) = FORBIDDEN.iter().find(|(f, t, _)| *f == room && *t == to)
            else {
                continue;
            };
            let key = (rel.to_string(), to);
            if !known.contains(&key) {
                new.push(format!("{} names crate::{}: {why}", key.0, key.1));
            }
            found.insert(key);
        }
    }
    assert!(new.is_empty(), "imports against ARCHITECTURE.md:\n{}", new.join("\n"));
    let gone: Vec<String> = known.difference(&found).map(|(f, t)| format!("{f} -> {t}")).collect();
    assert!(gone.is_empty(), "fixed, so remove from layers::KNOWN: {}", gone.join(", "));
}

#[test]
fn rooms_are_read_from_crate_paths() {
    let text = "use crate::web::validate;\nlet x = crate::cli::run(); // crate::\n";
    let rooms: Vec<String> = named_rooms(text).into_iter().collect();
    assert_eq!(rooms, ["cli", "web"]);
}

/// Inside the server, the route table is the top: `App` (web/app.rs) and the answers every route
/// shares sit below it, so no page, worker or handler imports the routes for them, and only the
/// start-up (web/serve.rs) and the command line (`bty-web routes`, web/cmd.rs) name `web::routes`.
#[test]
fn only_the_server_start_names_the_routes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src/web"), &mut files);
    let mut naming = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(root).expect("a path under the crate").to_string_lossy();
        let text = std::fs::read_to_string(file).expect("reading a source file");
        let allowed = ["src/web/serve.rs", "src/web/cmd.rs"].contains(&&*rel)
            || rel.starts_with("src/web/routes");
        if !allowed && text.contains("web::routes") {
            naming.push(rel.to_string());
        }
    }
    assert!(
        naming.is_empty(),
        "these name web::routes (only web/serve.rs and web/cmd.rs may): {naming:?}"
    );
}
