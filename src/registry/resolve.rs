//! Resolution rules: which publications an option sees, which of them win, and the
//! weighted choice among equals. Pure functions over the replicated state and this node's
//! view of who is down.

use std::collections::HashSet;

use rand::Rng;

use super::error::{RegistryError, RegistryResult};
use super::publication::{validate_name, Distance, Publication};
use crate::NodeId;

/// One option of a subscription: a service name and the distances it may be served from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveOption {
    /// The service name.
    pub name: String,
    /// The nearest distance accepted.
    pub min_distance: Distance,
    /// The farthest distance accepted.
    pub max_distance: Distance,
}

/// What a subscription resolves: an ordered list of options, the first with a visible
/// publication wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    pub(crate) options: Vec<ResolveOption>,
    pub(crate) fall_through_on_overcapacity: bool,
}

impl SubscribeOptions {
    /// No options yet; add them with [`SubscribeOptions::then`] or
    /// [`SubscribeOptions::then_name`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A bare name: `(name, same node, same datacenter)` then `(name, other datacenter,
    /// other datacenter)`, i.e. local first, then any other datacenter.
    pub fn name(name: &str) -> Self {
        Self::new().then_name(name)
    }

    /// Appends the two options of a bare name (see [`SubscribeOptions::name`]).
    pub fn then_name(self, name: &str) -> Self {
        self.then(name, Distance::SameNode, Distance::SameDatacenter)
            .then(name, Distance::OtherDatacenter, Distance::OtherDatacenter)
    }

    /// Appends the option `(name, min, max)`.
    pub fn then(mut self, name: &str, min_distance: Distance, max_distance: Distance) -> Self {
        self.options.push(ResolveOption {
            name: name.to_string(),
            min_distance,
            max_distance,
        });
        self
    }

    /// Whether an option whose publications are all busy with a full queue passes the
    /// caller on to the next option (default `false`, as in Copper: the caller gets
    /// [`RegistryError::Overcapacity`]).
    pub fn fall_through_on_overcapacity(mut self, fall_through: bool) -> Self {
        self.fall_through_on_overcapacity = fall_through;
        self
    }

    /// The options, in order.
    pub fn options(&self) -> &[ResolveOption] {
        &self.options
    }

    /// The distinct service names the options mention.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.options.iter().map(|o| o.name.clone()).collect();
        names.sort();
        names.dedup();
        names
    }

    pub(crate) fn validate(&self) -> RegistryResult<()> {
        if self.options.is_empty() {
            return Err(RegistryError::InvalidPublication(
                "a subscription needs at least one option".to_string(),
            ));
        }
        for option in &self.options {
            validate_name(&option.name)?;
            if option.min_distance > option.max_distance {
                return Err(RegistryError::InvalidPublication(format!(
                    "option {}: min distance {:?} is beyond max distance {:?}",
                    option.name, option.min_distance, option.max_distance
                )));
            }
        }
        Ok(())
    }
}

/// Where resolution runs from: this node, its datacenter, and the nodes gossip reports
/// alive. Publications of other owners (down, or unknown to this node) are hidden until
/// their owner is seen alive, or they are removed.
pub(crate) struct Vantage<'a> {
    pub node: NodeId,
    pub datacenter: &'a str,
    pub alive: &'a HashSet<NodeId>,
}

impl Vantage<'_> {
    /// Whether `option` sees `publication` from here.
    pub(crate) fn sees(&self, option: &ResolveOption, publication: &Publication) -> bool {
        let owner = publication.id.node;
        if publication.name != option.name || (owner != self.node && !self.alive.contains(&owner)) {
            return false;
        }
        let distance = publication.distance_from(self.node, self.datacenter);
        distance >= option.min_distance
            && distance <= option.max_distance
            && distance <= publication.settings.max_distance
    }

    /// The winning tier of `option`: its visible publications with the lowest priority
    /// value (empty if it sees none).
    pub(crate) fn best_tier<'p>(
        &self,
        option: &ResolveOption,
        publications: impl IntoIterator<Item = &'p Publication>,
    ) -> Vec<&'p Publication> {
        let visible: Vec<&Publication> = publications
            .into_iter()
            .filter(|p| self.sees(option, p))
            .collect();
        let Some(best) = visible.iter().map(|p| p.settings.priority).min() else {
            return Vec::new();
        };
        visible
            .into_iter()
            .filter(|p| p.settings.priority == best)
            .collect()
    }
}

