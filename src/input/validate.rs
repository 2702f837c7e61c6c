//! Row validation: turns the cells of one record into a [`RowRequest`] or a [`RowProblem`] that
//! names the column and what to fix.

use std::fmt;

use uuid::Uuid;

pub use crate::country::UsageLocation;

use super::Columns;

/// The two license groups of Partner Center; a request never mixes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LicenseGroup {
    /// Azure Active Directory / Entra ID licenses.
    Group1,
    /// Minecraft: Education Edition licenses.
    Group2,
}

impl LicenseGroup {
    pub fn as_str(self) -> &'static str {
        match self {
            LicenseGroup::Group1 => "group1",
            LicenseGroup::Group2 => "group2",
        }
    }

    /// Parses `group1`/`Group1`/`group 1`; `None` for anything else.
    pub fn parse(text: &str) -> Option<LicenseGroup> {
        let compact: String = text
            .chars()
            .filter(|c| !c.is_whitespace())
            .flat_map(char::to_lowercase)
            .collect();
        match compact.as_str() {
            "group1" => Some(LicenseGroup::Group1),
            "group2" => Some(LicenseGroup::Group2),
            _ => None,
        }
    }
}

impl fmt::Display for LicenseGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Assign,
    Remove,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Assign => "assign",
            Action::Remove => "remove",
        }
    }
}

/// A SKU as the sheet names it: a GUID, or a part number / product name to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkuRef {
    Id(Uuid),
    Name(String),
}

/// A service plan to exclude: its ID, or a service/display name resolved per SKU.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PlanRef {
    Id(Uuid),
    Name(String),
}

/// What a valid row asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct RowRequest {
    pub customer_id: Uuid,
    /// The user as it is sent: object ID (lower-case GUID) or the UPN as written.
    pub user: String,
    /// Case-insensitive identity of the user, for grouping.
    pub user_key: String,
    pub sku: SkuRef,
    pub license_group: Option<LicenseGroup>,
    pub excluded_plans: Vec<PlanRef>,
    pub action: Action,
    /// The two-letter country code to give the user if the API refuses the assignment for a
    /// missing usage location (upper case).
    pub usage_location: Option<UsageLocation>,
}

/// Why a row is `invalid`: the column (as named in the file) and the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowProblem {
    pub problems: Vec<(String, String)>,
}

impl RowProblem {
    pub fn single(column: &str, message: impl Into<String>) -> Self {
        RowProblem {
            problems: vec![(column.to_string(), message.into())],
        }
    }

    pub(super) fn ragged(found: usize, expected: usize, cells: &[String]) -> Self {
        let message = if found < expected {
            format!(
                "the row has {found} cells but the header has {expected}; add the missing cells"
            )
        } else {
            format!(
                "the row has {found} cells but the header has {expected}; extra cells: {}",
                cells[expected..]
                    .iter()
                    .map(|c| format!("{c:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        RowProblem::single("(row)", message)
    }
}

impl fmt::Display for RowProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (column, message)) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            if column == "(row)" {
                write!(f, "{message}")?;
            } else {
                write!(f, "column {column}: {message}")?;
            }
        }
        Ok(())
    }
}

const GUID_EXAMPLE: &str = "e.g. 0c39d6d5-c70d-4c55-bc02-f620844f3fd1";

fn parse_guid(text: &str) -> Option<Uuid> {
    // Accept the hyphenated and braced forms people copy from portals; not 32 bare hex digits
    // or URNs, which are more likely a typo than a tenant ID.
    let t = text.trim();
    let inner = t
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or(t);
    if inner.len() != 36 {
        return None;
    }
    Uuid::try_parse(inner).ok()
}

/// Characters that cannot occur in a user principal name and would change the request URL.
fn forbidden_in_upn(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(
            c,
            '/' | '\\'
                | '?'
                | '%'
                | '"'
                | '<'
                | '>'
                | ','
                | ';'
                | ':'
                | '('
                | ')'
                | '['
                | ']'
                | '*'
        )
}

