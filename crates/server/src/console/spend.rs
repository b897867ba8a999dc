//! Spend over time: this month's cost per UTC day, stacked by tenant or by
//! pool, drawn on the server as SVG (no script, nothing inline for the
//! Content-Security-Policy to refuse), with the table it was drawn from one
//! click away.

use std::collections::BTreeMap;

use corral_api::UsageView;
use maud::{Markup, html};

use super::layout;

/// Colours a chart cycles through (classes `stack-0` to `stack-7`); the
/// legend and the table name each part, so colour only adds.
const COLOURS: usize = 8;
/// The drawing's size in its own units (it scales to its box).
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 220.0;
const AXIS: f64 = 40.0;

/// One day's bar: where it is drawn, its total, and its parts (class, top,
/// height), the largest spender at the bottom.
struct Bar {
    day: String,
    x: f64,
    total: f64,
    parts: Vec<(String, f64, f64)>,
}

/// Cost per day and part (`by`: `tenant` or `pool`) of a report grouped by
/// `by` and `day`.
fn per_day(view: &UsageView, by: &str) -> BTreeMap<String, BTreeMap<String, f64>> {
    let mut days: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for row in &view.rows {
        let (Some(day), Some(part)) = (row.key.get("day"), row.key.get(by)) else {
            continue;
        };
        *days
            .entry(day.clone())
            .or_default()
            .entry(part.clone())
            .or_default() += row.usage.cost;
    }
    days
}

/// A stacked bar per day of `view` (grouped by `by` and `day`), titled.
pub fn stacked(id: &str, title: &str, by: &str, view: &UsageView) -> Markup {
    let days = per_day(view, by);
    let parts: Vec<String> = {
        let mut totals: BTreeMap<&str, f64> = BTreeMap::new();
        for costs in days.values() {
            for (part, cost) in costs {
                *totals.entry(part).or_default() += cost;
            }
        }
        let mut parts: Vec<(&str, f64)> = totals.into_iter().collect();
        parts.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
        parts.into_iter().map(|(p, _)| p.to_string()).collect()
    };
    let colour = |part: &str| parts.iter().position(|p| p == part).unwrap_or(0) % COLOURS;
    let top = days
        .values()
        .map(|c| c.values().sum::<f64>())
        .fold(0.0, f64::max);
    if days.is_empty() || top <= 0.0 {
        return html! {
            figure.chart { figcaption { (title) } p.muted { "Nothing spent this month yet." } }
        };
    }
    let slot = (WIDTH - AXIS) / days.len() as f64;
    let scale = (HEIGHT - 20.0) / top;
    let bars: Vec<Bar> = days
        .iter()
        .enumerate()
        .map(|(i, (day, costs))| {
            let mut y = HEIGHT;
            let parts = parts
                .iter()
                .filter_map(|part| {
                    let h = costs.get(part).filter(|c| **c > 0.0)? * scale;
                    y -= h;
                    Some((format!("stack-{}", colour(part)), y, h))
                })
                .collect();
            Bar {
                day: day.clone(),
                x: AXIS + i as f64 * slot + slot * 0.1,
                total: costs.values().sum(),
                parts,
            }
        })
        .collect();
    let summary = format!(
        "{title}: {} days, at most {} a day",
        days.len(),
        layout::money(top)
    );
    html! {
        figure.chart.spend id=(id) {
            figcaption { (title) " (" (view.currency) ")" }
            svg viewBox={ "0 0 " (WIDTH) " " (HEIGHT + 20.0) } role="img" aria-label=(summary) {
                text.axis x="0" y="12" { (layout::money(top)) }
                line.axis x1=(AXIS) y1=(HEIGHT) x2=(WIDTH) y2=(HEIGHT) {}
                @for (i, bar) in bars.iter().enumerate() {
                    g {
                        title { (bar.day) ": " (layout::money(bar.total)) }
                        @for (class, y, h) in &bar.parts {
                            rect class=(class) x=(format!("{:.1}", bar.x)) y=(format!("{y:.1}"))
                                width=(format!("{:.1}", slot * 0.8)) height=(format!("{h:.1}")) {}
                        }
                    }
                    @if bars.len() <= 10 || i % (bars.len() / 8).max(1) == 0 {
                        text.axis x=(format!("{:.1}", bar.x)) y=(HEIGHT + 16.0) { (bar.day.get(5..).unwrap_or(&bar.day)) }
                    }
                }
            }
            ul.legend {
                @for part in &parts {
                    li { i class={ "swatch stack-" (colour(part)) } {} (part) }
                }
            }
            details {
                summary { "The numbers" }
                div.table-wrap tabindex="0" { table {
                    thead { tr {
                        th scope="col" { "day" }
                        @for part in &parts { th.num scope="col" { (part) } }
                        th.num scope="col" { "total" }
                    } }
                    tbody { @for (day, costs) in &days {
                        tr {
                            td { (day) }
                            @for part in &parts {
                                td.num { (layout::money(costs.get(part).copied().unwrap_or(0.0))) }
                            }
                            td.num { (layout::money(costs.values().sum::<f64>())) }
                        }
                    } }
                } }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_api::{UsageAmounts, UsageRowView};

    fn row(tenant: &str, day: &str, cost: f64) -> UsageRowView {
        UsageRowView {
            key: BTreeMap::from([
                ("tenant".to_string(), tenant.to_string()),
                ("day".to_string(), day.to_string()),
            ]),
            usage: amounts(cost),
            used: Default::default(),
            efficiency: Default::default(),
            idle_share: None,
            idle_share_micros: None,
            total_with_idle: None,
            total_with_idle_micros: None,
        }
    }

    fn amounts(cost: f64) -> UsageAmounts {
        UsageAmounts {
            cpu_core_seconds: 0.0,
            memory_gib_seconds: 0.0,
            gpu_seconds: 0.0,
            cost,
            cost_micros: (cost * 1e6) as i64,
        }
    }

    #[test]
    fn days_stack_their_parts() {
        let view = UsageView {
            by: vec!["tenant".into(), "day".into()],
            from: String::new(),
            to: String::new(),
            rows: vec![
                row("a", "2026-12-01", 1.0),
                row("b", "2026-12-01", 3.0),
                row("a", "2026-12-02", 0.5),
            ],
            total: amounts(4.5),
            total_used: Default::default(),
            total_efficiency: Default::default(),
            idle: Vec::new(),
            idle_mode: "separate".into(),
            currency: "EUR".into(),
        };
        let days = per_day(&view, "tenant");
        assert_eq!(days["2026-12-01"]["b"], 3.0);
        assert_eq!(days["2026-12-02"].len(), 1);
        let html = stacked("spend", "Spend", "tenant", &view).into_string();
        // One bar part per (day, tenant) with a cost; b spent most, so it
        // takes the first colour.
        assert_eq!(html.matches("<rect").count(), 3);
        assert!(
            html.contains(r#"<i class="swatch stack-0"></i>b"#),
            "{html}"
        );
        assert!(!html.contains("style="), "{html}");
        assert!(html.contains("Spend (EUR)"), "{html}");
    }
}
