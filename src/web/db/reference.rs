//! The reference server's `state.db`, read for `bty-web import`: opened read-only (and
//! `immutable` when no write-ahead log is beside it, so SQLite touches nothing at all), never
//! written. Its machines table is the spec's `Machine` wire type as columns (`mac`,
//! `known_disks` and `known_disks_at`, `hw_lshw` as JSON text) and its labels a
//! `machine_labels (mac, label)` side table; other columns are ignored. Values come back as
//! stored, unchecked: the import checks them as the API would.

use std::path::Path;

use rusqlite::types::Value as Sql;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::error::{Context, Result};
use crate::wire::show;

/// One machine row as the file holds it.
#[derive(Debug, Default)]
pub struct StoredMachine {
    pub mac: String,
    pub known_disks: Option<String>,
    pub known_disks_at: Option<String>,
    pub lshw: Option<String>,
    pub labels: Vec<String>,
}

/// What a reference `state.db` holds for an import.
#[derive(Debug, Default)]
pub struct StoredState {
    /// Its `bty_version` marker (or ours, for one of our own archived databases).
    pub version: Option<String>,
    pub machines: Vec<StoredMachine>,
}

/// Opens `path` read-only. A hot rollback journal beside it (a transaction cut short) is
/// refused: reading without rolling it back could see half a transaction, and rolling it back
/// would write to the file.
fn open_read_only(path: &Path) -> Result<Connection> {
    let shown = path.display();
    let side = |ext: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(ext);
        std::fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false)
    };
    crate::ensure!(
        !side("-journal"),
        "{shown}-journal exists: the database has a transaction that was cut short; start and \
         stop the server that wrote it once (or open it with sqlite3), then import again"
    );
    let abs = std::fs::canonicalize(path).with_context(|| format!("opening {shown}"))?;
    // A URI, for mode=ro and immutable: every byte but the plain ones percent-encoded.
    let mut uri = String::from("file:");
    for b in abs.as_os_str().as_encoded_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-') {
            uri.push(char::from(*b));
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    // With a WAL beside it, committed rows may be only there: read it (SQLite may create the
    // -shm index beside it). Without one, immutable: no locks, no side files, nothing written.
    uri.push_str(if side("-wal") { "?mode=ro" } else { "?mode=ro&immutable=1" });
    let conn = Connection::open_with_flags(
        &uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {shown} read-only"))?;
    let check: Vec<String> = conn
        .prepare("PRAGMA quick_check(3)")
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
        .with_context(|| format!("{shown} cannot be read as an SQLite database"))?;
    crate::ensure!(
        check.first().map(String::as_str) == Some("ok"),
        "{shown} is damaged (SQLite's quick_check: {})",
        check.join("; ")
    );
    Ok(conn)
}

/// A column's value as text or NULL; any other type is refused, naming the row and column.
fn text(v: Sql, row: &str, col: &str) -> Result<Option<String>> {
    match v {
        Sql::Null => Ok(None),
        Sql::Text(s) => Ok(Some(s)),
        Sql::Integer(_) | Sql::Real(_) => {
            crate::bail!("{row}: {col}: holds a number, expected text")
        }
        Sql::Blob(_) => crate::bail!("{row}: {col}: holds binary data, expected text"),
    }
}

/// Reads the machines of a reference (or archived) `state.db`, without writing to it.
pub fn read_state(path: &Path) -> Result<StoredState> {
    let shown = path.display();
    let conn = open_read_only(path)?;
    let columns = |table: &str| -> Result<Vec<String>> {
        conn.prepare("SELECT name FROM pragma_table_info(?1)")
            .and_then(|mut st| st.query_map([table], |r| r.get(0))?.collect())
            .with_context(|| format!("reading the columns of {table} in {shown}"))
    };
    let version = {
        let one = |sql: &str| -> Option<String> {
            conn.query_row(sql, [], |r| r.get::<_, Option<String>>(0))
                .optional()
                .ok()
                .flatten()
                .flatten()
        };
        one("SELECT version FROM bty_version LIMIT 1")
            .or_else(|| one("SELECT value FROM meta WHERE key = 'bty_version'"))
            .or_else(|| one("SELECT value FROM meta WHERE key = 'schema_version'"))
    };
    let cols = columns("machines")?;
    crate::ensure!(
        cols.iter().any(|c| c == "mac"),
        "{shown}: no machines table with a mac column: not a bty-web state.db"
    );
    // Known columns only, each as itself or NULL: extra columns are none of our business.
    let pick = |names: &[&str]| -> String {
        names
            .iter()
            .find(|n| cols.iter().any(|c| c == *n))
            .map_or_else(|| "NULL".to_string(), |n| format!("\"{n}\""))
    };
    let sql = format!(
        "SELECT mac, {}, {}, {} FROM machines ORDER BY mac",
        pick(&["known_disks"]),
        pick(&["known_disks_at"]),
        // The reference's column, or ours (an archived bty-rs database).
        pick(&["hw_lshw", "lshw"]),
    );
    let rows: Vec<[Sql; 4]> = conn
        .prepare(&sql)
        .and_then(|mut st| {
            st.query_map([], |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?]))?.collect()
        })
        .with_context(|| format!("reading the machines of {shown}"))?;
    let label_cols = columns("machine_labels")?;
    let has_labels = ["mac", "label"].iter().all(|n| label_cols.iter().any(|c| c == n));
    let labels_json = cols.iter().any(|c| c == "labels");
    let mut machines = Vec::with_capacity(rows.len());
    for (i, [mac, disks, disks_at, lshw]) in rows.into_iter().enumerate() {
        let row = format!("{shown}: machines row {}", i + 1);
        let Some(mac) = text(mac, &row, "mac")? else { crate::bail!("{row}: mac: empty (NULL)") };
        let row = format!("{shown}: machine {}", show(&mac));
        let mut m = StoredMachine {
            known_disks: text(disks, &row, "known_disks")?,
            known_disks_at: text(disks_at, &row, "known_disks_at")?,
            lshw: text(lshw, &row, "hw_lshw")?,
            ..Default::default()
        };
        if has_labels {
            let got: Vec<Sql> = conn
                .prepare_cached("SELECT label FROM machine_labels WHERE mac = ?1 ORDER BY label")
                .and_then(|mut st| st.query_map([&mac], |r| r.get(0))?.collect())
                .with_context(|| format!("reading the labels of {row}"))?;
            for l in got {
                m.labels.extend(text(l, &row, "machine_labels.label")?);
            }
        } else if labels_json {
            let v: Sql = conn
                .query_row("SELECT labels FROM machines WHERE mac = ?1", [&mac], |r| r.get(0))
                .with_context(|| format!("reading the labels of {row}"))?;
            if let Some(t) = text(v, &row, "labels")? {
                m.labels = serde_json::from_str(&t).map_err(|e| {
                    crate::error::Error::msg(format!(
                        "{row}: labels: expected a JSON array of strings ({e})"
                    ))
                })?;
            }
        }
        m.mac = mac;
        machines.push(m);
    }
    Ok(StoredState { version, machines })
}
