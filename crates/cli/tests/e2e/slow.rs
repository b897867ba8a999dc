//! Slow clients: hundreds of half-sent requests (from two addresses, each
//! within the per-address cap) do not keep another client from submitting and
//! following a run, and they are closed after the read timeouts.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::harness::{Server, StoreKind};

const CLUSTER: &str = r#"
kind: Pool
name: quick
capacity: {cpu: 1, memory: 1Gi}
---
kind: Tenant
name: patient
quota: {cpu: 1}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn half_sent_requests_neither_starve_others_nor_stay_open() {
    let server = Server::start_with(
        "slow",
        StoreKind::Sqlite,
        &["--header-timeout", "3s", "--body-timeout", "3s"],
    )
    .await;
    server.apply(CLUSTER).await;
    let addr: std::net::SocketAddr = server
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("the server's address");
    // 250 requests stop in their headers, 250 in their bodies, half of each
    // from 127.0.0.2 and half from 127.0.0.3 (the other client is 127.0.0.1).
    let mut slow = Vec::new();
    for i in 0..500u16 {
        let socket = TcpSocket::new_v4().expect("a socket");
        let source = std::net::Ipv4Addr::new(127, 0, 0, if i < 250 { 2 } else { 3 });
        socket
            .bind((source, 0).into())
            .expect("bind the source address");
        let mut stream = socket.connect(addr).await.expect("connect");
        let head = if i % 2 == 0 {
            "POST /api/v1/runs HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_string()
        } else {
            format!(
                "POST /api/v1/runs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
                 Content-Type: application/yaml\r\nContent-Length: 1000\r\n\r\nkind: Pip",
                server.admin_token
            )
        };
        stream.write_all(head.as_bytes()).await.expect("send part");
        slow.push(stream);
    }

    // Another client submits a run and follows it to its end meanwhile.
    let run = server
        .submit(
            "kind: Pipeline\nname: hi\ntenant: patient\nsteps:\n  - name: hi\n    run: echo one; sleep 1; echo two\n    resources: {cpu: 500m, memory: 64Mi}\n",
        )
        .await;
    let id = run["id"].as_i64().expect("id");
    let followed = crate::harness::http_client(None)
        .get(format!("{}/api/v1/runs/{id}/logs?follow=true", server.url))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .expect("follow")
        .text()
        .await
        .expect("the followed log");
    assert_eq!(followed, "hi | one\nhi | two\n");
    assert_eq!(server.run(id).await["state"], "succeeded");

    // Each half-sent request is closed by the server: a read sees its end.
    for (i, mut stream) in slow.into_iter().enumerate() {
        let mut buf = [0u8; 1024];
        // An answer (408 or 400) may come before the end.
        let closed = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "half-sent request {i} is closed by the server"
        );
    }
}
