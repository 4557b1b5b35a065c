//! Catalog entries: the images machines can be assigned.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::Db;
use crate::error::{Context, Result};

/// A catalog entry (the spec's `CatalogEntry`).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CatalogEntry {
    pub bty_image_ref: String,
    pub src: String,
    pub disk_image_sha: Option<String>,
    pub name: String,
    pub format: String,
    pub size_bytes: Option<i64>,
    pub sha_url: Option<String>,
    pub description: Option<String>,
    pub added_at: String,
}

// The column list is a macro so that every query text is `concat!`ed at compile time (see
// `machine_columns!`).
macro_rules! catalog_columns {
    () => {
        "bty_image_ref, src, disk_image_sha, name, format, size_bytes, sha_url, description, \
         added_at"
    };
}

pub(super) const CATALOG_BY_REF: &str =
    concat!("SELECT ", catalog_columns!(), " FROM catalog_entries WHERE bty_image_ref = ?1");
const CATALOG_ALL: &str =
    concat!("SELECT ", catalog_columns!(), " FROM catalog_entries ORDER BY name, src");

pub(super) fn catalog_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CatalogEntry> {
    Ok(CatalogEntry {
        bty_image_ref: r.get(0)?,
        src: r.get(1)?,
        disk_image_sha: r.get(2)?,
        name: r.get(3)?,
        format: r.get(4)?,
        size_bytes: r.get(5)?,
        sha_url: r.get(6)?,
        description: r.get(7)?,
        added_at: r.get(8)?,
    })
}

impl Db {
    /// Every catalog entry, by name.
    pub fn catalog(&self) -> Result<Vec<CatalogEntry>> {
        self.read(|c| {
            let mut st = c.prepare_cached(CATALOG_ALL)?;
            st.query_map([], catalog_from_row)?.collect()
        })
    }

    /// Adds an entry unless one with the same src exists; returns the stored entry and whether
    /// it was created.
    pub fn add_catalog_entry(&self, e: &CatalogEntry) -> Result<(CatalogEntry, bool)> {
        let n = self
            .write()
            .prepare_cached(
                "INSERT OR IGNORE INTO catalog_entries (bty_image_ref, src, disk_image_sha, name, format, \
                 size_bytes, sha_url, description, added_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                e.bty_image_ref,
                e.src,
                e.disk_image_sha,
                e.name,
                e.format,
                e.size_bytes,
                e.sha_url,
                e.description,
                e.added_at
            ])
            .with_context(|| format!("adding {} to the catalog", e.src))?;
        let stored = self
            .catalog_entry(&e.bty_image_ref)?
            .with_context(|| format!("reading back {}", e.src))?;
        Ok((stored, n > 0))
    }

    /// Deletes the entry with this src; false when there is none.
    pub fn delete_catalog_entry(&self, src: &str) -> Result<bool> {
        let n = self
            .write()
            .prepare_cached("DELETE FROM catalog_entries WHERE src = ?1")?
            .execute([src])
            .with_context(|| format!("deleting {src} from the catalog"))?;
        Ok(n > 0)
    }

    /// A catalog entry by its reference.
    pub fn catalog_entry(&self, image_ref: &str) -> Result<Option<CatalogEntry>> {
        self.read(|c| {
            c.prepare_cached(CATALOG_BY_REF)?.query_row([image_ref], catalog_from_row).optional()
        })
    }
}
