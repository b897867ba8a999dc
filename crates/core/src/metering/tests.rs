use super::*;
use proptest::prelude::*;

const HOUR: i64 = 3_600_000;
/// 2026-11-28T00:00:00Z: three days before a month ends.
const NOV_28: i64 = 1_795_824_000_000;

fn span(id: i64, tenant: &str, pool: &str, cpu: u64, start: i64, end: Option<i64>) -> Span {
    Span {
        allocation: AllocationId(id),
        run: RunId(id),
        tenant: tenant.into(),
        pool: pool.into(),
        pipeline: format!("pipe-{}", id % 2),
        resources: Resources::new(cpu * 1000, 0, 0),
        start_ms: start,
        end_ms: end,
    }
}

fn cpu_price(pool: &str, at: i64, cpu_hour: f64) -> PriceChange {
    PriceChange {
        pool: pool.into(),
        at_ms: at,
        price: Price {
            cpu_hour,
            ..Price::default()
        },
    }
}

fn money(units: &str) -> Money {
    Money::from_units(units.parse().expect("a number")).expect("money")
}

fn rows(report: &UsageReport) -> Vec<(String, String)> {
    report
        .rows
        .iter()
        .map(|r| (r.key.join("/"), r.usage.cost.to_string()))
        .collect()
}

#[test]
fn usage_is_cut_at_midnight_and_price_changes() {
    // 2 cores from 22:00 on the 28th to 02:00 on the 29th; the price goes from
    // 1.00 to 3.00 a core-hour at 23:30.
    let spans = [span(
        1,
        "acme",
        "p",
        2,
        NOV_28 - 2 * HOUR,
        Some(NOV_28 + 2 * HOUR),
    )];
    let prices = [
        cpu_price("p", 0, 1.0),
        cpu_price("p", NOV_28 - HOUR / 2, 3.0),
    ];
    let window = Window::new(NOV_28 - DAY_MS, NOV_28 + DAY_MS);
    let now = NOV_28 + 10 * DAY_MS;
    let by_day = usage(&spans, &prices, window, now, &[Key::Day]);
    assert_eq!(
        rows(&by_day),
        vec![
            ("2026-11-27".into(), "6.00".into()),
            ("2026-11-28".into(), "12.00".into())
        ]
    );
    assert_eq!(by_day.total.cost, money("18"));
    assert_eq!(by_day.total.time.cpu_core_seconds(), 8.0 * 3600.0);
    let by_tenant = usage(&spans, &prices, window, now, &[Key::Tenant, Key::Pipeline]);
    assert_eq!(
        rows(&by_tenant),
        vec![("acme/pipe-1".into(), "18.00".into())]
    );
    assert_eq!(by_tenant.total, by_day.total);
    // No keys: one row, the total.
    let whole = usage(&spans, &prices, window, now, &[]);
    assert_eq!(whole.rows.len(), 1);
    assert_eq!(whole.rows[0].key, Vec::<String>::new());
    assert_eq!(whole.rows[0].usage, whole.total);
}

#[test]
fn open_spans_accrue_up_to_now_and_windows_clip() {
    let spans = [
        span(1, "acme", "p", 1, NOV_28, None),
        span(
            2,
            "beta",
            "p",
            1,
            NOV_28 - 3 * HOUR,
            Some(NOV_28 - 2 * HOUR),
        ),
        span(3, "beta", "p", 1, NOV_28 + 5 * HOUR, None),
    ];
    let prices = [cpu_price("p", 0, 1.0)];
    let now = NOV_28 + 3 * HOUR;
    let report = usage(
        &spans,
        &prices,
        Window::new(NOV_28 - HOUR, NOV_28 + DAY_MS),
        now,
        &[Key::Tenant],
    );
    // acme's open span: 3 hours to now; beta's closed span is before the
    // window, its open span starts after now.
    assert_eq!(rows(&report), vec![("acme".into(), "3.00".into())]);
    let later = usage(
        &spans,
        &prices,
        Window::new(NOV_28 - DAY_MS, NOV_28 + DAY_MS),
        now,
        &[Key::Tenant],
    );
    assert_eq!(
        rows(&later),
        vec![
            ("acme".into(), "3.00".into()),
            ("beta".into(), "1.00".into())
        ]
    );
    let none = usage(
        &spans,
        &prices,
        Window::new(now, now + HOUR),
        now,
        &[Key::Tenant],
    );
    assert_eq!(none.rows, Vec::new());
    assert_eq!(none.total, Usage::ZERO);
}

