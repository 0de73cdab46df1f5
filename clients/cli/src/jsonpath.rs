//! kubectl's `-o jsonpath=TEMPLATE` for the forms scripts use: text with
//! `{.field.path}`, `['key.with.dots']`, `[0]`, `[-1]`, `[*]`, filters
//! `[?(@.type=="Ready")]` (`==`, `!=`, or a bare path for "exists"),
//! `{range EXPR}…{end}` and string literals such as `{"\n"}`. Several
//! results of one expression are joined by spaces; a missing field prints
//! nothing, as kubectl's default `--allow-missing-template-keys`.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Field(String),
    Index(i64),
    Wildcard,
    Filter {
        path: Vec<Seg>,
        op: Option<(bool, Value)>,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    Expr(Vec<Seg>),
    Range(Vec<Seg>, Vec<Node>),
}

/// Renders `template` against `value`.
pub fn render(template: &str, value: &Value) -> Result<String, String> {
    let nodes = parse(template)?;
    let mut out = String::new();
    emit(&nodes, value, &mut out);
    Ok(out)
}

fn parse(template: &str) -> Result<Vec<Node>, String> {
    // A stack of (range expression, nodes so far); the bottom is the template.
    let mut stack: Vec<(Option<Vec<Seg>>, Vec<Node>)> = vec![(None, Vec::new())];
    let mut rest = template;
    while !rest.is_empty() {
        let Some(open) = rest.find('{') else {
            stack
                .last_mut()
                .expect("stack")
                .1
                .push(Node::Text(rest.to_owned()));
            break;
        };
        if open > 0 {
            stack
                .last_mut()
                .expect("stack")
                .1
                .push(Node::Text(rest[..open].to_owned()));
        }
        let close =
            closing(&rest[open..]).ok_or_else(|| format!("unclosed action in {template:?}"))?;
        let inner = rest[open + 1..open + close].trim();
        rest = &rest[open + close + 1..];
        if let Some(expr) = inner.strip_prefix("range ") {
            stack.push((Some(parse_expr(expr.trim())?), Vec::new()));
        } else if inner == "end" {
            let (expr, body) = stack.pop().expect("stack");
            let Some(expr) = expr else {
                return Err("{end} without {range}".into());
            };
            stack
                .last_mut()
                .ok_or("{end} without {range}")?
                .1
                .push(Node::Range(expr, body));
        } else if inner.starts_with('"') || inner.starts_with('\'') {
            stack
                .last_mut()
                .expect("stack")
                .1
                .push(Node::Text(unquote(inner)?));
        } else {
            stack
                .last_mut()
                .expect("stack")
                .1
                .push(Node::Expr(parse_expr(inner)?));
        }
    }
    if stack.len() != 1 {
        return Err("{range} without {end}".into());
    }
    Ok(stack.pop().expect("stack").1)
}

/// Offset of the `}` closing the action at the start of `s`, skipping quotes.
fn closing(s: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        match (quote, c) {
            (Some(_), '\\') if !escaped => {
                escaped = true;
                continue;
            }
            (Some(q), c) if c == q && !escaped => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            (None, '}') => return Some(i),
            _ => {}
        }
        escaped = false;
    }
    None
}

fn unquote(s: &str) -> Result<String, String> {
    let q = s.chars().next().ok_or("empty literal")?;
    let body = s
        .strip_prefix(q)
        .and_then(|b| b.strip_suffix(q))
        .ok_or_else(|| format!("unterminated literal {s}"))?;
    let mut out = String::new();
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    Ok(out)
}

fn parse_expr(expr: &str) -> Result<Vec<Seg>, String> {
    let bad = |why: &str| format!("bad jsonpath expression {expr:?}: {why}");
    let mut s = expr.strip_prefix('$').unwrap_or(expr);
    if s.starts_with("@") {
        s = &s[1..];
    }
    let mut segs = Vec::new();
    while !s.is_empty() {
        if let Some(r) = s.strip_prefix("..") {
            let _ = r;
            return Err(bad("recursive descent (..) is not supported"));
        }
        if let Some(r) = s.strip_prefix('.') {
            if let Some(r) = r.strip_prefix('*') {
                segs.push(Seg::Wildcard);
                s = r;
                continue;
            }
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end == 0 {
                if r.is_empty() {
                    // "{.}": the value itself.
                    s = r;
                    continue;
                }
                return Err(bad("a field name is missing"));
            }
            segs.push(Seg::Field(r[..end].to_owned()));
            s = &r[end..];
        } else if let Some(r) = s.strip_prefix('[') {
            let end = closing_bracket(r).ok_or_else(|| bad("unclosed ["))?;
            let inner = r[..end].trim();
            s = &r[end + 1..];
            if inner == "*" {
                segs.push(Seg::Wildcard);
            } else if inner.starts_with('\'') || inner.starts_with('"') {
                segs.push(Seg::Field(unquote(inner)?));
            } else if let Some(f) = inner.strip_prefix('?') {
                let f = f.trim();
                let f = f
                    .strip_prefix('(')
                    .and_then(|f| f.strip_suffix(')'))
                    .unwrap_or(f)
                    .trim();
                segs.push(parse_filter(f).map_err(|e| bad(&e))?);
            } else {
                let i: i64 = inner.parse().map_err(|_| {
                    bad(&format!(
                        "{inner:?} is not an index, '*', a quoted key or a filter"
                    ))
                })?;
                segs.push(Seg::Index(i));
            }
        } else {
            // A leading bare name ("items[0]").
            let end = s.find(['.', '[']).unwrap_or(s.len());
            segs.push(Seg::Field(s[..end].to_owned()));
            s = &s[end..];
        }
    }
    Ok(segs)
}