fn validate_user(text: &str) -> Result<(String, String), String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty; give the user's object ID (GUID) or user principal name".into());
    }
    if let Some(id) = parse_guid(t) {
        let id = id.hyphenated().to_string();
        return Ok((id.clone(), id));
    }
    let Some((local, domain)) = t.rsplit_once('@') else {
        return Err(format!(
            "{t:?} is neither a GUID ({GUID_EXAMPLE}) nor a user principal name (name@domain)"
        ));
    };
    if let Some(bad) = t.chars().find(|&c| forbidden_in_upn(c)) {
        return Err(format!(
            "{t:?} contains {bad:?}, which a user principal name cannot contain"
        ));
    }
    if local.is_empty()
        || local.contains('@')
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
    {
        return Err(format!(
            "{t:?} is not a valid user principal name (name@domain.tld)"
        ));
    }
    Ok((t.to_string(), t.to_lowercase()))
}

pub(super) fn validate_row(
    columns: &Columns,
    headers: &[String],
    cells: &[String],
) -> Result<RowRequest, RowProblem> {
    let mut problems = Vec::new();
    let mut problem =
        |index: usize, message: String| problems.push((headers[index].clone(), message));

    let customer_text = cells[columns.customer].trim();
    let customer_id = match parse_guid(customer_text) {
        Some(id) => Some(id),
        None if customer_text.is_empty() => {
            problem(
                columns.customer,
                "empty; give the customer's tenant ID (GUID)".into(),
            );
            None
        }
        None => {
            problem(
                columns.customer,
                format!("{customer_text:?} is not a tenant ID GUID ({GUID_EXAMPLE})"),
            );
            None
        }
    };

    let user = match validate_user(&cells[columns.user]) {
        Ok(user) => Some(user),
        Err(message) => {
            problem(columns.user, message);
            None
        }
    };

    let sku_text = cells[columns.sku].trim();
    let sku = if sku_text.is_empty() {
        problem(
            columns.sku,
            "empty; give the SKU ID (GUID), part number or product name".into(),
        );
        None
    } else if let Some(id) = parse_guid(sku_text) {
        Some(SkuRef::Id(id))
    } else if sku_text.chars().count() > 256 || sku_text.chars().any(char::is_control) {
        problem(
            columns.sku,
            "not a SKU ID, part number or product name".into(),
        );
        None
    } else {
        Some(SkuRef::Name(sku_text.to_string()))
    };

    let license_group = match columns.license_group.map(|i| (i, cells[i].trim())) {
        None | Some((_, "")) => None,
        Some((i, text)) => match LicenseGroup::parse(text) {
            Some(group) => Some(group),
            None => {
                problem(
                    i,
                    format!("{text:?} is not a license group; use group1 or group2"),
                );
                None
            }
        },
    };

    let action = match columns.action.map(|i| (i, cells[i].trim())) {
        None | Some((_, "")) => Action::Assign,
        Some((_, t)) if t.eq_ignore_ascii_case("assign") => Action::Assign,
        Some((_, t)) if t.eq_ignore_ascii_case("remove") => Action::Remove,
        Some((i, t)) => {
            problem(i, format!("{t:?} is not an action; use assign or remove"));
            Action::Assign
        }
    };

    let mut excluded_plans = Vec::new();
    if let Some(i) = columns.excluded_plans {
        for part in cells[i]
            .split([';', '|'])
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let plan = match parse_guid(part) {
                Some(id) => PlanRef::Id(id),
                None if part.chars().count() <= 256 && !part.chars().any(char::is_control) => {
                    PlanRef::Name(part.to_string())
                }
                None => {
                    problem(
                        i,
                        format!(
                            "{part:?} is not a service plan ID or name; separate several with ';' or '|'"
                        ),
                    );
                    continue;
                }
            };
            if !excluded_plans.contains(&plan) {
                excluded_plans.push(plan);
            }
        }
        excluded_plans.sort();
        if action == Action::Remove && !excluded_plans.is_empty() {
            problem(
                i,
                "excluded plans apply only to assign; leave it empty for remove".into(),
            );
        }
    }

    let usage_location = match columns.usage_location.map(|i| (i, cells[i].trim())) {
        None | Some((_, "")) => None,
        Some((i, text)) => match UsageLocation::parse(text) {
            Ok(location) => Some(location),
            Err(message) => {
                problem(i, format!("{message}; fix the cell or clear it"));
                None
            }
        },
    };

    match (customer_id, user, sku) {
        (Some(customer_id), Some((user, user_key)), Some(sku)) if problems.is_empty() => {
            Ok(RowRequest {
                customer_id,
                user,
                user_key,
                sku,
                license_group,
                excluded_plans,
                action,
                usage_location,
            })
        }
        _ => Err(RowProblem { problems }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers() -> Vec<String> {
        [
            "customer_id",
            "user_id",
            "sku",
            "license_group",
            "excluded_plans",
            "action",
            "country",
        ]
        .map(String::from)
        .to_vec()
    }

    fn columns() -> Columns {
        Columns {
            customer: 0,
            user: 1,
            sku: 2,
            license_group: Some(3),
            excluded_plans: Some(4),
            action: Some(5),
            usage_location: Some(6),
        }
    }

    fn check(cells: [&str; 6]) -> Result<RowRequest, RowProblem> {
        check_located(cells, "")
    }

    fn check_located(cells: [&str; 6], location: &str) -> Result<RowRequest, RowProblem> {
        let mut cells: Vec<String> = cells.iter().map(|c| c.to_string()).collect();
        cells.push(location.to_string());
        validate_row(&columns(), &headers(), &cells)
    }

    #[test]
    fn a_usage_location_is_two_letters_in_upper_case_or_the_row_is_invalid() {
        let row = [C, "émilie@contoso.com", "SPB", "", "", ""];
        let given = |text| check_located(row, text).unwrap().usage_location;
        assert_eq!(given(" nl ").unwrap().as_str(), "NL");
        assert_eq!(given("Jp").unwrap().to_string(), "JP");
        assert_eq!(given(""), None);
        for bad in ["Netherlands", "N", "N1", "ÉS", "N L"] {
            let err = check_located(row, bad).unwrap_err().to_string();
            assert!(err.contains("column country:"), "{bad}: {err}");
            assert!(err.contains("two-letter country code"), "{bad}: {err}");
        }
    }

    const C: &str = "0C39D6D5-C70D-4C55-BC02-F620844F3FD1";

    #[test]
    fn a_full_valid_row() {
        let req = check([
            C,
            " Ada@Contoso.com ",
            "Office 365 E3",
            "Group1",
            "",
            "Remove",
        ])
        .unwrap();
        assert_eq!(req.customer_id.to_string(), C.to_lowercase());
        assert_eq!(req.user, "Ada@Contoso.com");
        assert_eq!(req.user_key, "ada@contoso.com");
        assert_eq!(req.license_group, Some(LicenseGroup::Group1));
        assert_eq!(req.action, Action::Remove);
    }

    #[test]
    fn braced_guids_are_accepted_and_normalised() {
        let req = check([&format!("{{{C}}}"), &format!("{{{C}}}"), C, "", "", ""]).unwrap();
        assert_eq!(req.user, C.to_lowercase());
        assert_eq!(req.sku, SkuRef::Id(Uuid::parse_str(C).unwrap()));
    }

    #[test]
    fn every_problem_names_its_column() {
        let err = check(["nope", "bob", "", "group3", "Tea\u{7}ms", "delete"]).unwrap_err();
        let text = err.to_string();
        for column in [
            "customer_id",
            "user_id",
            "sku",
            "license_group",
            "excluded_plans",
            "action",
        ] {
            assert!(
                text.contains(&format!("column {column}:")),
                "{column} in {text}"
            );
        }
    }

    #[test]
    fn user_ids_that_could_reach_another_endpoint_are_invalid() {
        for user in [
            "../../x@y.com",
            "a/b@c.com",
            "a?b=c@d.com",
            "a%2f@b.com",
            "a b@c.com",
        ] {
            let err = check([C, user, "SPB", "", "", ""]).unwrap_err();
            assert!(err.to_string().contains("column user_id"), "{user}: {err}");
        }
        // Guest accounts contain '#', which is legal and must stay (it is URL-encoded later).
        let guest = check([
            C,
            "ada_contoso.com#EXT#@fabrikam.onmicrosoft.com",
            "SPB",
            "",
            "",
            "",
        ]);
        assert!(guest.is_ok());
    }

    #[test]
    fn excluded_plans_split_dedup_and_only_for_assign() {
        let a = "a1b2c3d4-0000-4000-8000-000000000001";
        let b = "a1b2c3d4-0000-4000-8000-000000000002";
        let req = check([C, C, "SPB", "", &format!("{b}; {a} |{b}"), ""]).unwrap();
        assert_eq!(req.excluded_plans.len(), 2);
        assert!(req.excluded_plans[0] < req.excluded_plans[1]);
        let err = check([C, C, "SPB", "", a, "remove"]).unwrap_err();
        assert!(err.to_string().contains("only to assign"));
    }
}
