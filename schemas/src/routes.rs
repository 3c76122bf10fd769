//! How raw request paths become routes: ids templated as `{id}`, and the API version read
//! from the route. Shared by the collector (spans, request logs) and the query side.

/// Replaces path segments that are ids (numbers, UUIDs, long hex strings) with `{id}`.
pub fn template_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if is_id_segment(segment) {
            out.push_str("{id}");
        } else {
            out.push_str(segment);
        }
    }
    out
}

fn is_id_segment(segment: &str) -> bool {
    if segment.is_empty() {
        return false;
    }
    if segment.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    if is_uuid(segment) {
        return true;
    }
    // Hashes and object ids: 16 or more hex digits with at least one digit among them.
    segment.len() >= 16
        && segment.bytes().all(|b| b.is_ascii_hexdigit())
        && segment.bytes().any(|b| b.is_ascii_digit())
}

fn is_uuid(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// `vN` when the first segment of `route` is a version (`/v2/orders/{id}` gives `v2`).
pub fn version_prefix(route: &str) -> Option<&str> {
    let first = route.trim_start_matches('/').split('/').next()?;
    let digits = first
        .strip_prefix('v')
        .or_else(|| first.strip_prefix('V'))?;
    let is_version = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    is_version.then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_ids() {
        assert_eq!(template_path("/users/42/orders"), "/users/{id}/orders");
        assert_eq!(
            template_path("/o/123e4567-e89b-12d3-a456-426614174000"),
            "/o/{id}"
        );
        assert_eq!(
            template_path("/blobs/9f86d081884c7d659a2feaa0c55ad015"),
            "/blobs/{id}"
        );
        assert_eq!(template_path("/v2/items"), "/v2/items");
        assert_eq!(template_path("/deadbeef"), "/deadbeef");
        assert_eq!(template_path("/"), "/");
    }

    #[test]
    fn versions() {
        assert_eq!(version_prefix("/v2/orders/{id}"), Some("v2"));
        assert_eq!(version_prefix("/vendors"), None);
        assert_eq!(version_prefix("/api/v1"), None);
    }
}

/// The objectives of an operation's `x-apiscope-objectives` (a list of tables with the keys
/// of `[[objectives]]`), each given the operation as its `endpoint` and `service` (the
/// document's `x-apiscope-service`) unless it names one.
fn declared_objectives(
    source: &str,
    declared: &serde_json::Value,
    endpoint: &str,
    service: &serde_json::Value,
) -> Result<Vec<serde_json::Value>, String> {
    let Some(list) = declared.as_array() else {
        return Err(format!(
            "{source}: `x-apiscope-objectives` must be a list of objectives"
        ));
    };
    let mut objectives = Vec::with_capacity(list.len());
    for (n, objective) in list.iter().enumerate() {
        let Some(keys) = objective.as_object() else {
            return Err(format!(
                "{source}: `x-apiscope-objectives` item {n} is no table of keys"
            ));
        };
        if keys.contains_key("endpoint") {
            return Err(format!(
                "{source}: `x-apiscope-objectives` item {n} names an `endpoint`; the operation is its endpoint"
            ));
        }
        let mut keys = keys.clone();
        keys.insert("endpoint".to_owned(), endpoint.into());
        if !keys.contains_key("service") && service.is_string() {
            keys.insert("service".to_owned(), service.clone());
        }
        objectives.push(serde_json::Value::Object(keys));
    }
    Ok(objectives)
}

/// A route with its parameters blanked (`/users/{userId}` and `/users/:id` both give
/// `/users/{}`), so that routes named by different tools compare equal.
pub fn route_shape(route: &str) -> String {
    let segments: Vec<&str> = route
        .split('/')
        .map(|segment| {
            let is_param = (segment.starts_with('{') && segment.ends_with('}'))
                || (segment.starts_with(':') && segment.len() > 1);
            if is_param { "{}" } else { segment }
        })
        .collect();
    segments.join("/")
}

/// One documented operation of an OpenAPI document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Upper-case HTTP method.
    pub method: String,
    /// The path template, with the server's base path in front.
    pub route: String,
    /// The documented response codes: `200`, `4XX`, `default`.
    pub statuses: Vec<String>,
}

