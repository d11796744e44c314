//! The simulated mailbox and the rules of the mail servers in front of it.
//!
//! A [`Mailbox`] is an address with a state (exists, full, greylisting, spam
//! routing, the Japanese carrier-mail domain allow-list "指定受信"). The
//! functions here decide, from a mailbox, the sender and the time, what a
//! receiving server answers at RCPT and what becomes of the message after
//! DATA. They are pure: no storage, no clock reads, no I/O, so every rule is
//! tested with plain values.
//!
//! Where the carriers differ (documented in [`CarrierMail`]):
//! - a full mailbox is refused at RCPT with `452 4.2.2` by ordinary servers,
//!   while the carrier MTAs (docomo, au, SoftBank) take the RCPT and refuse
//!   after DATA with `552 5.2.2`;
//! - a sender outside the allow-list is refused after DATA with `550 5.7.1`
//!   by docomo and by ordinary servers, while au and SoftBank answer `250`
//!   and drop the mail silently.

use serde::{Deserialize, Serialize};

use crate::clock::Millis;

/// How long a greylisted (sender, recipient) pair must wait before a retry
/// is accepted, in milliseconds of the injected clock.
pub const GREYLIST_DELAY_MS: Millis = 60_000;

/// One simulated mailbox. The field names are the HTTP contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Mailbox {
    pub address: String,
    /// False for a mistyped or closed address: RCPT answers 550 5.1.1.
    pub exists: bool,
    pub full: bool,
    pub greylist: bool,
    /// Routes accepted mail to the spam folder.
    pub spam: bool,
    /// The "指定受信" allow-list: domains (subdomains included) or full
    /// addresses; empty means no filter.
    pub allowed_domains: Vec<String>,
}

impl Default for Mailbox {
    fn default() -> Self {
        Mailbox {
            address: String::new(),
            exists: true,
            full: false,
            greylist: false,
            spam: false,
            allowed_domains: Vec::new(),
        }
    }
}

impl Mailbox {
    /// The mailbox an address has before anyone configured it: it exists and
    /// takes everything, as a catch-all would.
    pub fn catch_all(address: &str) -> Mailbox {
        Mailbox {
            address: address.to_string(),
            ..Mailbox::default()
        }
    }
}

/// A change to a mailbox: omitted fields keep their value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxPatch {
    #[serde(default)]
    pub exists: Option<bool>,
    #[serde(default)]
    pub full: Option<bool>,
    #[serde(default)]
    pub greylist: Option<bool>,
    #[serde(default)]
    pub spam: Option<bool>,
    #[serde(default)]
    pub allowed_domains: Option<Vec<String>>,
}

impl MailboxPatch {
    pub fn apply(&self, mailbox: &mut Mailbox) {
        if let Some(v) = self.exists {
            mailbox.exists = v;
        }
        if let Some(v) = self.full {
            mailbox.full = v;
        }
        if let Some(v) = self.greylist {
            mailbox.greylist = v;
        }
        if let Some(v) = self.spam {
            mailbox.spam = v;
        }
        if let Some(v) = &self.allowed_domains {
            mailbox.allowed_domains = v
                .iter()
                .map(|d| {
                    d.trim()
                        .trim_start_matches('@')
                        .trim_start_matches('.')
                        .to_ascii_lowercase()
                })
                .filter(|d| !d.is_empty())
                .collect();
        }
    }
}

/// An SMTP reply the model gives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub code: u16,
    pub enhanced: String,
    pub text: String,
}

impl Reply {
    fn new(code: u16, enhanced: &str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: enhanced.to_string(),
            text: text.into(),
        }
    }
}

/// The Japanese carrier mail services whose servers behave in their own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CarrierMail {
    /// docomo.ne.jp: refuses filtered senders after DATA with 550 5.7.1.
    Docomo,
    /// ezweb.ne.jp and au.com: accept filtered senders and drop silently.
    Au,
    /// softbank.ne.jp and i.softbank.jp: accept filtered senders and drop
    /// silently.
    SoftBank,
    /// Any other domain: behaves like an ordinary mail server.
    Other,
}

impl CarrierMail {
    pub fn of_domain(domain: &str) -> CarrierMail {
        let domain = domain.to_ascii_lowercase();
        let under = |d: &str| domain == d || domain.ends_with(&format!(".{d}"));
        if under("docomo.ne.jp") {
            CarrierMail::Docomo
        } else if under("ezweb.ne.jp") || under("au.com") {
            CarrierMail::Au
        } else if under("softbank.ne.jp") || under("i.softbank.jp") {
            CarrierMail::SoftBank
        } else {
            CarrierMail::Other
        }
    }

    /// Carrier MTAs take the RCPT for a full mailbox and refuse after DATA.
    fn full_after_data(self) -> bool {
        self != CarrierMail::Other
    }

