//! Budgets: how much each user may use per period, what a job reserves against them when it is
//! submitted, and what it is charged when it ends.
//!
//! A user's use of a period is one ledger item per period (`usage#<owner>#day#2026-11-23`,
//! `usage#<owner>#month#2026-11`). Its `committed` amounts are what settled jobs were charged
//! plus what unfinished jobs reserved, so that one conditional update can refuse a job whose
//! worst case would take the period over its budget, however many are submitted at once.
//! When a job ends, the reservation is settled to its charge with the job's terminal
//! transition, in the same atomic write: exactly once, whoever ends it.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};

use super::{
    FailureCode, GenerateRequest, Job, NanoUsd, Owner, Price, TokenCounts, Transition, Usage,
};

/// Tokens a model may add around the prompt (chat template, role markers): part of a job's
/// worst case.
pub const PROMPT_OVERHEAD_TOKENS: u64 = 64;

/// How long a ledger item outlives its period before the table's TTL removes it.
const LEDGER_KEPT_FOR: Duration = Duration::days(90);

/// The limits of one user. `None`: no limit of that kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    pub tokens_per_day: Option<u64>,
    pub usd_per_month: Option<NanoUsd>,
}

/// An operator's limits for one user (the table's `budget#<owner>` item): each one that is set
/// replaces the default, `Some(None)` removing it ("unlimited").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BudgetOverride {
    pub tokens_per_day: Option<Option<u64>>,
    pub usd_per_month: Option<Option<NanoUsd>>,
}

impl BudgetOverride {
    /// The key of the operator's item for `owner` in the jobs table. Never a UUID, so it is
    /// never mistaken for a job.
    pub fn key(owner: &Owner) -> String {
        format!("budget#{}", owner.as_str())
    }
}

impl Budget {
    pub fn overridden_by(self, user: BudgetOverride) -> Self {
        Self {
            tokens_per_day: user.tokens_per_day.unwrap_or(self.tokens_per_day),
            usd_per_month: user.usd_per_month.unwrap_or(self.usd_per_month),
        }
    }

    /// The limit of a period of `kind`, in that period's unit (tokens or nano-dollars).
    pub fn limit(&self, kind: PeriodKind) -> Option<u64> {
        match kind {
            PeriodKind::Day => self.tokens_per_day,
            PeriodKind::Month => self.usd_per_month.map(|usd| usd.0),
        }
    }
}

/// Budgets count tokens per UTC day and dollars per UTC calendar month.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeriodKind {
    Day,
    Month,
}

impl PeriodKind {
    pub const ALL: [PeriodKind; 2] = [Self::Day, Self::Month];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Month => "month",
        }
    }

    /// The part of an amount this kind of period limits: tokens a day, nano-dollars a month.
    pub fn measure(self, amount: &Amount) -> u64 {
        match self {
            Self::Day => amount.tokens,
            Self::Month => amount.cost.0,
        }
    }
}

/// One UTC day or calendar month.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Period {
    pub kind: PeriodKind,
    /// `2026-11-23` or `2026-11`.
    pub name: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
}

impl Period {
    /// The period of `kind` that `at` falls in.
    pub fn containing(kind: PeriodKind, at: DateTime<Utc>) -> Self {
        let day = at.date_naive();
        let (first, next, name) = match kind {
            PeriodKind::Day => (day, day + Duration::days(1), day.format("%Y-%m-%d")),
            PeriodKind::Month => {
                let first = day.with_day(1).unwrap_or(day);
                let next = first
                    .checked_add_months(chrono::Months::new(1))
                    .unwrap_or(first);
                (first, next, day.format("%Y-%m"))
            }
        };
        let midnight = |date: NaiveDate| Utc.from_utc_datetime(&date.and_time(Default::default()));
        Self {
            kind,
            name: name.to_string(),
            starts_at: midnight(first),
            ends_at: midnight(next),
        }
    }

    /// The key of `owner`'s ledger item for this period. Never a UUID, so it shares the jobs
    /// table without ever being mistaken for a job.
    pub fn ledger_key(&self, owner: &Owner) -> String {
        format!(
            "usage#{}#{}#{}",
            owner.as_str(),
            self.kind.as_str(),
            self.name
        )
    }

