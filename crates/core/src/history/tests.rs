use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::controller::{OpenAllocation, PoolView, Reason, ReasonCode, TenantView};
use crate::ids::RunId;
use crate::money::Money;
use crate::pool::{PoolSpec, Price, Provider};
use crate::queue::QueuedRun;
use crate::request::GroupRequest;
use crate::selector::PoolSelector;
use crate::tenant::TenantSpec;

const GI: u64 = 1024;

fn pool(name: &str, capacity: Resources, labels: &[(&str, &str)], state: PoolState) -> PoolView {
    let spec = PoolSpec {
        name: name.into(),
        provider: Provider::Local,
        capacity: capacity.into(),
        max_workers: 100,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        price: Price::default(),
        state,
        max_agent: Default::default(),
        require_confinement: false,
        kubernetes: None,
    };
    PoolView::new(&spec, Vec::new())
}

fn tenant(name: &str, allowed: Option<&[&str]>) -> TenantView {
    let mut spec = TenantSpec::unlimited(name);
    spec.allowed_pools = allowed.map(|p| p.iter().map(|x| x.to_string()).collect());
    TenantView::new(&spec, [0.0; 3])
}

fn snapshot(pools: Vec<PoolView>, tenants: Vec<TenantView>, open: &[OpenAllocation]) -> Snapshot {
    let mut snapshot = Snapshot {
        pools: pools.into_iter().map(|p| (p.name.clone(), p)).collect(),
        tenants: tenants.into_iter().map(|t| (t.name.clone(), t)).collect(),
    };
    snapshot.charge(open);
    snapshot
}

fn held(run: i64, tenant: &str, pool: &str, resources: Resources) -> OpenAllocation {
    OpenAllocation {
        run: RunId(run),
        tenant: tenant.into(),
        pool: pool.into(),
        resources,
        worker: None,
    }
}

fn queued(id: i64, tenant: &str, selector: PoolSelector, resources: Resources) -> QueuedRun {
    QueuedRun {
        id: RunId(id),
        tenant: tenant.into(),
        priority: 0,
        enqueued_at: Timestamp(id * 1000),
        groups: vec![GroupRequest {
            index: 0,
            selector,
            resources,
            steps: vec![0],
        }],
        readmit: false,
        bound: Money::ZERO,
    }
}

/// Every class of `queue` waiting with `code`.
fn waiting_with(queue: &RunQueue, code: ReasonCode) -> BTreeMap<ClassId, Arc<Reason>> {
    queue
        .classes()
        .map(|c| (c.id, Arc::new(Reason::simple(code, "waits"))))
        .collect()
}

fn queue(runs: Vec<QueuedRun>) -> RunQueue {
    let mut queue = RunQueue::new();
    for run in runs {
        queue.insert(run);
    }
    queue
}

/// The samples as (series name, subject) -> value.
fn table(samples: &[Sample]) -> BTreeMap<(&'static str, String), f64> {
    samples
        .iter()
        .map(|s| ((s.series.name(), s.subject.clone()), s.value))
        .collect()
}

fn value(samples: &[Sample], series: &str, subject: &str) -> Option<f64> {
    table(samples).get(&(series, subject.to_string())).copied()
}

#[test]
fn utilization_is_allocated_over_capacity_and_absent_without_capacity() {
    let s = snapshot(
        vec![pool(
            "a",
            Resources::new(4000, 8 * GI, 0),
            &[],
            PoolState::Active,
        )],
        vec![tenant("t", None)],
        &[held(1, "t", "a", Resources::new(1000, 2 * GI, 0))],
    );
    let samples = sample(&s, &RunQueue::new(), &BTreeMap::new(), Timestamp(5000));
    assert_eq!(value(&samples, "pool.utilization.cpu", "a"), Some(0.25));
    assert_eq!(value(&samples, "pool.utilization.memory", "a"), Some(0.25));
    assert_eq!(value(&samples, "pool.utilization.gpu", "a"), None);
    assert_eq!(value(&samples, "pool.saturation.gpu", "a"), None);
    // With nothing queued, saturation is utilization.
    assert_eq!(value(&samples, "pool.saturation.cpu", "a"), Some(0.25));
    assert!(samples.iter().all(|x| x.at == Timestamp(5000)));
}

