//! A fetched trace made safe to draw. Trace views build a tree from span ids and parent ids;
//! stored spans do not always make one: a parent that never arrived, two spans with one id
//! (a retried export, a broken client), a parent chain that loops, a child clock ahead of its
//! parent's, a trace longer than the view should load. Each is kept drawable here and said in
//! a warning on the span concerned, never dropped silently.

use std::collections::HashMap;

use super::Span;

/// A trace ready for a view: unique span ids, parents that exist and form no loop.
#[derive(Debug, Clone)]
pub struct Shaped {
    /// The spans, in start order.
    pub spans: Vec<Span>,
    /// Each span's id as shown: its own, unless another span already has it.
    pub ids: Vec<String>,
    /// Each span's parent, as an index into `spans`; `None` for roots and for spans whose
    /// parent is missing or would close a loop.
    pub parents: Vec<Option<usize>>,
    /// What is odd about each span, for the view to show on it.
    pub warnings: Vec<Vec<String>>,
    /// Whether spans past the limit were left out.
    pub truncated: bool,
}

impl Shaped {
    /// Shapes `spans` (in start order; at most `max_spans` are kept).
    pub fn new(mut spans: Vec<Span>, max_spans: usize) -> Self {
        let truncated = spans.len() > max_spans;
        spans.truncate(max_spans);
        let (spans, mut warnings, ids) = unique_ids(spans);
        let mut parents = resolve_parents(&spans, &mut warnings);
        break_loops(&mut parents, &mut warnings);
        for (i, parent) in parents.iter().enumerate() {
            if let Some(parent) = *parent {
                let ahead = spans[parent].start_ns - spans[i].start_ns;
                if ahead > 0 {
                    warnings[i].push(format!(
                        "starts {} µs before its parent (clock skew between hosts?)",
                        ahead / 1_000
                    ));
                }
            }
        }
        let mut shaped = Self {
            spans,
            ids,
            parents,
            warnings,
            truncated,
        };
        if let Some(root) = shaped.root().filter(|_| truncated) {
            shaped.warnings[root].push(format!(
                "this trace has more than {max_spans} spans: only the first {max_spans} by start time are shown (max_trace_spans)"
            ));
        }
        shaped
    }

    /// The root span: the first span sent without a parent, else the first drawn as a root.
    pub fn root(&self) -> Option<usize> {
        self.spans
            .iter()
            .position(|s| s.parent_span_id.is_none())
            .or_else(|| self.parents.iter().position(Option::is_none))
    }

    /// Start of the earliest span and end of the latest, ns.
    pub fn bounds(&self) -> (i64, i64) {
        let start = self.spans.iter().map(|s| s.start_ns).min().unwrap_or(0);
        let end = self
            .spans
            .iter()
            .map(|s| s.start_ns.saturating_add(s.duration_ns))
            .max()
            .unwrap_or(start);
        (start, end)
    }
}

type Warnings = Vec<Vec<String>>;

/// Drops exact copies of a span; gives a span that shares its id with a different one an id
/// of its own.
fn unique_ids(spans: Vec<Span>) -> (Vec<Span>, Warnings, Vec<String>) {
    let mut kept: Vec<Span> = Vec::with_capacity(spans.len());
    let mut warnings: Warnings = Vec::with_capacity(spans.len());
    // The spans kept under each id: a copy is compared only with spans of its own id.
    let mut with_id: HashMap<String, Vec<usize>> = HashMap::new();
    let mut copies: HashMap<usize, usize> = HashMap::new();
    for span in spans {
        let same_id = with_id.entry(span.span_id.clone()).or_default();
        match same_id.iter().copied().find(|&i| kept[i] == span) {
            Some(same) => *copies.entry(same).or_default() += 1,
            None => {
                same_id.push(kept.len());
                kept.push(span);
                warnings.push(Vec::new());
            }
        }
    }
    for (i, n) in copies {
        warnings[i].push(format!(
            "received {} times: {n} identical cop{} not shown",
            n + 1,
            if n == 1 { "y" } else { "ies" }
        ));
    }
    let mut taken: std::collections::HashSet<String> =
        kept.iter().map(|s| s.span_id.clone()).collect();
    let mut ids = Vec::with_capacity(kept.len());
    for (i, span) in kept.iter().enumerate() {
        if with_id[&span.span_id][0] == i {
            ids.push(span.span_id.clone());
            continue;
        }
        let mut n = i as u64;
        let id = loop {
            n = n.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1);
            let candidate = format!("{n:016x}");
            if taken.insert(candidate.clone()) {
                break candidate;
            }
        };
        warnings[i].push(format!(
            "span id {} is also used by another span of this trace; this one is shown as {id}",
            span.span_id
        ));
        ids.push(id);
    }
    (kept, warnings, ids)
}

