//! What checking a credential costs per request: the bearer's shape, its
//! SHA-256 and the lookup, with 1,000 tokens and 10,000 workers known, and the
//! noting of its use. Run with `cargo bench -p corral-server --bench credentials`.

use std::hint::black_box;
use std::time::Instant;

use corral_core::access::Role;
use corral_core::clock::Timestamp;
use corral_core::ids::WorkerId;
use corral_server::auth::{self, Credentials};
use corral_store::TokenRecord;

fn main() {
    let credentials = Credentials::default();
    let secrets: Vec<String> = (0..1000).map(|_| auth::new_token_secret()).collect();
    credentials.load(
        secrets.iter().enumerate().map(|(i, s)| TokenRecord {
            name: format!("token-{i}"),
            hash: auth::hash(s),
            role: Role::Viewer,
            created_at: Timestamp(0),
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
        }),
        (0..10_000).map(|i| (WorkerId(i), auth::hash(&auth::new_worker_secret()))),
    );
    let headers: Vec<String> = secrets.iter().map(|s| format!("Bearer {s}")).collect();
    let rounds = 1_000_000;
    for (what, touch) in [("resolve", false), ("resolve and note the use", true)] {
        let start = Instant::now();
        for i in 0..rounds {
            let header = &headers[i % headers.len()];
            let secret = auth::bearer(Some(header)).expect("well formed");
            let caller = credentials
                .resolve(secret, Timestamp(1))
                .expect("known token");
            if touch && let auth::Caller::Token(p) = &caller {
                black_box(credentials.touch(&p.name, Timestamp(i as i64)));
            }
            black_box(caller);
        }
        let per = start.elapsed().as_nanos() as f64 / rounds as f64;
        println!("{what}: {per:.0} ns per request ({rounds} requests, 1,000 tokens)");
    }
}
