//! The header row: which column is which field (SPEC §3: aliases, case, spaces, `_` and `-`
//! ignored), which columns the report carries, and the `result_*` columns it adds.

use std::path::PathBuf;

/// Which column holds which field; indices into the record.
#[derive(Debug, Clone, Default)]
pub struct Columns {
    pub customer: usize,
    pub user: usize,
    pub sku: usize,
    pub license_group: Option<usize>,
    pub excluded_plans: Option<usize>,
    pub action: Option<usize>,
    pub usage_location: Option<usize>,
}

/// What the header row says: which columns go to the report and which hold which field.
#[derive(Debug, Clone)]
pub struct InputHeader {
    pub path: PathBuf,
    pub delimiter: u8,
    pub headers: Vec<String>,
    /// Columns carried to the report: every column except `result_*` ones of an earlier report.
    pub carried: Vec<usize>,
    pub columns: Columns,
}

impl InputHeader {
    /// The names of the columns carried to the report.
    pub fn carried_names(&self) -> Vec<&str> {
        self.carried
            .iter()
            .map(|&i| self.headers[i].as_str())
            .collect()
    }
}

/// The columns this tool adds to a report; ignored when a report is read back as input.
pub const RESULT_COLUMNS: [&str; 12] = [
    "result_row",
    "result_status",
    "result_sku_id",
    "result_license_group",
    "result_http_status",
    "result_error_code",
    "result_message",
    "result_attempts",
    "result_request_id",
    "result_correlation_id",
    "result_finished_at",
    "result_warnings",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Customer,
    User,
    Sku,
    LicenseGroup,
    ExcludedPlans,
    Action,
    UsageLocation,
}

impl Field {
    fn canonical(self) -> &'static str {
        match self {
            Field::Customer => "customer_id",
            Field::User => "user_id",
            Field::Sku => "sku",
            Field::LicenseGroup => "license_group",
            Field::ExcludedPlans => "excluded_plans",
            Field::Action => "action",
            Field::UsageLocation => "usage_location",
        }
    }

    /// Header names (normalized) that mean this field (SPEC §3).
    fn recognise(normalized: &str) -> Option<Field> {
        Some(match normalized {
            "customerid" | "customer" | "tenantid" | "customertenantid" => Field::Customer,
            "userid" | "user" | "upn" | "userprincipalname" => Field::User,
            "sku" | "skuid" | "productsku" | "product" => Field::Sku,
            "licensegroup" => Field::LicenseGroup,
            "excludedplans" => Field::ExcludedPlans,
            "action" => Field::Action,
            "usagelocation" | "country" => Field::UsageLocation,
            _ => return None,
        })
    }
}

/// Header matching ignores case, spaces, `_` and `-` (SPEC §3).
fn normalize_header(name: &str) -> String {
    name.trim_start_matches('\u{feff}')
        .chars()
        .filter(|c| !matches!(c, ' ' | '_' | '-' | '\t'))
        .flat_map(char::to_lowercase)
        .collect()
}

type HeaderProblem = (String, String);

pub(super) fn map_headers(headers: &[String]) -> Result<(Columns, Vec<usize>), HeaderProblem> {
    let mut found: Vec<(Field, usize)> = Vec::new();
    let mut carried = Vec::new();
    for (i, name) in headers.iter().enumerate() {
        let normalized = normalize_header(name);
        if RESULT_COLUMNS
            .iter()
            .any(|r| normalize_header(r) == normalized)
        {
            continue;
        }
        carried.push(i);
        if let Some(field) = Field::recognise(&normalized) {
            if let Some(&(_, first)) = found.iter().find(|(f, _)| *f == field) {
                return Err((
                    format!(
                        "columns {} ({:?}) and {} ({:?}) both mean {}",
                        first + 1,
                        headers[first],
                        i + 1,
                        name,
                        field.canonical()
                    ),
                    "keep one of them, or rename the other".into(),
                ));
            }
            found.push((field, i));
        }
    }
    let index = |field: Field| found.iter().find(|(f, _)| *f == field).map(|&(_, i)| i);
    let missing: Vec<&str> = [Field::Customer, Field::User, Field::Sku]
        .into_iter()
        .filter(|f| index(*f).is_none())
        .map(Field::canonical)
        .collect();
    if !missing.is_empty() {
        return Err((
            format!(
                "required column{} missing: {} (header is: {})",
                if missing.len() > 1 { "s" } else { "" },
                missing.join(", "),
                headers.join(", ")
            ),
            "the header row needs customer_id, user_id and sku (aliases: customer/tenant_id, user/upn, sku_id/product)".into(),
        ));
    }
    Ok((
        Columns {
            customer: index(Field::Customer).unwrap_or_default(),
            user: index(Field::User).unwrap_or_default(),
            sku: index(Field::Sku).unwrap_or_default(),
            license_group: index(Field::LicenseGroup),
            excluded_plans: index(Field::ExcludedPlans),
            action: index(Field::Action),
            usage_location: index(Field::UsageLocation),
        },
        carried,
    ))
}
