//! The built-in SKU catalog: real Microsoft 365 product names, part numbers and SKU IDs, used to
//! resolve names in a sheet and to provision the sandbox when no scenario says otherwise.

use uuid::Uuid;

use super::{ResolvedSku, SkuResolver};
use crate::input::{LicenseGroup, SkuRef};

/// One product of the catalog.
#[derive(Debug, Clone, Copy)]
pub struct CatalogSku {
    pub id: &'static str,
    pub part_number: &'static str,
    pub name: &'static str,
    pub license_group: LicenseGroup,
    /// Service plans: (service name, display name, ID).
    pub service_plans: &'static [CatalogPlan],
}

/// A service plan of a SKU (for excluding plans by name).
#[derive(Debug, Clone, PartialEq)]
pub struct ServicePlan {
    pub id: Uuid,
    /// e.g. `TEAMS1`.
    pub service_name: String,
    /// e.g. `Microsoft Teams`.
    pub display_name: String,
}

/// A service plan of a catalog SKU.
#[derive(Debug, Clone, Copy)]
pub struct CatalogPlan {
    pub service_name: &'static str,
    pub display_name: &'static str,
    pub id: &'static str,
}

const fn plan(
    service_name: &'static str,
    display_name: &'static str,
    id: &'static str,
) -> CatalogPlan {
    CatalogPlan {
        service_name,
        display_name,
        id,
    }
}

const EXCHANGE_1: CatalogPlan = plan(
    "EXCHANGE_S_STANDARD",
    "Exchange Online (Plan 1)",
    "9aaf7827-d63c-4b61-89c3-182f06f82e5c",
);
const EXCHANGE_2: CatalogPlan = plan(
    "EXCHANGE_S_ENTERPRISE",
    "Exchange Online (Plan 2)",
    "efb87545-963c-4e0d-99df-69c6916d9eb0",
);
const TEAMS: CatalogPlan = plan(
    "TEAMS1",
    "Microsoft Teams",
    "57ff2da0-773e-42df-b2af-ffb7a2317929",
);
const SHAREPOINT_1: CatalogPlan = plan(
    "SHAREPOINTSTANDARD",
    "SharePoint (Plan 1)",
    "c7699d2e-19aa-44de-8edf-1736da088ca1",
);
const SHAREPOINT_2: CatalogPlan = plan(
    "SHAREPOINTENTERPRISE",
    "SharePoint (Plan 2)",
    "5dbe027f-2339-4123-9542-606e4d348a72",
);
const YAMMER: CatalogPlan = plan(
    "YAMMER_ENTERPRISE",
    "Yammer Enterprise",
    "7547a3fe-08ee-4ccb-b430-5077c5041653",
);
const SWAY: CatalogPlan = plan("SWAY", "Sway", "a23b959c-7ce8-4e57-9140-b90eb88a9e97");
const APPS: CatalogPlan = plan(
    "OFFICESUBSCRIPTION",
    "Microsoft 365 Apps for enterprise",
    "43de0ff5-c92c-492b-9116-175376d08c38",
);
const INTUNE: CatalogPlan = plan(
    "INTUNE_A",
    "Microsoft Intune",
    "c1ec4a95-1f05-45b3-a911-aa3fa01094f5",
);
const POWER_BI: CatalogPlan = plan(
    "BI_AZURE_P2",
    "Power BI Pro",
    "70d33638-9c74-4d01-bfd3-562de28bd4ba",
);
const VISIO: CatalogPlan = plan(
    "VISIO_CLIENT_SUBSCRIPTION",
    "Visio Desktop App",
    "663a804f-1c30-4ff0-9915-9db84f0d1cea",
);
const PROJECT: CatalogPlan = plan(
    "PROJECT_CLIENT_SUBSCRIPTION",
    "Project Online Desktop Client",
    "fafd7243-e5c1-4a3a-9e40-495efcb1d3c3",
);
const MINECRAFT: CatalogPlan = plan(
    "MINECRAFT_EDUCATION_EDITION",
    "Minecraft Education",
    "4c246bbc-f513-4311-beff-eba54c353256",
);

impl CatalogSku {
    pub fn uuid(&self) -> Uuid {
        Uuid::parse_str(self.id).expect("catalog IDs are GUIDs")
    }

    /// The SKU as the API's models describe it.
    pub fn service_plans(&self) -> Vec<ServicePlan> {
        self.service_plans
            .iter()
            .map(|p| ServicePlan {
                id: Uuid::parse_str(p.id).expect("catalog IDs are GUIDs"),
                service_name: p.service_name.into(),
                display_name: p.display_name.into(),
            })
            .collect()
    }
}

