//! Payload filters of managed endpoints: a small JSON operator language.
//!
//! A filter is a JSON object. Each key is either a dotted path into the event
//! (`type`, `source`, `event_id`, `timestamp`, `data.a.b`; a number selects an array
//! element, `data.items.0`) mapped to a condition, or a combinator:
//!
//! | form | matches when |
//! | --- | --- |
//! | `"path": value` | the value at `path` equals `value` (numbers compare by value) |
//! | `"path": {"$eq": v}` / `{"$ne": v}` | equal / not equal (a missing value is not equal) |
//! | `"path": {"$in": [..]}` / `{"$nin": [..]}` | equal to one of / none of the list |
//! | `"path": {"$gt": v}`, `$gte`, `$lt`, `$lte` | ordered compare; both numbers or both strings |
//! | `"path": {"$exists": true\|false}` | the path is present / absent |
//! | `"path": {"$prefix": "s"}` | a string starting with `s` |
//! | `"$and": [f, ..]`, `"$or": [f, ..]` | every / at least one filter matches |
//! | `"$not": f` | `f` does not match |
//!
//! Several keys in one object must all match; several operators on one path too.
//! [`Filter::compile`] refuses anything else, naming the path of the offending member
//! (`filter.data.size.$gt: expected a number or a string`).

use crate::event::Event;
use serde_json::Value;

/// A compiled filter, ready to test events.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    all: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    Path(Vec<String>, Vec<Cond>),
}

#[derive(Debug, Clone, PartialEq)]
enum Cond {
    Eq(Value),
    Ne(Value),
    In(Vec<Value>),
    Nin(Vec<Value>),
    Gt(Value),
    Gte(Value),
    Lt(Value),
    Lte(Value),
    Exists(bool),
    Prefix(String),
}

/// Why a filter was refused: the path of the member at fault and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct FilterError {
    /// Where, from `filter` (`filter.$or.1.data.size.$gt`).
    pub path: String,
    /// What was expected.
    pub problem: String,
}

/// Filters nest at most this deep (a bound on the work of one match).
const MAX_DEPTH: usize = 16;

fn err(path: &str, problem: impl Into<String>) -> FilterError {
    FilterError {
        path: path.to_string(),
        problem: problem.into(),
    }
}

fn comparable(v: &Value, at: &str) -> Result<(), FilterError> {
    match v {
        Value::Number(_) | Value::String(_) => Ok(()),
        _ => Err(err(at, "expected a number or a string")),
    }
}

impl Filter {
    /// Compiles `v` (the `filter` member of an endpoint); errors name the path from `filter`.
    pub fn compile(v: &Value) -> Result<Filter, FilterError> {
        Self::compile_at(v, "filter", 0)
    }

    fn compile_at(v: &Value, at: &str, depth: usize) -> Result<Filter, FilterError> {
        if depth > MAX_DEPTH {
            return Err(err(at, format!("filters nest at most {MAX_DEPTH} deep")));
        }
        let Value::Object(m) = v else {
            return Err(err(at, "expected an object of paths and conditions"));
        };
        let mut all = Vec::with_capacity(m.len());
        for (k, v) in m {
            let here = format!("{at}.{k}");
            let node = match k.as_str() {
                "$and" | "$or" => {
                    let Value::Array(items) = v else {
                        return Err(err(&here, "expected an array of filters"));
                    };
                    if items.is_empty() {
                        return Err(err(&here, "expected at least one filter"));
                    }
                    let fs = items
                        .iter()
                        .enumerate()
                        .map(|(i, f)| Self::compile_at(f, &format!("{here}.{i}"), depth + 1))
                        .collect::<Result<Vec<_>, _>>()?;
                    if k == "$and" {
                        Node::And(fs)
                    } else {
                        Node::Or(fs)
                    }
                }
                "$not" => Node::Not(Box::new(Self::compile_at(v, &here, depth + 1)?)),
                op if op.starts_with('$') => {
                    return Err(err(
                        &here,
                        "unknown combinator (expected $and, $or, $not, or a path such as data.severity)",
                    ));
                }
                path => Node::Path(parse_path(path, &here)?, conditions(v, &here)?),
            };
            all.push(node);
        }
        Ok(Filter { all })
    }