    /// Whether a sender outside the allow-list is dropped without a word.
    fn drops_filtered_silently(self) -> bool {
        matches!(self, CarrierMail::Au | CarrierMail::SoftBank)
    }
}

/// What greylisting makes of one RCPT attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Greylist {
    /// The pair was never seen: defer and remember the attempt.
    FirstAttempt,
    /// Seen less than [`GREYLIST_DELAY_MS`] ago: defer.
    TooSoon,
    Passed,
}

/// Classifies an attempt from when the (sender, recipient) pair was first
/// seen.
pub fn greylist_state(first_seen: Option<Millis>, now: Millis) -> Greylist {
    match first_seen {
        None => Greylist::FirstAttempt,
        Some(at) if now.saturating_sub(at) < GREYLIST_DELAY_MS => Greylist::TooSoon,
        Some(_) => Greylist::Passed,
    }
}

/// The answer at RCPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptDecision {
    Accept,
    Refuse(Reply),
}

/// Decides RCPT for `mailbox`. `greylist` is consulted only when the
/// mailbox has greylisting on; the caller remembers a first attempt.
pub fn decide_rcpt(mailbox: &Mailbox, greylist: Greylist) -> RcptDecision {
    if !mailbox.exists {
        return RcptDecision::Refuse(Reply::new(
            550,
            "5.1.1",
            format!("<{}>: Recipient address rejected: User unknown", mailbox.address),
        ));
    }
    let carrier = CarrierMail::of_domain(domain_of(&mailbox.address));
    if mailbox.full && !carrier.full_after_data() {
        return RcptDecision::Refuse(Reply::new(452, "4.2.2", "Mailbox full"));
    }
    if mailbox.greylist && greylist != Greylist::Passed {
        return RcptDecision::Refuse(Reply::new(451, "4.7.1", "Greylisted, try again later"));
    }
    RcptDecision::Accept
}

/// What becomes of an accepted message for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    Inbox,
    Spam,
    /// Accepted with 250 and never shown: the au and SoftBank filter.
    Dropped,
    Refused(Reply),
}

/// Decides, after DATA, what `mailbox` does with a message from `sender`
/// (the envelope reverse path).
pub fn decide_delivery(mailbox: &Mailbox, sender: &str) -> Disposition {
    let carrier = CarrierMail::of_domain(domain_of(&mailbox.address));
    if mailbox.full && carrier.full_after_data() {
        return Disposition::Refused(Reply::new(552, "5.2.2", "Mailbox full"));
    }
    if !sender_allowed(&mailbox.allowed_domains, sender) {
        if carrier.drops_filtered_silently() {
            return Disposition::Dropped;
        }
        return Disposition::Refused(Reply::new(
            550,
            "5.7.1",
            format!(
                "<{}>: Message rejected by the recipient's domain filter",
                mailbox.address
            ),
        ));
    }
    if mailbox.spam {
        Disposition::Spam
    } else {
        Disposition::Inbox
    }
}

/// Whether the allow-list lets `sender` through: an empty list allows all;
/// an entry with `@` matches that address, any other entry matches its
/// domain and every subdomain.
pub fn sender_allowed(allowed: &[String], sender: &str) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Some(sender) = normalize_address(sender) else {
        return false;
    };
    let domain = domain_of(&sender);
    allowed.iter().any(|entry| {
        let entry = entry.trim().trim_start_matches('.').to_ascii_lowercase();
        if entry.contains('@') {
            normalize_address(&entry).is_some_and(|e| e.eq_ignore_ascii_case(&sender))
        } else {
            !entry.is_empty() && (domain == entry || domain.ends_with(&format!(".{entry}")))
        }
    })
}

/// The address with its domain in lower case (the local part keeps its
/// case), or None when it is not `local@domain`.
pub fn normalize_address(address: &str) -> Option<String> {
    let address = address.trim().trim_start_matches('<').trim_end_matches('>');
    let (local, domain) = address.rsplit_once('@')?;
    let valid = |s: &str| {
        !s.is_empty()
            && !s
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
    };
    if !valid(local) || !valid(domain) || domain.contains('@') || address.len() > 254 {
        return None;
    }
    Some(format!("{local}@{}", domain.to_ascii_lowercase()))
}