/// A random choice among `candidates`, each weighted by its concurrency.
pub(crate) fn pick_weighted<'p>(
    candidates: &[&'p Publication],
    rng: &mut impl Rng,
) -> Option<&'p Publication> {
    let total: u64 = candidates
        .iter()
        .map(|p| u64::from(p.settings.concurrency))
        .sum();
    if total == 0 {
        return None;
    }
    let mut ticket = rng.gen_range(0..total);
    for candidate in candidates {
        let weight = u64::from(candidate.settings.concurrency);
        if ticket < weight {
            return Some(candidate);
        }
        ticket -= weight;
    }
    None
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use crate::registry::publication::{PublicationId, PublishSettings};

    fn publication(node: NodeId, dc: &str, priority: u32, concurrency: u32) -> Publication {
        Publication {
            id: PublicationId {
                node,
                epoch: 1,
                seq: 1,
            },
            name: "svc".to_string(),
            endpoint: format!("n{node}"),
            datacenter: dc.to_string(),
            settings: PublishSettings {
                priority,
                concurrency,
                ..PublishSettings::default()
            },
        }
    }

    #[test]
    fn options_see_only_their_distances_and_the_publication_reach() {
        let alive: HashSet<NodeId> = [2, 3].into();
        let here = Vantage {
            node: 1,
            datacenter: "a",
            alive: &alive,
        };
        let local = SubscribeOptions::name("svc").options[0].clone();
        let remote = SubscribeOptions::name("svc").options[1].clone();
        let same_dc = publication(2, "a", 0, 1);
        let other_dc = publication(3, "b", 0, 1);
        assert!(here.sees(&local, &same_dc) && !here.sees(&remote, &same_dc));
        assert!(!here.sees(&local, &other_dc) && here.sees(&remote, &other_dc));
        let mut near_only = other_dc.clone();
        near_only.settings.max_distance = Distance::SameDatacenter;
        assert!(!here.sees(&remote, &near_only));
        let without_2: HashSet<NodeId> = [3].into();
        let gone = Vantage {
            alive: &without_2,
            ..here
        };
        assert!(
            !gone.sees(&local, &same_dc),
            "an owner not known alive is hidden"
        );
    }

    #[test]
    fn the_lowest_priority_value_wins() {
        let alive: HashSet<NodeId> = [2, 3, 4].into();
        let here = Vantage {
            node: 1,
            datacenter: "a",
            alive: &alive,
        };
        let pubs = [
            publication(2, "a", 1, 1),
            publication(3, "a", 0, 1),
            publication(4, "a", 0, 1),
        ];
        let tier = here.best_tier(&SubscribeOptions::name("svc").options[0], &pubs);
        let nodes: Vec<NodeId> = tier.iter().map(|p| p.id.node).collect();
        assert_eq!(nodes, vec![3, 4]);
    }

    #[test]
    fn weighted_choice_follows_concurrency() {
        let light = publication(2, "a", 0, 1);
        let heavy = publication(3, "a", 0, 3);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let picks = 40_000;
        let heavy_picks = (0..picks)
            .filter(|_| pick_weighted(&[&light, &heavy], &mut rng).map(|p| p.id.node) == Some(3))
            .count();
        let share = heavy_picks as f64 / picks as f64;
        assert!((0.73..0.77).contains(&share), "heavy share {share}");
    }

    #[test]
    fn empty_or_inverted_options_are_refused() {
        assert!(SubscribeOptions::new().validate().is_err());
        let inverted =
            SubscribeOptions::new().then("svc", Distance::OtherDatacenter, Distance::SameNode);
        assert!(inverted.validate().is_err());
        assert!(SubscribeOptions::name("").validate().is_err());
        assert!(SubscribeOptions::name("svc").validate().is_ok());
    }
}
