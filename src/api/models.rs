//! Wire models of the Partner Center license calls: PascalCase requests exactly as the
//! documentation shows them, and lenient parsing of camelCase responses and error bodies.

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::input::Action;
use crate::plan::Operation;

/// The LicenseUpdate resource sent to `…/licenseupdates`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct LicenseUpdateRequest {
    pub licenses_to_assign: Option<Vec<LicenseAssignment>>,
    pub licenses_to_remove: Option<Vec<Uuid>>,
    pub license_warnings: Option<Vec<Value>>,
    pub attributes: Attributes,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct LicenseAssignment {
    pub sku_id: Uuid,
    pub excluded_plans: Option<Vec<Uuid>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Attributes {
    pub object_type: &'static str,
}

impl LicenseUpdateRequest {
    /// The request for a set of operations of one group; empty lists are sent as `null`, as
    /// the documentation's example does.
    pub fn for_operations<'a>(operations: impl IntoIterator<Item = &'a Operation>) -> Self {
        let mut assign = Vec::new();
        let mut remove = Vec::new();
        for op in operations {
            match op.action {
                Action::Assign => assign.push(LicenseAssignment {
                    sku_id: op.sku_id,
                    excluded_plans: (!op.excluded_plans.is_empty())
                        .then(|| op.excluded_plans.clone()),
                }),
                Action::Remove => remove.push(op.sku_id),
            }
        }
        LicenseUpdateRequest {
            licenses_to_assign: (!assign.is_empty()).then_some(assign),
            licenses_to_remove: (!remove.is_empty()).then_some(remove),
            license_warnings: None,
            attributes: Attributes {
                object_type: "LicenseUpdate",
            },
        }
    }
}

/// Reads a field by its camelCase name, accepting PascalCase too.
pub fn field<'a>(value: &'a Value, camel: &str) -> Option<&'a Value> {
    value.get(camel).or_else(|| {
        let mut pascal = camel.to_string();
        pascal[..1].make_ascii_uppercase();
        value.get(pascal.as_str())
    })
}

/// A code sent as a number or a string, as text.
pub fn code_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn text(value: Option<&Value>) -> Option<String> {
    value
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
}

/// A license warning of a successful LicenseUpdate, as `code: message` for the report.
pub fn license_warnings(body: &Value) -> Vec<String> {
    let Some(Value::Array(items)) = field(body, "licenseWarnings") else {
        return Vec::new();
    };
    items
        .iter()
        .map(|w| {
            let code = code_text(field(w, "code")).unwrap_or_else(|| "warning".into());
            let message = text(field(w, "message")).unwrap_or_default();
            let plans = match field(w, "servicePlans") {
                Some(Value::Array(p)) if !p.is_empty() => format!(
                    " [{}]",
                    p.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                _ => String::new(),
            };
            format!("{code}: {message}{plans}")
        })
        .collect()
}

/// A Partner Center error body: `{"code": 60012, "description": "…", "data": [...], "source": …}`
/// or the throttling shape `{"statusCode": 429, "message": "…"}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ErrorBody {
    pub code: Option<String>,
    pub description: Option<String>,
    pub data: Vec<String>,
}

impl ErrorBody {
    pub fn parse(body: &[u8]) -> ErrorBody {
        let Ok(value) = serde_json::from_slice::<Value>(body) else {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            return ErrorBody {
                description: (!text.is_empty()).then(|| text.chars().take(300).collect()),
                ..Default::default()
            };
        };
        let data = match field(&value, "data") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(String::from)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        };
        ErrorBody {
            code: code_text(field(&value, "code")),
            description: text(field(&value, "description"))
                .or_else(|| text(field(&value, "message"))),
            data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_matches_the_documented_example() {
        let op = Operation {
            sku_id: "f8a1db68-be16-40ed-86d5-cb42ce701560".parse().unwrap(),
            action: Action::Assign,
            excluded_plans: vec![],
            rows: vec![0],
        };
        let json = serde_json::to_value(LicenseUpdateRequest::for_operations([&op])).unwrap();
        let expected = serde_json::json!({
            "LicensesToAssign": [{"ExcludedPlans": null, "SkuId": "f8a1db68-be16-40ed-86d5-cb42ce701560"}],
            "LicensesToRemove": null,
            "LicenseWarnings": null,
            "Attributes": {"ObjectType": "LicenseUpdate"}
        });
        assert_eq!(json, expected);
    }

    #[test]
    fn error_bodies_parse_with_numeric_or_string_codes() {
        let b = ErrorBody::parse(
            br#"{"code": 60012, "description": "out", "data": ["x"], "source": "PartnerFD"}"#,
        );
        assert_eq!(b.code.as_deref(), Some("60012"));
        assert_eq!(b.data, ["x"]);
        let b = ErrorBody::parse(br#"{"Code": "900316", "Description": "no"}"#);
        assert_eq!(b.code.as_deref(), Some("900316"));
        let b = ErrorBody::parse(
            br#"{"statusCode":429,"message":"Rate limit is exceeded. Try again in 3 seconds."}"#,
        );
        assert_eq!(b.code, None);
        assert!(b.description.unwrap().contains("Try again"));
        assert_eq!(
            ErrorBody::parse(b"<html>bad gateway</html>")
                .description
                .as_deref(),
            Some("<html>bad gateway</html>")
        );
    }

    #[test]
    fn warnings_are_read_leniently() {
        let body = serde_json::json!({"licenseWarnings": [
            {"code": "DependsOnPlan", "message": "needs Exchange", "servicePlans": ["EXCHANGE_S_STANDARD"]},
            {"code": 7, "message": "other", "unknown": true}]});
        assert_eq!(
            license_warnings(&body),
            [
                "DependsOnPlan: needs Exchange [EXCHANGE_S_STANDARD]",
                "7: other"
            ]
        );
        assert!(license_warnings(&serde_json::json!({})).is_empty());
    }
}