/// Finds a service plan by service name or display name (case-insensitive) among `plans`.
pub fn find_plan(plans: &[ServicePlan], text: &str) -> Result<Uuid, String> {
    plans
        .iter()
        .find(|p| same_name(&p.service_name, text) || same_name(&p.display_name, text))
        .map(|p| p.id)
        .ok_or_else(|| {
            if plans.is_empty() {
                format!("unknown service plan {text:?}; give its ID (GUID)")
            } else {
                format!(
                    "the SKU has no service plan {text:?}; its plans: {}",
                    plans
                        .iter()
                        .map(|p| format!("{} ({})", p.service_name, p.display_name))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        })
}

const fn sku(
    id: &'static str,
    part_number: &'static str,
    name: &'static str,
    license_group: LicenseGroup,
    service_plans: &'static [CatalogPlan],
) -> CatalogSku {
    CatalogSku {
        id,
        part_number,
        name,
        license_group,
        service_plans,
    }
}

use LicenseGroup::{Group1, Group2};

/// Well-known SKUs (IDs as published in Microsoft's "product names and service plan identifiers").
pub const BUILTIN: &[CatalogSku] = &[
    sku(
        "3b555118-da6a-4418-894f-7df1e2096870",
        "O365_BUSINESS_ESSENTIALS",
        "Microsoft 365 Business Basic",
        Group1,
        &[EXCHANGE_1, TEAMS, SHAREPOINT_1, SWAY],
    ),
    sku(
        "f245ecc8-75af-4f8e-b61f-27d8114de5f3",
        "O365_BUSINESS_PREMIUM",
        "Microsoft 365 Business Standard",
        Group1,
        &[EXCHANGE_1, TEAMS, SHAREPOINT_1, SWAY, APPS],
    ),
    sku(
        "cbdc14ab-d96c-4c30-b9f4-6ada7cdc1d46",
        "SPB",
        "Microsoft 365 Business Premium",
        Group1,
        &[EXCHANGE_1, TEAMS, SHAREPOINT_1, SWAY, APPS, INTUNE],
    ),
    sku(
        "18181a46-0d4e-45cd-891e-4d0aa1e4c4b4",
        "STANDARDPACK",
        "Office 365 E1",
        Group1,
        &[EXCHANGE_1, TEAMS, SHAREPOINT_1, YAMMER, SWAY],
    ),
    sku(
        "6fd2c87f-b296-42f0-b197-1e91e994b900",
        "ENTERPRISEPACK",
        "Office 365 E3",
        Group1,
        &[EXCHANGE_2, TEAMS, SHAREPOINT_2, YAMMER, SWAY, APPS],
    ),
    sku(
        "c7df2760-2c81-4ef7-b578-5b5392b571df",
        "ENTERPRISEPREMIUM",
        "Office 365 E5",
        Group1,
        &[
            EXCHANGE_2,
            TEAMS,
            SHAREPOINT_2,
            YAMMER,
            SWAY,
            APPS,
            POWER_BI,
        ],
    ),
    sku(
        "05e9a617-0261-4cee-bb44-138d3ef5d965",
        "SPE_E3",
        "Microsoft 365 E3",
        Group1,
        &[EXCHANGE_2, TEAMS, SHAREPOINT_2, YAMMER, SWAY, APPS, INTUNE],
    ),
    sku(
        "06ebc4ee-1bb5-47dd-8120-11324bc54e06",
        "SPE_E5",
        "Microsoft 365 E5",
        Group1,
        &[
            EXCHANGE_2,
            TEAMS,
            SHAREPOINT_2,
            YAMMER,
            SWAY,
            APPS,
            INTUNE,
            POWER_BI,
        ],
    ),
    sku(
        "4b9405b0-7788-4568-add1-99614e613b69",
        "EXCHANGESTANDARD",
        "Exchange Online (Plan 1)",
        Group1,
        &[EXCHANGE_1],
    ),
    sku(
        "f8a1db68-be16-40ed-86d5-cb42ce701560",
        "POWER_BI_PRO",
        "Power BI Pro",
        Group1,
        &[POWER_BI],
    ),
    sku(
        "c5928f49-12ba-48f7-ada3-0d743a3601d5",
        "VISIOCLIENT",
        "Visio Plan 2",
        Group1,
        &[VISIO],
    ),
    sku(
        "53818b1b-4a27-454b-8896-0dba576410e6",
        "PROJECTPROFESSIONAL",
        "Project Plan 3",
        Group1,
        &[PROJECT],
    ),
    sku(
        "984df360-9a74-4647-8cf8-696749f6247a",
        "MEE_FACULTY",
        "Minecraft Education Faculty",
        Group2,
        &[MINECRAFT],
    ),
    sku(
        "533b8f26-f74b-4e9c-9c59-50fc4b393b63",
        "MEE_STUDENT",
        "Minecraft Education Student",
        Group2,
        &[MINECRAFT],
    ),
];

/// Whether two product names, part numbers or plan names are the same, ignoring case and
/// spacing. Compares word by word without building either's normal form: it runs for every
/// row against every catalog entry.
pub fn same_name(a: &str, b: &str) -> bool {
    let lower = |word: &str| {
        word.chars()
            .flat_map(char::to_lowercase)
            .collect::<Vec<_>>()
    };
    let (mut a_words, mut b_words) = (a.split_whitespace(), b.split_whitespace());
    loop {
        match (a_words.next(), b_words.next()) {
            (None, None) => return true,
            (Some(x), Some(y)) if x.is_ascii() && y.is_ascii() => {
                if !x.eq_ignore_ascii_case(y) {
                    return false;
                }
            }
            (Some(x), Some(y)) => {
                if lower(x) != lower(y) {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// Looks a SKU up by ID, part number or product name.
pub fn find(sku: &SkuRef) -> Option<&'static CatalogSku> {
    match sku {
        SkuRef::Id(id) => BUILTIN.iter().find(|s| s.uuid() == *id),
        SkuRef::Name(name) => BUILTIN
            .iter()
            .find(|s| same_name(s.part_number, name) || same_name(s.name, name)),
    }
}

/// Resolves against [`BUILTIN`] only: the same answer for every customer.
#[derive(Debug, Default, Clone, Copy)]
pub struct BuiltinCatalog;

impl SkuResolver for BuiltinCatalog {
    fn resolve_plan(&self, _customer: Uuid, sku: Uuid, plan: &str) -> Result<Uuid, String> {
        let plans = find(&SkuRef::Id(sku))
            .map(CatalogSku::service_plans)
            .unwrap_or_default();
        find_plan(&plans, plan)
    }

    fn resolve(&self, _customer: Uuid, sku: &SkuRef) -> Result<ResolvedSku, String> {
        match (find(sku), sku) {
            (Some(found), _) => Ok(ResolvedSku {
                id: found.uuid(),
                license_group: Some(found.license_group),
            }),
            // A GUID we do not know is still a SKU ID the API may know; send it as is.
            (None, SkuRef::Id(id)) => Ok(ResolvedSku {
                id: *id,
                license_group: None,
            }),
            (None, SkuRef::Name(name)) => Err(format!(
                "unknown SKU {name:?}; give its SKU ID (GUID) or one of: {}",
                BUILTIN
                    .iter()
                    .map(|s| format!("{} ({})", s.part_number, s.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_part_numbers_resolve_case_insensitively() {
        let by_name = find(&SkuRef::Name("microsoft 365  business PREMIUM".into())).unwrap();
        let by_part = find(&SkuRef::Name("spb".into())).unwrap();
        assert_eq!(by_name.id, by_part.id);
        let minecraft = find(&SkuRef::Name("MEE_STUDENT".into())).unwrap();
        assert_eq!(minecraft.license_group, Group2);
    }

    #[test]
    fn catalog_ids_are_unique_guids() {
        let mut ids: Vec<Uuid> = BUILTIN.iter().map(CatalogSku::uuid).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), BUILTIN.len());
    }

    #[test]
    fn unknown_names_list_the_choices() {
        let err = BuiltinCatalog
            .resolve(Uuid::nil(), &SkuRef::Name("E7".into()))
            .unwrap_err();
        assert!(err.contains("\"E7\"") && err.contains("SPB (Microsoft 365 Business Premium)"));
    }

    #[test]
    fn names_match_whatever_the_case_and_spacing_and_only_then() {
        assert!(same_name(
            "Microsoft 365 Business Premium",
            "  microsoft   365\tBUSINESS premium "
        ));
        assert!(same_name("SPB", "spb"));
        assert!(same_name("ÉTÉ", "été"));
        assert!(!same_name(
            "Microsoft 365 Business",
            "Microsoft 365 Business Premium"
        ));
        assert!(!same_name(
            "Microsoft 365 Business Premium",
            "Microsoft 365 Business"
        ));
        assert!(!same_name("SPB", "SPE"));
        assert!(same_name("", "   "));
    }
}