    /// When the table's TTL may remove the ledger item, in epoch seconds.
    pub fn ledger_expires_at(&self) -> i64 {
        (self.ends_at + LEDGER_KEPT_FOR).timestamp()
    }

    /// Whole seconds from `now` until the period ends (at least 1), for `Retry-After`.
    pub fn retry_after_secs(&self, now: DateTime<Utc>) -> i64 {
        (self.ends_at - now).num_seconds().max(1)
    }
}

/// Tokens and dollars together: a reservation, a charge or a period's committed use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Amount {
    pub tokens: u64,
    pub cost: NanoUsd,
}

impl Amount {
    /// A job's worst case, reserved when it is submitted: every byte of its prompt and system
    /// prompt a token (no tokenizer makes more tokens than UTF-8 bytes), the model's overhead,
    /// and all of `max_tokens`; priced at the model's price (nothing, if it has none).
    pub fn worst_case(request: &GenerateRequest, price: Option<&Price>) -> Self {
        let system = request.system.as_deref().map_or(0, str::len);
        let input = (request.prompt.len() + system) as u64 + PROMPT_OVERHEAD_TOKENS;
        let output = u64::from(request.max_tokens);
        let tokens = TokenCounts {
            input,
            output,
            ..TokenCounts::default()
        };
        Self {
            tokens: input + output,
            cost: price.map(|price| price.cost(&tokens)).unwrap_or_default(),
        }
    }

    /// Tokens and nano-dollars as the signed change a ledger adds.
    pub fn signed(&self) -> (i128, i128) {
        (i128::from(self.tokens), i128::from(self.cost.0))
    }

    /// `self - other`, as the signed change a ledger adds.
    pub fn minus(&self, other: &Amount) -> (i128, i128) {
        let ((tokens, cost), (less_tokens, less_cost)) = (self.signed(), other.signed());
        (tokens - less_tokens, cost - less_cost)
    }

    /// `self - other`, never below zero.
    pub fn saturating_sub(&self, other: &Amount) -> Self {
        Self {
            tokens: self.tokens.saturating_sub(other.tokens),
            cost: NanoUsd(self.cost.0.saturating_sub(other.cost.0)),
        }
    }
}

/// What `job` counts against its owner's budgets when `transition` ends it (or corrects its
/// charge), given what it reserved.
///
/// A succeeded job counts what the model reported. A job that never reached the model (still
/// queued, not enqueued, no model call started), or whose model refused or kept throttling its
/// calls before any text, counts nothing. A job whose use is unknown counts its whole
/// reservation, the only figure that can never be less than the bill: stopped while running,
/// failed because its worker did not finish, or failed after its model wrote text.
pub(super) fn charge(
    transition: &Transition,
    job: &Job,
    reserved: &Amount,
) -> Option<(Amount, Usage)> {
    let used = |usage: Usage, cost: Option<NanoUsd>| {
        let tokens = usage.input_tokens + usage.output_tokens;
        let cost = cost.unwrap_or_default();
        Some((Amount { tokens, cost }, usage))
    };
    let worst_case_if = |unknown: bool| {
        let amount = if unknown {
            *reserved
        } else {
            Amount::default()
        };
        Some((amount, Usage::default()))
    };
    match transition {
        Transition::Succeed { completion, .. } => used(completion.usage, completion.cost),
        // A stopped job's call that ended after all: charged what it used instead.
        Transition::RecordUsage { used: call } => used(call.usage, call.cost),
        Transition::Fail { failure, .. } => {
            let model_refused = [
                FailureCode::EnqueueFailed,
                FailureCode::ModelError,
                FailureCode::ModelUnavailable,
            ]
            .iter()
            .any(|code| failure.code == code.as_str());
            let wrote = job
                .partial_output
                .as_ref()
                .is_some_and(|text| !text.is_empty());
            worst_case_if(job.attempts > 0 && (!model_refused || wrote))
        }
        Transition::Cancel { running } => worst_case_if(*running),
        Transition::Start { .. }
        | Transition::Flush { .. }
        | Transition::Release { .. }
        | Transition::Requeue { .. } => None,
    }
}

