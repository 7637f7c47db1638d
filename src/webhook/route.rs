//! Which route variable's URL an event's webhook goes to.
//!
//! The variables are data ([`ROUTE_TABLE`]): each names the event type it takes and,
//! for risk alerts, the severity, as an endpoint's `event_types` and `filter` would
//! ([`crate::endpoint::env_endpoints`] shows them so). An event goes to the first
//! variable of the table that is set and takes it, else to `PM_WEBHOOK_URL_<TYPE>`:
//!
//! | event | variable(s), first set wins |
//! | --- | --- |
//! | `file_change` | `FILE_CHANGE_WEBHOOK_URL`, `PM_WEBHOOK_URL_FILE_CHANGE` |
//! | `report_ready` | `REPORT_READY_WEBHOOK_URL`, `PM_WEBHOOK_URL_REPORT_READY` |
//! | `risk_alert` | `<SEVERITY>_ALERT_WEBHOOK_URL` (`CRITICAL`, `HIGH`, `MEDIUM`, `LOW`), `DEFAULT_RISK_WEBHOOK_URL`, `PM_WEBHOOK_URL_RISK_ALERT` |
//! | any other type `t` | `PM_WEBHOOK_URL_<T>`: `t` upper-cased, `-` and `.` as `_` (`deployment` → `PM_WEBHOOK_URL_DEPLOYMENT`) |

use crate::config::{CUSTOM_WEBHOOK_PREFIX, Config};
pub use crate::config::{ROUTE_TABLE, RouteVariable, table_entry};
use crate::endpoint::filter::Filter;
use crate::event::Event;
use serde_json::json;
use std::collections::BTreeMap;

/// One destination: the variable that named it and its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The configuration variable the URL came from (e.g. `FILE_CHANGE_WEBHOOK_URL`).
    pub name: String,
    /// The URL.
    pub url: String,
}

/// A set variable of the table, ready to match.
#[derive(Debug, Clone)]
struct Matcher {
    route: Route,
    event_type: &'static str,
    filter: Option<Filter>,
}

/// The webhook routes of a configuration.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    urls: BTreeMap<String, String>,
    /// The set variables of [`ROUTE_TABLE`], in its order.
    table: Vec<Matcher>,
}

/// The `PM_WEBHOOK_URL_<TYPE>` variable of an event type.
pub fn custom_var(event_type: &str) -> String {
    format!(
        "{CUSTOM_WEBHOOK_PREFIX}{}",
        event_type.to_ascii_uppercase().replace(['-', '.'], "_")
    )
}

impl Routes {
    /// The routes configured in `config`.
    pub fn from_config(config: &Config) -> Self {
        Self::from_pairs(config.webhook_urls.clone())
    }

    /// Routes from `(variable, url)` pairs.
    pub fn from_pairs<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Self {
        let urls: BTreeMap<String, String> = pairs.into_iter().collect();
        let table = ROUTE_TABLE
            .iter()
            .filter_map(|v| {
                Some(Matcher {
                    route: Route {
                        name: v.name.to_string(),
                        url: urls.get(v.name)?.clone(),
                    },
                    event_type: v.event_type,
                    filter: v.filter().and_then(|f| Filter::compile(&f).ok()),
                })
            })
            .collect();
        Routes { urls, table }
    }

    /// Every route: `(variable, url)`, by variable name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.urls.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether no route is configured at all.
    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// The route named by the first of `names` that is set.
    pub fn first(&self, names: &[&str]) -> Option<Route> {
        names.iter().find_map(|n| {
            self.urls.get(*n).map(|u| Route {
                name: n.to_string(),
                url: u.clone(),
            })
        })
    }

    /// The route of the alerts of `severity` (`critical`, `high`, `medium`, `low`),
    /// falling back to `DEFAULT_RISK_WEBHOOK_URL`, then `PM_WEBHOOK_URL_RISK_ALERT`
    /// (the risk handler's escalation asks for the next severity's).
    pub fn for_severity(&self, severity: &str) -> Option<Route> {
        self.for_event(&Event::new("risk_alert", json!({ "severity": severity })))
    }

    /// The route of `event`, if one is configured: the first variable of the table
    /// that is set and takes it, else its `PM_WEBHOOK_URL_<TYPE>`.
    pub fn for_event(&self, event: &Event) -> Option<Route> {
        self.table
            .iter()
            .find(|m| {
                m.event_type == event.event_type
                    && m.filter.as_ref().is_none_or(|f| f.matches(event))
            })
            .map(|m| m.route.clone())
            .or_else(|| self.first(&[&custom_var(&event.event_type)]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn route_variables_route_and_risk_falls_back() {
        let r = Routes::from_pairs(
            [
                ("FILE_CHANGE_WEBHOOK_URL", "http://h/files"),
                ("CRITICAL_ALERT_WEBHOOK_URL", "http://h/critical"),
                ("DEFAULT_RISK_WEBHOOK_URL", "http://h/risk"),
                ("PM_WEBHOOK_URL_DEPLOYMENT", "http://h/deploy"),
                ("PM_WEBHOOK_URL_MY_TYPE", "http://h/my"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string())),
        );
        let url = |t: &str, d| r.for_event(&Event::new(t, d)).map(|r| r.url);
        assert_eq!(
            url("file_change", json!({})).as_deref(),
            Some("http://h/files")
        );
        assert_eq!(url("report_ready", json!({})), None);
        assert_eq!(
            url("risk_alert", json!({"severity": "critical"})).as_deref(),
            Some("http://h/critical")
        );
        assert_eq!(
            url("risk_alert", json!({"severity": "low"})).as_deref(),
            Some("http://h/risk")
        );
        assert_eq!(
            url("risk_alert", json!({})).as_deref(),
            Some("http://h/risk")
        );
        assert_eq!(
            url("deployment", json!({})).as_deref(),
            Some("http://h/deploy")
        );
        assert_eq!(url("my-type", json!({})).as_deref(), Some("http://h/my"));
        assert_eq!(url("other", json!({})), None);
    }
}