#[test]
fn saturation_counts_the_queued_groups_each_pool_could_take() {
    let gpu = PoolSelector {
        labels: BTreeMap::from([("gpu".to_string(), "yes".to_string())]),
        ..PoolSelector::default()
    };
    let s = snapshot(
        vec![
            pool(
                "small",
                Resources::new(2000, 4 * GI, 0),
                &[],
                PoolState::Active,
            ),
            pool(
                "big",
                Resources::new(8000, 16 * GI, 2),
                &[("gpu", "yes")],
                PoolState::Active,
            ),
            pool(
                "closing",
                Resources::new(8000, 16 * GI, 0),
                &[],
                PoolState::Draining,
            ),
        ],
        vec![tenant("t", None), tenant("u", Some(&["small"]))],
        &[held(1, "t", "small", Resources::new(2000, GI, 0))],
    );
    let q = queue(vec![
        // Two runs of one class: any pool, 1 cpu each.
        queued(2, "t", PoolSelector::default(), Resources::new(1000, GI, 0)),
        queued(3, "t", PoolSelector::default(), Resources::new(1000, GI, 0)),
        // Only labelled pools.
        queued(4, "t", gpu, Resources::new(1000, GI, 1)),
        // Fits no pool but big.
        queued(5, "t", PoolSelector::default(), Resources::new(4000, GI, 0)),
        // Its tenant may use `small` only.
        queued(6, "u", PoolSelector::default(), Resources::new(500, GI, 0)),
    ]);
    let samples = sample(
        &s,
        &q,
        &waiting_with(&q, ReasonCode::PoolFull),
        Timestamp(10_000),
    );
    // small: 2 held + 2 x 1 (t's class) + 0.5 (u) over 2.
    assert_eq!(value(&samples, "pool.saturation.cpu", "small"), Some(2.25));
    assert_eq!(value(&samples, "pool.utilization.cpu", "small"), Some(1.0));
    // big: 2 x 1 + 1 (labelled) + 4 (too big for small) over 8; u may not use it.
    assert_eq!(
        value(&samples, "pool.saturation.cpu", "big"),
        Some(7.0 / 8.0)
    );
    assert_eq!(value(&samples, "pool.saturation.gpu", "big"), Some(0.5));
    assert_eq!(value(&samples, "pool.utilization.cpu", "big"), Some(0.0));
    // A draining pool takes nothing new: no demand.
    assert_eq!(value(&samples, "pool.saturation.cpu", "closing"), Some(0.0));
}

#[test]
fn demand_held_by_quotas_is_not_demand_for_capacity() {
    let s = snapshot(
        vec![pool(
            "a",
            Resources::new(4000, 8 * GI, 0),
            &[],
            PoolState::Active,
        )],
        vec![tenant("t", None), tenant("u", None)],
        &[],
    );
    let q = queue(vec![
        queued(1, "t", PoolSelector::default(), Resources::new(1000, GI, 0)),
        queued(2, "t", PoolSelector::default(), Resources::new(1000, GI, 0)),
        queued(3, "u", PoolSelector::default(), Resources::new(2000, GI, 0)),
    ]);
    // Every waiting run is held by its tenant's quota: the idle pool is not
    // saturated, whatever waits.
    let quota = sample(
        &s,
        &q,
        &waiting_with(&q, ReasonCode::TenantQuota),
        Timestamp(5000),
    );
    assert_eq!(value(&quota, "pool.saturation.cpu", "a"), Some(0.0));
    assert_eq!(value(&quota, "pool.held.cpu", "a"), Some(1.0));
    // Held by a reservation, a budget or a gang partner: held too.
    for code in [
        ReasonCode::Reserved,
        ReasonCode::TenantBudget,
        ReasonCode::GangPartnerFull,
    ] {
        let held = sample(&s, &q, &waiting_with(&q, code), Timestamp(5000));
        assert_eq!(
            value(&held, "pool.saturation.cpu", "a"),
            Some(0.0),
            "{code:?}"
        );
    }
    // Waiting for room: the same runs are demand for capacity.
    let full = sample(
        &s,
        &q,
        &waiting_with(&q, ReasonCode::PoolFull),
        Timestamp(5000),
    );
    assert_eq!(value(&full, "pool.saturation.cpu", "a"), Some(1.0));
    assert_eq!(value(&full, "pool.held.cpu", "a"), Some(0.0));
    // Not decided yet: neither.
    let new = sample(&s, &q, &BTreeMap::new(), Timestamp(5000));
    assert_eq!(value(&new, "pool.saturation.cpu", "a"), Some(0.0));
    assert_eq!(value(&new, "pool.held.cpu", "a"), Some(0.0));
}

