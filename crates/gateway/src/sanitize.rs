//! Chat text sanitizing with ammonia: no tag or attribute survives, script and style contents are
//! dropped entirely, and the result is HTML-escaped text, trimmed.
//!
//! The Node layer stripped tags with a regex, which left `alert("xss")` behind from
//! `<script>alert("xss")</script>`; an HTML parser does not.

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
    /// Returns the sanitized, trimmed text. Plain text without markup characters is returned as is
    /// without running the HTML parser.
    pub fn clean(&self, input: &str) -> String {
        if !input.contains(['<', '>', '&', '"', '\'']) {
            return input.trim().to_owned();
        }
        self.builder.clean(input).to_string().trim().to_owned()
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
    fn quotes_in_plain_text_survive_as_text() {
        assert_eq!(clean(r#"say "hi""#), r#"say "hi""#);
    }
}
