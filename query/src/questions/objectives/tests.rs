use super::*;

#[test]
fn endpoint_patterns_match_as_globs() {
    assert!(glob("POST /v2/orders", "POST /v2/orders"));
    assert!(!glob("POST /v2/orders", "POST /v2/orders/{id}"));
    assert!(glob("GET /v2/*", "GET /v2/orders/{id}"));
    assert!(!glob("GET /v2/*", "POST /v2/orders"));
    assert!(glob("* /v2/orders", "DELETE /v2/orders"));
    assert!(glob("GET /*/orders", "GET /v1/orders"));
    assert!(!glob("GET /*/orders", "GET /v1/orders/x"));
    assert!(glob("*", "anything"));
    assert!(!glob("GET /a*a", "GET /a"));
}

#[test]
fn an_endpoint_covers_its_route_whatever_its_parameters_are_called() {
    let day = Duration::from_secs(86_400);
    let objective = |endpoint: &str| {
        Objective::new("o", "shop", Some(endpoint), "availability", None, 99.0, day).unwrap()
    };
    let documented = objective("GET /v2/orders/{orderId}");
    assert!(documented.covers("shop", "GET /v2/orders/{id}"));
    assert!(documented.covers("shop", "GET /v2/orders/:id"));
    assert!(!documented.covers("shop", "GET /v2/orders/{id}/items"));
    assert!(!documented.covers("shop", "GET /v2/orders/latest"));
    assert!(!documented.covers("other", "GET /v2/orders/{id}"));
    assert!(objective("POST /v2/orders").covers("shop", "POST /v2/orders"));
    assert!(!objective("POST /v2/orders").covers("shop", "POST /v2/orders/{id}"));
    assert!(objective("GET /v2/*").covers("shop", "GET /v2/orders/{id}/items"));
}

#[test]
fn a_bad_objective_is_refused_by_name_with_the_reason() {
    let day = Duration::from_secs(86_400);
    let make = |kind: &str, threshold: Option<f64>, target: f64, endpoint: Option<&str>| {
        Objective::new(
            "checkout",
            "orders",
            endpoint,
            kind,
            threshold,
            target,
            28 * day,
        )
    };
    assert!(make("latency", Some(300.0), 99.0, Some("POST /v2/orders")).is_ok());
    assert!(make("availability", None, 99.9, None).is_ok());
    for (refused, why) in [
        (make("latency", Some(333.0), 99.0, None), "not one of"),
        (make("latency", None, 99.0, None), "needs `threshold_ms`"),
        (make("availability", Some(300.0), 99.0, None), "takes no"),
        (make("speed", None, 99.0, None), "\"speed\""),
        (make("availability", None, 100.0, None), "`target` = 100"),
        (
            make("availability", None, 99.0, Some("/v2/orders")),
            "no `METHOD route`",
        ),
    ] {
        let error = refused.unwrap_err();
        assert!(error.contains(why), "{error}");
        assert!(error.contains("\"checkout\""), "{error}");
    }
    let twice = vec![
        make("availability", None, 99.0, None).unwrap(),
        make("availability", None, 99.0, None).unwrap(),
    ];
    assert!(check_unique(&twice).unwrap_err().contains("declared twice"));
}

#[test]
fn windows_read_in_their_largest_whole_unit() {
    assert_eq!(human(Duration::from_secs(28 * 86_400)), "28d");
    assert_eq!(human(Duration::from_secs(6 * 3_600)), "6h");
    assert_eq!(human(Duration::from_secs(90 * 60)), "90m");
    assert_eq!(human(Duration::from_secs(61)), "61s");
}
