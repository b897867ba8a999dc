//! Connections that cannot be hoarded: clients from other addresses get in
//! while one address (or several) holds thousands of sockets, idle sockets are
//! closed, and refusals are counted, not logged one by one. Each client binds
//! its own source address in 127.0.0.0/8 (all of which reach the server on
//! 127.0.0.1).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

use crate::harness::{Server, StoreKind, eventually};
use crate::registration::metric;

/// Room for the sockets a test holds, under the hard limit.
fn raise_open_files() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("the open-file limit");
    assert!(
        hard >= 6_000,
        "the hard open-file limit {hard} is too low for this test"
    );
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("raise the open-file limit");
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

fn server_addr(server: &Server) -> SocketAddr {
    server
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("the server's address")
}

/// Opens `count` connections from `source` to the server, and holds them.
async fn hoard(server: &Server, source: IpAddr, count: usize) -> Vec<TcpStream> {
    let to = server_addr(server);
    let mut held = Vec::with_capacity(count);
    while held.len() < count {
        let batch = (count - held.len()).min(200);
        let opened = futures::future::join_all((0..batch).map(|_| async move {
            let socket = TcpSocket::new_v4().expect("a socket");
            socket
                .bind(SocketAddr::new(source, 0))
                .expect("bind the source address");
            tokio::time::timeout(Duration::from_secs(10), socket.connect(to)).await
        }))
        .await;
        for stream in opened {
            held.push(stream.expect("connected within 10 s").expect("connected"));
        }
    }
    held
}

/// A client whose connections come from `source`.
fn client_from(source: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client")
}

/// `/healthz`, an agent's registration and a submit (which the new agent
/// makes room for), each from an address of its own, each answered within 2 s.
async fn others_get_in(server: &Server, agent_token: &str, round: u8) {
    let within = Duration::from_secs(2);
    let health = client_from(loopback(3)).get(format!("{}/healthz", server.url));
    let answer = tokio::time::timeout(within, health.send())
        .await
        .expect("/healthz answered within 2 s")
        .expect("/healthz answered");
    assert_eq!(answer.status(), 200);
    let register = client_from(loopback(5))
        .post(format!("{}/api/v1/agents/register", server.url))
        .bearer_auth(agent_token)
        .json(&json!({
            "pool": "edge", "name": format!("newcomer-{round}"),
            "capacity": {"cpu_millis": 1000, "memory_mib": 1024, "gpu": 0},
        }));
    let answer = tokio::time::timeout(within, register.send())
        .await
        .expect("the registration answered within 2 s")
        .expect("the registration answered");
    assert_eq!(answer.status(), 200);
    let submit = client_from(loopback(4))
        .post(format!("{}/api/v1/runs", server.url))
        .bearer_auth(&server.admin_token)
        .header("content-type", "application/yaml")
        .body("kind: Pipeline\nname: p\ntenant: t\nsteps:\n  - {name: s, run: 'true', pool: edge, resources: {cpu: 1, memory: 1Gi}}\n");
    let answer = tokio::time::timeout(within, submit.send())
        .await
        .expect("the submit answered within 2 s")
        .expect("the submit answered");
    assert_eq!(answer.status(), 201);
}

async fn start(label: &str, args: &[&str]) -> (Server, String) {
    let server = Server::start_with(label, StoreKind::Sqlite, args).await;
    server
        .apply("kind: Pool\nname: edge\nprovider: static\n---\nkind: Tenant\nname: t\n")
        .await;
    let token = server
        .create_token("agent-edge", "agent", Some(("pool", "edge")))
        .await;
    (server, token)
}

#[tokio::test(flavor = "multi_thread")]
async fn one_address_holding_5000_sockets_locks_nobody_out() {
    raise_open_files();
    let (server, token) = start("hoard-one", &[]).await;
    let held = hoard(&server, loopback(2), 5_000).await;
    others_get_in(&server, &token, 1).await;
    // The address was held to its cap: most of its sockets were refused, and
    // counted; the log says so once per interval, not once each.
    let refused = eventually(
        "the refusals to be counted and reported",
        Duration::from_secs(20),
        || async {
            let refused = metric(
                &server,
                "corral_connections_refused_total{reason=\"per_address\"}",
            )
            .await;
            let reported = server.log().contains("connections refused");
            (refused >= 4_000.0 && reported).then_some(refused)
        },
    )
    .await;
    let lines = server
        .log()
        .lines()
        .filter(|l| l.contains("refused") || l.contains("connection"))
        .count();
    assert!(
        lines <= 5,
        "{lines} log lines about {refused} refused connections:\n{}",
        server.log()
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread")]
async fn several_hoarding_addresses_leave_the_reserve_to_others() {
    raise_open_files();
    let (server, token) = start(
        "hoard-many",
        &[
            "--max-connections",
            "400",
            "--max-connections-per-address",
            "150",
            "--reserved-connections",
            "100",
        ],
    )
    .await;
    // Three addresses take every place outside the reserve and ask for more.
    let mut held = Vec::new();
    for hoarder in [2, 6, 7] {
        held.extend(hoard(&server, loopback(hoarder), 200).await);
    }
    others_get_in(&server, &token, 1).await;
    let reserve = metric(
        &server,
        "corral_connections_refused_total{reason=\"reserve\"}",
    )
    .await;
    assert!(reserve > 0.0, "the hoarders were kept out of the reserve");
    others_get_in(&server, &token, 2).await;
    drop(held);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let (server, _) = start("idle", &["--header-timeout", "1s"]).await;
    let mut idle = hoard(&server, loopback(8), 1).await;
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), idle[0].read(&mut byte))
        .await
        .expect("the server closes the idle connection within 10 s");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}