/// A job's reservation settled to its charge: the change of each of its ledger items (those of
/// the periods it was created in), applied with its terminal transition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settlement {
    /// The ledger keys: the job's creation day, then month.
    pub ledgers: [String; 2],
    pub reserved: Amount,
    pub charged: Amount,
    /// What the model reported (zero where it is unknown).
    pub usage: Usage,
    /// A stopped job's recorded use replacing the worst case its stop charged: the job was
    /// settled already, and its earlier charge (its reservation) is taken back.
    pub correcting: bool,
}

impl Settlement {
    /// The signed changes of a ledger's counters: committed (tokens, nano-dollars), charged
    /// (the same), settled jobs.
    pub fn changes(&self) -> ((i128, i128), (i128, i128), u64) {
        let committed = self.charged.minus(&self.reserved);
        if self.correcting {
            (committed, committed, 0)
        } else {
            (committed, self.charged.signed(), 1)
        }
    }
}

/// What one user has used in one period, from its ledger item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeriodUsage {
    pub period: Period,
    /// Jobs submitted in the period.
    pub jobs: u64,
    /// Jobs of those that have ended and were charged.
    pub settled_jobs: u64,
    /// Charges of ended jobs plus reservations of unfinished ones: what the budget is
    /// checked against.
    pub committed: Amount,
    /// Charges of ended jobs.
    pub charged: Amount,
    /// Tokens the model reported for them.
    pub usage: Usage,
}

impl PeriodUsage {
    pub fn empty(period: Period) -> Self {
        Self {
            period,
            jobs: 0,
            settled_jobs: 0,
            committed: Amount::default(),
            charged: Amount::default(),
            usage: Usage::default(),
        }
    }

    /// Counts a new job's worst case, unless it would take the period over `limit` (in the
    /// period's unit): what the store's conditional update does.
    pub fn reserve(&mut self, worst_case: &Amount, limit: Option<u64>) -> Result<(), OverBudget> {
        let kind = self.period.kind;
        let (committed, needed) = (kind.measure(&self.committed), kind.measure(worst_case));
        if let Some(limit) = limit.filter(|limit| committed.saturating_add(needed) > *limit) {
            return Err(OverBudget {
                period: self.period.clone(),
                limit,
                committed: Some(committed),
                needed,
            });
        }
        self.jobs += 1;
        self.committed = Amount {
            tokens: self.committed.tokens + worst_case.tokens,
            cost: self.committed.cost.saturating_add(worst_case.cost),
        };
        Ok(())
    }

    /// Replaces a job's reservation (or, correcting, its earlier charge) by its charge.
    pub fn settle(&mut self, settlement: &Settlement) {
        let add = |total: Amount, (tokens, cost): (i128, i128)| {
            let add = |total: u64, change: i128| {
                u64::try_from((i128::from(total) + change).max(0)).unwrap_or(u64::MAX)
            };
            Amount {
                tokens: add(total.tokens, tokens),
                cost: NanoUsd(add(total.cost.0, cost)),
            }
        };
        let (committed, charged, settled) = settlement.changes();
        self.committed = add(self.committed, committed);
        self.charged = add(self.charged, charged);
        self.settled_jobs += settled;
        self.usage.input_tokens += settlement.usage.input_tokens;
        self.usage.output_tokens += settlement.usage.output_tokens;
    }

    /// Held by unfinished jobs.
    pub fn reserved(&self) -> Amount {
        self.committed.saturating_sub(&self.charged)
    }

    /// What is left of `limit` (in the period's unit), never below zero.
    pub fn left(&self, limit: u64) -> u64 {
        limit.saturating_sub(self.period.kind.measure(&self.committed))
    }
}

/// A submission that its owner's budget refuses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverBudget {
    pub period: Period,
    /// In the period's unit.
    pub limit: u64,
    /// Committed in the period when it was refused (`None`: not known).
    pub committed: Option<u64>,
    /// The job's worst case, in the period's unit.
    pub needed: u64,
}

impl OverBudget {
    /// The first of `budget`'s limits that `needed` alone exceeds: a job that no period could
    /// ever admit is refused before anything is written.
    pub fn alone(budget: &Budget, needed: &Amount, at: DateTime<Utc>) -> Option<Self> {
        PeriodKind::ALL.into_iter().find_map(|kind| {
            let limit = budget.limit(kind)?;
            let needed = kind.measure(needed);
            (needed > limit).then(|| Self {
                period: Period::containing(kind, at),
                limit,
                committed: None,
                needed,
            })
        })
    }

