//! The Python clients (the OpenTelemetry SDK, psycopg, Prometheus' parser) in a virtual
//! environment under Cargo's target folder, installed the first time a test needs them
//! (pinned in `tests/clients/requirements.txt`), so `cargo test` needs nothing else.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Python clients and their pinned requirements.
pub(crate) fn here() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/clients")
}

/// A virtual environment holding the pinned SDK and clients; created once, reused while the pins hold.
pub(crate) fn python() -> PathBuf {
    // Tests run in parallel; one of them builds the environment while the others wait.
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _building = BUILDING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let requirements = std::fs::read_to_string(here().join("requirements.txt")).unwrap();
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("otel-python-venv");
    let python = venv.join("bin/python");
    let stamp = venv.join("installed-requirements.txt");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(requirements.as_str()) {
        return python;
    }
    let created = Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(&venv)
        .status()
        .unwrap();
    assert!(created.success(), "python3 -m venv failed");
    let installed = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(here().join("requirements.txt"))
        .status()
        .unwrap();
    assert!(
        installed.success(),
        "pip install of the OpenTelemetry Python SDK failed"
    );
    std::fs::write(&stamp, requirements).unwrap();
    python
}

/// Runs `tests/clients/otel_python.py` against `daemon`: the OpenTelemetry Python SDK sends
/// its spans (gRPC and HTTP) and logs; the spans it sent, one JSON object each.
pub(crate) fn send_with_python_sdk(
    daemon: &crate::support::daemon::Daemon,
) -> Vec<serde_json::Value> {
    let output = Command::new(python())
        .arg(here().join("otel_python.py"))
        .arg(daemon.grpc_endpoint())
        .arg(daemon.otlp_http_endpoint())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("Failed to export"), "{stderr}");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
