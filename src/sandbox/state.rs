//! The sandbox's state: customers and their subscribed SKUs, who holds which license, the
//! idempotency store, in-flight counts, token grants, and the ground-truth counters.

use super::*;

#[derive(Debug, Clone)]
pub(super) struct SubscribedSku {
    pub(super) id: Uuid,
    pub(super) name: String,
    pub(super) part_number: String,
    pub(super) license_group: LicenseGroup,
    pub(super) total: u64,
    pub(super) consumed: u64,
    pub(super) warning: Option<(String, String)>,
}

#[derive(Debug, Clone)]
pub(super) struct Customer {
    pub(super) name: String,
    pub(super) conditional_access_blocked: bool,
    pub(super) blocked_after_requests: Option<u64>,
    /// This pair's own quota per minute, with a per-customer throttle.
    pub(super) quota_per_minute: Option<u64>,
    pub(super) calls: u64,
    pub(super) missing_gdap_role: bool,
    pub(super) users: Option<HashSet<String>>,
    /// Users (lower case) refused a license until a PATCH gives them a usage location.
    pub(super) without_usage_location: HashSet<String>,
    /// A user PATCH answers 403 (no User Administrator role).
    pub(super) missing_user_admin_role: bool,
    /// Usage locations PATCHed, per user (lower case).
    pub(super) usage_locations: HashMap<String, String>,
    pub(super) skus: Vec<SubscribedSku>,
    pub(super) assigned: HashMap<String, BTreeSet<Uuid>>,
}

impl Customer {
    pub(super) fn with_catalog(name: String) -> Customer {
        Customer {
            name,
            conditional_access_blocked: false,
            blocked_after_requests: None,
            quota_per_minute: None,
            calls: 0,
            missing_gdap_role: false,
            users: None,
            without_usage_location: HashSet::new(),
            missing_user_admin_role: false,
            usage_locations: HashMap::new(),
            skus: catalog::BUILTIN
                .iter()
                .map(|s| SubscribedSku {
                    id: s.uuid(),
                    name: s.name.into(),
                    part_number: s.part_number.into(),
                    license_group: s.license_group,
                    total: PLENTY,
                    consumed: 0,
                    warning: None,
                })
                .collect(),
            assigned: HashMap::new(),
        }
    }

    /// The customers a scenario defines, by ID.
    pub(super) fn all_of(scenario: &Scenario) -> Result<HashMap<Uuid, Customer>, String> {
        scenario
            .customers
            .iter()
            .map(|c| Ok((c.id, Customer::from_scenario(c)?)))
            .collect()
    }

    pub(super) fn from_scenario(c: &scenario::CustomerScenario) -> Result<Customer, String> {
        let mut customer =
            Customer::with_catalog(c.name.clone().unwrap_or_else(|| c.id.to_string()));
        customer.conditional_access_blocked = c.conditional_access_blocked;
        customer.blocked_after_requests = c.blocked_after_requests;
        customer.quota_per_minute = c.quota_per_minute;
        customer.missing_gdap_role = c.missing_gdap_role;
        customer.users = c
            .users
            .as_ref()
            .map(|u| u.iter().map(|u| u.trim().to_lowercase()).collect());
        customer.missing_user_admin_role = c.missing_user_admin_role;
        customer.without_usage_location = c
            .users_without_usage_location
            .iter()
            .map(|u| u.trim().to_lowercase())
            .collect();
        if let Some(skus) = &c.skus {
            customer.skus = skus.iter().map(subscribed_sku).collect::<Result<_, _>>()?;
        }
        Ok(customer)
    }
}

pub(super) fn subscribed_sku(s: &scenario::SkuScenario) -> Result<SubscribedSku, String> {
    let reference = match Uuid::try_parse(s.sku.trim()) {
        Ok(id) => SkuRef::Id(id),
        Err(_) => SkuRef::Name(s.sku.clone()),
    };
    let known = catalog::find(&reference);
    let id = match (&reference, known) {
        (_, Some(k)) => k.uuid(),
        (SkuRef::Id(id), None) => *id,
        (SkuRef::Name(n), None) => {
            return Err(format!(
                "scenario SKU {n:?} is not in the catalog; give its GUID"
            ));
        }
    };
    let license_group = match &s.license_group {
        Some(g) => LicenseGroup::parse(g)
            .ok_or_else(|| format!("license_group {g:?}: use group1 or group2"))?,
        None => known.map_or(LicenseGroup::Group1, |k| k.license_group),
    };
    Ok(SubscribedSku {
        id,
        name: s
            .name
            .clone()
            .or(known.map(|k| k.name.to_string()))
            .unwrap_or_else(|| id.to_string()),
        part_number: s
            .part_number
            .clone()
            .or(known.map(|k| k.part_number.to_string()))
            .unwrap_or_default(),
        license_group,
        total: s.total.unwrap_or(1000),
        consumed: s.consumed,
        warning: s
            .warning
            .as_ref()
            .map(|w| (w.code.clone(), w.message.clone())),
    })
}

