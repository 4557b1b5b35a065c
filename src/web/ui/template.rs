//! The page templates: `html/*.html` with `{{name}}` placeholders. Every value is escaped unless
//! it is an [`Html`], which only our own builders make (from escaped parts), so a label or an
//! image name can never become markup.

use std::fmt::{self, Write};

/// Text that is escaped for HTML text and quoted attribute values while it is formatted.
pub struct Escape<'a>(pub &'a str);

impl fmt::Display for Escape<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last = 0;
        for (i, c) in self.0.char_indices() {
            let rep = match c {
                '&' => "&amp;",
                '<' => "&lt;",
                '>' => "&gt;",
                '"' => "&quot;",
                '\'' => "&#39;",
                _ => continue,
            };
            f.write_str(&self.0[last..i])?;
            f.write_str(rep)?;
            last = i + 1;
        }
        f.write_str(&self.0[last..])
    }
}

/// Markup that is already safe: built by our code with every dynamic part escaped. Its text is
/// private, so the only ways to make one are `push` (with `Escape` around data), `render` (which
/// escapes every text value) and `script_json` (which escapes what could end a script).
#[derive(Default, Debug, Clone)]
pub struct Html(String);

impl Html {
    pub fn new() -> Html {
        Html(String::new())
    }

    pub fn with_capacity(n: usize) -> Html {
        Html(String::with_capacity(n))
    }

    /// Markup written only with literals from our own code (an attribute like ` checked`).
    pub fn literal(s: &'static str) -> Html {
        Html(s.to_string())
    }

    /// A value as JSON for a `<script>` element: `<`, `>` and `&` are escaped, so the text
    /// cannot end the element or open a comment, whatever strings the value holds.
    pub fn script_json(v: &impl serde::Serialize) -> Html {
        let json = serde_json::to_string(v).unwrap_or_else(|_| "null".into());
        Html(json.replace('<', "\\u003c").replace('>', "\\u003e").replace('&', "\\u0026"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }

    /// Appends formatted markup; arguments that carry data must be wrapped in [`Escape`].
    pub fn push(&mut self, args: fmt::Arguments<'_>) {
        // Writing to a String cannot fail.
        let _ = self.0.write_fmt(args);
    }
}

/// A value for a placeholder.
pub enum Val<'a> {
    /// Escaped on output.
    Text(&'a str),
    /// Inserted as is.
    Html(&'a Html),
}

/// Fills the `{{name}}` placeholders of `tpl`; a name without a value becomes empty (tests
/// render every page and check that no placeholder is left unfilled by mistake).
pub fn render(tpl: &str, vals: &[(&str, Val<'_>)]) -> Html {
    let mut out = String::with_capacity(tpl.len() + 256);
    let mut rest = tpl;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return Html(out);
        };
        let name = after[..end].trim();
        match vals.iter().find(|(n, _)| *n == name).map(|(_, v)| v) {
            Some(Val::Text(t)) => {
                let _ = write!(out, "{}", Escape(t));
            }
            Some(Val::Html(h)) => out.push_str(&h.0),
            None => {}
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Html(out)
}

/// The placeholder names of a template, for the tests that check pages fill them all.
pub fn placeholders(tpl: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = tpl;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        names.push(after[..end].trim());
        rest = &after[end + 2..];
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_unless_marked_as_markup() {
        let mut h = Html::new();
        h.push(format_args!("<b>{}</b>", Escape("a&b")));
        let out = render(
            "<p title=\"{{t}}\">{{ t }}</p>{{h}}{{missing}}",
            &[("t", Val::Text("<script>alert('1')</script>\"")), ("h", Val::Html(&h))],
        );
        assert_eq!(
            out.as_str(),
            "<p title=\"&lt;script&gt;alert(&#39;1&#39;)&lt;/script&gt;&quot;\">\
             &lt;script&gt;alert(&#39;1&#39;)&lt;/script&gt;&quot;</p><b>a&amp;b</b>"
        );
        assert_eq!(render("x {{ unclosed", &[]).as_str(), "x {{ unclosed");
        assert_eq!(placeholders("{{a}} b {{ c }}"), vec!["a", "c"]);
    }

    #[test]
    fn json_cannot_end_a_script() {
        let h = Html::script_json(&["</script><!--", "a&b"]);
        assert_eq!(h.as_str(), r#"["\u003c/script\u003e\u003c!--","a\u0026b"]"#);
    }

    #[test]
    fn multibyte_text_survives_escaping() {
        assert_eq!(Escape("æ<ø>å").to_string(), "æ&lt;ø&gt;å");
    }
}
