//! The cycle histogram of the server's `/metrics`, read from outside.

use std::collections::BTreeMap;

/// One histogram of the Prometheus text format, per label set (without `le`).
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    /// Cumulative counts by upper bound, in the order of the text.
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

impl Histogram {
    /// What was observed between `earlier` and this one.
    pub fn since(&self, earlier: Option<&Histogram>) -> Histogram {
        let Some(earlier) = earlier else {
            return self.clone();
        };
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|(le, n)| {
                    let before = earlier
                        .buckets
                        .iter()
                        .find(|(l, _)| l == le)
                        .map_or(0.0, |(_, n)| *n);
                    (*le, n - before)
                })
                .collect(),
            sum: self.sum - earlier.sum,
            count: self.count - earlier.count,
        }
    }

    /// The upper bound of the bucket holding the `q` quantile.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let wanted = self.count * q;
        self.buckets
            .iter()
            .find(|(_, n)| *n >= wanted && *n > 0.0)
            .map(|(le, _)| *le)
    }
}

/// Every series of histogram `name` in a `/metrics` text, by its labels
/// other than `le` (empty when it has none).
pub fn histograms(text: &str, name: &str) -> BTreeMap<String, Histogram> {
    let mut found: BTreeMap<String, Histogram> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (metric, labels) = match key.split_once('{') {
            Some((metric, labels)) => (metric, labels.trim_end_matches('}')),
            None => (key, ""),
        };
        let Some(suffix) = metric.strip_prefix(name) else {
            continue;
        };
        let mut le = None;
        let others: Vec<&str> = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .filter(|l| match l.strip_prefix("le=") {
                Some(bound) => {
                    le = Some(bound.trim_matches('"').to_string());
                    false
                }
                None => true,
            })
            .collect();
        let entry = found.entry(others.join(",")).or_default();
        match (suffix, le) {
            ("_bucket", Some(le)) => {
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::INFINITY)
                };
                entry.buckets.push((bound, value));
            }
            ("_sum", _) => entry.sum = value,
            ("_count", _) => entry.count = value,
            _ => {}
        }
    }
    found.retain(|_, h| h.count > 0.0 || !h.buckets.is_empty());
    found
}