/// A change a request made to one license of one user: assigned (true, with its excluded
/// plans) or removed, and that request's ID.
pub(super) type LicenseChange = (bool, BTreeSet<Uuid>, String);

pub(super) struct Stored {
    pub(super) fingerprint: String,
    pub(super) status: u16,
    pub(super) body: Value,
}

pub(super) struct SandboxState {
    pub(super) scenario: Scenario,
    pub(super) permissive: bool,
    pub(super) customers: HashMap<Uuid, Customer>,
    /// Issued access tokens and when each stops working.
    pub(super) tokens: HashMap<String, Instant>,
    pub(super) refresh_tokens: HashSet<String>,
    pub(super) issued: u64,
    pub(super) calls: u64,
    pub(super) requests: Vec<RecordedRequest>,
    /// Every user PATCH, in arrival order.
    pub(super) patches: Vec<RecordedPatch>,
    /// Bodies posted to the webhook sink (`POST /sandbox/webhook`), in arrival order.
    pub(super) webhooks: Vec<Value>,
    pub(super) idempotency: HashMap<String, Stored>,
    pub(super) violations: Violations,
    /// Counters that tests and `/sandbox/wait` can await.
    pub(super) progress: watch::Sender<Progress>,
    /// splitmix64 state of the seeded faults.
    pub(super) rng: u64,
    /// Quota state per partner ("") or customer: bucket tokens and last refill, or window
    /// number and calls in it.
    pub(super) quotas: HashMap<String, (f64, Instant)>,
    pub(super) started: Instant,
    /// Applied changes (customer, user, operations) and the request ID that applied them.
    pub(super) applied_changes: HashMap<String, String>,
    /// Per (customer, user, SKU): the last change a request made to it.
    pub(super) last_change: HashMap<(Uuid, String, Uuid), LicenseChange>,
    pub(super) in_flight: Arc<InFlight>,
    pub(super) grants: Vec<TokenGrant>,
    /// When the quota first counted a call (the origin of `window_from = "first_call"`).
    pub(super) first_charge: Option<Instant>,
}

/// An access token the token endpoint issued: when, from which endpoint, valid how long.
#[derive(Debug, Clone, Serialize)]
pub struct TokenGrant {
    #[serde(with = "humantime_serde_compat")]
    pub at: SystemTime,
    /// `"v1"` (`/oauth2/token`) or `"v2"` (`/oauth2/v2.0/token`).
    pub endpoint: &'static str,
    /// The lifetime the answer stated (`expires_in`); a revoked token stops sooner.
    pub lifetime_secs: u64,
}

/// licenseupdates calls being answered now, and the most there were at once. Atomics rather
/// than the state's lock: a call ends in a drop, also while a simulated reset unwinds, and a
/// lock taken there would be poisoned.
#[derive(Debug, Default)]
pub(super) struct InFlight {
    pub(super) now: AtomicUsize,
    pub(super) most: AtomicUsize,
}

impl InFlight {
    /// Counts a call as in flight until the guard drops (its answer leaves, or the client gave
    /// up and the handler was dropped).
    pub(super) fn enter(self: &Arc<Self>) -> InFlightGuard {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        InFlightGuard(Arc::clone(self))
    }
}

pub(super) struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

impl SandboxState {
    pub(super) fn new(scenario: Scenario, customers: HashMap<Uuid, Customer>) -> Self {
        SandboxState {
            permissive: scenario.is_permissive(),
            rng: scenario.faults.seed.unwrap_or(0x5EED),
            scenario,
            customers,
            tokens: HashMap::new(),
            refresh_tokens: HashSet::from([REFRESH_TOKEN.to_string()]),
            issued: 0,
            calls: 0,
            requests: Vec::new(),
            patches: Vec::new(),
            webhooks: Vec::new(),
            idempotency: HashMap::new(),
            violations: Violations::default(),
            progress: watch::Sender::new(Progress::default()),
            quotas: HashMap::new(),
            started: Instant::now(),
            applied_changes: HashMap::new(),
            last_change: HashMap::new(),
            in_flight: Arc::default(),
            grants: Vec::new(),
            first_charge: None,
        }
    }
}
