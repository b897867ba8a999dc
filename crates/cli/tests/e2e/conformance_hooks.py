"""schemathesis hooks of the API conformance test (conformance.rs).

Every submission's steps run `true`: whatever schemathesis generates as a
Pipeline, no step with generated shell text can ever run on this machine. The
hook rewrites only string `run` values, into another string, so a body that
breaks the schema still breaks it, and schemathesis re-checks what it sends.
Each rewritten submission is logged to $CORRAL_CONFORMANCE_LOG, so the test
knows the hook was in the way of every submission.
"""

import os

import schemathesis

LOG = os.environ["CORRAL_CONFORMANCE_LOG"]


@schemathesis.hook.apply_to(method="POST", path="/api/v1/runs")
def before_call(context, case, kwargs):
    steps = case.body.get("steps") if isinstance(case.body, dict) else None
    if not isinstance(steps, list):
        return
    rewritten = 0
    for step in steps:
        if isinstance(step, dict) and isinstance(step.get("run"), str):
            step["run"] = "true"
            rewritten += 1
    with open(LOG, "a", encoding="utf-8") as log:
        log.write(f"{rewritten}\n")


@schemathesis.hook.apply_to(method="GET", path="/api/v1/runs/{id}/logs")
def before_call(context, case, kwargs):
    # A followed log is a stream that stays open until its run ends, and a run
    # waiting for a static pool's agents never ends here: schemathesis would
    # only time out on it. The stream itself has its own e2e tests; here the
    # log is read as it is.
    if case.query and case.query.get("follow") in (True, "true"):
        case.query["follow"] = "false"
