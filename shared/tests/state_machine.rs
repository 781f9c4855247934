//! The state machine at its edges, besides the table of every transition against every kind
//! of job in `domain::job`: where a lease ends, where the attempts run out, what a lease's
//! holder may still do once it has ended, and that every change applied is a move
//! `JobStatus::can_become` allows.

use chrono::{DateTime, Duration, Utc};
use pipeline::domain::{
    CallUsage, Completion, FailureCode, GenerateRequest, Guard, Job, JobFailure, JobStatus, Lease,
    LeaseId, Owner, TextPiece, Transition, Usage,
};

fn at() -> DateTime<Utc> {
    DateTime::from_timestamp(1_795_860_100, 0).unwrap()
}

fn job(status: JobStatus, attempts: u32, lease: Option<Lease>) -> Job {
    let request = GenerateRequest::new("hi", "m", 1);
    let created = at() - Duration::minutes(1);
    let mut job = Job::queued(Owner::new("o"), request, None, created, Duration::days(1));
    job.status = status;
    job.attempts = attempts;
    job.lease = lease;
    job
}

fn start(max_attempts: u32) -> Transition {
    Transition::Start {
        lease: Lease::new(at() + Duration::minutes(15)),
        max_attempts,
    }
}

fn succeed(lease: &LeaseId) -> Transition {
    Transition::Succeed {
        lease: lease.clone(),
        completion: Completion {
            output: "text".into(),
            stop_reason: "end_turn".into(),
            usage: Usage::default(),
            artifact_key: "k".into(),
            cost: None,
        },
        tail: TextPiece {
            attempt: 1,
            index: 0,
            offset: 0,
            text: "text".into(),
            expires_at: 0,
        },
    }
}

fn fail(lease: Option<LeaseId>) -> Transition {
    Transition::Fail {
        lease,
        failure: JobFailure::new(FailureCode::WorkerError, "stopped"),
    }
}

/// A lease is live up to, not including, its end, as the DynamoDB condition
/// (`lease_expires_at <= :now` is free) has it.
#[test]
fn a_lease_holds_the_job_until_its_end_and_not_at_it() {
    // Milliseconds from `at` to the lease's end, and whether the job is free at `at`.
    let cases = [
        (-1_000, true),
        (-1, true),
        (0, true),
        (1, false),
        (60_000, false),
    ];
    for (ends_in, free) in cases {
        let lease = Lease::new(at() + Duration::milliseconds(ends_in));
        let running = job(JobStatus::Running, 1, Some(lease.clone()));
        assert_eq!(lease.is_live(at()), !free, "ends in {ends_in} ms");
        assert_eq!(
            Guard::Free(at()).admits(&running),
            free,
            "ends in {ends_in} ms"
        );
        assert_eq!(
            running.apply(&start(3), at()).is_some(),
            free,
            "start, {ends_in} ms"
        );
        assert_eq!(
            running.apply(&fail(None), at()).is_some(),
            free,
            "fail, {ends_in} ms"
        );
        // The holder's own writes do not depend on the time: until another attempt takes
        // the job, a late answer still counts.
        for write in [
            succeed(&lease.id),
            Transition::Release {
                lease: lease.id.clone(),
            },
            fail(Some(lease.id.clone())),
        ] {
            assert!(
                running.apply(&write, at()).is_some(),
                "{write:?}, {ends_in} ms"
            );
        }
    }
}

/// `max_attempts` model calls may start, not one more, whatever the job's lease.
#[test]
fn a_job_starts_until_its_attempts_are_used_up() {
    let expired = Lease::new(at() - Duration::seconds(1));
    let cases = [
        (0, 1, true),
        (1, 1, false),
        (2, 3, true),
        (3, 3, false),
        (4, 3, false),
    ];
    for (attempts, max_attempts, admitted) in cases {
        for (state, job) in [
            ("queued", job(JobStatus::Queued, attempts, None)),
            ("released", job(JobStatus::Running, attempts, None)),
            (
                "expired",
                job(JobStatus::Running, attempts, Some(expired.clone())),
            ),
        ] {
            let started = job.apply(&start(max_attempts), at());
            assert_eq!(
                started.is_some(),
                admitted,
                "{state}, {attempts} of {max_attempts} calls made"
            );
            if let Some(started) = started {
                assert_eq!(started.attempts, attempts + 1);
            }
            // A job with its attempts used up is free to fail: nothing will run it again.
            assert!(job.apply(&fail(None), at()).is_some(), "{state}");
        }
    }
}

