//! Which policies apply to a request: by route and by tier.

use std::sync::Arc;

use http::HeaderName;
use tower_ai_core::key::{RequestHead, Tier};

use crate::algorithm::Spec;
use crate::error::ConfigError;
use crate::policy::Policy;
use crate::store::MAX_POLICIES;

/// A policy as a layer runs it: with its slot (policies of the same name
/// share one, and so one count) and compiled numbers.
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    pub(crate) slot: u32,
    pub(crate) policy: Policy,
    pub(crate) spec: Spec,
}

/// The policies one request is checked against, all or nothing.
pub(crate) type PolicySet = Arc<[Compiled]>;

/// Where a request's tier comes from.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum TierSource {
    /// The [`Tier`] request extension, set by an earlier layer (the default).
    #[default]
    Extension,
    /// A request header (only behind a gateway that sets it: a client could
    /// claim any tier).
    Header(HeaderName),
}

/// The policy table: route and tier rules, first match wins, then the
/// default.
///
/// ```
/// use std::time::Duration;
/// use tower_ai_ratelimit::{Policies, Policy, Rate};
///
/// let daily = Policy::fixed_window(1_000, Duration::from_secs(86_400)).named("daily");
/// let table = Policies::new()
///     .route_for_tier("/v1/chat/", "pro", [
///         Policy::token_bucket(50, Rate::per_second(1.0)).named("chat-pro"),
///         daily.clone(),
///     ])
///     .route("/v1/chat/", [Policy::token_bucket(5, Rate::per_second(0.1)).named("chat"), daily])
///     .otherwise([Policy::token_bucket(100, Rate::per_second(10.0)).named("default")]);
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct Policies {
    rules: Vec<Rule>,
    default: Option<Vec<Policy>>,
    tier: TierSource,
}

#[derive(Debug, Clone)]
struct Rule {
    prefix: String,
    tier: Option<String>,
    policies: Vec<Policy>,
}

impl Policies {
    /// An empty table: no request is limited until rules are added.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `policies` to paths that start with `prefix`.
    pub fn route(mut self, prefix: &str, policies: impl IntoIterator<Item = Policy>) -> Self {
        self.rules.push(Rule {
            prefix: prefix.to_owned(),
            tier: None,
            policies: policies.into_iter().collect(),
        });
        self
    }

    /// Applies `policies` to paths that start with `prefix` for callers of
    /// `tier`.
    pub fn route_for_tier(
        mut self,
        prefix: &str,
        tier: &str,
        policies: impl IntoIterator<Item = Policy>,
    ) -> Self {
        self.rules.push(Rule {
            prefix: prefix.to_owned(),
            tier: Some(tier.to_owned()),
            policies: policies.into_iter().collect(),
        });
        self
    }

    /// Applies `policies` to requests no rule matched.
    pub fn otherwise(mut self, policies: impl IntoIterator<Item = Policy>) -> Self {
        self.default = Some(policies.into_iter().collect());
        self
    }

    /// Reads the tier from `source`.
    pub fn tier_from(mut self, source: TierSource) -> Self {
        self.tier = source;
        self
    }

    pub(crate) fn compile(self) -> Result<Resolver, ConfigError> {
        let mut names: Vec<Policy> = Vec::new();
        let mut compile = |policies: Vec<Policy>| -> Result<PolicySet, ConfigError> {
            if policies.len() > MAX_POLICIES {
                return Err(ConfigError::TooManyPolicies {
                    count: policies.len(),
                    max: MAX_POLICIES,
                });
            }
            let mut set = Vec::with_capacity(policies.len());
            for policy in policies {
                policy.validate()?;
                let slot = match names.iter().position(|p| p.name() == policy.name()) {
                    Some(i) if names[i] == policy => i,
                    Some(_) => {
                        return Err(ConfigError::DuplicatePolicy {
                            name: policy.name().to_owned(),
                        });
                    }
                    None => {
                        names.push(policy.clone());
                        names.len() - 1
                    }
                };
                if set.iter().any(|c: &Compiled| c.slot == slot as u32) {
                    return Err(ConfigError::RepeatedPolicy {
                        name: policy.name().to_owned(),
                    });
                }
                set.push(Compiled {
                    slot: slot as u32,
                    spec: Spec::of(&policy),
                    policy,
                });
            }
            Ok(set.into())
        };
        let mut rules = Vec::with_capacity(self.rules.len());
        for rule in self.rules {
            rules.push(CompiledRule {
                prefix: rule.prefix,
                tier: rule.tier,
                set: compile(rule.policies)?,
            });
        }
        let default = self.default.map(compile).transpose()?;
        Ok(Resolver {
            rules,
            default,
            tier: self.tier,
        })
    }
}

#[derive(Debug)]
struct CompiledRule {
    prefix: String,
    tier: Option<String>,
    set: PolicySet,
}

/// The compiled table.
#[derive(Debug)]
pub(crate) struct Resolver {
    rules: Vec<CompiledRule>,
    default: Option<PolicySet>,
    tier: TierSource,
}

impl Resolver {
    /// The set for a request, or `None` when no policy applies.
    pub(crate) fn resolve(&self, head: RequestHead<'_>) -> Option<&PolicySet> {
        let path = head.uri.path();
        let mut tier: Option<Option<&str>> = None;
        for rule in &self.rules {
            if !path.starts_with(rule.prefix.as_str()) {
                continue;
            }
            match &rule.tier {
                None => return Some(&rule.set),
                Some(wanted) => {
                    let t = *tier.get_or_insert_with(|| self.tier_of(head));
                    if t == Some(wanted.as_str()) {
                        return Some(&rule.set);
                    }
                }
            }
        }
        self.default.as_ref()
    }

    fn tier_of<'a>(&self, head: RequestHead<'a>) -> Option<&'a str> {
        match &self.tier {
            TierSource::Extension => head.extensions.get::<Tier>().map(Tier::as_str),
            TierSource::Header(name) => head.headers.get(name).and_then(|v| v.to_str().ok()),
        }
    }

    /// The set for requests no rule matches.
    pub(crate) fn default_set(&self) -> Option<PolicySet> {
        self.default.clone()
    }

    /// Every policy of the table, by slot.
    pub(crate) fn policies(&self) -> impl Iterator<Item = &Compiled> {
        self.rules
            .iter()
            .map(|r| &r.set)
            .chain(self.default.iter())
            .flat_map(|s| s.iter())
    }
}
