//! The console's page shell and the pieces pages are made of: navigation,
//! form fields with their errors, capacity bars, and how quantities read.

use corral_api::ResourcesView;
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::session::Session;

/// The sections of the console, as the navigation lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Overview,
    Pools,
    Tenants,
    Queue,
    Dashboards,
    Agents,
    Prices,
    Tokens,
    Audit,
}

const SECTIONS: [(Section, &str, &str); 9] = [
    (Section::Overview, "/", "Overview"),
    (Section::Pools, "/pools", "Pools"),
    (Section::Tenants, "/tenants", "Tenants"),
    (Section::Queue, "/queue", "Queue & runs"),
    (Section::Dashboards, "/dashboards", "Dashboards"),
    (Section::Agents, "/agents", "Agents"),
    (Section::Prices, "/prices", "Prices"),
    (Section::Tokens, "/tokens", "Tokens"),
    (Section::Audit, "/audit", "Audit log"),
];

/// Whether the navigation lists `section` for the visitor: tokens and the
/// audit log are for `admin` and `viewer` only.
fn listed(section: Section, session: &Session) -> bool {
    match section {
        Section::Tokens | Section::Audit => session.principal.role.tenant().is_none(),
        _ => true,
    }
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="color-scheme" content="light dark";
            title { (title) " · corral" }
            link rel="stylesheet" href="/assets/console.css";
            link rel="stylesheet" href="/assets/uPlot.min.css";
            script src="/assets/uPlot.iife.min.js" defer {}
            script src="/assets/console.js" defer {}
        }
    }
}

/// A whole page of the console for a logged-in visitor.
pub fn page(session: &Session, section: Section, title: &str, body: Markup) -> Markup {
    let who = &session.principal;
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/" { "corral" }
                    nav aria-label="Sections" {
                        ul {
                            @for (s, href, label) in SECTIONS.into_iter().filter(|(s, _, _)| listed(*s, session)) {
                                li {
                                    a href=(href) aria-current=[(s == section).then_some("page")] { (label) }
                                }
                            }
                        }
                    }
                    form.logout method="post" action="/logout" {
                        span.who { (who.name) " · " (who.role.to_string()) }
                        button type="submit" { "Log out" }
                    }
                }
                main #main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A page outside the session: login, and errors.
pub fn bare_page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.bare {
                main #main { (body) }
            }
        }
    }
}

/// A page that says what went wrong.
pub fn bare(title: &str, message: &str) -> Markup {
    bare_page(
        title,
        html! {
            h1 { (title) }
            p { (message) }
            p { a href="/" { "Back to the overview" } }
        },
    )
}

/// The hidden field that proves a form came from this console.
pub fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// A labelled form field around `input` (whose id is `name`), with its error.
pub fn field_with(name: &str, label: &str, error: Option<&str>, input: Markup) -> Markup {
    html! {
        div.field.invalid[error.is_some()] {
            label for=(name) { (label) }
            (input)
            @if let Some(e) = error {
                p.error id={ (name) "-error" } role="alert" { (e) }
            }
        }
    }
}

/// A labelled text field holding `value`, with its error and a hint.
pub fn text_field(name: &str, label: &str, value: &str, error: Option<&str>, hint: &str) -> Markup {
    input_field(name, label, error, hint, |described| {
        html! {
            input id=(name) name=(name) type="text" value=(value) maxlength="256"
                aria-invalid=[error.map(|_| "true")] aria-describedby=[described];
        }
    })
}

/// A text field of several lines.
pub fn text_area(name: &str, label: &str, value: &str, error: Option<&str>, hint: &str) -> Markup {
    input_field(name, label, error, hint, |described| {
        html! {
            textarea id=(name) name=(name) rows="3" maxlength="4096"
                aria-invalid=[error.map(|_| "true")] aria-describedby=[described] { (value) }
        }
    })
}

/// A field made by `input`, given the id of what describes it: its error, or
/// else its hint.
fn input_field(
    name: &str,
    label: &str,
    error: Option<&str>,
    hint: &str,
    input: impl FnOnce(Option<String>) -> Markup,
) -> Markup {
    let described = match (error.is_some(), hint.is_empty()) {
        (true, _) => Some(format!("{name}-error")),
        (false, false) => Some(format!("{name}-hint")),
        (false, true) => None,
    };
    field_with(
        name,
        label,
        error,
        html! {
            (input(described))
            @if !hint.is_empty() && error.is_none() {
                p.hint id={ (name) "-hint" } { (hint) }
            }
        },
    )
}

/// A time the API gives (RFC 3339, UTC) as plain HTML shows it, in UTC with
/// its zone; the console's script shows it in the viewer's local time.
pub fn time(rfc3339: &str) -> Markup {
    let text = chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .format("%Y-%m-%d %H:%M:%S UTC")
                .to_string()
        })
        .unwrap_or_else(|_| rfc3339.to_string());
    html! { time datetime=(rfc3339) { (text) } }
}

/// Cores, as people write them.
pub fn cores(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        (millis / 1000).to_string()
    } else {
        format!("{:.1}", millis as f64 / 1000.0)
    }
}

