//! The query strings of the HTTP API (`?type=&since=&limit=&cursor=`), parsed
//! without trusting them: names not offered and repeated names are refused,
//! `limit` is a whole number in range, and each refusal names the parameter.
//! Times and durations in them are parsed by [`crate::timespec`].

use std::collections::HashMap;

/// The default `limit` of a list.
pub const DEFAULT_LIMIT: usize = 50;

/// The largest `limit` of a list.
pub const MAX_LIMIT: usize = 1000;

/// Why a query string was refused: the message names the parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QueryError(pub String);

/// The parameters of `raw` (URL-encoded), refusing names not in `allowed` and
/// names given twice.
pub fn params(raw: Option<&str>, allowed: &[&str]) -> Result<HashMap<String, String>, QueryError> {
    let mut out = HashMap::new();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        if !allowed.contains(&k.as_ref()) {
            return Err(QueryError(format!(
                "{k}: unknown parameter (expected one of {})",
                allowed.join(", ")
            )));
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(QueryError(format!("{k}: given twice")));
        }
    }
    Ok(out)
}

/// The `limit` of a list: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when absent.
pub fn limit(v: Option<&str>) -> Result<usize, QueryError> {
    match v {
        None => Ok(DEFAULT_LIMIT),
        Some(t) => match t.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(QueryError(format!(
                "limit: expected a whole number from 1 to {MAX_LIMIT}"
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_repeated_and_out_of_range_parameters_are_named() {
        let ok = params(Some("type=a&limit=5"), &["type", "limit"]).unwrap();
        assert_eq!(ok["type"], "a");
        assert!(
            params(Some("x=1"), &["type"])
                .unwrap_err()
                .0
                .starts_with("x:")
        );
        assert!(
            params(Some("type=a&type=b"), &["type"])
                .unwrap_err()
                .0
                .starts_with("type:")
        );
        assert_eq!(limit(None), Ok(DEFAULT_LIMIT));
        for bad in ["0", "1001", "-1", "1e3", "99999999999999999999999"] {
            assert!(
                limit(Some(bad)).unwrap_err().0.starts_with("limit:"),
                "{bad}"
            );
        }
    }
}
