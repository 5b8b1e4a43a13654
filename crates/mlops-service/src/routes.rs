//! Every HTTP route of a service and the role it requires, in one table per service, so
//! that authorisation is one layer reading the table rather than a check in each handler.
//! The admin endpoints (`/healthz`, `/readyz`, `/metrics`) are not in the tables: they stay
//! open to probes and scrapers.

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads what the platform holds (views, features, snapshots, models).
    Reader,
    /// Sends data in (events, labels).
    Producer,
    /// Declares and changes things (datasets, views, model specs, training runs).
    Operator,
    /// Moves model versions between stages and rolls them back.
    Approver,
}

/// One route: method, path as written in the router (`{name}` for a parameter), role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub role: Role,
}

impl Route {
    pub const fn new(method: &'static str, path: &'static str, role: Role) -> Self {
        Self { method, path, role }
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
}

/// The role `table` requires for `method` on the router's matched `path`, if it lists it.
pub fn role_of(table: &[Route], method: &str, path: &str) -> Option<Role> {
    table
        .iter()
        .find(|r| r.method.eq_ignore_ascii_case(method) && r.path == path)
        .map(|r| r.role)
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
    }
}