#[test]
fn months_and_pools_label_their_rows() {
    let spans = [
        span(1, "acme", "big", 1, NOV_28, Some(NOV_28 + 4 * DAY_MS)),
        span(2, "acme", "small", 1, NOV_28, Some(NOV_28 + HOUR)),
    ];
    let prices = [cpu_price("big", 0, 0.5)];
    let report = usage(
        &spans,
        &prices,
        Window::new(0, i64::MAX),
        NOV_28 + 100 * DAY_MS,
        &[Key::Month, Key::Pool],
    );
    // Three days in November, one in December; the pool without a price is free.
    assert_eq!(
        rows(&report),
        vec![
            ("2026-11/big".into(), "36.00".into()),
            ("2026-11/small".into(), "0.00".into()),
            ("2026-12/big".into(), "12.00".into())
        ]
    );
}

#[test]
fn keys_are_read_and_written_by_name() {
    for key in Key::ALL {
        assert_eq!(key.as_str().parse::<Key>(), Ok(key));
        assert_eq!(key.to_string(), key.as_str());
    }
    assert_eq!(
        "tenants".parse::<Key>().expect_err("unknown").to_string(),
        "\"tenants\" is not something usage is grouped by (tenant, pool, pipeline, day or month)"
    );
    let keys: Vec<Key> = serde_json::from_str(r#"["pool", "day"]"#).expect("keys");
    assert_eq!(keys, vec![Key::Pool, Key::Day]);
}

#[test]
fn idle_is_what_capacity_offered_and_nobody_held() {
    // A static pool: 4 cores, 8 from 12:00 on the 28th (an agent joined).
    let capacities = [
        CapacityChange {
            pool: "metal".into(),
            at_ms: 0,
            capacity: Resources::new(4000, 0, 0),
        },
        CapacityChange {
            pool: "metal".into(),
            at_ms: NOV_28 + 12 * HOUR,
            capacity: Resources::new(8000, 0, 0),
        },
    ];
    let spans = [span(1, "acme", "metal", 2, NOV_28 - 6 * HOUR, None)];
    let prices = [cpu_price("metal", 0, 0.1)];
    let now = NOV_28 + 18 * HOUR;
    let window = Window::new(NOV_28 - DAY_MS, NOV_28 + DAY_MS);
    let rows = idle(
        &capacities,
        &pieces(&spans, &prices, window, now),
        &prices,
        window,
        now,
        true,
    );
    let show = |r: &IdleRow| {
        (
            r.day.clone().unwrap_or_default(),
            r.capacity.cost.to_string(),
            r.allocated.cost.to_string(),
            r.idle.cost.to_string(),
        )
    };
    let s = |x: &str| x.to_string();
    assert_eq!(
        rows.iter().map(show).collect::<Vec<_>>(),
        vec![
            // 4 cores for 24 hours; 2 held for 6 of them.
            (s("2026-11-27"), s("9.60"), s("1.20"), s("8.40")),
            // 4 cores for 12 hours, 8 for 6 (up to now); 2 held for 18.
            (s("2026-11-28"), s("9.60"), s("3.60"), s("6.00")),
        ]
    );
    let whole = idle(
        &capacities,
        &pieces(&spans, &prices, window, now),
        &prices,
        window,
        now,
        false,
    );
    assert_eq!(whole.len(), 1);
    assert_eq!(
        (whole[0].pool.as_str(), whole[0].day.as_deref()),
        ("metal", None)
    );
    assert_eq!(whole[0].idle.cost, money("14.40"));
    assert_eq!(whole[0].idle.time.cpu_core_seconds(), 144.0 * 3600.0);
}

#[test]
fn allocations_over_capacity_make_idle_negative() {
    let spans = [span(1, "acme", "ghost", 1, NOV_28, Some(NOV_28 + HOUR))];
    let prices = [cpu_price("ghost", 0, 1.0)];
    let window = Window::new(NOV_28, NOV_28 + DAY_MS);
    let held = pieces(&spans, &prices, window, NOV_28 + DAY_MS);
    let rows = idle(&[], &held, &prices, window, NOV_28 + DAY_MS, false);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].capacity, Usage::ZERO);
    assert_eq!(rows[0].idle.cost, Money::from_whole_units(-1));
    assert_eq!(rows[0].idle.time.cpu_milli_ms, -3_600_000_000);
}

