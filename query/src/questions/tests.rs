use std::sync::Arc;

use super::*;
use crate::engine::Engine;
use crate::scan::source::Files;

#[tokio::test]
async fn every_question_answers_the_columns_it_documents() {
    let dir = tempfile::tempdir().unwrap();
    let source = Arc::new(Files(schemas::Store::local(dir.path())));
    let document = "openapi: 3.0.0\npaths:\n  /a/{id}:\n    get:\n      responses: {'200': {}}\n";
    let openapi = OpenApi::parse(&[("a.yaml".into(), document.into())]).unwrap();
    let objective = objectives::Objective::new(
        "x",
        "svc",
        None,
        "availability",
        None,
        99.0,
        std::time::Duration::from_secs(3600),
    );
    let settings = QuestionSettings {
        openapi: Arc::new(openapi),
        objectives: Arc::new(vec![objective.unwrap()]),
        ..QuestionSettings::default()
    };
    let engine = Engine::new(source, settings.clone(), Default::default())
        .await
        .unwrap();
    let bare = Engine::new(
        Arc::new(Files(schemas::Store::local(dir.path()))),
        QuestionSettings::default(),
        Default::default(),
    )
    .await
    .unwrap();
    let refused = bare
        .query("SELECT * FROM contract_drift()")
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("--openapi"), "{refused}");
    let unused = engine
        .query("SELECT kind, http_route FROM contract_drift()")
        .await
        .unwrap();
    let json = crate::to_json(&unused).unwrap();
    assert_eq!(
        json["rows"],
        serde_json::json!([["unused_operation", "/a/{id}"]])
    );
    let view = std::iter::once(("api_calls".to_owned(), API_CALLS.columns));
    let functions = QUESTIONS
        .iter()
        .map(|q| (format!("{}()", q.name), q.columns));
    let minutes = [
        (
            "api_call_minutes()".to_owned(),
            crate::questions::rollups::COLUMNS,
        ),
        (
            "objectives".to_owned(),
            crate::questions::objectives::OBJECTIVES_COLUMNS,
        ),
        (
            "objective_status()".to_owned(),
            crate::questions::objectives::STATUS_COLUMNS,
        ),
        (
            "budget_burners('x')".to_owned(),
            crate::questions::objectives::BURNERS_COLUMNS,
        ),
    ];
    for (from, documented) in view.chain(functions).chain(minutes) {
        let output = engine
            .query(&format!("SELECT * FROM {from}"))
            .await
            .unwrap();
        let columns: Vec<&str> = output
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        let documented: Vec<&str> = documented.iter().map(|(name, _)| *name).collect();
        assert_eq!(columns, documented, "{from}");
    }
}

#[test]
fn readme_documents_every_question() {
    let readme = include_str!("../../../docs/questions.md");
    let documented = std::iter::once(&API_CALLS)
        .chain(QUESTIONS)
        .map(|q| (q.name, q.markdown()))
        .chain([
            (
                "api_call_minutes",
                columns_markdown(crate::questions::rollups::COLUMNS),
            ),
            (
                "objectives",
                columns_markdown(crate::questions::objectives::OBJECTIVES_COLUMNS),
            ),
            (
                "objective_status",
                columns_markdown(crate::questions::objectives::STATUS_COLUMNS),
            ),
            (
                "budget_burners",
                columns_markdown(crate::questions::objectives::BURNERS_COLUMNS),
            ),
        ]);
    for (name, markdown) in documented {
        assert!(
            readme.contains(&markdown),
            "docs/questions.md must hold the column table of `{name}`, exactly:\n{markdown}"
        );
    }
}

#[test]
fn windows_become_filters_on_time() {
    let window = Window {
        from: 1_764_000_000_000_000_000,
        to: 1_764_003_600_000_000_000,
    };
    let settings = QuestionSettings {
        deprecated_versions: vec!["v1".into(), "v0'".into()],
        ..QuestionSettings::default()
    };
    let named = |name: &str| QUESTIONS.iter().find(|q| q.name == name).unwrap();
    let sql = window.sql(named("version_usage"), &settings);
    assert!(
        sql.contains(
            "time >= '2025-11-24T16:00:00.000000000Z' AND time < '2025-11-24T17:00:00.000000000Z'"
        ),
        "{sql}"
    );
    assert!(sql.contains("IN ('v1', 'v0''')"), "{sql}");
    let regressions = window.sql(named("latency_regressions"), &settings);
    assert!(
        regressions.contains(
            "api_call_minutes('2025-11-24T15:00:00.000000000Z', '2025-11-24T16:00:00.000000000Z')"
        ),
        "{regressions}"
    );
    assert!(!regressions.contains('{'), "{regressions}");
    // Deploys look back 7 days for versions, and 30 whole minutes either side for calls.
    let deploys = window.sql(named("deploys"), &settings);
    for minutes in [
        "api_call_minutes('2025-11-17T16:00:00.000000000Z', '2025-11-24T17:00:00.000000000Z')",
        "api_call_minutes('2025-11-24T15:30:00.000000000Z', '2025-11-24T17:30:00.000000000Z')",
    ] {
        assert!(deploys.contains(minutes), "{deploys}");
    }
    assert!(!deploys.contains('{'), "{deploys}");
}