/// Each span's parent by index: the first span holding the parent id, unless it is the span
/// itself or absent.
fn resolve_parents(spans: &[Span], warnings: &mut Warnings) -> Vec<Option<usize>> {
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(spans.len());
    for (i, span) in spans.iter().enumerate() {
        index.entry(span.span_id.as_str()).or_insert(i);
    }
    spans
        .iter()
        .enumerate()
        .map(|(i, span)| {
            let parent = span.parent_span_id.as_deref()?;
            match index.get(parent) {
                Some(&p) if p == i => {
                    warnings[i].push("names itself as its parent; shown as a root".into());
                    None
                }
                Some(&p) => Some(p),
                None => {
                    warnings[i].push(format!(
                        "its parent span {parent} was not received; shown as a root"
                    ));
                    None
                }
            }
        })
        .collect()
}

/// Cuts the parent link that closes each loop of parent links.
fn break_loops(parents: &mut [Option<usize>], warnings: &mut Warnings) {
    let mut path: Vec<usize> = Vec::new();
    const NEW: u8 = 0;
    const ON_PATH: u8 = 1;
    const DONE: u8 = 2;
    let mut state = vec![NEW; parents.len()];
    for start in 0..parents.len() {
        path.clear();
        let mut current = start;
        loop {
            match state[current] {
                DONE => break,
                ON_PATH => {
                    // `current` is on this path: the last span walked links back into it.
                    if let Some(&last) = path.last() {
                        parents[last] = None;
                        warnings[last]
                            .push("its chain of parents loops back to it; shown as a root".into());
                    }
                    break;
                }
                _ => {}
            }
            state[current] = ON_PATH;
            path.push(current);
            match parents[current] {
                Some(parent) => current = parent,
                None => break,
            }
        }
        for &walked in &path {
            state[walked] = DONE;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, parent: Option<&str>, start: i64) -> Span {
        Span {
            trace_id: "0".repeat(32),
            span_id: id.to_owned(),
            parent_span_id: parent.map(str::to_owned),
            service_name: "svc".into(),
            name: format!("op {id}"),
            kind: "internal".into(),
            status_code: "unset".into(),
            status_message: None,
            is_error: false,
            scope_name: None,
            start_ns: start,
            duration_ns: 10,
            attributes: Vec::new(),
            resource: Vec::new(),
            events: Vec::new(),
            links: Vec::new(),
        }
    }

    #[test]
    fn a_well_formed_trace_is_left_as_it_is() {
        let shaped = Shaped::new(
            vec![
                span("a", None, 0),
                span("b", Some("a"), 1),
                span("c", Some("b"), 2),
            ],
            10,
        );
        assert_eq!(shaped.parents, vec![None, Some(0), Some(1)]);
        assert!(shaped.warnings.iter().all(Vec::is_empty));
        assert_eq!(shaped.ids, vec!["a", "b", "c"]);
        assert_eq!(shaped.root(), Some(0));
    }

    #[test]
    fn orphans_become_roots_and_say_why() {
        let shaped = Shaped::new(vec![span("a", None, 0), span("b", Some("zz"), 1)], 10);
        assert_eq!(shaped.parents, vec![None, None]);
        assert!(shaped.warnings[1][0].contains("zz was not received"));
    }

    #[test]
    fn identical_copies_go_and_different_spans_sharing_an_id_get_their_own() {
        let a = span("a", None, 0);
        let mut other = span("a", Some("a"), 5);
        other.name = "other".into();
        let shaped = Shaped::new(
            vec![a.clone(), a.clone(), other, span("b", Some("a"), 6)],
            10,
        );
        assert_eq!(shaped.spans.len(), 3);
        assert!(shaped.warnings[0][0].contains("received 2 times"));
        assert_ne!(shaped.ids[1], "a");
        assert_eq!(shaped.parents, vec![None, Some(0), Some(0)]);
        let unique: std::collections::HashSet<_> = shaped.ids.iter().collect();
        assert_eq!(unique.len(), 3);
    }

    #[test]
    fn loops_are_cut_once_and_self_parents_become_roots() {
        let shaped = Shaped::new(
            vec![
                span("a", Some("c"), 0),
                span("b", Some("a"), 1),
                span("c", Some("b"), 2),
                span("d", Some("d"), 3),
            ],
            10,
        );
        let cut = shaped.parents.iter().filter(|p| p.is_none()).count();
        assert_eq!(cut, 2, "{:?}", shaped.parents);
        assert!(
            shaped
                .warnings
                .iter()
                .flatten()
                .any(|w| w.contains("loops back"))
        );
        assert!(shaped.warnings[3][0].contains("itself"));
    }

    #[test]
    fn a_child_before_its_parent_is_kept_and_marked() {
        let shaped = Shaped::new(
            vec![span("a", None, 5_000), span("b", Some("a"), 1_000)],
            10,
        );
        assert_eq!(shaped.parents, vec![None, Some(0)]);
        assert!(shaped.warnings[1][0].contains("4 µs before its parent"));
    }

    #[test]
    fn a_long_trace_is_cut_with_a_warning_on_its_root() {
        let mut spans = vec![span("root", None, 0)];
        spans.extend((0..5).map(|i| span(&format!("c{i}"), Some("root"), i + 1)));
        let shaped = Shaped::new(spans, 3);
        assert!(shaped.truncated);
        assert_eq!(shaped.spans.len(), 3);
        assert!(shaped.warnings[0][0].contains("more than 3 spans"));
    }
}
