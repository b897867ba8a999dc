//! A dying agent: `kill -9` of an agent mid-step takes the step's processes
//! with it, and with default settings the step runs again on another agent
//! soon after, without using a retry.

use std::time::Duration;

use crate::harness::{Server, StoreKind, descendants, eventually, millis};

fn alive(pid: i32) -> bool {
    // A zombie has ended; only its parent has not read its status yet.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(") ")
            .next()
            .is_some_and(|rest| !rest.starts_with('Z'))
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_agent_takes_its_step_with_it_and_the_step_runs_again_elsewhere() {
    let mut server = Server::start("dying", StoreKind::Sqlite).await;
    let mut agents = server.static_pool_of_two("metal").await;

    // The first attempt leaves a child and a grandchild in the background,
    // then says where it runs.
    let script =
        "if [ \"$CORRAL_ATTEMPT\" = 1 ]; then (sleep 300 & wait) & pwd; sleep 300; fi; echo done";
    let run = server
        .submit(&format!(
            "kind: Pipeline\nname: job\ntenant: t\nsteps:\n  - name: work\n    run: '{script}'\n    pool: metal\n    resources: {{cpu: 2, memory: 1Gi}}\n"
        ))
        .await;
    let id = run["id"].as_i64().expect("id");
    let victim = server.agent_running(id, &agents).await;
    // Its shell, the subshell, and their two sleeps; with everything else
    // below the agent (its step supervisor, and what confines the step).
    let steps = server.running_steps(4).await;
    let mut recorded: Vec<i32> = steps.iter().map(|(pid, _)| *pid).collect();
    recorded.extend(descendants(agents[victim].pid()));
    recorded.sort_unstable();
    recorded.dedup();
    assert!(
        recorded.iter().all(|p| alive(*p)),
        "the step runs: {recorded:?}"
    );

    let killed_at = chrono::Utc::now().timestamp_millis();
    agents[victim].kill9();
    // Every process of the step is gone within a second.
    eventually(
        &format!("the step's processes {recorded:?} to die with their agent"),
        Duration::from_secs(1),
        || std::future::ready(recorded.iter().all(|p| !alive(*p)).then_some(())),
    )
    .await;

    let done = server.wait_run_ended(id, Duration::from_secs(30)).await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let attempts = done["steps"][0]["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{done:#}");
    assert_eq!(attempts[0]["state"], "lost");
    assert_ne!(attempts[0]["worker_id"], attempts[1]["worker_id"]);
    // With default settings, and no retries asked for, the step started again
    // within 10 s of the kill (the server's own timestamps).
    let restarted_after = millis(&attempts[1]["started_at"]) - killed_at;
    println!("the step started again {restarted_after} ms after its agent was killed");
    assert!(
        restarted_after < 10_000,
        "retried within 10 s: {restarted_after} ms"
    );
}