    /// Whether `event` passes.
    pub fn matches(&self, event: &Event) -> bool {
        self.all.iter().all(|n| n.matches(event))
    }
}

fn parse_path(path: &str, at: &str) -> Result<Vec<String>, FilterError> {
    let parts: Vec<String> = path.split('.').map(str::to_string).collect();
    if parts.iter().any(String::is_empty) {
        return Err(err(at, "a path has no empty segments (data.a.b)"));
    }
    match parts[0].as_str() {
        "type" | "event_type" | "source" | "event_id" | "timestamp" if parts.len() == 1 => {}
        "data" => {}
        _ => {
            return Err(err(
                at,
                "a path starts with data (data.a.b) or is type, source, event_id or timestamp",
            ));
        }
    }
    Ok(parts)
}

fn conditions(v: &Value, at: &str) -> Result<Vec<Cond>, FilterError> {
    let ops = match v {
        Value::Object(m) if m.keys().next().is_some_and(|k| k.starts_with('$')) => m,
        other => return Ok(vec![Cond::Eq(other.clone())]),
    };
    ops.iter()
        .map(|(op, arg)| condition(op, arg, &format!("{at}.{op}")))
        .collect()
}

fn condition(op: &str, arg: &Value, at: &str) -> Result<Cond, FilterError> {
    let list = |arg: &Value| match arg {
        Value::Array(a) => Ok(a.clone()),
        _ => Err(err(at, "expected an array")),
    };
    Ok(match op {
        "$eq" => Cond::Eq(arg.clone()),
        "$ne" => Cond::Ne(arg.clone()),
        "$in" => Cond::In(list(arg)?),
        "$nin" => Cond::Nin(list(arg)?),
        "$gt" | "$gte" | "$lt" | "$lte" => {
            comparable(arg, at)?;
            match op {
                "$gt" => Cond::Gt(arg.clone()),
                "$gte" => Cond::Gte(arg.clone()),
                "$lt" => Cond::Lt(arg.clone()),
                _ => Cond::Lte(arg.clone()),
            }
        }
        "$exists" => match arg {
            Value::Bool(b) => Cond::Exists(*b),
            _ => return Err(err(at, "expected true or false")),
        },
        "$prefix" => match arg {
            Value::String(s) => Cond::Prefix(s.clone()),
            _ => return Err(err(at, "expected a string")),
        },
        _ => {
            return Err(err(
                at,
                "unknown operator (expected $eq, $ne, $in, $nin, $gt, $gte, $lt, $lte, $exists or $prefix)",
            ));
        }
    })
}

/// The value at `path` in `event`, if any.
fn lookup(event: &Event, path: &[String]) -> Option<Value> {
    let (first, rest) = path.split_first()?;
    match first.as_str() {
        "type" | "event_type" => Some(Value::String(event.event_type.clone())),
        "source" => Some(Value::String(event.source.clone())),
        "event_id" => Some(Value::String(event.event_id.clone())),
        "timestamp" => serde_json::Number::from_f64(event.timestamp).map(Value::Number),
        _ => {
            let mut v = &event.data;
            for seg in rest {
                v = match v {
                    Value::Object(m) => m.get(seg)?,
                    Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
                    _ => return None,
                };
            }
            Some(v.clone())
        }
    }
}

