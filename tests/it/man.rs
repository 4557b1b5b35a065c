//! The manual pages (`docs/man/*.md`, built by docs/man/build.py, `make man`): they build the
//! same twice, groff reads them without a warning, and each documents exactly the long options
//! its program's --help texts name, every subcommand's --help included.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::TestDir;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `--long` options a text names.
fn long_options(text: &str) -> BTreeSet<String> {
    let b = text.as_bytes();
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("--") {
        let before_ok = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'-');
        let name: String = text[i + 2..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
            .collect();
        if before_ok && name.starts_with(|c: char| c.is_ascii_lowercase()) {
            out.insert(format!("--{}", name.trim_end_matches('-')));
        }
    }
    out
}

/// `program args...`'s standard output, which must succeed.
fn help(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The options a man page's source defines (its `` `--opt ARG` `` lines).
fn man_options(page: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("docs/man").join(page)).unwrap();
    let defs: String = text
        .lines()
        .filter(|l| l.starts_with("`-") && l.ends_with('`'))
        .collect::<Vec<_>>()
        .join("\n");
    long_options(&defs)
}

fn agree(page: &str, program: &str, commands: &[&[&str]]) {
    let mut from_help = BTreeSet::new();
    for args in commands {
        let mut a = args.to_vec();
        a.push("--help");
        from_help.extend(long_options(&help(program, &a)));
    }
    let from_man = man_options(page);
    let missing: Vec<_> = from_help.difference(&from_man).collect();
    let extra: Vec<_> = from_man.difference(&from_help).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/man/{page} and {program}'s --help disagree: the page lacks {missing:?}; only the page has {extra:?}"
    );
}

#[test]
fn bty_1_documents_exactly_the_options_of_every_bty_help() {
    let commands: &[&[&str]] =
        &[&[], &["flash"], &["inspect"], &["images"], &["disks"], &["inventory"], &["usb-grow"]];
    agree("bty.md", env!("CARGO_BIN_EXE_bty"), commands);
}

#[test]
fn bty_web_8_documents_exactly_the_options_of_every_bty_web_help() {
    let commands: &[&[&str]] = &[
        &[],
        &["config"],
        &["restore"],
        &["export"],
        &["import"],
        &["tftp"],
        &["cache"],
        &["health"],
        &["routes"],
        &["dhcp"],
        &["init"],
        &["deploy"],
        &["upgrade"],
    ];
    agree("bty-web.md", env!("CARGO_BIN_EXE_bty-web"), commands);
}

fn build(out: &Path) -> Vec<PathBuf> {
    let o = Command::new("python3")
        .arg(root().join("docs/man/build.py"))
        .arg(out)
        .args([env!("CARGO_PKG_VERSION"), "2026-01-01"])
        .output()
        .expect("running python3 docs/man/build.py");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut pages: Vec<PathBuf> =
        std::fs::read_dir(out).unwrap().map(|e| e.unwrap().path()).collect();
    pages.sort();
    pages
}

#[test]
fn the_pages_build_reproducibly_and_groff_reads_them_without_a_warning() {
    let dir = TestDir::new("man");
    let pages = build(&dir.path("a"));
    let names: Vec<String> =
        pages.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["bty-web.8.gz", "bty.1.gz"]);
    let again = build(&dir.path("b"));
    for (a, b) in pages.iter().zip(&again) {
        assert!(std::fs::read(a).unwrap() == std::fs::read(b).unwrap(), "{} differs", a.display());
    }
    for (page, title) in pages.iter().zip(["BTY-WEB(8)", "BTY(1)"]) {
        let roff = Command::new("zcat").arg(page).output().unwrap().stdout;
        let mut groff = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-P-cbou"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running groff (groff-base)");
        use std::io::Write;
        groff.stdin.take().unwrap().write_all(&roff).unwrap();
        let out = groff.wait_with_output().unwrap();
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && warnings.is_empty(), "{}: {warnings}", page.display());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(title) && text.contains("SYNOPSIS"), "{text}");
        assert!(text.contains(&format!("bty {}", env!("CARGO_PKG_VERSION"))), "{text}");
    }
}

/// GitHub's anchor for a heading: lower case, punctuation but `-` and `_` dropped, spaces to `-`.
fn anchor(title: &str) -> String {
    title
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut code = false;
    let mut out = BTreeSet::new();
    for l in text.lines() {
        if l.starts_with("```") {
            code = !code;
        }
        if !code && l.starts_with('#') {
            out.insert(anchor(l.trim_start_matches('#')));
        }
    }
    out
}

/// The README is the start page and the reference is one page per topic in docs/: every
/// relative link between them names a file that exists and a heading it has.
#[test]
fn every_link_of_the_readme_and_the_docs_reaches_its_page_and_heading() {
    let mut pages = vec![root().join("README.md"), root().join("ARCHITECTURE.md")];
    for dir in ["docs", "docs/man"] {
        for e in std::fs::read_dir(root().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "md") {
                pages.push(p);
            }
        }
    }
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for (i, _) in text.match_indices("](") {
            let link: String = text[i + 2..].chars().take_while(|c| *c != ')').collect();
            if link.contains("://") || link.contains(' ') || link.starts_with("mailto:") {
                continue;
            }
            let (path, frag) = link.split_once('#').unwrap_or((&link, ""));
            let target =
                if path.is_empty() { page.clone() } else { page.parent().unwrap().join(path) };
            if !target.exists() {
                broken.push(format!("{}: {link}: no such file", page.display()));
            } else if !frag.is_empty() && target.extension().is_some_and(|x| x == "md") {
                let text = std::fs::read_to_string(&target).unwrap();
                if !anchors(&text).contains(frag) {
                    broken.push(format!("{}: {link}: no such heading", page.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}
