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
