//! The online store: the latest feature vector of every entity of every view, in memory for
//! sub-millisecond lookups. It is rebuilt from the offline store when a view's stream job
//! starts, so after a restart it equals a fresh recomputation.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use polars::prelude::*;
use serde::Serialize;
use serde_json::{Map, Value as Json};

/// One entity's latest vector.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OnlineRow {
    pub entity_id: String,
    pub event_time: i64,
    pub view_version: i32,
    pub features: Map<String, Json>,
}

#[derive(Default)]
struct ViewRows {
    version: i32,
    rows: HashMap<String, Arc<OnlineRow>>,
}

#[derive(Default)]
pub struct OnlineStore {
    views: RwLock<HashMap<String, ViewRows>>,
}

impl OnlineStore {
    pub fn get(&self, view: &str, entity: &str) -> Option<Arc<OnlineRow>> {
        self.views
            .read()
            .expect("online store lock")
            .get(view)?
            .rows
            .get(entity)
            .cloned()
    }

    /// Forgets `entity`'s vector in `view` (an erasure). Whether it had one.
    pub fn remove(&self, view: &str, entity: &str) -> bool {
        self.views
            .write()
            .expect("online store lock")
            .get_mut(view)
            .is_some_and(|v| v.rows.remove(entity).is_some())
    }

    /// Entities with a vector in `view`.
    pub fn len(&self, view: &str) -> usize {
        self.views
            .read()
            .expect("online store lock")
            .get(view)
            .map_or(0, |v| v.rows.len())
    }

    /// Replaces the vectors of `view` by those of `latest` (one row per entity) computed by
    /// `version`.
    pub fn replace(
        &self,
        view: &str,
        version: i32,
        latest: &DataFrame,
        features: &[String],
    ) -> PolarsResult<()> {
        let rows = rows_of(latest, version, features)?;
        let mut views = self.views.write().expect("online store lock");
        views.insert(
            view.to_owned(),
            ViewRows {
                version,
                rows: rows
                    .into_iter()
                    .map(|r| (r.entity_id.clone(), Arc::new(r)))
                    .collect(),
            },
        );
        Ok(())
    }

    /// Applies a batch's latest rows: a vector replaces the stored one unless that is newer
    /// in event time. Rows of an older view version than the stored one are ignored.
    pub fn apply(
        &self,
        view: &str,
        version: i32,
        latest: &DataFrame,
        features: &[String],
    ) -> PolarsResult<()> {
        let rows = rows_of(latest, version, features)?;
        let mut views = self.views.write().expect("online store lock");
        let entry = views.entry(view.to_owned()).or_default();
        if entry.version > version {
            return Ok(());
        }
        if entry.version < version {
            entry.rows.clear();
            entry.version = version;
        }
        for row in rows {
            match entry.rows.get(&row.entity_id) {
                Some(stored) if stored.event_time > row.event_time => {}
                _ => {
                    entry.rows.insert(row.entity_id.clone(), Arc::new(row));
                }
            }
        }
        Ok(())
    }
}

/// Latest row of each entity: highest revision of each event, then the last event in
/// (event time, partition, offset) order — the order the stream applies them in.
pub fn latest_per_entity(rows: DataFrame) -> PolarsResult<DataFrame> {
    current_revisions(rows.lazy())
        .sort(
            ["event_time", "source_partition", "source_offset"],
            SortMultipleOptions::default().with_maintain_order(true),
        )
        .unique_stable(Some(cols(["entity_id"])), UniqueKeepStrategy::Last)
        .collect()
}

/// Keeps, of each source event, only the row of its highest revision.
pub fn current_revisions(rows: LazyFrame) -> LazyFrame {
    rows.sort(
        ["revision"],
        SortMultipleOptions::default().with_maintain_order(true),
    )
    .unique_stable(
        Some(cols(["source_partition", "source_offset"])),
        UniqueKeepStrategy::Last,
    )
}

fn rows_of(frame: &DataFrame, version: i32, features: &[String]) -> PolarsResult<Vec<OnlineRow>> {
    if frame.height() == 0 {
        return Ok(Vec::new());
    }
    let entities = frame.column("entity_id")?.str()?.clone();
    let times = frame.column("event_time")?.i64()?.clone();
    let columns: Vec<(&String, &Column)> = features
        .iter()
        .map(|name| frame.column(name).map(|c| (name, c)))
        .collect::<PolarsResult<_>>()?;
    let mut rows = Vec::with_capacity(frame.height());
    for i in 0..frame.height() {
        let (Some(entity), Some(time)) = (entities.get(i), times.get(i)) else {
            continue;
        };
        let mut values = Map::new();
        for (name, column) in &columns {
            values.insert((*name).clone(), mlops_ml::json_of(&column.get(i)?));
        }
        rows.push(OnlineRow {
            entity_id: entity.to_owned(),
            event_time: time,
            view_version: version,
            features: values,
        });
    }
    Ok(rows)
}
