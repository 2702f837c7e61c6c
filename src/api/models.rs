//! Wire models of the Partner Center license calls: PascalCase requests exactly as the
//! documentation shows them, and lenient parsing of camelCase responses and error bodies.

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::country::UsageLocation;
use crate::input::{Action, LicenseGroup};
use crate::plan::Operation;
use crate::plan::catalog::ServicePlan;

/// The body of "Update user accounts for a customer" that sets only the usage location
/// (SPEC §5): `{"usageLocation":"NL","attributes":{"objectType":"CustomerUser"}}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageLocationUpdate {
    pub usage_location: String,
    pub attributes: CustomerUserAttributes,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomerUserAttributes {
    pub object_type: &'static str,
}

impl UsageLocationUpdate {
    pub fn new(location: &UsageLocation) -> UsageLocationUpdate {
        UsageLocationUpdate {
            usage_location: location.as_str().to_string(),
            attributes: CustomerUserAttributes {
                object_type: "CustomerUser",
            },
        }
    }
}

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
        // Char by char: the field names are ASCII, but nothing here may split a character.
        let mut chars = camel.chars();
        let pascal: String = chars
            .next()
            .map(|first| first.to_uppercase().chain(chars).collect())
            .unwrap_or_default();
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

/// A product SKU as the license resources describe it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductSku {
    pub id: Uuid,
    pub name: String,
    pub part_number: String,
    pub license_group: Option<LicenseGroup>,
}

/// One entry of `…/subscribedskus`.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscribedSku {
    pub product: ProductSku,
    pub available_units: Option<i64>,
    pub total_units: Option<i64>,
    pub consumed_units: Option<i64>,
    pub service_plans: Vec<ServicePlan>,
}

/// One entry of deployment insights.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentInsight {
    pub customer_name: String,
    pub product_name: String,
    pub licenses_deployed: f64,
    pub licenses_sold: f64,
    pub deployment_percent: f64,
    pub processed_at: String,
}

fn items(body: &Value) -> &[Value] {
    match field(body, "items") {
        Some(Value::Array(items)) => items,
        _ => &[],
    }
}

