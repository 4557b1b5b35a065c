//! A strict little HTML checker for our own pages: every element closed in order (void elements
//! excepted), attribute values quoted, no stray `<` in text; and the links and form actions of
//! a page.

const VOID: [&str; 8] = ["meta", "link", "input", "br", "hr", "img", "source", "wbr"];

/// Checks that `html` is well-formed in the sense above; the error names the place.
pub fn check(html: &str) -> Result<(), String> {
    let mut stack: Vec<String> = Vec::new();
    let mut i = 0;
    let b = html.as_bytes();
    let at = |i: usize| {
        let line = html[..i].matches('\n').count() + 1;
        let start = html[..i].rfind('\n').map(|p| p + 1).unwrap_or(0);
        let end = html[i..].find('\n').map(|p| i + p).unwrap_or(html.len());
        format!("line {line}: {}", &html[start..end])
    };
    while i < b.len() {
        if b[i] != b'<' {
            i += 1;
            continue;
        }
        let rest = &html[i..];
        if rest.starts_with("<!--") {
            i += rest.find("-->").ok_or_else(|| format!("unclosed comment at {}", at(i)))? + 3;
            continue;
        }
        if rest.to_ascii_lowercase().starts_with("<!doctype") {
            i += rest.find('>').ok_or("unclosed doctype")? + 1;
            continue;
        }
        let end = rest.find('>').ok_or_else(|| format!("unclosed tag at {}", at(i)))?;
        let tag = &rest[1..end];
        if let Some(name) = tag.strip_prefix('/') {
            let name = name.trim().to_ascii_lowercase();
            match stack.pop() {
                Some(open) if open == name => {}
                Some(open) => return Err(format!("</{name}> closes <{open}> at {}", at(i))),
                None => return Err(format!("</{name}> closes nothing at {}", at(i))),
            }
            i += end + 1;
            continue;
        }
        let name: String = tag
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        if name.is_empty() {
            return Err(format!("stray '<' in text at {}", at(i)));
        }
        check_attrs(&tag[name.len()..]).map_err(|e| format!("{e} at {}", at(i)))?;
        i += end + 1;
        if VOID.contains(&name.as_str()) {
            continue;
        }
        if name == "script" || name == "style" {
            let close = format!("</{name}>");
            let j =
                html[i..].find(&close).ok_or_else(|| format!("unclosed <{name}> at {}", at(i)))?;
            i += j + close.len();
            continue;
        }
        stack.push(name);
    }
    match stack.pop() {
        None => Ok(()),
        Some(open) => Err(format!("<{open}> never closed (open: {stack:?})")),
    }
}

/// Attributes: name, or name="value" with a double-quoted value that holds no '<' or '"'.
fn check_attrs(s: &str) -> Result<(), String> {
    let mut rest = s.trim_start();
    while !rest.is_empty() {
        let name_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .unwrap_or(rest.len());
        if name_len == 0 {
            return Err(format!("bad attribute syntax {rest:?}"));
        }
        let name = &rest[..name_len];
        if name.starts_with("on") {
            return Err(format!("inline event handler {name}"));
        }
        rest = &rest[name_len..];
        if let Some(r) = rest.strip_prefix('=') {
            let r = r.strip_prefix('"').ok_or_else(|| format!("unquoted value of {name}"))?;
            let close = r.find('"').ok_or_else(|| format!("unterminated value of {name}"))?;
            if r[..close].contains('<') {
                return Err(format!("'<' in the value of {name}"));
            }
            rest = &r[close + 1..];
        }
        rest = rest.trim_start();
    }
    Ok(())
}

/// The values of every `attr="..."` in the page (href, action, src), HTML entities of `&` undone.
pub fn attr_values(html: &str, attr: &str) -> Vec<String> {
    let pat = format!(" {attr}=\"");
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(p) = rest.find(&pat) {
        let r = &rest[p + pat.len()..];
        let end = r.find('"').unwrap_or(r.len());
        out.push(r[..end].replace("&amp;", "&"));
        rest = &r[end..];
    }
    out
}

#[test]
fn checker_finds_the_usual_mistakes() {
    assert!(check("<!doctype html><p>a<br>b</p><script src=\"/x\"></script>").is_ok());
    assert!(check("<p><b>x</p></b>").is_err());
    assert!(check("<p>x").is_err());
    assert!(check("<p>1 < 2</p>").is_err());
    assert!(check("<a href=x>y</a>").is_err());
    assert!(check("<a onclick=\"x()\">y</a>").is_err());
}
