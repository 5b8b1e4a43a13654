//! Every HTTP route of a service and the role it requires, in one table per service, so
//! that authorisation is one layer reading the table rather than a check in each handler.
//!
//! Routers are built with [`Api`], which refuses (at start, by panicking) a route its table
//! does not declare: an endpoint without a role cannot be served. The probes (`/healthz`,
//! `/readyz`, `/metrics`, OIP's `/v2/health/*`) are [`OPEN`]: no role, no token.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Router,
    handler::Handler,
    routing::{MethodRouter, delete, get, post, put},
};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads what the platform holds (views, features, snapshots, models, reports).
    Reader,
    /// Asks a served model for predictions.
    Inference,
    /// Sends data in (events, labels) to a dataset.
    Producer,
    /// Declares and changes things (datasets, schemas, views, model specs, training runs).
    Operator,
    /// Moves model versions between stages and rolls them back.
    Approver,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Reader,
        Role::Inference,
        Role::Producer,
        Role::Operator,
        Role::Approver,
    ];
}

/// Paths every service leaves open: liveness, readiness and the metrics scrape (which
/// `auth.protect_metrics` closes to readers).
pub const OPEN: &[&str] = &[
    "/healthz",
    "/readyz",
    "/metrics",
    "/v2/health/live",
    "/v2/health/ready",
];

/// One route: method, path as written in the router (`{name}` for a parameter, and
/// `{name}:verb` for a custom method in Google's API style), role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub role: Role,
    /// The action an audit record names when this route changes state
    /// (`model.transition`); routes without one are audited only when refused.
    pub audit: Option<&'static str>,
}

impl Route {
    pub const fn new(method: &'static str, path: &'static str, role: Role) -> Self {
        Self {
            method,
            path,
            role,
            audit: None,
        }
    }

    /// This route changes the platform's state: every call is audited as `action`.
    pub const fn audited(mut self, action: &'static str) -> Self {
        self.audit = Some(action);
        self
    }

    /// `path` with every `{parameter}` replaced by `value`, for probing the router.
    pub fn example_path(&self, value: &str) -> String {
        let mut out = String::new();
        let mut rest = self.path;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let close = rest[open..].find('}').map_or(rest.len(), |c| open + c + 1);
            out.push_str(value);
            rest = &rest[close..];
        }
        out.push_str(rest);
        out
    }

    /// How specifically this route's path matches a request path (more literal text,
    /// higher), or `None` when it does not.
    fn specificity(&self, path: &str) -> Option<usize> {
        // Segment by segment, without collecting: this runs for every route of the table
        // on every request.
        let (mut template, mut actual) = (self.path.split('/'), path.split('/'));
        let mut score = 0;
        loop {
            match (template.next(), actual.next()) {
                (Some(t), Some(a)) => score += segment_match(t, a)?,
                (None, None) => return Some(score),
                _ => return None,
            }
        }
    }

    /// The value of `{parameter}` in a request `path` this route matches.
    pub fn parameter<'p>(&self, path: &'p str, parameter: &str) -> Option<&'p str> {
        self.path
            .split('/')
            .zip(path.split('/'))
            .find_map(|(t, a)| {
                let suffix = t
                    .strip_prefix('{')?
                    .strip_prefix(parameter)?
                    .strip_prefix('}')?;
                a.strip_suffix(suffix)
            })
    }
}

/// Literal characters matched by a template segment against a path segment.
fn segment_match(template: &str, actual: &str) -> Option<usize> {
    match template.find('{') {
        None => (template == actual).then_some(template.len() + 1),
        Some(open) => {
            let close = template.find('}')?;
            let (prefix, suffix) = (&template[..open], &template[close + 1..]);
            let middle = actual.strip_prefix(prefix)?.strip_suffix(suffix)?;
            (!middle.is_empty()).then_some(prefix.len() + suffix.len())
        }
    }
}

/// The route of `table` a request (`method`, `path`) calls, the most specific if several
/// match (`/v1/models/{name}:rollback` before `/v1/models/{name}`).
pub fn route_for<'t>(table: &'t [Route], method: &str, path: &str) -> Option<&'t Route> {
    table
        .iter()
        .filter(|r| r.method.eq_ignore_ascii_case(method))
        .filter_map(|r| r.specificity(path).map(|s| (s, r)))
        .max_by_key(|(s, _)| *s)
        .map(|(_, r)| r)
}

