//! `App`: the server's shared state, what every route, worker and page can reach. Here, below
//! the routes and the pages that use it, so that none of them imports another for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::web::auth::Auth;
use crate::web::config::Settings;
use crate::web::db::Db;
use crate::web::http::Resp;
use crate::web::metrics::Metrics;
use crate::web::sse::Hub;
use crate::web::{pxe, validate};

/// What every route can reach.
pub struct App {
    /// The settings in force: replaced when the Settings page saves one that applies at once.
    settings: RwLock<Arc<Settings>>,
    pub db: Db,
    pub auth: Auth,
    /// Latest flash progress per MAC, as the live environment reports it (not persisted).
    pub progress: Mutex<HashMap<String, crate::wire::Progress>>,
    /// Live-update subscribers.
    pub hub: Arc<Hub>,
    /// Counters for /metrics.
    pub metrics: Metrics,
    /// Background jobs' cancel flags.
    pub jobs: crate::web::jobs::Jobs,
    /// `GET /machines` as last serialised, with the database generation it was built at.
    pub machines_json: Mutex<Option<(u64, Arc<[u8]>)>>,
    /// The image cache, when `[cache] dir` is set.
    pub cache: Option<Arc<crate::web::cache::Cache>>,
    /// The per-address discovery rate and the capped-event throttle.
    pub discovery: pxe::Discovery,
    /// The `pxe.offered` events logged lately, so a retrying firmware's repeats are not.
    pub offers: crate::web::offers::Offers,
}

impl App {
    /// An App over `settings` and the rest of what it holds.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: Settings,
        db: Db,
        auth: Auth,
        cache: Option<Arc<crate::web::cache::Cache>>,
        discovery: pxe::Discovery,
    ) -> App {
        App {
            settings: RwLock::new(Arc::new(settings)),
            db,
            auth,
            progress: Default::default(),
            hub: Default::default(),
            metrics: Default::default(),
            jobs: Default::default(),
            machines_json: Default::default(),
            cache,
            discovery,
            offers: Default::default(),
        }
    }

    /// The settings in force now.
    pub fn settings(&self) -> Arc<Settings> {
        Arc::clone(&self.settings.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Puts `settings` in force (a saved change that applies at once).
    pub fn set_settings(&self, settings: Settings) {
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(settings);
    }

    /// `GET /machines`: the whole table as JSON, built once per database change. Polling
    /// dashboards and scripts then cost a copy of a shared buffer, not a query and a
    /// serialisation of the fleet each.
    pub fn machines_json(&self) -> crate::error::Result<Arc<[u8]>> {
        let generation = self.db.generation();
        if let Some((g, json)) = &*self.machines_json.lock().unwrap_or_else(|p| p.into_inner()) {
            if *g == generation {
                return Ok(Arc::clone(json));
            }
        }
        let all = self.db.machines()?;
        let json: Arc<[u8]> = serde_json::to_vec(&all)
            .map_err(|e| crate::error::Error::msg(format!("encoding the machines: {e}")))?
            .into();
        *self.machines_json.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((generation, Arc::clone(&json)));
        Ok(json)
    }

    /// The machines table as the live updates send it: every machine with its flash progress.
    pub fn snapshot(&self) -> crate::error::Result<String> {
        let machines = self.db.machines()?;
        let progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        let rows: Vec<serde_json::Value> =
            machines.iter().map(|m| live_row(m, progress.get(&m.mac))).collect();
        Ok(serde_json::Value::Array(rows).to_string())
    }

    /// The rows of `macs` as a delta sends them (a snapshot's rows), None for a machine gone.
    pub fn live_rows(
        &self,
        macs: &[String],
    ) -> crate::error::Result<Vec<(String, Option<String>)>> {
        let machines =
            macs.iter().map(|mac| self.db.machine(mac)).collect::<Result<Vec<_>, _>>()?;
        let progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        Ok(macs
            .iter()
            .zip(machines)
            .map(|(mac, m)| (mac.clone(), m.map(|m| live_row(&m, progress.get(mac)).to_string())))
            .collect())
    }
}

/// One machine as the live updates send it: the API's `Machine` with its `flash_progress`.
fn live_row(
    m: &crate::web::db::Machine,
    progress: Option<&crate::wire::Progress>,
) -> serde_json::Value {
    let mut v = serde_json::json!(m);
    if let Some(o) = v.as_object_mut() {
        o.insert("flash_progress".into(), serde_json::json!(progress));
    }
    v
}

/// Logs an internal error and answers 500 without its details.
pub fn internal(e: crate::error::Error) -> Resp {
    crate::error!("{e}");
    Resp::error(500, "internal error (see the server log)")
}

/// Answers rejected input: 422, or 400 for a bad file name, with the field named.
pub fn bad(e: validate::Invalid) -> Resp {
    Resp::error(e.status(), &e.to_string())
}
