//! The `risk_alert` and `risk_resolved` payloads: their fields, and the checks an
//! event must pass before it is handled.

use crate::handlers::common::{HandleError, check_time, decode, extra_fields, one_of};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Kind of risk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RiskType {
    /// Security.
    Security,
    /// Performance.
    Performance,
    /// Compliance.
    Compliance,
    /// Financial.
    Financial,
}

one_of!(RiskType { Security => "security", Performance => "performance", Compliance => "compliance", Financial => "financial" });

/// How bad it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Critical.
    Critical,
}

one_of!(Severity { Low => "low", Medium => "medium", High => "high", Critical => "critical" });

impl Severity {
    /// The severity name as in the payload.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
    /// The next severity up (critical stays critical).
    pub fn next(self) -> Severity {
        match self {
            Severity::Low => Severity::Medium,
            Severity::Medium => Severity::High,
            Severity::High | Severity::Critical => Severity::Critical,
        }
    }
}

/// The `risk_alert` payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RiskAlert {
    /// Alert id.
    pub alert_id: String,
    /// Kind of risk.
    pub risk_type: RiskType,
    /// Severity.
    pub severity: Severity,
    /// Short description.
    pub title: String,
    /// Long description.
    #[serde(default)]
    pub description: String,
    /// Affected resources.
    #[serde(default)]
    pub affected_resources: Vec<String>,
    /// Score from 0 to 1.
    pub risk_score: f64,
    /// When it was detected (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detected_at: Option<String>,
    /// Detecting system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_system: Option<String>,
    /// Steps to mitigate.
    #[serde(default)]
    pub mitigation_steps: Vec<String>,
    /// Metadata: a JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    /// Fields the specification does not name, kept.
    #[serde(flatten, skip_deserializing)]
    pub extra: Map<String, Value>,
}

impl RiskAlert {
    /// Decodes and checks a payload.
    pub fn parse(data: &Value) -> Result<Self, HandleError> {
        let mut a: RiskAlert = decode("risk_alert", data)?;
        a.extra = extra_fields(
            data,
            &[
                "alert_id",
                "risk_type",
                "severity",
                "title",
                "description",
                "affected_resources",
                "risk_score",
                "detected_at",
                "source_system",
                "mitigation_steps",
                "metadata",
            ],
        );
        let bad = |m: String| HandleError::invalid("risk_alert", m);
        crate::event::validate_id("data.alert_id", &a.alert_id).map_err(bad)?;
        if !(0.0..=1.0).contains(&a.risk_score) {
            return Err(bad(format!(
                "data.risk_score: expected a number from 0 to 1, got {}",
                a.risk_score
            )));
        }
        check_time("detected_at", &a.detected_at).map_err(bad)?;
        Ok(a)
    }
}

/// The `risk_resolved` payload: an open alert was dealt with.
///
/// `alert_id` is required; `resolved_by`, `note` and `resolved_at` (RFC 3339) are
/// optional; other fields (the dashboard sends the alert's `title` and `severity`)
/// are kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RiskResolution {
    /// The alert resolved.
    pub alert_id: String,
    /// Who resolved it (the dashboard sends `dashboard`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_by: Option<String>,
    /// Why, or what was done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// When (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<String>,
    /// Fields not named above, kept.
    #[serde(flatten, skip_deserializing)]
    pub extra: Map<String, Value>,
}

impl RiskResolution {
    /// Decodes and checks a payload.
    pub fn parse(data: &Value) -> Result<Self, HandleError> {
        let mut r: RiskResolution = decode("risk_resolved", data)?;
        r.extra = extra_fields(data, &["alert_id", "resolved_by", "note", "resolved_at"]);
        crate::event::validate_id("data.alert_id", &r.alert_id)
            .map_err(|m| HandleError::invalid("risk_resolved", m))?;
        check_time("resolved_at", &r.resolved_at)
            .map_err(|m| HandleError::invalid("risk_resolved", m))?;
        Ok(r)
    }
}