/// Memory, in the largest unit that reads well.
pub fn memory(mib: u64) -> String {
    if mib >= 1024 && mib.is_multiple_of(1024) {
        format!("{} GiB", mib / 1024)
    } else if mib >= 1024 {
        format!("{:.1} GiB", mib as f64 / 1024.0)
    } else {
        format!("{mib} MiB")
    }
}

/// Resources as people read them: `2 cpu, 4 GiB, 1 gpu` (gpus when any).
pub fn resources(r: &ResourcesView) -> String {
    let mut text = format!("{} cpu, {}", cores(r.cpu_millis), memory(r.memory_mib));
    if r.gpu > 0 {
        text.push_str(&format!(", {} gpu", r.gpu));
    }
    text
}

/// An amount of money: two decimals, and under 1 as many more (up to the
/// micro-unit) as make two significant digits, so that a small cost never
/// reads `0.00`: `483.10`, `0.05`, `0.00042`.
pub fn money(units: f64) -> String {
    let size = units.abs();
    let decimals = if size == 0.0 || size >= 1.0 || !size.is_finite() {
        2
    } else {
        ((-size.log10()).floor() as usize + 2).clamp(2, 6)
    };
    let text = format!("{units:.decimals$}");
    let (whole, fraction) = text.split_once('.').unwrap_or((&text, ""));
    let kept = fraction.trim_end_matches('0');
    format!("{whole}.{kept:0<2}")
}

/// A wait or a duration in ms, in the unit that reads well.
pub fn duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A wait given in seconds, as people read it (`12 ms`, `4.2 s`, `3m 5s`),
/// with the exact seconds as its machine-readable value.
pub fn wait(seconds: f64) -> Markup {
    let text = match seconds {
        s if s < 1.0 => format!("{:.0} ms", s * 1000.0),
        s if s < 60.0 => format!("{s:.1} s"),
        s => duration((s * 1000.0) as i64),
    };
    html! { data value=(seconds) { (text) } }
}

/// One resource of a pool as a bar: allocated, reserved for a starving run,
/// and free, out of capacity. Drawn in SVG, whose widths are attributes, so
/// it needs neither script nor inline style (which the CSP forbids).
pub fn bar(
    label: &str,
    used: u64,
    reserved: u64,
    capacity: u64,
    show: fn(u64) -> String,
) -> Markup {
    let pct = |v: u64| {
        if capacity == 0 {
            0.0
        } else {
            (v as f64 * 100.0 / capacity as f64).min(100.0)
        }
    };
    let free = capacity.saturating_sub(used).saturating_sub(reserved);
    let text = format!(
        "{label}: {} allocated, {} reserved, {} free of {}",
        show(used),
        show(reserved),
        show(free),
        show(capacity)
    );
    html! {
        div.bar-row {
            span.bar-label { (label) }
            svg.bar role="img" aria-label=(text) viewBox="0 0 100 1" preserveAspectRatio="none" {
                title { (text) }
                rect.used x="0" y="0" width=(format!("{:.1}", pct(used))) height="1" {}
                rect.reserved x=(format!("{:.1}", pct(used))) y="0"
                    width=(format!("{:.1}", pct(reserved).min(100.0 - pct(used)))) height="1" {}
            }
            span.bar-value { (show(used)) " / " (show(capacity)) }
        }
    }
}

/// The three bars of a pool's resources (gpu only when it has some).
pub fn resource_bars(
    used: &ResourcesView,
    reserved: &ResourcesView,
    capacity: &ResourcesView,
) -> Markup {
    html! {
        (bar("cpu", used.cpu_millis, reserved.cpu_millis, capacity.cpu_millis, cores))
        (bar("memory", used.memory_mib, reserved.memory_mib, capacity.memory_mib, memory))
        @if capacity.gpu > 0 {
            (bar("gpu", used.gpu, reserved.gpu, capacity.gpu, |g| g.to_string()))
        }
    }
}

/// A run's state as a badge.
pub fn state(text: &str) -> Markup {
    html! { span class={ "badge state-" (text) } { (text) } }
}

/// Marks a region that the page refreshes when the server says something changed.
pub fn live(id: &str, body: Markup) -> Markup {
    html! { div id=(id) data-live="" aria-live="polite" { (body) } }
}

/// A chart drawn in the browser from `/api`-shaped JSON embedded in the page.
pub fn chart(id: &str, title: &str, data: &serde_json::Value) -> Markup {
    html! {
        figure.chart {
            figcaption { (title) }
            div.plot id=(id) {}
            script type="application/json" data-chart=(id) {
                (PreEscaped(data.to_string().replace("</", "<\\/")))
            }
        }
    }
}

/// Used over allocated as a percentage, or a dash where nothing was measured.
pub fn efficiency(ratio: Option<f64>) -> Markup {
    match ratio {
        Some(r) => html! { (format!("{:.0}%", r * 100.0)) },
        None => html! { span.muted title="nothing measured" { "—" } },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_amounts_of_money_are_not_zero() {
        assert_eq!(money(483.1), "483.10");
        assert_eq!(money(0.0), "0.00");
        assert_eq!(money(0.05), "0.05");
        assert_eq!(money(0.000417), "0.00042");
        assert_eq!(money(0.0000004), "0.00");
        assert_eq!(money(0.0123), "0.012");
        assert_eq!(money(12.345), "12.35");
    }
}
