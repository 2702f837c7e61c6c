//! What each customer's tenant has, read before anything is written: its subscribed SKUs (to
//! resolve product names, license groups and service plan names) and free seats (for the
//! [`preflight`]). Each customer is read once per run, through the run's [`Dispatcher`].

pub mod preflight;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use uuid::Uuid;

use crate::api::models::{self, SubscribedSku};
use crate::engine::{Dispatcher, ReadFailure, ReadFailureKind};
use crate::input::SkuRef;
use crate::plan::catalog::{self, BuiltinCatalog, same_name};
use crate::plan::{ResolvedSku, SkuResolver};

/// What is known of one customer.
#[derive(Debug, Clone)]
pub enum CustomerCatalog {
    /// Its subscribed SKUs, both license groups.
    Known(Vec<SubscribedSku>),
    /// The customer refuses us or does not exist: its rows fail, nothing is sent to it.
    Refused(ReadFailure),
    /// Could not be read (or not asked: offline plan); names resolve from the built-in catalog.
    Unknown(String),
}

/// The customers of a run and what their tenants have.
#[derive(Debug, Clone, Default)]
pub struct TenantCatalog {
    customers: HashMap<Uuid, CustomerCatalog>,
}

impl TenantCatalog {
    /// No tenant was read: every name resolves from the built-in catalog, no seats are known.
    pub fn offline(reason: &str, customers: impl IntoIterator<Item = Uuid>) -> Self {
        TenantCatalog {
            customers: customers
                .into_iter()
                .map(|c| (c, CustomerCatalog::Unknown(reason.to_string())))
                .collect(),
        }
    }

    pub fn from_known(customers: HashMap<Uuid, CustomerCatalog>) -> Self {
        TenantCatalog { customers }
    }

    /// Reads every customer's subscribed SKUs, as many at once as the pool allows. A credential
    /// failure (every call would fail) or a stop ends it with that failure.
    pub async fn fetch(
        calls: &Arc<Dispatcher>,
        customers: impl IntoIterator<Item = Uuid>,
    ) -> Result<TenantCatalog, ReadFailure> {
        let unique: BTreeSet<Uuid> = customers.into_iter().collect();
        let reads = unique
            .into_iter()
            .map(|customer| (customer, calls.client.subscribed_skus_url(customer)))
            .collect();
        let mut catalog = TenantCatalog::default();
        for (customer, result) in calls.read_all(reads).await {
            let entry = match result {
                Ok(body) => CustomerCatalog::Known(models::subscribed_skus(&body)),
                Err(failure) => match failure.kind {
                    ReadFailureKind::Credential | ReadFailureKind::Stopped => return Err(failure),
                    ReadFailureKind::Customer => {
                        tracing::warn!(%customer, "{}", failure.message);
                        CustomerCatalog::Refused(failure)
                    }
                    ReadFailureKind::Unavailable => {
                        tracing::warn!(
                            %customer,
                            "cannot read the subscribed SKUs ({}); resolving names from the built-in catalog, no seat check",
                            failure.message
                        );
                        CustomerCatalog::Unknown(failure.message)
                    }
                },
            };
            catalog.customers.insert(customer, entry);
        }
        Ok(catalog)
    }

    pub fn customer(&self, customer: Uuid) -> Option<&CustomerCatalog> {
        self.customers.get(&customer)
    }

    fn known(&self, customer: Uuid) -> Option<&[SubscribedSku]> {
        match self.customers.get(&customer) {
            Some(CustomerCatalog::Known(skus)) => Some(skus),
            _ => None,
        }
    }

    /// The subscribed SKU, when the customer's subscriptions are known.
    pub fn subscribed(&self, customer: Uuid, sku: Uuid) -> Option<&SubscribedSku> {
        self.known(customer)?.iter().find(|s| s.product.id == sku)
    }

    /// A readable name of a SKU for tables: the customer's, else the catalog's, else the ID.
    pub fn sku_label(&self, customer: Uuid, sku: Uuid) -> String {
        self.subscribed(customer, sku)
            .map(|s| s.product.name.clone())
            .filter(|n| !n.is_empty())
            .or_else(|| catalog::find(&SkuRef::Id(sku)).map(|c| c.name.to_string()))
            .unwrap_or_else(|| sku.to_string())
    }
}

fn listing(skus: &[SubscribedSku]) -> String {
    if skus.is_empty() {
        return "none".into();
    }
    skus.iter()
        .map(|s| format!("{} ({})", s.product.name, s.product.part_number))
        .collect::<Vec<_>>()
        .join(", ")
}

