//! What the gateway sends is text that is safe in HTML: chat messages and moderation reasons are
//! sanitized with ammonia (no tag or attribute survives, script and style contents are dropped
//! entirely) and escaped; every other string that reaches clients (user ids, usernames) is
//! escaped. The result is safe inside HTML text *and* inside a quoted HTML attribute.
//!
//! The Node layer stripped tags with a regex, which left `alert("xss")` behind from
//! `<script>alert("xss")</script>`; an HTML parser does not. ammonia serializes text the way
//! browsers do: it escapes `&`, `<`, `>` (and U+00A0) but not quotes, which are harmless in text
//! and break out of an attribute value (`<img alt="{message}">`). So quotes are escaped here too,
//! after ammonia, as `&quot;` and `&#39;`.

use std::borrow::Cow;
use std::collections::HashSet;

/// A reusable sanitizer; building ammonia's rule set once keeps the per-message cost to parsing.
#[derive(Debug)]
pub struct Sanitizer {
    builder: ammonia::Builder<'static>,
}

impl Default for Sanitizer {
    fn default() -> Self {
        let mut builder = ammonia::Builder::empty();
        builder
            .clean_content_tags(HashSet::from(["script", "style"]))
            .strip_comments(true);
        Self { builder }
    }
}

impl Sanitizer {
    /// Returns the sanitized, escaped, trimmed text. Plain text without markup characters is
    /// returned as is without running the HTML parser.
    pub fn clean(&self, input: &str) -> String {
        if !input.contains(MARKUP) {
            return input.trim().to_owned();
        }
        let html = self.builder.clean(input).to_string();
        escape_quotes(html.trim()).into_owned()
    }
}

/// The characters that make a string more than plain text in HTML.
const MARKUP: [char; 5] = ['<', '>', '&', '"', '\''];

/// Escapes `&`, `<`, `>`, `"` and `'`, so the text is safe in HTML text and in a quoted
/// attribute. Borrows when there is nothing to escape, which is the common case.
pub fn escape(input: &str) -> Cow<'_, str> {
    if !input.contains(MARKUP) {
        return Cow::Borrowed(input);
    }
    let mut out = String::with_capacity(input.len() + 16);
    for c in input.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Escapes the quotes ammonia leaves in text; its `&`, `<` and `>` are already escaped.
fn escape_quotes(html: &str) -> Cow<'_, str> {
    if !html.contains(['"', '\'']) {
        return Cow::Borrowed(html);
    }
    Cow::Owned(html.replace('"', "&quot;").replace('\'', "&#39;"))
}

/// Escapes every string value of a JSON document (not its keys), for backend payloads that are
/// forwarded to clients.
pub fn escape_json_strings(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(s) => {
            if let Cow::Owned(escaped) = escape(s) {
                *s = escaped;
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(escape_json_strings),
        serde_json::Value::Object(fields) => fields.values_mut().for_each(escape_json_strings),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(s: &str) -> String {
        Sanitizer::default().clean(s)
    }

    #[test]
    fn script_bodies_are_dropped_not_left_behind() {
        assert_eq!(clean(r#"<script>alert("xss")</script>Hello"#), "Hello");
        assert_eq!(clean("<style>body{display:none}</style>hi"), "hi");
    }

    #[test]
    fn tags_and_attributes_are_removed_and_text_is_escaped() {
        assert_eq!(clean("<b>hi</b> & <i>you</i>"), "hi &amp; you");
        assert_eq!(clean(r#"<img src=x onerror="alert(1)">cat"#), "cat");
        assert_eq!(clean("<a href='javascript:x'>link</a>"), "link");
        assert_eq!(clean("1 < 2"), "1 &lt; 2");
    }

    #[test]
    fn only_markup_leaves_nothing() {
        assert_eq!(clean("<script>x</script>"), "");
        assert_eq!(clean("  <br/>  "), "");
        assert_eq!(clean("<!-- c -->"), "");
    }

    #[test]
    fn plain_text_is_trimmed_and_kept() {
        assert_eq!(clean("  hello world  "), "hello world");
        assert_eq!(clean("héllo 👋"), "héllo 👋");
    }

    #[test]
    fn ammonia_alone_leaves_quotes_raw_in_text() {
        // The reason for `escape_quotes`: ammonia's text is not attribute-safe.
        let raw = ammonia::Builder::empty()
            .clean(r#"x" onmouseover="alert(1)"#)
            .to_string();
        assert_eq!(raw, r#"x" onmouseover="alert(1)"#);
    }

    #[test]
    fn quotes_are_escaped_so_text_cannot_leave_an_attribute() {
        assert_eq!(clean(r#"say "hi""#), "say &quot;hi&quot;");
        assert_eq!(clean("it's"), "it&#39;s");
        assert_eq!(
            clean(r#"x" onmouseover="alert(1)"#),
            "x&quot; onmouseover=&quot;alert(1)"
        );
        assert_eq!(clean("<b>\"q\"</b> &amp;"), "&quot;q&quot; &amp;");
    }

    #[test]
    fn every_markup_character_is_escaped_once() {
        assert_eq!(escape("plain"), Cow::Borrowed("plain"));
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(escape("é 👋"), "é 👋");
    }

    #[test]
    fn json_string_values_are_escaped_and_keys_kept() {
        let mut v =
            serde_json::json!({"title": "<b>\"x\"</b>", "n": 1, "list": ["'a'"], "k<": {"d": "&"}});
        escape_json_strings(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"title": "&lt;b&gt;&quot;x&quot;&lt;/b&gt;", "n": 1, "list": ["&#39;a&#39;"], "k<": {"d": "&amp;"}})
        );
    }
}
