//! Query strings: repeated keys (`name=A&name=B`), with every key checked against the ones
//! a route takes, so a typo is a 400 naming it rather than a silently ignored parameter.

use std::time::Duration;

use copycat::registry::{Distance, MAX_NAME_BYTES};

use super::error::ApiError;

/// A parsed query string.
#[derive(Debug, Default)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Parses `raw` (percent-decoded, `+` as space); a key outside `allowed` is refused.
    pub fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Query, ApiError> {
        let pairs: Vec<(String, String)> =
            form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
        if let Some((key, _)) = pairs.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            return Err(ApiError::invalid(
                key,
                format!(
                    "unknown query parameter; this route takes {}",
                    allowed.join(", ")
                ),
            ));
        }
        Ok(Query { pairs })
    }

    /// Every value of `key`, in order.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The value of `key` if given once; an error if given twice.
    pub fn one(&self, key: &str) -> Result<Option<&str>, ApiError> {
        match self.all(key).as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one)),
            _ => Err(ApiError::invalid(key, "given more than once")),
        }
    }

    /// The value of `key` as a non-negative integer, if given.
    pub fn u64(&self, key: &str) -> Result<Option<u64>, ApiError> {
        self.one(key)?
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::invalid(key, format!("{v:?} is not a non-negative integer"))
                })
            })
            .transpose()
    }

    /// `wait_ms` as a duration: `default` when absent, at most `max`.
    pub fn wait(&self, default: Duration, max: Duration) -> Result<Duration, ApiError> {
        let Some(ms) = self.u64("wait_ms")? else {
            return Ok(default);
        };
        let wait = Duration::from_millis(ms);
        if wait > max {
            return Err(ApiError::invalid(
                "wait_ms",
                format!("{ms} is above the limit of {}", max.as_millis()),
            ));
        }
        Ok(wait)
    }

    /// Every `name` value, each checked; at least one when `required`.
    pub fn names(&self, required: bool) -> Result<Vec<String>, ApiError> {
        let names = self.all("name");
        if required && names.is_empty() {
            return Err(ApiError::invalid("name", "at least one name is required"));
        }
        names
            .into_iter()
            .map(|n| check_name("name", n).map(|()| n.to_string()))
            .collect()
    }
}

/// A service name: not empty, at most [`MAX_NAME_BYTES`].
pub fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    if name.is_empty() {
        return Err(ApiError::invalid(field, "the service name is empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(ApiError::invalid(
            field,
            format!("{} bytes, over the limit of {MAX_NAME_BYTES}", name.len()),
        ));
    }
    Ok(())
}

/// A distance given as 0 (same node), 1 (same datacenter) or 2 (other datacenter).
pub fn distance(field: &str, value: u64) -> Result<Distance, ApiError> {
    match value {
        0 => Ok(Distance::SameNode),
        1 => Ok(Distance::SameDatacenter),
        2 => Ok(Distance::OtherDatacenter),
        _ => Err(ApiError::invalid(
            field,
            format!("{value} is not a distance: use 0 (same node), 1 (same datacenter) or 2 (any)"),
        )),
    }
}

/// A distance as the API shows it.
pub fn distance_number(distance: Distance) -> u8 {
    distance as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_keys_decoding_and_unknown_keys() {
        let q = Query::parse(Some("name=a%20b&name=c+d&from=3"), &["name", "from"]).expect("ok");
        assert_eq!(q.all("name"), vec!["a b", "c d"]);
        assert_eq!(q.u64("from").expect("number"), Some(3));
        let err = Query::parse(Some("nmae=x"), &["name"]).unwrap_err();
        assert!(matches!(&err, ApiError::InvalidInput { field, .. } if field == "nmae"));
        let q = Query::parse(Some("from=-1"), &["from"]).expect("ok");
        assert!(matches!(q.u64("from"), Err(ApiError::InvalidInput { .. })));
    }

    #[test]
    fn wait_is_bounded_and_names_are_checked() {
        let q = Query::parse(Some("wait_ms=70000&name="), &["wait_ms", "name"]).expect("ok");
        let max = Duration::from_secs(60);
        assert!(q.wait(Duration::ZERO, max).is_err());
        assert!(q.names(true).is_err());
        assert!(Query::default().names(true).is_err());
        assert_eq!(Query::default().wait(max, max).expect("default"), max);
    }
}