#[test]
fn tenants_hold_queue_and_wait() {
    let s = snapshot(
        vec![pool(
            "a",
            Resources::new(8000, 8 * GI, 0),
            &[],
            PoolState::Active,
        )],
        vec![tenant("idle", None), tenant("t", None)],
        &[
            held(1, "t", "a", Resources::new(1500, GI, 0)),
            held(2, "t", "a", Resources::new(500, 512, 0)),
        ],
    );
    let mut readmit = queued(1, "t", PoolSelector::default(), Resources::new(100, 1, 0));
    readmit.readmit = true;
    let q = queue(vec![
        readmit,
        queued(3, "t", PoolSelector::default(), Resources::new(1000, GI, 0)),
        queued(7, "t", PoolSelector::default(), Resources::new(2000, GI, 0)),
        // Enqueued after the sample's time: counted, but waits 0.
        queued(
            12,
            "t",
            PoolSelector::default(),
            Resources::new(2000, GI, 0),
        ),
    ]);
    let reasons = waiting_with(&q, ReasonCode::TenantQuota);
    let samples = sample(&s, &q, &reasons, Timestamp(10_500));
    assert_eq!(value(&samples, "tenant.holdings.cpu", "t"), Some(2000.0));
    assert_eq!(value(&samples, "tenant.holdings.memory", "t"), Some(1536.0));
    assert_eq!(value(&samples, "tenant.holdings.gpu", "t"), Some(0.0));
    // The readmission is not a run waiting for its first admission.
    assert_eq!(value(&samples, "tenant.queued_runs", "t"), Some(3.0));
    // Run 3, enqueued at 3 s, has waited longest.
    assert_eq!(
        value(&samples, "tenant.admission_wait_seconds", "t"),
        Some(7.5)
    );
    assert_eq!(value(&samples, "tenant.queued_runs", "idle"), Some(0.0));
    assert_eq!(
        value(&samples, "tenant.admission_wait_seconds", "idle"),
        Some(0.0)
    );
    assert_eq!(value(&samples, "tenant.holdings.cpu", "idle"), Some(0.0));
    // Five series per tenant, nine per pool without gpus: six of them.
    assert_eq!(samples.len(), 2 * 5 + 6);
    // The same input gives the same samples, in the same order.
    assert_eq!(sample(&s, &q, &reasons, Timestamp(10_500)), samples);
}

#[test]
fn series_names_round_trip() {
    for s in Series::ALL {
        assert_eq!(Series::parse(s.name()), Some(s));
        let prefix = match s.subject() {
            SubjectKind::Pool => "pool.",
            SubjectKind::Tenant => "tenant.",
        };
        assert!(s.name().starts_with(prefix), "{}", s.name());
    }
    assert_eq!(Series::parse("pool.utilization"), None);
}

#[test]
fn rollup_covers_whole_hours_and_keeps_two_days_of_raw_samples() {
    let now = Timestamp(100 * HOUR_MS + 25 * MINUTE_MS);
    let r = Rollup::at(now);
    assert_eq!(r.until, Timestamp(100 * HOUR_MS));
    assert_eq!(r.raw_before, Timestamp(52 * HOUR_MS));
    assert_eq!(
        Rollup::at(Timestamp(100 * DAY_MS + 1)).hourly_before,
        Timestamp(10 * DAY_MS)
    );
    // Aggregates go by whole days, however late in the day it is.
    assert_eq!(
        Rollup::at(Timestamp(100 * DAY_MS + 23 * HOUR_MS)).hourly_before,
        Timestamp(10 * DAY_MS)
    );
    // Raw samples go only with hours that were rolled up, and the hour in
    // progress is never rolled up.
    assert!(r.raw_before <= r.until && r.until <= now);
    assert_eq!(Rollup::at(now), r, "the same time, the same work");
    assert_eq!(hour_of(Timestamp(-1)), Timestamp(-HOUR_MS));
}