fn number(value: Option<&Value>) -> Option<f64> {
    match value? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn product_sku(value: &Value) -> Option<ProductSku> {
    let id = field(value, "id")?
        .as_str()
        .and_then(|s| Uuid::try_parse(s).ok())?;
    Some(ProductSku {
        id,
        name: text(field(value, "name")).unwrap_or_default(),
        part_number: text(field(value, "skuPartNumber")).unwrap_or_default(),
        license_group: text(field(value, "licenseGroupId")).and_then(|g| LicenseGroup::parse(&g)),
    })
}

fn service_plans(value: &Value) -> Vec<ServicePlan> {
    let Some(Value::Array(plans)) = field(value, "servicePlans") else {
        return Vec::new();
    };
    plans
        .iter()
        .filter_map(|p| {
            Some(ServicePlan {
                id: field(p, "id")?
                    .as_str()
                    .and_then(|s| Uuid::try_parse(s).ok())?,
                service_name: text(field(p, "serviceName")).unwrap_or_default(),
                display_name: text(field(p, "displayName")).unwrap_or_default(),
            })
        })
        .collect()
}

/// Parses `…/subscribedskus`; entries without a readable SKU ID are left out.
pub fn subscribed_skus(body: &Value) -> Vec<SubscribedSku> {
    items(body)
        .iter()
        .filter_map(|item| {
            Some(SubscribedSku {
                product: product_sku(field(item, "productSku")?)?,
                available_units: number(field(item, "availableUnits")).map(|n| n as i64),
                total_units: number(field(item, "totalUnits")).map(|n| n as i64),
                consumed_units: number(field(item, "consumedUnits")).map(|n| n as i64),
                service_plans: service_plans(item),
            })
        })
        .collect()
}

/// Parses `…/users/{user}/licenses`: the SKUs the user holds.
pub fn user_licenses(body: &Value) -> Vec<ProductSku> {
    items(body)
        .iter()
        .filter_map(|item| product_sku(field(item, "productSku")?))
        .collect()
}

/// Parses `…/analytics/licenses/deployment`.
pub fn deployment_insights(body: &Value) -> Vec<DeploymentInsight> {
    items(body)
        .iter()
        .map(|item| DeploymentInsight {
            customer_name: text(field(item, "customerName")).unwrap_or_default(),
            product_name: text(field(item, "productName")).unwrap_or_default(),
            licenses_deployed: number(field(item, "licensesDeployed")).unwrap_or(0.0),
            licenses_sold: number(field(item, "licensesSold")).unwrap_or(0.0),
            deployment_percent: number(field(item, "deploymentPercent")).unwrap_or(0.0),
            processed_at: text(field(item, "processedDateTime")).unwrap_or_default(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usage_location_patch_body_is_the_documented_one() {
        let body = UsageLocationUpdate::new(&UsageLocation::parse("nl").unwrap());
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({"usageLocation": "NL", "attributes": {"objectType": "CustomerUser"}})
        );
    }

    #[test]
    fn an_error_code_is_a_number_or_a_string_and_a_blank_one_is_none() {
        let code = |v: Value| code_text(Some(&v));
        assert_eq!(code(serde_json::json!(60012)), Some("60012".into()));
        assert_eq!(code(serde_json::json!(" 60012 ")), Some("60012".into()));
        // A blank code is no code: the message then names none ("HTTP 400", not "code ").
        assert_eq!(code(serde_json::json!("  ")), None);
        assert_eq!(code(serde_json::json!("")), None);
        assert_eq!(code(serde_json::json!(null)), None);
        assert_eq!(code_text(None), None);
    }

    #[test]
    fn lenient_shapes_of_error_data_and_numbers_are_read() {
        // `data` as one string instead of a list: it still names the SKU that ran out.
        let body =
            br#"{"code":60012,"description":"out","data":"LicenseQuotaExceededException : SKU 1"}"#;
        assert_eq!(
            ErrorBody::parse(body).data,
            ["LicenseQuotaExceededException : SKU 1"]
        );
        // Counts sent as strings (insights, seats) are numbers all the same.
        assert_eq!(number(Some(&serde_json::json!(" 30 "))), Some(30.0));
        assert_eq!(number(Some(&serde_json::json!(12.5))), Some(12.5));
        assert_eq!(number(Some(&serde_json::json!("many"))), None);
    }

    #[test]
    fn request_matches_the_documented_example() {
        let op = Operation {
            sku_id: "f8a1db68-be16-40ed-86d5-cb42ce701560".parse().unwrap(),
            action: Action::Assign,
            excluded_plans: vec![],
            first_row: 0,
            row_count: 1,
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
    fn subscribed_skus_parse_the_documented_shape() {
        let body = serde_json::json!({"totalCount": 2, "items": [
            {"availableUnits": 3, "activeUnits": 10, "consumedUnits": 7, "totalUnits": 10,
             "productSku": {"id": "f8a1db68-be16-40ed-86d5-cb42ce701560", "name": "Power BI Pro",
                            "skuPartNumber": "POWER_BI_PRO", "targetType": "User", "licenseGroupId": "group1"},
             "servicePlans": [{"displayName": "Power BI Pro", "serviceName": "BI_AZURE_P2",
                               "id": "70d33638-9c74-4d01-bfd3-562de28bd4ba", "targetType": "User"}],
             "attributes": {"objectType": "SubscribedSku"}},
            {"productSku": {"id": "not-a-guid"}}],
            "attributes": {"objectType": "Collection"}});
        let skus = subscribed_skus(&body);
        assert_eq!(skus.len(), 1);
        assert_eq!(skus[0].available_units, Some(3));
        assert_eq!(skus[0].product.license_group, Some(LicenseGroup::Group1));
        assert_eq!(skus[0].service_plans[0].service_name, "BI_AZURE_P2");
    }

    #[test]
    fn deployment_insights_parse_the_documented_shape() {
        let body = serde_json::json!({"totalCount": 1, "items": [{"customerName": "DT DEMO",
            "productName": "EXCHANGE ONLINE (PLAN 1)", "licensesDeployed": 0, "deploymentPercent": 0.0,
            "licensesSold": 5, "processedDateTime": "2017-03-14T03:25:16.36+00:00"}]});
        let insights = deployment_insights(&body);
        assert_eq!(insights[0].licenses_sold, 5.0);
        assert_eq!(insights[0].product_name, "EXCHANGE ONLINE (PLAN 1)");
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