impl SkuResolver for TenantCatalog {
    fn resolve(&self, customer: Uuid, sku: &SkuRef) -> Result<ResolvedSku, String> {
        let Some(skus) = self.known(customer) else {
            return BuiltinCatalog.resolve(customer, sku);
        };
        let resolved = |s: &SubscribedSku| ResolvedSku {
            id: s.product.id,
            license_group: s
                .product
                .license_group
                .or_else(|| catalog::find(&SkuRef::Id(s.product.id)).map(|c| c.license_group)),
        };
        match sku {
            SkuRef::Id(id) => skus
                .iter()
                .find(|s| s.product.id == *id)
                .map(resolved)
                .ok_or_else(|| {
                    format!(
                        "SKU {id} is not among this customer's subscriptions; it has: {}",
                        listing(skus)
                    )
                }),
            SkuRef::Name(name) => {
                let matches: Vec<&SubscribedSku> = skus
                    .iter()
                    .filter(|s| {
                        same_name(&s.product.part_number, name) || same_name(&s.product.name, name)
                    })
                    .collect();
                match matches.as_slice() {
                    [one] => Ok(resolved(one)),
                    [] => Err(format!(
                        "this customer has no subscription called {name:?}; it has: {}",
                        listing(skus)
                    )),
                    several => Err(format!(
                        "{name:?} is ambiguous for this customer: {}; give the SKU ID",
                        several
                            .iter()
                            .map(|s| format!(
                                "{} ({}, {})",
                                s.product.name,
                                s.product.id,
                                s.product
                                    .license_group
                                    .map_or("group unknown", |g| g.as_str())
                            ))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                }
            }
        }
    }

    fn resolve_plan(&self, customer: Uuid, sku: Uuid, plan: &str) -> Result<Uuid, String> {
        match self.subscribed(customer, sku) {
            Some(s) => catalog::find_plan(&s.service_plans, plan),
            None => BuiltinCatalog.resolve_plan(customer, sku, plan),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::models::ProductSku;
    use crate::input::LicenseGroup;
    use crate::plan::catalog::ServicePlan;

    fn sku(id: &str, name: &str, part: &str, group: LicenseGroup) -> SubscribedSku {
        SubscribedSku {
            product: ProductSku {
                id: id.parse().unwrap(),
                name: name.into(),
                part_number: part.into(),
                license_group: Some(group),
            },
            available_units: Some(1),
            total_units: Some(1),
            consumed_units: Some(0),
            service_plans: vec![ServicePlan {
                id: "57ff2da0-773e-42df-b2af-ffb7a2317929".parse().unwrap(),
                service_name: "TEAMS1".into(),
                display_name: "Microsoft Teams".into(),
            }],
        }
    }

    fn catalog() -> (Uuid, TenantCatalog) {
        let customer = Uuid::new_v4();
        let skus = vec![
            sku(
                "11111111-1111-4111-8111-111111111111",
                "Contoso Suite",
                "SUITE_A",
                LicenseGroup::Group1,
            ),
            sku(
                "22222222-2222-4222-8222-222222222222",
                "Contoso Suite",
                "SUITE_B",
                LicenseGroup::Group2,
            ),
            sku(
                "33333333-3333-4333-8333-333333333333",
                "Visio Plan 2",
                "VISIOCLIENT",
                LicenseGroup::Group1,
            ),
        ];
        (
            customer,
            TenantCatalog::from_known(HashMap::from([(customer, CustomerCatalog::Known(skus))])),
        )
    }

    #[test]
    fn names_part_numbers_and_ambiguity() {
        let (customer, catalog) = catalog();
        let visio = catalog
            .resolve(customer, &SkuRef::Name("visio plan 2".into()))
            .unwrap();
        assert_eq!(visio.id.to_string(), "33333333-3333-4333-8333-333333333333");
        let b = catalog
            .resolve(customer, &SkuRef::Name("suite_b".into()))
            .unwrap();
        assert_eq!(b.license_group, Some(LicenseGroup::Group2));
        let err = catalog
            .resolve(customer, &SkuRef::Name("Contoso Suite".into()))
            .unwrap_err();
        assert!(err.contains("ambiguous") && err.contains("group2"), "{err}");
        let err = catalog
            .resolve(customer, &SkuRef::Name("SPB".into()))
            .unwrap_err();
        assert!(err.contains("it has: Contoso Suite (SUITE_A)"), "{err}");
    }

    #[test]
    fn plans_by_name_and_unknown_customers_fall_back() {
        let (customer, catalog) = catalog();
        let visio: Uuid = "33333333-3333-4333-8333-333333333333".parse().unwrap();
        assert!(
            catalog
                .resolve_plan(customer, visio, "microsoft teams")
                .is_ok()
        );
        assert!(
            catalog
                .resolve_plan(customer, visio, "Yammer")
                .unwrap_err()
                .contains("TEAMS1")
        );
        let elsewhere = catalog
            .resolve(Uuid::new_v4(), &SkuRef::Name("SPB".into()))
            .unwrap();
        assert_eq!(
            elsewhere.id.to_string(),
            "cbdc14ab-d96c-4c30-b9f4-6ada7cdc1d46"
        );
    }
}
