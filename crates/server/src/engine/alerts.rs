//! Budget alerts: the thresholds a tenant's spend crosses fire once a month
//! each (written in the controller cycle that sees them), and are delivered
//! to the alert webhook as JSON, retried with backoff until it answers 2xx.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_store::{AlertFilter, AlertRecord, Write};

use super::{Effects, Engine, Result};
use crate::background::{Job, JobError, Progress};

/// How often pending alerts are looked for.
const POLL: Duration = Duration::from_millis(500);
/// The longest wait between two tries of one alert.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What an alert says, in words with its numbers.
pub fn message(a: &AlertRecord) -> String {
    format!(
        "tenant {}: spend {} reached {}% of the budget {} for {}",
        a.tenant,
        a.spent,
        a.threshold_milli as f64 / 10.0,
        a.monthly,
        a.month
    )
}

/// The webhook's body for an alert.
fn payload(a: &AlertRecord) -> serde_json::Value {
    serde_json::json!({
        "kind": "budget_alert",
        "tenant": a.tenant,
        "month": a.month,
        "threshold": a.threshold_milli as f64 / 1000.0,
        "spent": a.spent.to_units_f64(),
        "monthly": a.monthly.to_units_f64(),
        "at": crate::api::views::time(a.at),
        "message": message(a),
    })
}

/// The wait before the next try after `attempts` failed ones: 1 s, doubled
/// each time, at most five minutes.
fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.min(16)).min(MAX_BACKOFF)
}

/// Delivers budget alerts to the webhook: a round sends what is pending and
/// due (each alert backs off on its own; the round fails only when the
/// pending alerts cannot be read).
pub struct AlertDelivery {
    engine: Arc<Engine>,
    url: String,
    /// Built by the first round (a failure to build it is the round's).
    client: Option<reqwest::Client>,
    next_try: HashMap<(String, String, i64), Instant>,
}

impl AlertDelivery {
    pub fn new(engine: Arc<Engine>, url: String) -> AlertDelivery {
        AlertDelivery {
            engine,
            url,
            client: None,
            next_try: HashMap::new(),
        }
    }
}

impl Job for AlertDelivery {
    async fn work(&mut self) -> std::result::Result<Progress, JobError> {
        let client = match &self.client {
            Some(client) => client.clone(),
            None => {
                let _ = rustls::crypto::ring::default_provider().install_default();
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()?;
                self.client = Some(client.clone());
                client
            }
        };
        let filter = AlertFilter {
            undelivered: true,
            limit: 100,
            ..AlertFilter::default()
        };
        let mut pending = self.engine.store.alerts(&filter).await?;
        pending.reverse();
        for alert in pending {
            let key = (
                alert.tenant.clone(),
                alert.month.clone(),
                alert.threshold_milli,
            );
            if self
                .next_try
                .get(&key)
                .is_some_and(|at| *at > Instant::now())
            {
                continue;
            }
            let sent = client
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(payload(&alert).to_string())
                .send()
                .await;
            let failure = match sent {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => Some(format!("the webhook answered {}", r.status())),
                Err(e) => Some(format!("the webhook is unreachable: {e}")),
            };
            let updated = AlertRecord {
                attempts: alert.attempts.saturating_add(1),
                delivered_at: failure.is_none().then(|| self.engine.now()),
                last_error: failure.clone(),
                ..alert
            };
            if let Some(why) = &failure {
                tracing::warn!(tenant = %updated.tenant, attempts = updated.attempts, %why, "budget alert not delivered");
                self.next_try
                    .insert(key, Instant::now() + backoff(updated.attempts));
            } else {
                self.next_try.remove(&key);
            }
            if let Err(e) = self.engine.record_alert(updated).await {
                tracing::warn!(error = %e, "cannot record a budget alert's delivery");
            }
        }
        Ok(Progress::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(POLL).await;
    }
}

impl Engine {
    async fn record_alert(&self, alert: AlertRecord) -> Result<()> {
        let mut state = self.state.lock().await;
        let mut fx = Effects::default();
        self.stage(&mut state, vec![Write::PutAlert(alert)], &mut fx);
        drop(state);
        self.finish(fx).await
    }
}

#[cfg(test)]
mod tests {
    use corral_core::clock::Timestamp;
    use corral_core::money::Money;

    use super::*;

    #[test]
    fn an_alert_says_its_numbers_and_retries_back_off() {
        let alert = AlertRecord {
            tenant: "acme".into(),
            month: "2026-11".into(),
            threshold_milli: 800,
            at: Timestamp(0),
            spent: Money::from_micros(400_100_000),
            monthly: Money::from_micros(500_000_000),
            attempts: 0,
            delivered_at: None,
            last_error: None,
        };
        assert_eq!(
            message(&alert),
            "tenant acme: spend 400.10 reached 80% of the budget 500.00 for 2026-11"
        );
        assert_eq!(payload(&alert)["threshold"], 0.8);
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }
}