/// The part after the last `@` ("" when there is none).
pub fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(address: &str, change: impl FnOnce(&mut Mailbox)) -> Mailbox {
        let mut m = Mailbox::catch_all(address);
        change(&mut m);
        m
    }

    fn refused(code: u16, enhanced: &str) -> impl Fn(&RcptDecision) -> bool + '_ {
        move |d| matches!(d, RcptDecision::Refuse(r) if r.code == code && r.enhanced == enhanced)
    }

    #[test]
    fn unknown_user_is_refused_at_rcpt_with_the_address() {
        let m = mailbox("typo@docomo.ne.jp", |m| m.exists = false);
        let d = decide_rcpt(&m, Greylist::Passed);
        assert_eq!(
            d,
            RcptDecision::Refuse(Reply::new(
                550,
                "5.1.1",
                "<typo@docomo.ne.jp>: Recipient address rejected: User unknown"
            ))
        );
    }

    #[test]
    fn full_mailbox_refuses_at_rcpt_except_on_carrier_domains() {
        let ordinary = mailbox("u@example.com", |m| m.full = true);
        assert!(refused(452, "4.2.2")(&decide_rcpt(&ordinary, Greylist::Passed)));
        let carrier = mailbox("u@ezweb.ne.jp", |m| m.full = true);
        assert_eq!(decide_rcpt(&carrier, Greylist::Passed), RcptDecision::Accept);
        assert_eq!(
            decide_delivery(&carrier, "otp@example.com"),
            Disposition::Refused(Reply::new(552, "5.2.2", "Mailbox full"))
        );
    }

    #[test]
    fn greylisting_defers_until_the_delay_has_passed() {
        assert_eq!(greylist_state(None, 0), Greylist::FirstAttempt);
        assert_eq!(
            greylist_state(Some(1_000), 1_000 + GREYLIST_DELAY_MS - 1),
            Greylist::TooSoon
        );
        assert_eq!(greylist_state(Some(1_000), 1_000 + GREYLIST_DELAY_MS), Greylist::Passed);
        let m = mailbox("u@example.com", |m| m.greylist = true);
        assert!(refused(451, "4.7.1")(&decide_rcpt(&m, Greylist::FirstAttempt)));
        assert!(refused(451, "4.7.1")(&decide_rcpt(&m, Greylist::TooSoon)));
        assert_eq!(decide_rcpt(&m, Greylist::Passed), RcptDecision::Accept);
        let off = mailbox("u@example.com", |_| {});
        assert_eq!(decide_rcpt(&off, Greylist::FirstAttempt), RcptDecision::Accept);
    }

    #[test]
    fn domain_filter_differs_per_carrier() {
        let filtered = |address: &str| mailbox(address, |m| m.allowed_domains = vec!["airline.example".into()]);
        let docomo = decide_delivery(&filtered("u@docomo.ne.jp"), "otp@other.example");
        assert!(matches!(docomo, Disposition::Refused(r) if r.code == 550 && r.enhanced == "5.7.1"));
        for silent in ["u@ezweb.ne.jp", "u@au.com", "u@softbank.ne.jp", "u@i.softbank.jp"] {
            assert_eq!(
                decide_delivery(&filtered(silent), "otp@other.example"),
                Disposition::Dropped,
                "{silent}"
            );
        }
        assert_eq!(
            decide_delivery(&filtered("u@au.com"), "otp@mail.airline.example"),
            Disposition::Inbox
        );
        assert_eq!(
            decide_delivery(&filtered("u@au.com"), "otp@AIRLINE.example"),
            Disposition::Inbox
        );
        assert_eq!(
            decide_delivery(&filtered("u@au.com"), "otp@notairline.example"),
            Disposition::Dropped
        );
        assert_eq!(decide_delivery(&filtered("u@au.com"), ""), Disposition::Dropped);
    }

    #[test]
    fn allow_list_entries_may_be_addresses() {
        let allowed = vec!["otp@airline.example".to_string()];
        assert!(sender_allowed(&allowed, "otp@Airline.Example"));
        assert!(!sender_allowed(&allowed, "news@airline.example"));
        assert!(sender_allowed(&[], "anyone@anywhere.example"));
    }

    #[test]
    fn spam_routing_goes_to_the_spam_folder() {
        let m = mailbox("u@example.com", |m| m.spam = true);
        assert_eq!(decide_delivery(&m, "a@b.example"), Disposition::Spam);
        assert_eq!(
            decide_delivery(&Mailbox::catch_all("u@example.com"), "a@b.example"),
            Disposition::Inbox
        );
    }

    #[test]
    fn patches_keep_omitted_fields() {
        let mut m = mailbox("u@example.com", |m| m.spam = true);
        let patch: MailboxPatch =
            serde_json::from_str(r#"{"exists": false, "allowed_domains": ["@Airline.example"]}"#).unwrap();
        patch.apply(&mut m);
        assert!(!m.exists && m.spam);
        assert_eq!(m.allowed_domains, vec!["airline.example"]);
    }

    #[test]
    fn addresses_are_case_insensitive_in_the_domain_only() {
        assert_eq!(
            normalize_address(" <Taro@DoCoMo.ne.jp> ").as_deref(),
            Some("Taro@docomo.ne.jp")
        );
        assert_eq!(normalize_address("no-at-sign"), None);
        assert_eq!(normalize_address("a b@example.com"), None);
    }
}