/// JSON equality with numbers compared by value (`1` equals `1.0`).
fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn order(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

impl Node {
    fn matches(&self, event: &Event) -> bool {
        match self {
            Node::And(fs) => fs.iter().all(|f| f.matches(event)),
            Node::Or(fs) => fs.iter().any(|f| f.matches(event)),
            Node::Not(f) => !f.matches(event),
            Node::Path(path, conds) => {
                let v = lookup(event, path);
                conds.iter().all(|c| c.holds(v.as_ref()))
            }
        }
    }
}

impl Cond {
    fn holds(&self, v: Option<&Value>) -> bool {
        use std::cmp::Ordering::*;
        match (self, v) {
            (Cond::Exists(want), v) => v.is_some() == *want,
            (Cond::Ne(x), Some(v)) => !equal(v, x),
            (Cond::Ne(_), None) => true,
            (Cond::Nin(xs), Some(v)) => !xs.iter().any(|x| equal(v, x)),
            (Cond::Nin(_), None) => true,
            (_, None) => false,
            (Cond::Eq(x), Some(v)) => equal(v, x),
            (Cond::In(xs), Some(v)) => xs.iter().any(|x| equal(v, x)),
            (Cond::Gt(x), Some(v)) => order(v, x) == Some(Greater),
            (Cond::Gte(x), Some(v)) => matches!(order(v, x), Some(Greater | Equal)),
            (Cond::Lt(x), Some(v)) => order(v, x) == Some(Less),
            (Cond::Lte(x), Some(v)) => matches!(order(v, x), Some(Less | Equal)),
            (Cond::Prefix(p), Some(Value::String(s))) => s.starts_with(p.as_str()),
            (Cond::Prefix(_), Some(_)) => false,
        }
    }
}

/// An empty map is "match everything"; kept for callers that build filters in code.
impl Default for Filter {
    fn default() -> Self {
        Filter { all: Vec::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev() -> Event {
        Event::new(
            "risk_alert",
            json!({"severity": "high", "score": 7.5, "project": {"name": "apollo-2"},
                   "tags": ["a", "b"], "n": 3}),
        )
        .with_source("scanner")
    }

    fn m(f: Value) -> bool {
        Filter::compile(&f).expect("valid filter").matches(&ev())
    }

    #[test]
    fn every_operator_matches_and_refuses() {
        assert!(m(json!({"data.severity": "high"})));
        assert!(!m(json!({"data.severity": "low"})));
        assert!(m(json!({"type": "risk_alert", "source": "scanner"})));
        assert!(m(json!({"data.n": 3.0})), "numbers compare by value");
        assert!(m(json!({"data.severity": {"$eq": "high"}})));
        assert!(m(json!({"data.severity": {"$ne": "low"}})));
        assert!(m(json!({"data.missing": {"$ne": "low"}})));
        assert!(m(json!({"data.severity": {"$in": ["high", "critical"]}})));
        assert!(!m(json!({"data.severity": {"$nin": ["high", "critical"]}})));
        assert!(m(json!({"data.score": {"$gt": 7, "$lte": 7.5}})));
        assert!(!m(json!({"data.score": {"$gte": 8}})));
        assert!(m(json!({"data.score": {"$lt": 8}})));
        assert!(
            !m(json!({"data.severity": {"$gt": 1}})),
            "a string is not ordered against a number"
        );
        assert!(m(json!({"data.severity": {"$gt": "a"}})));
        assert!(m(json!({"data.project.name": {"$prefix": "apollo"}})));
        assert!(!m(json!({"data.n": {"$prefix": "3"}})));
        assert!(m(json!({"data.tags.1": "b"})));
        assert!(m(json!({"data.project": {"$exists": true}})));
        assert!(m(json!({"data.nope": {"$exists": false}})));
        assert!(m(json!({"$or": [{"data.severity": "low"}, {"data.n": 3}]})));
        assert!(!m(
            json!({"$and": [{"data.severity": "high"}, {"data.n": 4}]})
        ));
        assert!(m(json!({"$not": {"data.severity": "low"}})));
        assert!(m(json!({})));
    }

    #[test]
    fn invalid_filters_name_the_path() {
        let e = |f: Value| Filter::compile(&f).expect_err("refused").to_string();
        assert_eq!(
            e(json!({"data.score": {"$gt": [1]}})),
            "filter.data.score.$gt: expected a number or a string"
        );
        assert!(e(json!({"$or": [{"data.a": 1}, {"x.y": 1}]})).starts_with("filter.$or.1.x.y:"));
        assert!(
            e(json!({"data.a": {"$regex": "x"}}))
                .starts_with("filter.data.a.$regex: unknown operator")
        );
        assert!(e(json!({"$xor": []})).starts_with("filter.$xor: unknown combinator"));
        assert!(
            e(json!({"data.a": {"$in": 3}})).starts_with("filter.data.a.$in: expected an array")
        );
        assert!(e(json!({"data.a": {"$exists": 1}})).starts_with("filter.data.a.$exists:"));
        assert!(e(json!({"data..a": 1})).starts_with("filter.data..a:"));
        assert!(e(json!([1])).starts_with("filter: expected an object"));
        assert!(e(json!({"$or": []})).starts_with("filter.$or: expected at least one"));
    }
}