/// The operations of one or more OpenAPI 3 documents, and their path templates.
#[derive(Debug, Clone, Default)]
pub struct OpenApi {
    operations: Vec<Operation>,
    /// The objectives declared on operations (`x-apiscope-objectives`): where each was
    /// declared (document and operation), and its keys as `[[objectives]]` has them, with
    /// the operation as its `endpoint` and the document's `x-apiscope-service` as its
    /// `service` unless it names one.
    objectives: Vec<(String, serde_json::Value)>,
    /// Distinct templates, most specific first (fewer parameters, then longer).
    templates: Vec<(Vec<String>, String)>,
}

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

impl OpenApi {
    /// Reads OpenAPI 3 documents (YAML or JSON).
    pub fn load(paths: &[std::path::PathBuf]) -> Result<Self, String> {
        let mut documents = Vec::new();
        for path in paths {
            let text = std::fs::read_to_string(path).map_err(|error| {
                format!("cannot read OpenAPI document {}: {error}", path.display())
            })?;
            documents.push((path.display().to_string(), text));
        }
        Self::parse(&documents)
    }

    /// Parses `(name, text)` documents.
    pub fn parse(documents: &[(String, String)]) -> Result<Self, String> {
        let mut operations = Vec::new();
        let mut objectives = Vec::new();
        for (name, text) in documents {
            let document: serde_json::Value = serde_norway::from_str(text)
                .map_err(|error| format!("OpenAPI document {name}: {error}"))?;
            let version = document["openapi"].as_str().unwrap_or_default();
            if !version.starts_with('3') {
                return Err(format!(
                    "OpenAPI document {name}: expected `openapi: 3.x`, found {:?}",
                    document["openapi"]
                ));
            }
            let base = document["servers"][0]["url"]
                .as_str()
                .map(base_path)
                .unwrap_or_default();
            let Some(paths) = document["paths"].as_object() else {
                return Err(format!("OpenAPI document {name}: no `paths`"));
            };
            for (path, item) in paths {
                let route = format!("{base}{path}");
                for method in METHODS {
                    let Some(operation) = item.get(*method) else {
                        continue;
                    };
                    let statuses = operation["responses"]
                        .as_object()
                        .map(|responses| responses.keys().map(|k| k.to_ascii_uppercase()).collect())
                        .unwrap_or_default();
                    let endpoint = format!("{} {route}", method.to_ascii_uppercase());
                    if let Some(declared) = operation.get("x-apiscope-objectives") {
                        let source = format!("OpenAPI document {name}: {endpoint}");
                        let service = &document["x-apiscope-service"];
                        for objective in declared_objectives(&source, declared, &endpoint, service)?
                        {
                            objectives.push((source.clone(), objective));
                        }
                    }
                    operations.push(Operation {
                        method: method.to_ascii_uppercase(),
                        route: route.clone(),
                        statuses,
                    });
                }
            }
        }
        let mut parsed = Self::from_operations(operations);
        parsed.objectives = objectives;
        Ok(parsed)
    }

    /// The objectives declared on operations, each with where it was declared: see
    /// [`OpenApi::parse`].
    pub fn objectives(&self) -> &[(String, serde_json::Value)] {
        &self.objectives
    }

    /// The documents' operations, as [`OpenApi::operations`] gives them.
    pub fn from_operations(operations: Vec<Operation>) -> Self {
        let mut templates: Vec<(Vec<String>, String)> = operations
            .iter()
            .map(|op| {
                (
                    op.route.split('/').map(str::to_owned).collect(),
                    op.route.clone(),
                )
            })
            .collect();
        templates.sort_by(|a, b| a.1.cmp(&b.1));
        templates.dedup_by(|a, b| a.1 == b.1);
        let params = |segments: &[String]| segments.iter().filter(|s| s.starts_with('{')).count();
        templates.sort_by(|a, b| {
            params(&a.0)
                .cmp(&params(&b.0))
                .then(b.0.len().cmp(&a.0.len()))
                .then(a.1.cmp(&b.1))
        });
        Self {
            operations,
            templates,
            objectives: Vec::new(),
        }
    }

    /// The operations as JSON (`[[method, route, [status, ...]], ...]`), to send elsewhere.
    pub fn to_json(&self) -> String {
        let operations: Vec<serde_json::Value> = self
            .operations
            .iter()
            .map(|op| serde_json::json!([op.method, op.route, op.statuses]))
            .collect();
        serde_json::Value::Array(operations).to_string()
    }