/// A service's route tables, indexed for the lookup every request makes: by the router's
/// matched template when the router has matched one, by scanning the tables otherwise.
#[derive(Debug, Clone)]
pub struct RouteIndex {
    table: Arc<[Route]>,
    /// Template → its routes (one per method), for the templates no custom verb shares: a
    /// template serving `…:verb` routes too is left to the scan, which tells them apart.
    by_template: Arc<HashMap<&'static str, Vec<Route>>>,
}

impl RouteIndex {
    pub fn new(tables: &[&'static [Route]]) -> Self {
        let table: Arc<[Route]> = tables.iter().flat_map(|t| t.iter().copied()).collect();
        let has_verbs = |route: &Route| {
            table.iter().any(|other| {
                other.method == route.method
                    && other
                        .path
                        .strip_prefix(route.path)
                        .is_some_and(|rest| rest.starts_with(':'))
            })
        };
        let mut by_template: HashMap<&'static str, Vec<Route>> = HashMap::new();
        for route in table.iter().filter(|route| !has_verbs(route)) {
            by_template.entry(route.path).or_default().push(*route);
        }
        Self {
            table,
            by_template: Arc::new(by_template),
        }
    }

    /// The route a request (`method`, `path`) calls; `matched` is the template the router
    /// matched it to (axum's `MatchedPath`), when it did.
    pub fn find(&self, method: &str, path: &str, matched: Option<&str>) -> Option<&Route> {
        let indexed = matched
            .and_then(|template| self.by_template.get(template))
            .and_then(|routes| {
                routes
                    .iter()
                    .find(|r| r.method.eq_ignore_ascii_case(method))
            });
        indexed.or_else(|| route_for(&self.table, method, path))
    }

    /// Whether some route serves `path` with another method (405 rather than 404).
    pub fn path_known(&self, path: &str) -> bool {
        path_known(&self.table, path)
    }
}

/// Whether some route of `table` serves `path` with another method (405 rather than 404).
pub fn path_known(table: &[Route], path: &str) -> bool {
    table.iter().any(|r| r.specificity(path).is_some())
}

/// The role `table` requires for `method` on `path`, if it lists it.
pub fn role_of(table: &[Route], method: &str, path: &str) -> Option<Role> {
    route_for(table, method, path).map(|r| r.role)
}

/// A service's router under construction, each route checked against its table.
pub struct Api<S = ()> {
    router: Router<S>,
    table: &'static [Route],
    served: Vec<(&'static str, String)>,
}

impl<S: Clone + Send + Sync + 'static> Api<S> {
    pub fn new(table: &'static [Route]) -> Self {
        Self {
            router: Router::new(),
            table,
            served: Vec::new(),
        }
    }

    pub fn get<H: Handler<T, S>, T: 'static>(self, path: &str, handler: H) -> Self {
        self.add("GET", path, &[], get(handler))
    }

