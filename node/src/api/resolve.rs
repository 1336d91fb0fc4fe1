//! `GET /v1/resolve`: the publication a caller would use now, from this node's replica of
//! the registry (no consensus on the read path).

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use copycat::registry::SubscribeOptions;

use super::error::ApiError;
use super::query::{check_name, distance, Query};
use super::App;

/// The options of `?name=N` (Copper's simplified subscription: `(N,0,1)` then `(N,2,2)`,
/// for each name in order) or of `?option=N,min,max&option=…` (in order).
pub fn options(query: &Query) -> Result<SubscribeOptions, ApiError> {
    let names = query.names(false)?;
    let options = query.all("option");
    if !names.is_empty() && !options.is_empty() {
        return Err(ApiError::invalid(
            "option",
            "give either name or option, not both",
        ));
    }
    if names.is_empty() && options.is_empty() {
        return Err(ApiError::invalid(
            "name",
            "give a name (or options: option=NAME,MIN,MAX)",
        ));
    }
    let mut subscription = SubscribeOptions::new();
    for name in &names {
        subscription = subscription.then_name(name);
    }
    for option in options {
        // From the right, so a name may hold commas.
        let mut parts = option.rsplitn(3, ',');
        let (Some(max), Some(min), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(ApiError::invalid(
                "option",
                format!("{option:?}: expected NAME,MIN,MAX"),
            ));
        };
        check_name("option", name)?;
        let bound = |v: &str| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| {
                    ApiError::invalid("option", format!("{option:?}: {v:?} is not a distance"))
                })
                .and_then(|n| distance("option", n))
        };
        let (min, max) = (bound(min)?, bound(max)?);
        if min > max {
            return Err(ApiError::invalid(
                "option",
                format!("{option:?}: min is above max"),
            ));
        }
        subscription = subscription.then(name, min, max);
    }
    Ok(subscription)
}

/// `GET /v1/resolve?name=N` or `?option=N,min,max&…` → `200 {"endpoint", "node_id",
/// "datacenter", "distance", "priority", "publication_id"}`, `404` if no option sees one.
pub async fn resolve(
    State(app): State<Arc<App>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref(), &["name", "option"])?;
    let subscription = app.registry.subscribe(options(&query)?)?;
    // Local reads under short locks: no thread of the runtime waits on anything.
    let publication = subscription.resolve()?;
    Ok(Json(app.vantage.resolved(&publication)).into_response())
}

#[cfg(test)]
mod tests {
    use copycat::registry::Distance;

    use super::*;

    #[test]
    fn bare_names_and_ordered_options() {
        let q = Query::parse(Some("name=a"), &["name", "option"]).expect("query");
        let o = options(&q).expect("options");
        assert_eq!(o, SubscribeOptions::name("a"));
        let q = Query::parse(Some("option=x,y,0,0&option=b,1,2"), &["name", "option"]).expect("q");
        let o = options(&q).expect("options");
        let want = SubscribeOptions::new()
            .then("x,y", Distance::SameNode, Distance::SameNode)
            .then("b", Distance::SameDatacenter, Distance::OtherDatacenter);
        assert_eq!(o, want);
        for bad in [
            "option=a,2,1",
            "option=a,0",
            "option=a,0,3",
            "",
            "name=a&option=a,0,0",
        ] {
            let q = Query::parse(Some(bad), &["name", "option"]).expect("query");
            assert!(options(&q).is_err(), "{bad}");
        }
    }
}