    /// Operations as [`OpenApi::to_json`] writes them.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let parsed: Vec<(String, String, Vec<String>)> =
            serde_json::from_str(text).map_err(|error| format!("OpenAPI operations: {error}"))?;
        let operations = parsed
            .into_iter()
            .map(|(method, route, statuses)| Operation {
                method,
                route,
                statuses,
            })
            .collect();
        Ok(Self::from_operations(operations))
    }

    /// Whether any document was given.
    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    /// Every documented operation.
    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    /// The documented template that `path` (without its query string) matches; literal
    /// segments win over parameters (`/users/me` before `/users/{id}`).
    pub fn template(&self, path: &str) -> Option<&str> {
        let segments: Vec<&str> = path.split('/').collect();
        self.templates
            .iter()
            .find(|(template, _)| {
                template.len() == segments.len()
                    && template.iter().zip(&segments).all(|(t, s)| {
                        if t.starts_with('{') && t.ends_with('}') {
                            !s.is_empty()
                        } else {
                            t == s
                        }
                    })
            })
            .map(|(_, route)| route.as_str())
    }

    /// The route of a raw path: the documented template, else the path with ids templated.
    pub fn route_of(&self, path: &str) -> String {
        let path = path.split('?').next().unwrap_or(path);
        match self.template(path) {
            Some(route) => route.to_owned(),
            None => template_path(path),
        }
    }
}

/// The path of a server URL (`https://api.example.com/v1/` gives `/v1`), without the
/// trailing slash; empty for none.
fn base_path(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = match after_scheme.find('/') {
        Some(at) if url.contains("://") => &after_scheme[at..],
        Some(_) | None if !url.contains("://") => url,
        _ => "",
    };
    path.trim_end_matches('/').to_owned()
}

#[cfg(test)]
mod openapi_tests {
    use super::*;

    const DOCUMENT: &str = r#"
openapi: 3.0.3
info: {title: shop, version: "1"}
servers:
  - url: https://api.example.com/api
paths:
  /users/{userId}:
    get:
      responses:
        "200": {description: ok}
        "404": {description: missing}
  /users/me:
    get:
      responses:
        "200": {description: ok}
        4xx: {description: client errors}
  /orders:
    post:
      responses:
        "201": {description: created}
        default: {description: anything else}
"#;

    #[test]
    fn documented_templates_take_precedence() {
        let api = OpenApi::parse(&[("shop.yaml".into(), DOCUMENT.into())]).unwrap();
        assert_eq!(api.operations().len(), 3);
        assert_eq!(api.route_of("/api/users/42"), "/api/users/{userId}");
        assert_eq!(api.route_of("/api/users/me?x=1"), "/api/users/me");
        assert_eq!(api.route_of("/api/users/ab12cd"), "/api/users/{userId}");
        // Not documented: the usual templating.
        assert_eq!(api.route_of("/api/carts/77"), "/api/carts/{id}");
        let me = api
            .operations()
            .iter()
            .find(|o| o.route == "/api/users/me")
            .unwrap();
        assert_eq!(me.statuses, vec!["200", "4XX"]);
        assert_eq!(me.method, "GET");
    }

    #[test]
    fn json_documents_and_errors() {
        let json =
            r#"{"openapi": "3.1.0", "paths": {"/a/{id}": {"delete": {"responses": {"204": {}}}}}}"#;
        let api = OpenApi::parse(&[("a.json".into(), json.into())]).unwrap();
        assert_eq!(api.route_of("/a/1"), "/a/{id}");
        let swagger = r#"{"swagger": "2.0", "paths": {}}"#;
        assert!(
            OpenApi::parse(&[("s.json".into(), swagger.into())])
                .unwrap_err()
                .contains("openapi: 3")
        );
        assert!(OpenApi::parse(&[("bad.yaml".into(), "a: [".into())]).is_err());
    }

    #[test]
    fn shapes_ignore_parameter_names() {
        assert_eq!(route_shape("/users/{userId}/orders"), "/users/{}/orders");
        assert_eq!(route_shape("/users/:id/orders"), "/users/{}/orders");
        assert_eq!(route_shape("/users/me"), "/users/me");
        assert_eq!(base_path("https://api.example.com/v1/"), "/v1");
        assert_eq!(base_path("https://api.example.com"), "");
        assert_eq!(base_path("/v2"), "/v2");
    }
}