#[test]
fn month_to_date_counts_the_tenants_month_only() {
    let dec_1 = NOV_28 + 3 * DAY_MS;
    let spans = [
        span(1, "acme", "p", 1, dec_1 - 2 * HOUR, Some(dec_1 + HOUR)),
        span(2, "acme", "p", 1, dec_1 + 2 * HOUR, None),
        span(3, "beta", "p", 1, dec_1, None),
    ];
    let prices = [cpu_price("p", 0, 1.0)];
    let now = dec_1 + 5 * HOUR;
    assert_eq!(month_to_date(&spans, &prices, "acme", now), money("4"));
    assert_eq!(month_to_date(&spans, &prices, "beta", now), money("5"));
    assert_eq!(
        month_to_date(&spans, &prices, "acme", dec_1 - HOUR),
        money("1")
    );
    assert_eq!(month_to_date(&spans, &prices, "nobody", now), Money::ZERO);
}

#[test]
fn forecasts_burn_the_last_week_over_the_rest_of_the_month() {
    let november = Month::containing(NOV_28);
    // 70.00 over the last week: 10.00 a day, for the 3 days left.
    let f = forecast(money("400"), money("70"), 0, NOV_28, november);
    assert_eq!(f, money("430"));
    // A history of two days: 70.00 over two days is 35.00 a day.
    let f = forecast(
        money("70"),
        money("70"),
        NOV_28 - 2 * DAY_MS,
        NOV_28,
        november,
    );
    assert_eq!(f, money("175"));
    // Nothing observed yet, or nothing left of the month.
    assert_eq!(
        forecast(money("5"), money("5"), NOV_28, NOV_28, november),
        money("5")
    );
    assert_eq!(
        forecast(money("5"), money("5"), 0, november.end_ms(), november),
        money("5")
    );
    // Rounded to the micro-unit: 1 micro-unit a week is 3/7 over three days.
    let f = forecast(Money::ZERO, Money::from_micros(1), 0, NOV_28, november);
    assert_eq!(f, Money::ZERO);
    let f = forecast(Money::ZERO, Money::from_micros(7), 0, NOV_28, november);
    assert_eq!(f, Money::from_micros(3));
}

#[test]
fn alerts_fire_when_crossed_and_once() {
    let monthly = money("500");
    let at = [0.5, 0.8, 1.0];
    assert_eq!(alert_level(monthly, 0.8), money("400"));
    assert_eq!(
        crossed_alerts(&at, monthly, money("390"), money("410"), &[]),
        vec![0.8]
    );
    assert_eq!(
        crossed_alerts(&at, monthly, money("200"), money("500"), &[]),
        vec![0.5, 0.8, 1.0]
    );
    // Reaching a level exactly crosses it; staying on it does not again.
    assert_eq!(
        crossed_alerts(&at, monthly, money("400"), money("450"), &[]),
        Vec::<f64>::new()
    );
    // Fired already this month.
    assert_eq!(
        crossed_alerts(&at, monthly, money("390"), money("410"), &[0.8]),
        Vec::<f64>::new()
    );
    // The budget was lowered to 400: from zero, what was not fired yet fires.
    assert_eq!(
        crossed_alerts(&at, money("400"), Money::ZERO, money("410"), &[0.5]),
        vec![0.8, 1.0]
    );
}

