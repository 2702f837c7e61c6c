//! A user the API refuses a license for lack of a usage location (SPEC §5): which location
//! to give it (its rows', else `run.default_usage_location`) and the fix as the journal
//! records it — before its PATCH is sent, and once answered — so a resume neither loses nor
//! repeats it. The PATCH itself goes through the call path like every write
//! ([`super::worker`]).

use uuid::Uuid;

use crate::country::UsageLocation;

/// The usage location a group's rows give.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum GivenLocation {
    /// None of its rows gives one.
    #[default]
    None,
    One(UsageLocation),
    /// Its rows give different ones (`(location, line)` each, in line order): none is chosen.
    Conflicting(Vec<(UsageLocation, u64)>),
}

impl GivenLocation {
    /// From the distinct locations a group's rows give, each with the first line giving it.
    pub fn of(mut given: Vec<(UsageLocation, u64)>) -> GivenLocation {
        given.sort_by_key(|&(_, line)| line);
        match given.len() {
            0 => GivenLocation::None,
            1 => GivenLocation::One(given.remove(0).0),
            _ => GivenLocation::Conflicting(given),
        }
    }
}

/// A PATCH that gives a user its usage location, under its own request ID.
#[derive(Debug, Clone, PartialEq)]
pub struct LocationFix {
    pub location: UsageLocation,
    pub request_id: Uuid,
    /// The PATCH got a success: the location is set.
    pub answered: bool,
}

/// What a group brings to a usage-location refusal.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LocationWork {
    pub given: GivenLocation,
    /// A fix recorded by this run before a resume (sent, or about to be).
    pub fix: Option<LocationFix>,
}

/// What to do about a refusal for a missing usage location.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum LocationChoice {
    /// Give the user this one, then send the group again.
    Give(UsageLocation),
    /// Nothing to give: the rows fail with this text.
    Fail(String),
}

impl LocationWork {
    /// Once per group: a location was given already (and the API still refuses), or the rows
    /// disagree, or nothing is known: the rows fail saying what to do.
    pub(super) fn choose(
        &self,
        default: Option<&UsageLocation>,
        tried: Option<&LocationFix>,
        refusal: &str,
    ) -> LocationChoice {
        if let Some(fix) = tried {
            return LocationChoice::Fail(format!(
                "{refusal} (the usage location was set to {} and the API still refuses; check \
                 the user in the Microsoft 365 admin center)",
                fix.location
            ));
        }
        match (&self.given, default) {
            (GivenLocation::One(location), _) => LocationChoice::Give(location.clone()),
            (GivenLocation::Conflicting(given), _) => {
                let lines: Vec<String> = given
                    .iter()
                    .map(|(location, line)| format!("line {line} says {location}"))
                    .collect();
                LocationChoice::Fail(format!(
                    "{refusal} — and this user's rows give different usage locations ({}); \
                     keep one and run again",
                    lines.join(", ")
                ))
            }
            (GivenLocation::None, Some(default)) => LocationChoice::Give(default.clone()),
            (GivenLocation::None, None) => LocationChoice::Fail(format!(
                "{refusal} — the user has no usage location: give one in a usage_location \
                 column (two letters, e.g. NL) or set run.default_usage_location, then run again"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> UsageLocation {
        UsageLocation::parse(text).unwrap()
    }

    const REFUSAL: &str = "License assignment cannot be done for user with invalid usage location.";

    #[test]
    fn the_rows_location_beats_the_default_and_disagreeing_rows_choose_none() {
        let one = LocationWork {
            given: GivenLocation::of(vec![(at("NL"), 4)]),
            fix: None,
        };
        assert_eq!(
            one.choose(Some(&at("DE")), None, REFUSAL),
            LocationChoice::Give(at("NL"))
        );
        let none = LocationWork::default();
        assert_eq!(
            none.choose(Some(&at("DE")), None, REFUSAL),
            LocationChoice::Give(at("DE"))
        );
        let LocationChoice::Fail(advice) = none.choose(None, None, REFUSAL) else {
            panic!("nothing to give")
        };
        assert!(advice.starts_with(REFUSAL), "{advice}");
        assert!(advice.contains("usage_location column"), "{advice}");
        assert!(advice.contains("run.default_usage_location"), "{advice}");
        let two = LocationWork {
            given: GivenLocation::of(vec![(at("JP"), 9), (at("NL"), 3)]),
            fix: None,
        };
        let LocationChoice::Fail(conflict) = two.choose(Some(&at("DE")), None, REFUSAL) else {
            panic!("rows disagree")
        };
        assert!(
            conflict.contains("line 3 says NL, line 9 says JP"),
            "{conflict}"
        );
    }

    #[test]
    fn a_location_is_given_once_per_group() {
        let fix = LocationFix {
            location: at("NL"),
            request_id: Uuid::new_v4(),
            answered: true,
        };
        let one = LocationWork {
            given: GivenLocation::One(at("NL")),
            fix: None,
        };
        let LocationChoice::Fail(text) = one.choose(None, Some(&fix), REFUSAL) else {
            panic!("tried already")
        };
        assert!(text.contains("was set to NL"), "{text}");
    }
}
