//! `bty images`: the image root merged with a catalog, as a table or JSON.

use std::io::Write;
use std::process::ExitCode;

use crate::catalog;
use crate::catalog::root::{self as images, ImageEntry, Listing, Origin};
use crate::cli::ImagesArgs;
use crate::error::{Context, Result};
use crate::units;

pub fn images(args: ImagesArgs) -> Result<ExitCode> {
    let root = images::default_image_root();
    // A missing or unreadable image root is normal on a workstation: say so and show the
    // catalog anyway.
    let listing = images::list_images(&root).unwrap_or_else(|e| {
        crate::warn!("{e} (set BTY_IMAGE_ROOT to the directory of your images)");
        Listing::default()
    });
    for w in &listing.warnings {
        crate::warn!("{w}");
    }
    let catalog = match &args.catalog {
        Some(src) => Some(catalog::load_source(src, &catalog::fetch_remote)?),
        None => None,
    };
    for w in catalog.iter().flat_map(|c| &c.warnings) {
        crate::warn!("{w}");
    }
    let entries = images::merge(&listing.images, catalog.as_ref());
    if args.json {
        let text = serde_json::to_string_pretty(&entries).context("encoding the list as JSON")?;
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    if entries.is_empty() {
        crate::info!("no images in {} and no catalog entries", root.display());
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    // Ignored: a closed pipe (`bty images | head`) is not an error worth reporting.
    let _ = out.write_all(table(&entries).as_bytes());
    Ok(ExitCode::SUCCESS)
}

/// Columns padded to their widest cell; names made safe for a terminal.
fn table(entries: &[ImageEntry]) -> String {
    let size = |n: Option<u64>| n.map_or_else(|| "-".to_string(), units::bytes);
    let mut rows = vec![["NAME", "FORMAT", "ARCH", "SIZE", "ON DISK", "WHERE"].map(String::from)];
    for e in entries {
        rows.push([
            printable(&e.name),
            printable(&e.format),
            printable(e.arch.as_deref().unwrap_or("-")),
            size(e.size_bytes),
            size(e.virtual_size),
            match e.origin {
                Origin::Local => "local".into(),
                Origin::Catalog => "catalog".into(),
            },
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                line.push_str(&" ".repeat(w - cell.chars().count() + 2));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// Text with control characters escaped, so that a file or catalog name cannot move the cursor,
/// clear the screen or fake table rows.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_carry_terminal_controls() {
        assert_eq!(printable("a\x1b[2Jb\nc\u{9b}"), "a\\u{1b}[2Jb\\nc\\u{9b}");
        assert_eq!(printable("<script>é"), "<script>é");
    }
}
