//! The links of a captured mail, as a test suite wants them: a sign-in
//! mail's magic link, an unsubscribe link, read from the HTML's anchors
//! and from the text, in the order they appear, each once.
//!
//! Pure and forgiving: it scans rather than parses, so HTML that no parser
//! would accept still gives its links, and nothing here can fail.

/// At most this many links of one mail are listed.
const MOST_LINKS: usize = 100;

/// The links of the HTML's `<a href>` (entities such as `&amp;` decoded),
/// then the `http(s)://` addresses of the text not already found there.
pub fn of(html: Option<&str>, text: Option<&str>) -> Vec<String> {
    let mut links: Vec<String> = Vec::new();
    let mut add = |link: String| {
        if !link.is_empty() && links.len() < MOST_LINKS && !links.contains(&link) {
            links.push(link);
        }
    };
    if let Some(html) = html {
        for link in anchors(html) {
            add(link);
        }
    }
    if let Some(text) = text {
        for link in addresses(text) {
            add(link.to_string());
        }
    }
    links
}

/// The `href` of each `<a ...>` tag, case-insensitively, quoted or not.
fn anchors(html: &str) -> Vec<String> {
    let lower = html.to_ascii_lowercase();
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = lower[from..].find("<a") {
        let start = from + at + 2;
        let end = lower[start..].find('>').map_or(lower.len(), |e| start + e);
        from = end;
        // `<abbr>`, `<area>`: not an anchor.
        if !lower[start..].starts_with(|c: char| c.is_ascii_whitespace()) {
            continue;
        }
        let tag = &html[start..end];
        if let Some(href) = attribute(tag, &lower[start..end], "href") {
            found.push(decode_entities(href.trim()));
        }
    }
    found
}

/// An attribute's value inside one tag (`lower` is the tag lower-cased).
fn attribute<'t>(tag: &'t str, lower: &str, name: &str) -> Option<&'t str> {
    let mut from = 0;
    while let Some(at) = lower[from..].find(name) {
        let start = from + at;
        from = start + name.len();
        let before_ok = start == 0 || lower.as_bytes()[start - 1].is_ascii_whitespace();
        let rest = lower[from..].trim_start();
        if !before_ok || !rest.starts_with('=') {
            continue;
        }
        let value_at = lower.len() - rest.len() + 1;
        let value = tag[value_at..].trim_start();
        let (quote, body) = match value.chars().next() {
            Some(q @ ('"' | '\'')) => (Some(q), &value[1..]),
            _ => (None, value),
        };
        let end = match quote {
            Some(q) => body.find(q).unwrap_or(body.len()),
            None => body
                .find(|c: char| c.is_ascii_whitespace() || c == '>')
                .unwrap_or(body.len()),
        };
        return Some(&body[..end]);
    }
    None
}

/// The entities a link is likely to hold: `&amp;` above all, and numeric
/// ones; anything else is left as written.
fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let Some(semi) = rest.find(';').filter(|&i| i <= 10) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let name = &rest[1..semi];
        let decoded = match name {
            "amp" => Some('&'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "lt" => Some('<'),
            "gt" => Some('>'),
            _ => name
                .strip_prefix("#x")
                .or_else(|| name.strip_prefix("#X"))
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .or_else(|| name.strip_prefix('#').and_then(|dec| dec.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The `http://` and `https://` addresses of a text, without the
/// punctuation that ends the sentence they are in.
fn addresses(text: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = next_scheme(&text[from..]) {
        let start = from + at;
        let len = text[start..]
            .find(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"' | '\'' | '「' | '」' | '、' | '。'))
            .unwrap_or(text.len() - start);
        let link = text[start..start + len].trim_end_matches(['.', ',', ')', ';', ':', '!', '?']);
        if link.split_once("://").is_some_and(|(_, rest)| !rest.is_empty()) {
            found.push(link);
        }
        from = start + len.max(1);
    }
    found
}

fn next_scheme(text: &str) -> Option<usize> {
    let http = text.find("http://");
    let https = text.find("https://");
    match (http, https) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_come_first_then_the_texts_addresses_each_once() {
        let html = r#"<p>Sign in: <A class="btn" HREF="https://shop.example/login?t=abc&amp;u=1">here</A>
            <abbr href="https://not.a/link">x</abbr> <a name=top>top</a>
            <a href='https://shop.example/help'>help</a> <a href=https://shop.example/bare>bare</a>
            <a href="mailto:support@shop.example">mail us</a></p>"#;
        let text = "Sign in at https://shop.example/login?t=abc&u=1.\n\
                    Or see (https://shop.example/faq), 詳しくはhttps://shop.example/ja。";
        assert_eq!(
            of(Some(html), Some(text)),
            [
                "https://shop.example/login?t=abc&u=1",
                "https://shop.example/help",
                "https://shop.example/bare",
                "mailto:support@shop.example",
                "https://shop.example/faq",
                "https://shop.example/ja",
            ]
        );
    }

    #[test]
    fn entities_in_a_link_are_decoded_and_broken_ones_kept() {
        assert_eq!(decode_entities("a&amp;b&#38;c&#x26;d"), "a&b&c&d");
        assert_eq!(decode_entities("a&b=1&nbsp"), "a&b=1&nbsp");
        assert_eq!(decode_entities("x&unknown;y"), "x&unknown;y");
    }

    #[test]
    fn nothing_to_find_is_no_links() {
        assert!(of(None, None).is_empty());
        assert!(of(Some("<a>no href</a><a href=\"\">empty</a>"), Some("http:// alone")).is_empty());
        assert!(of(Some("<a href=\"unterminated"), None) == ["unterminated"]);
    }
}