/// Attempt A's lease ends, B takes the job over: from then on only B's writes count.
#[test]
fn a_taken_over_attempt_can_no_longer_write() {
    let queued = job(JobStatus::Queued, 0, None);
    let a = Lease::new(at() + Duration::seconds(10));
    let start_a = Transition::Start {
        lease: a.clone(),
        max_attempts: 3,
    };
    let held = queued.apply(&start_a, at()).unwrap();
    let later = at() + Duration::seconds(11);
    let b = Lease::new(later + Duration::seconds(10));
    let start_b = Transition::Start {
        lease: b.clone(),
        max_attempts: 3,
    };
    assert!(
        held.apply(&start_b, at()).is_none(),
        "not while A's lease lives"
    );
    let taken = held.apply(&start_b, later).unwrap();
    assert_eq!((taken.attempts, taken.lease.as_ref()), (2, Some(&b)));
    for write in [
        succeed(&a.id),
        Transition::Release {
            lease: a.id.clone(),
        },
        fail(Some(a.id.clone())),
    ] {
        assert!(taken.apply(&write, later).is_none(), "A: {write:?}");
    }
    let done = taken.apply(&succeed(&b.id), later).unwrap();
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.seq, queued.seq + 3);
}

/// Whatever the job and the transition, a change applied is a move the state machine allows,
/// and it ends any lease but the one a start takes (a flush keeps its own).
#[test]
fn every_applied_transition_is_an_allowed_move() {
    let live = Lease::new(at() + Duration::seconds(60));
    let expired = Lease::new(at() - Duration::seconds(1));
    let mut jobs = Vec::new();
    for status in JobStatus::ALL {
        for lease in [None, Some(live.clone()), Some(expired.clone())] {
            jobs.push(job(status, 1, lease));
        }
    }
    let other = LeaseId::random();
    let transitions = [
        start(3),
        start(1),
        succeed(&live.id),
        succeed(&expired.id),
        succeed(&other),
        Transition::Release {
            lease: live.id.clone(),
        },
        Transition::Release { lease: other },
        fail(Some(expired.id.clone())),
        fail(None),
        Transition::Cancel { running: true },
        Transition::Cancel { running: false },
        Transition::Requeue {
            unchanged_since: at(),
            max_attempts: 3,
        },
        Transition::Flush {
            lease: live.id.clone(),
            piece: TextPiece {
                attempt: 1,
                index: 0,
                offset: 0,
                text: "so far".into(),
                expires_at: 0,
            },
        },
        Transition::RecordUsage {
            used: CallUsage {
                usage: Usage {
                    input_tokens: 3,
                    output_tokens: 4,
                },
                cost: None,
            },
        },
    ];
    let mut applied = 0;
    for job in &jobs {
        for transition in &transitions {
            let Some(next) = job.apply(transition, at()) else {
                continue;
            };
            applied += 1;
            let what = format!("{transition:?} on {} {:?}", job.status, job.lease);
            let stays = transition.target().is_none() && next.status == job.status;
            assert!(stays || job.status.can_become(next.status), "{what}");
            // A terminal job changes only to record what its stopped call used, once.
            let recorded = matches!(transition, Transition::RecordUsage { .. });
            assert!(!job.status.is_terminal() || recorded, "{what}");
            if recorded {
                assert_eq!(job.status, JobStatus::Cancelled, "{what}");
                assert!(next.apply(transition, at()).is_none(), "{what}: once");
            }
            assert_eq!(next.seq, job.seq + 1, "{what}");
            let lease = match transition {
                Transition::Start { lease, .. } => Some(lease),
                Transition::Flush { .. } => job.lease.as_ref(),
                _ => None,
            };
            assert_eq!(next.lease.as_ref(), lease, "{what}");
        }
    }
    assert!(applied > 0);
}
