//! A search of the mail capture, as Mailpit's users type it: words that
//! must all be found somewhere (sender, recipients, subject, text), each
//! in any case; `from:`, `to:` and `subject:` to look in one place;
//! `has:attachment`; quotes to keep words together (`subject:"your code"`).

/// What a mail offers a search.
pub struct Fields<'a> {
    /// The From header's address (or the envelope sender without one).
    pub from: &'a str,
    pub envelope_from: &'a str,
    pub to: &'a [String],
    pub subject: &'a str,
    pub text: Option<&'a str>,
    pub attachments: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    Anywhere(String),
    From(String),
    To(String),
    Subject(String),
    HasAttachment,
}

/// A parsed search; every term must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Search {
    terms: Vec<Term>,
}

impl Search {
    /// `None` for a search of nothing (empty, or only spaces).
    pub fn parse(q: &str) -> Option<Search> {
        let terms: Vec<Term> = words(q)
            .into_iter()
            .map(|word| {
                let (key, value) = match word.split_once(':') {
                    Some((key, value)) if !value.is_empty() => (key.to_lowercase(), value.to_lowercase()),
                    _ => return Term::Anywhere(word.to_lowercase()),
                };
                match key.as_str() {
                    "from" => Term::From(value),
                    "to" => Term::To(value),
                    "subject" => Term::Subject(value),
                    "has" if value == "attachment" || value == "attachments" => Term::HasAttachment,
                    // `https://...`, `12:30`: a word with a colon in it.
                    _ => Term::Anywhere(word.to_lowercase()),
                }
            })
            .collect();
        (!terms.is_empty()).then_some(Search { terms })
    }

    pub fn matches(&self, mail: &Fields) -> bool {
        let has = |s: &str, needle: &str| s.to_lowercase().contains(needle);
        let from = |n: &str| has(mail.from, n) || has(mail.envelope_from, n);
        let to = |n: &str| mail.to.iter().any(|r| has(r, n));
        let subject = |n: &str| has(mail.subject, n);
        self.terms.iter().all(|term| match term {
            Term::Anywhere(n) => from(n) || to(n) || subject(n) || mail.text.is_some_and(|t| has(t, n)),
            Term::From(n) => from(n),
            Term::To(n) => to(n),
            Term::Subject(n) => subject(n),
            Term::HasAttachment => mail.attachments > 0,
        })
    }
}

/// Splits on spaces, keeping what is in double quotes together (the
/// quotes dropped, also inside `key:"a b"`).
fn words(q: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in q.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail<'a>(to: &'a [String], attachments: usize) -> Fields<'a> {
        Fields {
            from: "noreply@shop.example",
            envelope_from: "bounce@mailer.example",
            to,
            subject: "Your shop code",
            text: Some("Your code is 246801. See https://shop.example/help"),
            attachments,
        }
    }

    #[test]
    fn every_term_must_hold_each_where_it_says() {
        let to = vec!["taro@docomo.ne.jp".to_string()];
        let m = mail(&to, 0);
        let holds = |q: &str| Search::parse(q).expect(q).matches(&m);
        for q in [
            "shop code",
            "CODE shop",
            "from:shop.example",
            "from:mailer",
            "to:docomo",
            "subject:\"shop code\"",
            "\"your shop\" to:taro",
            "https://shop.example/help",
        ] {
            assert!(holds(q), "{q}");
        }
        for q in [
            "shop parcel",
            "from:docomo",
            "to:shop",
            "subject:246801",
            "\"code shop\"",
            "has:attachment",
        ] {
            assert!(!holds(q), "{q}");
        }
        let with_file = mail(&to, 1);
        assert!(Search::parse("has:attachment code").unwrap().matches(&with_file));
    }

    #[test]
    fn an_empty_search_is_none_and_odd_keys_are_words() {
        assert_eq!(Search::parse("   "), None);
        assert_eq!(Search::parse("\"\""), None);
        assert_eq!(
            Search::parse("at:12:30 from:"),
            Some(Search {
                terms: vec![Term::Anywhere("at:12:30".into()), Term::Anywhere("from:".into())]
            })
        );
    }
}