#[test]
fn a_read_without_step_takes_raw_samples_until_they_are_too_many_or_gone() {
    let now = Timestamp(1_000 * DAY_MS);
    let ago = |ms: i64| now.plus_millis(-ms);
    let raw = Resolution {
        source: Source::Raw,
        bucket_ms: None,
    };
    // An hour at 10 s: 360 samples.
    assert_eq!(resolution(ago(HOUR_MS), now, None, now, 10_000), Ok(raw));
    // A day at 10 s: 8640 samples; 5 minutes is the first step under 1000 buckets.
    assert_eq!(
        resolution(ago(DAY_MS), now, None, now, 10_000),
        Ok(Resolution {
            source: Source::Raw,
            bucket_ms: Some(5 * MINUTE_MS),
        })
    );
    // A week: raw samples are gone for most of it, so hours.
    assert_eq!(
        resolution(ago(7 * DAY_MS), now, None, now, 10_000),
        Ok(Resolution {
            source: Source::Hourly,
            bucket_ms: Some(HOUR_MS),
        })
    );
    // 90 days: 6 hours.
    assert_eq!(
        resolution(ago(90 * DAY_MS), now, None, now, 10_000),
        Ok(Resolution {
            source: Source::Hourly,
            bucket_ms: Some(6 * HOUR_MS),
        })
    );
}

#[test]
fn an_explicit_step_chooses_the_source_and_is_bounded() {
    let now = Timestamp(1_000 * DAY_MS);
    let day_ago = now.plus_millis(-DAY_MS);
    assert_eq!(
        resolution(day_ago, now, Some(Step::Raw), now, 10_000),
        Ok(Resolution {
            source: Source::Raw,
            bucket_ms: None,
        })
    );
    assert_eq!(
        resolution(day_ago, now, Some(Step::Every(2 * MINUTE_MS)), now, 10_000),
        Ok(Resolution {
            source: Source::Raw,
            bucket_ms: Some(2 * MINUTE_MS),
        })
    );
    assert_eq!(
        resolution(day_ago, now, Some(Step::Every(HOUR_MS)), now, 10_000),
        Ok(Resolution {
            source: Source::Hourly,
            bucket_ms: Some(HOUR_MS),
        })
    );
    let odd = resolution(day_ago, now, Some(Step::Every(90 * MINUTE_MS)), now, 10_000)
        .expect_err("not whole hours");
    assert_eq!(odd.path, "step");
    let many = resolution(day_ago, now, Some(Step::Every(SECOND_MS)), now, 10_000)
        .expect_err("86400 buckets");
    assert_eq!(many.path, "step");
    assert!(many.message.contains("86400"), "{}", many.message);
}

#[test]
fn steps_and_intervals_parse_with_their_bounds() {
    assert_eq!(Step::parse("raw"), Ok(Step::Raw));
    assert_eq!(Step::parse("5m"), Ok(Step::Every(5 * MINUTE_MS)));
    assert_eq!(Step::parse("1h30m"), Ok(Step::Every(90 * MINUTE_MS)));
    for bad in ["0s", "", "5x", "-1h"] {
        assert_eq!(Step::parse(bad).expect_err(bad).path, "step");
    }
    assert_eq!(parse_interval_ms("200ms"), Ok(200));
    assert_eq!(parse_interval_ms("10s"), Ok(10_000));
    assert_eq!(parse_interval_ms("1h"), Ok(3_600_000));
    for bad in ["50ms", "2h", "0", "10", "soon"] {
        assert!(parse_interval_ms(bad).is_err(), "{bad}");
    }
}

#[test]
fn reads_take_whole_days_in_the_range_from_daily_aggregates() {
    let day = |d: i64| Timestamp(d * DAY_MS);
    let at = |d: i64, h: i64| Timestamp(d * DAY_MS + h * HOUR_MS);
    let rolled = Some(day(40));
    // From mid-day 10 to mid-day 20: days 11 to 19 whole.
    assert_eq!(
        daily_span(at(10, 5), at(20, 3), Some(DAY_MS), rolled),
        Some((day(11), day(20)))
    );
    // A range starting at midnight takes its first day whole.
    assert_eq!(
        daily_span(day(10), at(20, 3), Some(2 * DAY_MS), rolled),
        Some((day(10), day(20)))
    );
    // Not past what is rolled up: today comes from the hours.
    assert_eq!(
        daily_span(at(10, 5), at(45, 1), Some(DAY_MS), rolled),
        Some((day(11), day(40)))
    );
    // Buckets that are not whole days, nothing rolled up, or no whole day.
    assert_eq!(
        daily_span(at(10, 5), at(20, 3), Some(6 * HOUR_MS), rolled),
        None
    );
    assert_eq!(daily_span(at(10, 5), at(20, 3), None, rolled), None);
    assert_eq!(daily_span(at(10, 5), at(20, 3), Some(DAY_MS), None), None);
    assert_eq!(daily_span(at(10, 5), at(11, 3), Some(DAY_MS), rolled), None);
}