/// Spans, price changes, a window and now, around the end of November.
fn world() -> impl Strategy<Value = (Vec<Span>, Vec<PriceChange>, Window, i64)> {
    let spans = prop::collection::vec(
        (
            0..3usize,
            0..3usize,
            0..3usize,
            (0u64..4000, 0u64..8192, 0u64..2),
            -2 * DAY_MS..5 * DAY_MS,
            prop::option::weighted(0.8, 0..3 * DAY_MS),
        ),
        0..12,
    );
    let prices = prop::collection::vec(
        (
            0..3usize,
            -3 * DAY_MS..6 * DAY_MS,
            0u32..100,
            0u32..100,
            0u32..300,
        ),
        0..10,
    );
    (
        spans,
        prices,
        -3 * DAY_MS..5 * DAY_MS,
        0..6 * DAY_MS,
        0..7 * DAY_MS,
    )
        .prop_map(|(spans, prices, from, length, now)| {
            let spans = spans
                .into_iter()
                .enumerate()
                .map(|(i, (t, p, l, (cpu, mem, gpu), start, length))| Span {
                    allocation: AllocationId(i as i64),
                    run: RunId(i as i64),
                    tenant: format!("t{t}"),
                    pool: format!("p{p}"),
                    pipeline: format!("l{l}"),
                    resources: Resources::new(cpu, mem, gpu),
                    start_ms: NOV_28 + start,
                    end_ms: length.map(|l| NOV_28 + start + l),
                })
                .collect();
            let prices = prices
                .into_iter()
                .map(|(p, at, cpu, mem, gpu)| PriceChange {
                    pool: format!("p{p}"),
                    at_ms: NOV_28 + at,
                    price: Price {
                        cpu_hour: f64::from(cpu) / 1000.0,
                        memory_gib_hour: f64::from(mem) / 10_000.0,
                        gpu_hour: f64::from(gpu) / 100.0,
                    },
                })
                .collect();
            let window = Window::new(NOV_28 + from, NOV_28 + from + length);
            (spans, prices, window, NOV_28 + now)
        })
}

fn sum(rows: impl Iterator<Item = Usage>) -> Usage {
    rows.fold(Usage::ZERO, |acc, u| acc.saturating_add(&u))
}

proptest! {
    #[test]
    fn every_grouping_has_the_same_total((spans, prices, window, now) in world()) {
        let total = usage(&spans, &prices, window, now, &[]).total;
        for by in [
            vec![Key::Tenant],
            vec![Key::Pool],
            vec![Key::Pipeline],
            vec![Key::Day],
            vec![Key::Month],
            vec![Key::Tenant, Key::Day],
            vec![Key::Month, Key::Pool, Key::Pipeline],
        ] {
            let report = usage(&spans, &prices, window, now, &by);
            prop_assert_eq!(report.total, total, "by {:?}", by);
            prop_assert_eq!(sum(report.rows.iter().map(|r| r.usage)), total, "by {:?}", by);
            prop_assert!(report.rows.iter().all(|r| r.key.len() == by.len()));
        }
        // A tenant's rows are the same whether the others are filtered out or not.
        let by_tenant = usage(&spans, &prices, window, now, &[Key::Tenant]);
        for row in &by_tenant.rows {
            let mine: Vec<Span> = spans.iter().filter(|s| s.tenant == row.key[0]).cloned().collect();
            prop_assert_eq!(usage(&mine, &prices, window, now, &[]).total, row.usage);
        }
    }

    #[test]
    fn pieces_cover_the_spans_and_are_priced_to_the_micro_unit(
        (spans, prices, window, now) in world(),
    ) {
        let cutter = pieces::Cutter::new(&prices, window, now);
        let pieces = cutter.pieces(&spans);
        let (from, to) = cutter.bounds();
        for s in &spans {
            let held = s.end_ms.unwrap_or(now).min(to) - s.start_ms.max(from);
            let expected = ResourceTime::held(&s.resources, held);
            let got = pieces
                .iter()
                .filter(|p| p.span.allocation == s.allocation)
                .fold(ResourceTime::ZERO, |acc, p| acc.saturating_add(&p.usage.time));
            prop_assert_eq!(got, expected);
        }
        for piece in &pieces {
            let slot = cutter.slot(&piece.span.pool, piece.slot);
            let t = piece.usage.time;
            let exact = (t.cpu_milli_ms as f64 / 3.6e9 * slot.price.cpu_hour
                + t.memory_mib_ms as f64 / 3.6864e9 * slot.price.memory_gib_hour
                + t.gpu_ms as f64 / 3.6e6 * slot.price.gpu_hour)
                * 1e6;
            let error = (piece.usage.cost.micros() as f64 - exact).abs();
            prop_assert!(error <= 0.5 + exact * 1e-12, "{} micro-units for {}", piece.usage.cost.micros(), exact);
        }
    }

    #[test]
    fn allocated_and_idle_make_up_capacity(
        (spans, prices, window, now) in world(),
        capacities in prop::collection::vec(
            (0..3usize, -3 * DAY_MS..6 * DAY_MS, (0u64..16_000, 0u64..32_768, 0u64..4)),
            0..8,
        ),
    ) {
        let capacities: Vec<CapacityChange> = capacities
            .into_iter()
            .map(|(p, at, (cpu, mem, gpu))| CapacityChange {
                pool: format!("p{p}"),
                at_ms: NOV_28 + at,
                capacity: Resources::new(cpu, mem, gpu),
            })
            .collect();
        let by_pool = usage(&spans, &prices, window, now, &[Key::Pool]);
        let whole = idle(&capacities, &pieces(&spans, &prices, window, now), &prices, window, now, false);
        let days = idle(&capacities, &pieces(&spans, &prices, window, now), &prices, window, now, true);
        for row in whole.iter().chain(&days) {
            prop_assert_eq!(
                row.allocated.cost.checked_add(row.idle.cost),
                Some(row.capacity.cost),
                "{:?}", row
            );
            prop_assert_eq!(row.capacity.time.saturating_sub(&row.allocated.time), row.idle.time);
        }
        for row in &whole {
            let used = by_pool
                .rows
                .iter()
                .find(|r| r.key[0] == row.pool)
                .map_or(Usage::ZERO, |r| r.usage);
            prop_assert_eq!(row.allocated, used, "pool {}", row.pool);
            let of_days = days.iter().filter(|d| d.pool == row.pool);
            prop_assert_eq!(sum(of_days.clone().map(|d| d.capacity)), row.capacity);
            prop_assert_eq!(sum(of_days.map(|d| d.idle)), row.idle);
        }
        prop_assert_eq!(sum(whole.iter().map(|r| r.allocated)), by_pool.total);
    }
}

