//! Which URL an event's webhook goes to.
//!
//! | event | variable(s), first set wins |
//! | --- | --- |
//! | `file_change` | `FILE_CHANGE_WEBHOOK_URL`, `PM_WEBHOOK_URL_FILE_CHANGE` |
//! | `report_ready` | `REPORT_READY_WEBHOOK_URL`, `PM_WEBHOOK_URL_REPORT_READY` |
//! | `risk_alert` | `<SEVERITY>_ALERT_WEBHOOK_URL` (`CRITICAL`, `HIGH`, `MEDIUM`, `LOW`), `DEFAULT_RISK_WEBHOOK_URL`, `PM_WEBHOOK_URL_RISK_ALERT` |
//! | any other type `t` | `PM_WEBHOOK_URL_<T>`: `t` upper-cased, `-` as `_` (`deployment` → `PM_WEBHOOK_URL_DEPLOYMENT`) |

use crate::config::{CUSTOM_WEBHOOK_PREFIX, Config};
use crate::event::Event;
use std::collections::BTreeMap;

/// One destination: the variable that named it and its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The configuration variable the URL came from (e.g. `FILE_CHANGE_WEBHOOK_URL`).
    pub name: String,
    /// The URL.
    pub url: String,
}

/// The webhook routes of a configuration.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    urls: BTreeMap<String, String>,
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
        Routes {
            urls: config.webhook_urls.clone(),
        }
    }

    /// Routes from `(variable, url)` pairs.
    pub fn from_pairs<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Self {
        Routes {
            urls: pairs.into_iter().collect(),
        }
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
    /// falling back to `DEFAULT_RISK_WEBHOOK_URL`.
    pub fn for_severity(&self, severity: &str) -> Option<Route> {
        let var = format!("{}_ALERT_WEBHOOK_URL", severity.to_ascii_uppercase());
        self.first(&[
            &var,
            "DEFAULT_RISK_WEBHOOK_URL",
            "PM_WEBHOOK_URL_RISK_ALERT",
        ])
    }

    /// The route of `event`, if one is configured.
    pub fn for_event(&self, event: &Event) -> Option<Route> {
        let custom = custom_var(&event.event_type);
        match event.event_type.as_str() {
            "file_change" => self.first(&["FILE_CHANGE_WEBHOOK_URL", &custom]),
            "report_ready" => self.first(&["REPORT_READY_WEBHOOK_URL", &custom]),
            "risk_alert" => {
                let sev = event
                    .data
                    .get("severity")
                    .and_then(|s| s.as_str())
                    .unwrap_or("");
                if ["critical", "high", "medium", "low"].contains(&sev) {
                    self.for_severity(sev)
                } else {
                    self.first(&["DEFAULT_RISK_WEBHOOK_URL", &custom])
                }
            }
            _ => self.first(&[&custom]),
        }
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
