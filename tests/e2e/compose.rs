//! docker-compose.yml and the Dockerfile cannot run here (no container engine), so they are
//! checked by reading them: services, ports, mounts and variables must agree with the repo
//! and the binary; and the demo's load generator command is run against a real daemon.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::Value;

use crate::dashboards::{repo, yaml};
use crate::support::daemon::{Daemon, binary};

/// The `ENV` settings of the Dockerfile's final stage.
fn dockerfile_env() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let final_stage = text.rsplit("\nFROM ").next().unwrap();
    let mut env = BTreeMap::new();
    let mut lines = final_stage.lines();
    while let Some(line) = lines.next() {
        let Some(mut rest) = line.strip_prefix("ENV ").map(str::to_owned) else {
            continue;
        };
        while rest.trim_end().ends_with('\\') {
            rest = rest.trim_end().trim_end_matches('\\').to_owned();
            rest.push(' ');
            rest.push_str(lines.next().unwrap());
        }
        for pair in rest.split_whitespace() {
            let (key, value) = pair.split_once('=').unwrap();
            env.insert(key.to_owned(), value.to_owned());
        }
    }
    env
}

fn port_of(addr: &str) -> &str {
    addr.rsplit_once(':').unwrap().1
}

#[test]
fn compose_file_agrees_with_the_repo_and_the_binary() {
    let compose = yaml(&repo().join("docker-compose.yml"));
    let services = compose["services"].as_object().unwrap();
    for name in ["apiscope", "grafana", "demo"] {
        assert!(services.contains_key(name), "service {name} is missing");
    }
    let env = dockerfile_env();

    // apiscope: built from the repo's Dockerfile, data on a named volume at the data dir.
    let apiscope = &services["apiscope"];
    let context = apiscope["build"].as_str().unwrap();
    assert!(repo().join(context).join("Dockerfile").is_file());
    let data_dir = &env["APISCOPE_DATA_DIR"];
    let volumes: Vec<&str> = apiscope["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let data_volume = volumes
        .iter()
        .find_map(|v| v.strip_suffix(&format!(":{data_dir}")))
        .expect("a volume at the data directory");
    assert!(
        compose["volumes"].get(data_volume).is_some(),
        "{data_volume}"
    );

    // Published ports reach the listeners the image binds, on loopback only.
    let published: Vec<(String, String)> = apiscope["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let p = p.as_str().unwrap();
            assert!(p.starts_with("127.0.0.1:"), "{p} is not loopback-only");
            let (host, container) = p.rsplit_once(':').unwrap();
            (port_of(host).to_owned(), container.to_owned())
        })
        .collect();
    for key in [
        "APISCOPE_OTLP_GRPC_ADDR",
        "APISCOPE_OTLP_HTTP_ADDR",
        "APISCOPE_HTTP_ADDR",
        "APISCOPE_PG_ADDR",
    ] {
        let port = port_of(&env[key]).to_owned();
        assert!(
            published.iter().any(|(_, container)| *container == port),
            "{key} port {port} is not published"
        );
    }
    // Off loopback the PostgreSQL listener needs a password: the compose file sets one.
    assert!(apiscope["environment"]["APISCOPE_PG_PASSWORD"].is_string());

    // Every variable the image and the compose file set is one the binary reads.
    let help = Command::new(binary())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let mut names: Vec<String> = env.keys().cloned().collect();
    names.extend(apiscope["environment"].as_object().unwrap().keys().cloned());
    for name in names {
        assert!(
            help.contains(&format!("env: {name}")),
            "{name} is not an apiscope variable"
        );
    }

    // Grafana: the provisioning folder mounted where the provider and data source expect it.
    let grafana = &services["grafana"];
    let mount = grafana["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .find(|v| v.contains("/etc/grafana/provisioning"))
        .expect("the provisioning folder is mounted");
    let local = mount.split(':').next().unwrap();
    assert!(
        repo()
            .join(local)
            .join("datasources/apiscope.yaml")
            .is_file()
    );
    let home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
        .as_str()
        .unwrap();
    let home = home.strip_prefix("/etc/grafana/provisioning/").unwrap();
    assert!(repo().join(local).join(home).is_file(), "{home}");
    let datasource = &yaml(&repo().join("dashboards/datasources/apiscope.yaml"))["datasources"][0];
    let url = datasource["url"].as_str().unwrap();
    assert_eq!(
        url,
        format!("apiscope:{}", port_of(&env["APISCOPE_PG_ADDR"]))
    );
    assert_eq!(
        grafana["environment"]["APISCOPE_PG_PASSWORD"],
        apiscope["environment"]["APISCOPE_PG_PASSWORD"],
        "Grafana logs in with the password apiscope expects"
    );
    assert!(
        datasource["secureJsonData"]["password"]
            .as_str()
            .unwrap()
            .contains("APISCOPE_PG_PASSWORD")
    );

    // The demo points the load generator at apiscope's OTLP/HTTP port.
    let demo = demo_command(&compose);
    assert_eq!(demo[0], "loadgen");
    let endpoint = demo.iter().position(|a| a == "--endpoint").unwrap() + 1;
    assert_eq!(
        demo[endpoint],
        format!(
            "http://apiscope:{}",
            port_of(&env["APISCOPE_OTLP_HTTP_ADDR"])
        )
    );
}

fn demo_command(compose: &Value) -> Vec<String> {
    compose["services"]["demo"]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

/// The number on the summary line that starts with `name`.
pub(crate) fn summary_count(summary: &str, name: &str) -> i64 {
    let line = summary
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no `{name}` line in:\n{summary}"));
    line[name.len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn the_demo_load_generator_sends_what_it_reports() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let compose = yaml(&repo().join("docker-compose.yml"));
    // The demo's own command, pointed at this daemon and bounded; then over gRPC.
    let mut args = demo_command(&compose);
    let mut set = |flag: &str, value: String| {
        let at = args.iter().position(|a| a == flag).unwrap() + 1;
        args[at] = value;
    };
    set("--endpoint", daemon.otlp_http_endpoint());
    set("--rate", "0".into());
    args.extend(["--spans", "3000"].map(String::from));
    let grpc = [
        "loadgen",
        "--protocol",
        "grpc",
        "--endpoint",
        &daemon.grpc_endpoint(),
        "--rate",
        "0",
        "--spans",
        "2000",
        "--seed",
        "9",
    ]
    .map(String::from)
    .to_vec();

    let mut acknowledged = 0;
    for args in [args, grpc] {
        let output = Command::new(binary()).args(&args).output().unwrap();
        let summary = String::from_utf8(output.stdout).unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let sent = summary_count(&summary, "spans sent");
        let ok = summary_count(&summary, "acknowledged");
        assert!(sent >= 2000, "{summary}");
        assert_eq!(ok, sent, "{summary}");
        assert_eq!(summary_count(&summary, "failed"), 0, "{summary}");
        acknowledged += ok;
    }
    // Every acknowledged span is stored, and the fleet looks like a fleet.
    let stored = daemon.wait_for_count("SELECT count(*) FROM spans", acknowledged);
    assert_eq!(stored, acknowledged);
    let services = daemon.count("SELECT count(DISTINCT service_name) FROM spans");
    assert!(services >= 3, "{services} services");
    let failing =
        daemon.count("SELECT count(*) FROM spans WHERE span_kind = 'server' AND is_error");
    assert!(failing > 0);
    let dependencies = daemon.count("SELECT count(DISTINCT dependency) FROM spans");
    assert!(dependencies >= 4, "{dependencies} dependencies");
    let retries = daemon.count(
        "SELECT count(*) FROM spans WHERE attributes['http.request.resend_count'] IS NOT NULL",
    );
    assert!(retries > 0);
}