fn budget(monthly: i64, enforce: crate::tenant::Enforce) -> crate::tenant::BudgetSpec {
    crate::tenant::BudgetSpec {
        monthly: Money::from_whole_units(monthly),
        enforce,
        alert_at: vec![0.8, 1.0],
    }
}

#[test]
fn budget_health_says_how_a_budget_stands() {
    use crate::tenant::Enforce::{Hard, Soft};
    let units = Money::from_whole_units;
    assert_eq!(
        budget_health(&budget(100, Soft), units(10), 0),
        BudgetHealth::Ok
    );
    assert_eq!(
        budget_health(&budget(100, Soft), units(80), 0),
        BudgetHealth::Alerting
    );
    assert_eq!(
        budget_health(&budget(100, Soft), units(100), 0),
        BudgetHealth::Alerting
    );
    // 143% of a budget is not a healthy row.
    assert_eq!(
        budget_health(&budget(100, Soft), units(143), 0),
        BudgetHealth::Over
    );
    assert_eq!(
        budget_health(&budget(100, Hard), units(143), 0),
        BudgetHealth::Over
    );
    // A hard budget holding runs back, wherever its spend is.
    assert_eq!(
        budget_health(&budget(100, Hard), units(60), 2),
        BudgetHealth::Blocking
    );
    // A soft budget holds nothing back.
    assert_eq!(
        budget_health(&budget(100, Soft), units(60), 2),
        BudgetHealth::Ok
    );
    assert!(BudgetHealth::Blocking > BudgetHealth::Over);
    assert!(BudgetHealth::Over > BudgetHealth::Alerting);
}

#[test]
fn the_budget_is_crossed_at_the_forecasts_burn_rate() {
    let month = Month::containing(NOV_28);
    let units = Money::from_whole_units;
    let week_ago = NOV_28 - FORECAST_WINDOW_MS;
    // 70 in the last 7 days: 10 a day; 80 of 100 spent: two days to go.
    assert_eq!(daily_burn(units(70), week_ago, NOV_28), units(10));
    assert_eq!(
        budget_crossing(units(80), units(70), week_ago, NOV_28, month, units(100)),
        Some(NOV_28 + 2 * DAY_MS)
    );
    // Four days to go, but three days of November are left.
    assert_eq!(
        budget_crossing(units(60), units(70), week_ago, NOV_28, month, units(100)),
        None
    );
    // Already there.
    assert_eq!(
        budget_crossing(units(100), units(70), week_ago, NOV_28, month, units(100)),
        Some(NOV_28)
    );
    // Nothing spent lately: never.
    assert_eq!(
        budget_crossing(units(50), Money::ZERO, week_ago, NOV_28, month, units(100)),
        None
    );
    // A day-old history burns its day's spend per day.
    let day_ago = NOV_28 - DAY_MS;
    assert_eq!(daily_burn(units(5), day_ago, NOV_28), units(5));
    assert_eq!(
        budget_crossing(units(95), units(5), day_ago, NOV_28, month, units(100)),
        Some(NOV_28 + DAY_MS)
    );
}