    pub fn post<H: Handler<T, S>, T: 'static>(self, path: &str, handler: H) -> Self {
        self.add("POST", path, &[], post(handler))
    }

    pub fn put<H: Handler<T, S>, T: 'static>(self, path: &str, handler: H) -> Self {
        self.add("PUT", path, &[], put(handler))
    }

    pub fn delete<H: Handler<T, S>, T: 'static>(self, path: &str, handler: H) -> Self {
        self.add("DELETE", path, &[], delete(handler))
    }

    /// A `POST` on `path` that reads custom verbs from its last parameter
    /// (`/v1/models/{name}` serving `…:rollback`): each `path:verb` must be declared.
    pub fn post_verbs<H: Handler<T, S>, T: 'static>(
        self,
        path: &str,
        verbs: &[&str],
        handler: H,
    ) -> Self {
        self.add("POST", path, verbs, post(handler))
    }

    /// A probe route, open to anyone: only paths of [`OPEN`].
    pub fn open<H: Handler<T, S>, T: 'static>(mut self, path: &str, handler: H) -> Self {
        assert!(OPEN.contains(&path), "{path} is not an open probe path");
        self.served.push(("GET", path.to_owned()));
        self.router = self.router.route(path, get(handler));
        self
    }

    /// A route whose method router carries layers of its own (a body limit): `method` names
    /// the one method it serves.
    pub fn route(self, method: &'static str, path: &str, handler: MethodRouter<S>) -> Self {
        self.add(method, path, &[], handler)
    }

    fn add(
        mut self,
        method: &'static str,
        path: &str,
        verbs: &[&str],
        handler: MethodRouter<S>,
    ) -> Self {
        let declared: Vec<String> = if verbs.is_empty() {
            vec![path.to_owned()]
        } else {
            verbs.iter().map(|v| format!("{path}:{v}")).collect()
        };
        for path in declared {
            assert!(
                self.table
                    .iter()
                    .any(|r| r.method == method && r.path == path),
                "{method} {path} is served but its route table declares no role for it"
            );
            self.served.push((method, path));
        }
        self.router = self.router.route(path, handler);
        self
    }

    /// Every (method, path) this API serves, as its table would name them.
    pub fn served(&self) -> &[(&'static str, String)] {
        &self.served
    }

    pub fn table(&self) -> &'static [Route] {
        self.table
    }

    pub fn into_router(self) -> Router<S> {
        self.router
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_filled_and_roles_found() {
        let route = Route::new(
            "GET",
            "/v1/feature-views/{view}/versions/{version}",
            Role::Reader,
        );
        assert_eq!(route.example_path("x"), "/v1/feature-views/x/versions/x");
        let table = [route, Route::new("POST", "/v1/datasets", Role::Operator)];
        assert_eq!(
            role_of(&table, "post", "/v1/datasets"),
            Some(Role::Operator)
        );
        assert_eq!(role_of(&table, "GET", "/v1/datasets"), None);
        assert_eq!(
            role_of(&table, "GET", "/v1/feature-views/a/versions/3"),
            Some(Role::Reader)
        );
        assert_eq!(role_of(&table, "GET", "/v1/feature-views/a/versions"), None);
        assert_eq!(
            role_of(&table, "GET", "/v1/feature-views//versions/3"),
            None
        );
        assert!(path_known(&table, "/v1/datasets"));
    }

    #[test]
    fn custom_verbs_are_told_apart() {
        let table = [
            Route::new("GET", "/v1/models/{name}", Role::Reader),
            Route::new("POST", "/v1/models/{name}:rollback", Role::Approver),
            Route::new("POST", "/v1/models/{name}:predict", Role::Inference),
        ];
        assert_eq!(
            role_of(&table, "POST", "/v1/models/churn:rollback"),
            Some(Role::Approver)
        );
        assert_eq!(
            role_of(&table, "POST", "/v1/models/churn:predict"),
            Some(Role::Inference)
        );
        assert_eq!(role_of(&table, "POST", "/v1/models/churn"), None);
        assert_eq!(role_of(&table, "POST", "/v1/models/:rollback"), None);
        let route = route_for(&table, "POST", "/v1/models/churn:rollback").unwrap();
        assert_eq!(
            route.parameter("/v1/models/churn:rollback", "name"),
            Some("churn")
        );
    }

    #[test]
    fn the_index_finds_what_the_scan_finds() {
        static MODELS: &[Route] = &[
            Route::new("GET", "/v1/models/{name}", Role::Reader),
            // A template that serves custom verbs as well as itself.
            Route::new("POST", "/v1/models/{name}", Role::Operator),
            Route::new("POST", "/v1/models/{name}:rollback", Role::Approver),
        ];
        static DATASETS: &[Route] = &[Route::new(
            "POST",
            "/v1/datasets/{name}/events",
            Role::Producer,
        )];
        let index = RouteIndex::new(&[MODELS, DATASETS]);
        let role = |method, path, matched| index.find(method, path, matched).map(|r| r.role);
        let models = Some("/v1/models/{name}");
        assert_eq!(role("GET", "/v1/models/churn", models), Some(Role::Reader));
        assert_eq!(
            role("POST", "/v1/models/churn", models),
            Some(Role::Operator)
        );
        // axum matches `…:rollback` to the bare template: the verb still decides.
        assert_eq!(
            role("POST", "/v1/models/churn:rollback", models),
            Some(Role::Approver)
        );
        let events = Some("/v1/datasets/{name}/events");
        assert_eq!(
            role("POST", "/v1/datasets/d/events", events),
            Some(Role::Producer)
        );
        assert_eq!(
            role("POST", "/v1/datasets/d/events", None),
            Some(Role::Producer)
        );
        // Another method on a known template: no route, and the path is known (405).
        assert_eq!(role("DELETE", "/v1/datasets/d/events", events), None);
        assert!(index.path_known("/v1/datasets/d/events"));
        assert!(!index.path_known("/v1/nothing"));
    }

    #[test]
    #[should_panic(expected = "declares no role")]
    fn an_undeclared_route_cannot_be_served() {
        static TABLE: &[Route] = &[Route::new("GET", "/v1/things", Role::Reader)];
        let _ = Api::<()>::new(TABLE)
            .get("/v1/things", || async { "ok" })
            .post("/v1/things", || async { "ok" });
    }
}