    /// A sentence for the caller: what was used, what the job needed, when it resets.
    pub fn explain(&self) -> String {
        let amount = |n: u64| match self.period.kind {
            PeriodKind::Day => format!("{n} tokens"),
            PeriodKind::Month => format!("${}", NanoUsd(n)),
        };
        let budget = match self.period.kind {
            PeriodKind::Day => "daily",
            PeriodKind::Month => "monthly",
        };
        let needed = amount(self.needed);
        let limit = amount(self.limit);
        if self.limit == 0 {
            return format!(
                "Your {budget} budget is {limit}: you cannot submit jobs; ask the operator to \
                 raise it."
            );
        }
        if self.needed > self.limit {
            return format!(
                "This job could use up to {needed}, more than your whole {budget} budget of \
                 {limit}; lower max_tokens or shorten the prompt."
            );
        }
        let used = self.committed.map_or_else(String::new, |committed| {
            format!(" You have used or reserved {} of it.", amount(committed))
        });
        format!(
            "This job could use up to {needed}, more than is left of your {budget} budget of \
             {limit} for {}.{used} It resets at {}.",
            self.period.name,
            super::format_timestamp(self.period.ends_at),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Completion, Job, JobFailure, LeaseId, parse_timestamp};

    fn at(text: &str) -> DateTime<Utc> {
        parse_timestamp(text).unwrap()
    }

    #[test]
    fn periods_are_utc_days_and_calendar_months() {
        let day = Period::containing(PeriodKind::Day, at("2026-12-31T23:59:59.999Z"));
        assert_eq!(day.name, "2026-12-31");
        assert_eq!(day.starts_at, at("2026-12-31T00:00:00.000Z"));
        assert_eq!(day.ends_at, at("2027-01-01T00:00:00.000Z"));
        let month = Period::containing(PeriodKind::Month, at("2026-12-31T23:59:59.999Z"));
        assert_eq!(month.name, "2026-12");
        assert_eq!(month.ends_at, at("2027-01-01T00:00:00.000Z"));
        let february = Period::containing(PeriodKind::Month, at("2028-02-29T12:00:00.000Z"));
        assert_eq!(february.starts_at, at("2028-02-01T00:00:00.000Z"));
        assert_eq!(february.ends_at, at("2028-03-01T00:00:00.000Z"));
        assert_eq!(
            Period::containing(PeriodKind::Day, at("2027-01-01T00:00:00.000Z")).name,
            "2027-01-01",
            "a new period starts by itself at midnight"
        );
        assert_eq!(
            day.ledger_key(&Owner::new("alice")),
            "usage#alice#day#2026-12-31"
        );
        assert_eq!(day.retry_after_secs(at("2026-12-31T23:00:00.000Z")), 3600);
        assert_eq!(day.retry_after_secs(at("2026-12-31T23:59:59.999Z")), 1);
        assert_eq!(
            day.ledger_expires_at(),
            at("2027-04-01T00:00:00.000Z").timestamp()
        );
    }

    #[test]
    fn a_worst_case_counts_every_prompt_byte_and_all_of_max_tokens() {
        let price = Price {
            input: NanoUsd(1_000_000),
            output: NanoUsd(2_000_000),
            cache_read: None,
            cache_write: None,
        };
        let request = GenerateRequest {
            system: Some("ab".into()),
            ..GenerateRequest::new("héllo", "m", 100)
        };
        let input = 6 + 2 + PROMPT_OVERHEAD_TOKENS;
        let worst = Amount::worst_case(&request, Some(&price));
        assert_eq!(worst.tokens, input + 100);
        assert_eq!(worst.cost, NanoUsd(input * 1_000 + 100 * 2_000));
        assert_eq!(Amount::worst_case(&request, None).cost, NanoUsd(0));
    }

    #[test]
    fn each_ending_is_charged_what_it_used_or_could_have_used() {
        let reserved = Amount {
            tokens: 500,
            cost: NanoUsd(9_000),
        };
        let usage = Usage {
            input_tokens: 12,
            output_tokens: 30,
        };
        let succeed = Transition::Succeed {
            lease: LeaseId::random(),
            completion: Completion {
                output: "x".into(),
                stop_reason: "end_turn".into(),
                usage,
                artifact_key: "k".into(),
                cost: Some(NanoUsd(700)),
            },
            tail: crate::domain::TextPiece {
                attempt: 1,
                index: 0,
                offset: 0,
                text: "x".into(),
                expires_at: 0,
            },
        };
        let fail = |code| Transition::Fail {
            lease: None,
            failure: JobFailure::new(code, "no"),
        };
        let job = |attempts, text: Option<&str>| {
            let request = GenerateRequest::new("p", "m", 10);
            let mut job = Job::queued(
                Owner::new("o"),
                request,
                None,
                at("2026-11-23T00:00:00Z"),
                Duration::days(1),
            );
            job.attempts = attempts;
            job.partial_output = text.map(str::to_owned);
            job
        };
        let (started, wrote, never_started) =
            (job(1, None), job(2, Some("half an ans")), job(0, None));
        let nothing = (Amount::default(), Usage::default());
        let worst = (reserved, Usage::default());
        let recorded = Transition::RecordUsage {
            used: crate::domain::CallUsage { usage, cost: None },
        };
        let cases = [
            (
                "succeeded",
                &succeed,
                &started,
                (
                    Amount {
                        tokens: 42,
                        cost: NanoUsd(700),
                    },
                    usage,
                ),
            ),
            (
                "stopped while queued",
                &Transition::Cancel { running: false },
                &never_started,
                nothing,
            ),
            (
                "stopped while running",
                &Transition::Cancel { running: true },
                &started,
                worst,
            ),
            (
                "a stopped call's use",
                &recorded,
                &started,
                (
                    Amount {
                        tokens: 42,
                        cost: NanoUsd(0),
                    },
                    usage,
                ),
            ),
            (
                "never enqueued",
                &fail(FailureCode::EnqueueFailed),
                &never_started,
                nothing,
            ),
            (
                "model refused",
                &fail(FailureCode::ModelError),
                &started,
                nothing,
            ),
            (
                "model throttled",
                &fail(FailureCode::ModelUnavailable),
                &started,
                nothing,
            ),
            (
                "model failed after writing",
                &fail(FailureCode::ModelUnavailable),
                &wrote,
                worst,
            ),
            (
                "worker died",
                &fail(FailureCode::WorkerError),
                &started,
                worst,
            ),
            (
                "dead-lettered before any call",
                &fail(FailureCode::WorkerError),
                &never_started,
                nothing,
            ),
        ];
        for (name, transition, job, expected) in cases {
            assert_eq!(charge(transition, job, &reserved), Some(expected), "{name}");
        }
        let release = Transition::Release {
            lease: LeaseId::random(),
        };
        assert_eq!(
            charge(&release, &started, &reserved),
            None,
            "only an ending is charged"
        );
    }

    #[test]
    fn user_overrides_replace_or_remove_the_default_limits() {
        let default = Budget {
            tokens_per_day: Some(1_000),
            usd_per_month: Some(NanoUsd(5)),
        };
        assert_eq!(default.overridden_by(BudgetOverride::default()), default);
        let user = BudgetOverride {
            tokens_per_day: Some(Some(50)),
            usd_per_month: Some(None),
        };
        assert_eq!(
            default.overridden_by(user),
            Budget {
                tokens_per_day: Some(50),
                usd_per_month: None
            }
        );
        assert_eq!(default.limit(PeriodKind::Month), Some(5));
    }

    #[test]
    fn refusals_say_what_was_used_what_was_needed_and_when_it_resets() {
        let now = at("2026-11-23T15:00:00.000Z");
        let budget = Budget {
            tokens_per_day: Some(1_000),
            usd_per_month: Some(NanoUsd::parse_usd("0.5").unwrap()),
        };
        let small = Amount {
            tokens: 900,
            cost: NanoUsd(1),
        };
        assert_eq!(OverBudget::alone(&budget, &small, now), None);
        let too_big = Amount {
            tokens: 2_000,
            cost: NanoUsd(1),
        };
        let refusal = OverBudget::alone(&budget, &too_big, now).unwrap();
        assert_eq!(refusal.period.kind, PeriodKind::Day);
        assert_eq!(
            refusal.explain(),
            "This job could use up to 2000 tokens, more than your whole daily budget of \
             1000 tokens; lower max_tokens or shorten the prompt."
        );
        let over = OverBudget {
            period: Period::containing(PeriodKind::Month, now),
            limit: 500_000_000,
            committed: Some(450_000_000),
            needed: 60_000_000,
        };
        assert_eq!(
            over.explain(),
            "This job could use up to $0.06, more than is left of your monthly budget of \
             $0.5 for 2026-11. You have used or reserved $0.45 of it. It resets at \
             2026-12-01T00:00:00.000Z."
        );
    }

    #[test]
    fn a_ledger_reserves_up_to_its_limit_and_settles_to_the_charge() {
        let period = Period::containing(PeriodKind::Day, at("2026-11-23T10:00:00.000Z"));
        let mut ledger = PeriodUsage::empty(period);
        let worst = Amount {
            tokens: 300,
            cost: NanoUsd(50),
        };
        assert_eq!(ledger.reserve(&worst, Some(1_000)), Ok(()));
        assert_eq!(ledger.reserve(&worst, Some(1_000)), Ok(()));
        assert_eq!(ledger.reserve(&worst, Some(1_000)), Ok(()));
        let over = ledger.reserve(&worst, Some(1_000)).unwrap_err();
        assert_eq!((over.committed, over.needed), (Some(900), 300));
        assert_eq!(ledger.jobs, 3, "a refusal counts nothing");
        assert_eq!(
            ledger.reserve(&worst, None),
            Ok(()),
            "no limit: tracked only"
        );

        let used = Usage {
            input_tokens: 20,
            output_tokens: 80,
        };
        ledger.settle(&Settlement {
            ledgers: [String::new(), String::new()],
            reserved: worst,
            charged: Amount {
                tokens: 100,
                cost: NanoUsd(7),
            },
            usage: used,
            correcting: false,
        });
        assert_eq!(
            ledger.committed,
            Amount {
                tokens: 1_000,
                cost: NanoUsd(157)
            },
            "300 reserved, 100 charged: 200 given back"
        );
        assert_eq!((ledger.settled_jobs, ledger.usage), (1, used));
        assert_eq!(ledger.reserved().tokens, 900);
    }

    #[test]
    fn a_stopped_jobs_recorded_use_replaces_the_worst_case_it_was_charged() {
        let period = Period::containing(PeriodKind::Day, at("2026-11-23T10:00:00.000Z"));
        let mut ledger = PeriodUsage::empty(period);
        let worst = Amount {
            tokens: 300,
            cost: NanoUsd(50),
        };
        ledger.reserve(&worst, None).unwrap();
        let settle = |charged, usage, correcting| Settlement {
            ledgers: [String::new(), String::new()],
            reserved: worst,
            charged,
            usage,
            correcting,
        };
        ledger.settle(&settle(worst, Usage::default(), false)); // stopped while running
        let used = Usage {
            input_tokens: 10,
            output_tokens: 20,
        };
        let real = Amount {
            tokens: 30,
            cost: NanoUsd(4),
        };
        ledger.settle(&settle(real, used, true));
        assert_eq!((ledger.committed, ledger.charged), (real, real));
        assert_eq!((ledger.jobs, ledger.settled_jobs), (1, 1), "settled once");
        assert_eq!(ledger.usage, used);
    }

    #[test]
    fn what_is_left_and_reserved_comes_from_the_committed_and_charged_amounts() {
        let mut usage = PeriodUsage::empty(Period::containing(
            PeriodKind::Day,
            at("2026-11-23T00:00:00.000Z"),
        ));
        usage.committed = Amount {
            tokens: 700,
            cost: NanoUsd(10),
        };
        usage.charged = Amount {
            tokens: 200,
            cost: NanoUsd(4),
        };
        assert_eq!(
            usage.reserved(),
            Amount {
                tokens: 500,
                cost: NanoUsd(6)
            }
        );
        assert_eq!(usage.left(1_000), 300);
        assert_eq!(usage.left(600), 0, "never below zero");
    }
}
