//! Where the pool takes its groups from: one lane per customer, refilled a page at a time
//! from the [`WorkSource`] (the journal), taken in turn from the customers that may send now.

use std::collections::VecDeque;

use uuid::Uuid;

use super::GroupWork;
use super::pacing::{self, Pacer};

/// Where the engine takes its groups from: the journal, a page per customer at a time, so
/// the pool holds a few groups per customer rather than the whole run.
pub trait WorkSource: Send {
    /// Up to `limit` open groups of `customer` after those already returned; none when it
    /// has no more.
    fn next_of(&mut self, customer: Uuid, limit: usize) -> Result<Vec<GroupWork>, String>;
}

/// The work of a run: its customers with open groups (in the order they appear), how many
/// groups are open, and where to read them.
pub struct Work {
    pub customers: Vec<Uuid>,
    pub groups: u64,
    pub source: Box<dyn WorkSource>,
}

/// Groups a lane reads ahead of its workers.
const PAGE: usize = 64;

/// The open groups per customer, taken in turn from the customers that may send now, so a
/// customer waiting out its own Retry-After does not hold the workers (see [`pacing`]).
pub(super) struct Lanes {
    /// In turn order; a lane goes to the back when a group is taken from it. A lane's queue
    /// is refilled from the source when it runs dry; a lane the source has nothing more for
    /// is dropped.
    lanes: VecDeque<(Uuid, VecDeque<GroupWork>)>,
    source: Box<dyn WorkSource>,
}

impl Lanes {
    pub(super) fn new(work: Work) -> Self {
        Lanes {
            lanes: work
                .customers
                .into_iter()
                .map(|c| (c, VecDeque::new()))
                .collect(),
            source: work.source,
        }
    }

    /// The next group: from the first lane in turn that may send now, else from the one that
    /// may send soonest (its worker then waits in the pacer). `Err`: the source failed.
    pub(super) fn next(&mut self, pacer: &Pacer) -> Result<Option<GroupWork>, String> {
        loop {
            let pick = if pacer.scope() == pacing::Scope::Customer {
                let now = tokio::time::Instant::now();
                let mut soonest: Option<(usize, tokio::time::Instant)> = None;
                for (index, (customer, _)) in self.lanes.iter().enumerate() {
                    let at = pacer.ready_at(*customer);
                    if at <= now {
                        soonest = Some((index, at));
                        break;
                    }
                    if soonest.is_none_or(|(_, best)| at < best) {
                        soonest = Some((index, at));
                    }
                }
                match soonest {
                    Some((index, _)) => index,
                    None => return Ok(None),
                }
            } else {
                0
            };
            let Some((customer, mut queue)) = self.lanes.remove(pick) else {
                return Ok(None);
            };
            if queue.is_empty() {
                queue.extend(self.source.next_of(customer, PAGE)?);
            }
            if let Some(work) = queue.pop_front() {
                self.lanes.push_back((customer, queue));
                return Ok(Some(work));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;
    use crate::plan::Group;

    /// Two open groups for each customer, handed out once.
    struct TwoEach(HashMap<Uuid, Vec<GroupWork>>);

    impl WorkSource for TwoEach {
        fn next_of(&mut self, customer: Uuid, _limit: usize) -> Result<Vec<GroupWork>, String> {
            Ok(self.0.remove(&customer).unwrap_or_default())
        }
    }

    fn lanes_of(customers: &[Uuid]) -> Lanes {
        let work = |customer: Uuid, n: usize| GroupWork {
            group: n,
            request: Group {
                customer_id: customer,
                user: format!("łukasz{n}@fabrikam.example"),
                license_group: crate::input::LicenseGroup::Group1,
                operations: Vec::new(),
            },
            passes: Vec::new(),
            previous_attempts: 0,
            location: Default::default(),
        };
        let groups = customers
            .iter()
            .map(|&c| (c, vec![work(c, 0), work(c, 1)]))
            .collect();
        Lanes::new(Work {
            customers: customers.to_vec(),
            groups: 2 * customers.len() as u64,
            source: Box::new(TwoEach(groups)),
        })
    }

    /// Once the API limits per customer, a customer that waits out its own 429 does not hold
    /// up the others: their groups go first, in turn; of the waiting ones, the one whose
    /// wait ends soonest comes next.
    #[tokio::test(start_paused = true)]
    async fn lanes_that_wait_give_way_to_lanes_that_may_send() {
        let [a, b, c, d] = [0xA, 0xB, 0xC, 0xD].map(Uuid::from_u128);
        let pacer = pacing::Pacer::new(1_000_000);
        // A throttled 15 times in a row while B, as busy, is answered and never throttled: a
        // partner-wide limit would do that less than once in 10,000, so it is per customer.
        for _ in 0..15 {
            for _ in 0..10 {
                tokio::time::advance(Duration::from_millis(200)).await;
                pacer.answered(Some(a), tokio::time::Instant::now());
                pacer.answered(Some(b), tokio::time::Instant::now());
            }
            pacer.throttled(Some(a), tokio::time::Instant::now(), Duration::from_secs(1));
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        let now = tokio::time::Instant::now;
        pacer.throttled(Some(a), now(), Duration::from_millis(2500));
        pacer.answered(Some(b), now());
        pacer.throttled(Some(d), now(), Duration::from_millis(1500));
        pacer.answered(Some(b), now());
        assert_eq!(pacer.scope(), pacing::Scope::Customer);

        let mut lanes = lanes_of(&[a, b, c, d]);
        let order: Vec<Uuid> = (0..8)
            .map(|_| lanes.next(&pacer).unwrap().unwrap().request.customer_id)
            .collect();
        assert_eq!(order[..4], [b, c, b, c], "the lanes that may send, in turn");
        assert_eq!(order[4], d, "then the wait that ends first: {order:?}");
        assert!(lanes.next(&pacer).unwrap().is_none());
    }
}
