//! examples/copper_client.py (a standard-library-only Python service) against a real
//! copycat-node: it publishes itself, keeps its publication alive, waits until it is ready
//! and calls itself through the gateway. Skipped, with a note, where no `python3` runs.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use support::Node;

#[test]
fn python_example_publishes_and_calls_itself_through_the_gateway() {
    if Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map_or(true, |s| !s.success())
    {
        eprintln!("python3 is not available: skipping the Python example");
        return;
    }
    let node = Node::start("py", "default", &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/copper_client.py");
    let output = Command::new("python3")
        .arg(&script)
        .args(["--api", &node.api.to_string()])
        .args(["--gateway", &node.gateway.to_string()])
        .args(["--name", "py-svc", "--call", "py-svc"])
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{}\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("hello from python"), "{stdout}");
    assert!(stdout.contains("/greet?from=py-svc"), "{stdout}");
    // It withdrew its publication before exiting.
    let reply = node.get("/v1/resolve?name=http:py-svc");
    assert_eq!(reply.status, 404, "{}", reply.text);
}