fn closing_bracket(s: &str) -> Option<usize> {
    let mut depth = 0;
    let mut quote: Option<char> = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '(' | '[') => depth += 1,
            (None, ')') => depth -= 1,
            (None, ']') if depth == 0 => return Some(i),
            (None, ']') => depth -= 1,
            _ => {}
        }
    }
    None
}

fn parse_filter(f: &str) -> Result<Seg, String> {
    for (op, equal) in [("==", true), ("!=", false)] {
        if let Some((left, right)) = f.split_once(op) {
            let path = parse_expr(left.trim())?;
            let right = right.trim();
            let literal = if right.starts_with('"') || right.starts_with('\'') {
                Value::String(unquote(right)?)
            } else {
                serde_json::from_str(right).map_err(|_| format!("{right:?} is not a literal"))?
            };
            return Ok(Seg::Filter {
                path,
                op: Some((equal, literal)),
            });
        }
    }
    Ok(Seg::Filter {
        path: parse_expr(f)?,
        op: None,
    })
}

fn eval<'a>(segs: &[Seg], root: &'a Value) -> Vec<&'a Value> {
    let mut current = vec![root];
    for seg in segs {
        let mut next = Vec::new();
        for v in current {
            match seg {
                Seg::Field(name) => {
                    if let Some(x) = v.get(name) {
                        next.push(x);
                    }
                }
                Seg::Index(i) => {
                    if let Some(a) = v.as_array() {
                        let idx = if *i < 0 { a.len() as i64 + i } else { *i };
                        if let Some(x) = usize::try_from(idx).ok().and_then(|i| a.get(i)) {
                            next.push(x);
                        }
                    }
                }
                Seg::Wildcard => match v {
                    Value::Array(a) => next.extend(a.iter()),
                    Value::Object(m) => next.extend(m.values()),
                    _ => {}
                },
                Seg::Filter { path, op } => {
                    if let Some(a) = v.as_array() {
                        for item in a {
                            let found = eval(path, item);
                            let keep = match op {
                                None => !found.is_empty(),
                                Some((equal, lit)) => found.contains(&lit) == *equal,
                            };
                            if keep {
                                next.push(item);
                            }
                        }
                    }
                }
            }
        }
        current = next;
    }
    current
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn emit(nodes: &[Node], context: &Value, out: &mut String) {
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Expr(segs) => {
                let found: Vec<String> = eval(segs, context).into_iter().map(text).collect();
                out.push_str(&found.join(" "));
            }
            Node::Range(segs, body) => {
                for item in eval(segs, context) {
                    emit(body, item, out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> Value {
        serde_json::json!({
            "kind": "List",
            "items": [
                {"metadata": {"name": "web-0", "labels": {"app.kubernetes.io/name": "web"}},
                 "status": {"phase": "Running", "podIP": "10.0.0.5",
                            "conditions": [{"type": "Ready", "status": "True"}]}},
                {"metadata": {"name": "web-1"},
                 "status": {"phase": "Pending",
                            "conditions": [{"type": "Ready", "status": "False"}]}}
            ]
        })
    }

    #[test]
    fn the_forms_scripts_use_render_as_kubectl() {
        let v = pods();
        assert_eq!(
            render("{.items[*].metadata.name}", &v).unwrap(),
            "web-0 web-1"
        );
        assert_eq!(render("{.items[0].status.podIP}", &v).unwrap(), "10.0.0.5");
        assert_eq!(render("{.items[-1].metadata.name}", &v).unwrap(), "web-1");
        assert_eq!(
            render(
                "{range .items[*]}{.metadata.name}{\"\\t\"}{.status.phase}{\"\\n\"}{end}",
                &v
            )
            .unwrap(),
            "web-0\tRunning\nweb-1\tPending\n"
        );
        assert_eq!(
            render("{.items[?(@.status.phase==\"Running\")].metadata.name}", &v).unwrap(),
            "web-0"
        );
        assert_eq!(
            render(
                "{.items[0].status.conditions[?(@.type=='Ready')].status}",
                &v
            )
            .unwrap(),
            "True"
        );
        assert_eq!(
            render("{.items[0].metadata.labels['app.kubernetes.io/name']}", &v).unwrap(),
            "web"
        );
        assert_eq!(
            render("name: {.items[1].status.podIP}.", &v).unwrap(),
            "name: .",
            "missing prints nothing"
        );
        assert_eq!(render("{$.kind}", &v).unwrap(), "List");
    }

    #[test]
    fn broken_templates_are_refused_with_the_reason() {
        assert!(
            render("{.items[*]", &pods())
                .unwrap_err()
                .contains("unclosed")
        );
        assert!(
            render("{range .items[*]}{.x}", &pods())
                .unwrap_err()
                .contains("{end}")
        );
        assert!(
            render("{.items[x]}", &pods())
                .unwrap_err()
                .contains("not an index")
        );
        assert!(
            render("{..name}", &pods())
                .unwrap_err()
                .contains("recursive")
        );
    }
}
