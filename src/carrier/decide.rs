//! The decision for one delivery attempt: given a simulated handset's state,
//! the sender and the text, what the carrier's network does with the SMS.
//!
//! It is a pure function of its inputs and the caller's seeded generator
//! (drawn from only when chaos is on), so a simulation replays exactly. It
//! never schedules retries or writes receipts itself: the SMSC does that
//! with the outcome.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::number::{is_domestic_non_mobile, is_mobile, national_digits, same_sender};
use super::{Carrier, ContentRule, FailureMode, ReceiptCodes, SenderProfile, SettingKind};

/// The filter settings a handset can have on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Filters {
    pub reject_all: bool,
    pub reject_other_domestic: bool,
    pub content_filter: bool,
    pub blocked_senders: Vec<String>,
    /// Overrides every reject setting except `reject_all`.
    pub allowed_senders: Vec<String>,
}

/// A simulated handset's state; the field names are the HTTP contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HandsetState {
    /// A carrier, brand or MVNO id from `carriers/`.
    pub carrier: String,
    pub powered_on: bool,
    pub in_coverage: bool,
    pub abroad: bool,
    /// Only matters abroad: with roaming on, SMS still arrives.
    pub roaming: bool,
    pub storage_full: bool,
    /// False for a data-only SIM, which cannot receive SMS.
    pub sms_plan: bool,
    /// The incoming-call restriction that refuses the sender's number.
    pub call_restriction: bool,
    pub filters: Filters,
    /// False when the number is not (or no longer) in service on the
    /// network: the home register answers unknown subscriber.
    pub in_service: bool,
}

impl HandsetState {
    /// Why the network cannot reach the handset now, if it cannot: off, out
    /// of coverage, or abroad without roaming. Messages to it wait.
    pub fn absent(&self) -> Option<AbsentCause> {
        if !self.powered_on {
            Some(AbsentCause::PoweredOff)
        } else if !self.in_coverage {
            Some(AbsentCause::NoCoverage)
        } else if self.abroad && !self.roaming {
            Some(AbsentCause::AbroadNoRoaming)
        } else {
            None
        }
    }
}

impl Default for HandsetState {
    /// A docomo phone, on, in coverage, with an SMS plan and nothing set.
    fn default() -> Self {
        HandsetState {
            carrier: "docomo".to_string(),
            powered_on: true,
            in_coverage: true,
            abroad: false,
            roaming: false,
            storage_full: false,
            sms_plan: true,
            call_restriction: false,
            filters: Filters::default(),
            in_service: true,
        }
    }
}

/// One delivery attempt of one SMS.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub handset: &'a HandsetState,
    /// The sender as submitted; any spelling of the number.
    pub source: &'a str,
    /// The caller knows the sender is a mobile number of another domestic
    /// carrier. Fixed-line and IP-phone senders count as such anyway.
    pub source_is_domestic_other_carrier: bool,
    pub text: &'a str,
    pub chaos: bool,
}

/// What the network did with the attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// On the handset, showing this sender.
    Delivered { shown_sender: String },
    /// Not reachable now: the SMSC retries until the validity ends.
    Absent { cause: AbsentCause },
    /// Final: no retry.
    Failed { cause: FailureCause, receipt: ReceiptCodes },
}

/// Why a handset is not reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbsentCause {
    PoweredOff,
    NoCoverage,
    AbroadNoRoaming,
}

impl AbsentCause {
    /// The stable snake_case name the diagnostics use.
    pub fn code(self) -> &'static str {
        match self {
            AbsentCause::PoweredOff => "powered_off",
            AbsentCause::NoCoverage => "no_coverage",
            AbsentCause::AbroadNoRoaming => "abroad_no_roaming",
        }
    }
}

/// Why a delivery failed for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCause {
    StorageFull,
    NoSmsPlan,
    /// The number has no subscriber. `decide` never returns it (every
    /// simulated handset exists); the SMSC uses it for numbers it refuses.
    UnknownSubscriber,
    RejectAll,
    BlockedSender,
    RejectOtherDomestic,
    ContentFilter,
    CallRestriction,
    ChaosFailure,
}

impl FailureCause {
    pub const ALL: [FailureCause; 9] = [
        FailureCause::StorageFull,
        FailureCause::NoSmsPlan,
        FailureCause::UnknownSubscriber,
        FailureCause::RejectAll,
        FailureCause::BlockedSender,
        FailureCause::RejectOtherDomestic,
        FailureCause::ContentFilter,
        FailureCause::CallRestriction,
        FailureCause::ChaosFailure,
    ];

    /// The stable snake_case name the diagnostics use.
    pub fn code(self) -> &'static str {
        match self {
            FailureCause::StorageFull => "storage_full",
            FailureCause::NoSmsPlan => "no_sms_plan",
            FailureCause::UnknownSubscriber => "unknown_subscriber",
            FailureCause::RejectAll => "reject_all",
            FailureCause::BlockedSender => "blocked_sender",
            FailureCause::RejectOtherDomestic => "reject_other_domestic",
            FailureCause::ContentFilter => "content_filter",
            FailureCause::CallRestriction => "call_restriction",
            FailureCause::ChaosFailure => "chaos_failure",
        }
    }

    /// The cause with this [`FailureCause::code`].
    pub fn from_code(code: &str) -> Option<FailureCause> {
        FailureCause::ALL.into_iter().find(|c| c.code() == code)
    }

    /// Which receipt codes of the carrier file it produces.
    pub fn mode(self) -> FailureMode {
        match self {
            FailureCause::StorageFull => FailureMode::MemoryCapacityExceeded,
            FailureCause::NoSmsPlan => FailureMode::TeleserviceNotProvisioned,
            FailureCause::UnknownSubscriber => FailureMode::UnknownSubscriber,
            FailureCause::RejectAll | FailureCause::BlockedSender | FailureCause::RejectOtherDomestic => {
                FailureMode::FilterRejection
            }
            FailureCause::ContentFilter => FailureMode::ContentFilter,
            FailureCause::CallRestriction => FailureMode::CallBarred,
            FailureCause::ChaosFailure => FailureMode::SystemFailure,
        }
    }

    /// The setting the member changes to fix it, if a setting causes it.
    pub fn setting(self) -> Option<SettingKind> {
        match self {
            FailureCause::RejectAll => Some(SettingKind::RejectAll),
            FailureCause::BlockedSender => Some(SettingKind::BlockedSenders),
            FailureCause::RejectOtherDomestic => Some(SettingKind::RejectOtherDomestic),
            FailureCause::ContentFilter => Some(SettingKind::ContentFilter),
            FailureCause::CallRestriction => Some(SettingKind::CallRestriction),
            _ => None,
        }
    }
}

impl Carrier {
    /// The decision for one delivery attempt, in this order: absent (off, no
    /// coverage, abroad without roaming) → Absent; abroad with roaming is
    /// deliverable; no sms_plan → UNDELIV teleservice not provisioned;
    /// storage_full → UNDELIV memory capacity exceeded; filters:
    /// allowed_senders overrides every reject setting except reject_all;
    /// reject_all → REJECTD; blocked_senders → REJECTD; call_restriction
    /// blocks the profile's number however written → REJECTD call barred;
    /// reject_other_domestic (a domestic number of another carrier; fixed
    /// lines always are) → REJECTD; content_filter by the carrier's rule →
    /// REJECTD; chaos failure (drawn only when `attempt.chaos`) → UNDELIV;
    /// else Delivered with the displayed sender.
    ///
    /// A sender in the block or allow list matches by number or as the
    /// handset shows it (a SoftBank member lists `22471`).
    pub fn decide<R: Rng + ?Sized>(&self, attempt: &Attempt, profile: &SenderProfile, rng: &mut R) -> Outcome {
        let handset = attempt.handset;
        if !handset.in_service {
            return Outcome::Failed {
                cause: FailureCause::UnknownSubscriber,
                receipt: self.receipt(FailureCause::UnknownSubscriber.mode()),
            };
        }
        if let Some(cause) = handset.absent() {
            return Outcome::Absent { cause };
        }
        let fail = |cause: FailureCause| Outcome::Failed {
            cause,
            receipt: self.receipt(cause.mode()),
        };
        if !handset.sms_plan {
            return fail(FailureCause::NoSmsPlan);
        }
        if handset.storage_full {
            return fail(FailureCause::StorageFull);
        }
        let filters = &handset.filters;
        if filters.reject_all {
            return fail(FailureCause::RejectAll);
        }
        let shown_sender = self.displayed_sender(attempt.source, profile);
        let listed = |list: &[String]| {
            list.iter()
                .any(|entry| same_sender(entry, attempt.source) || same_sender(entry, &shown_sender))
        };
        if !listed(&filters.allowed_senders) {
            if listed(&filters.blocked_senders) {
                return fail(FailureCause::BlockedSender);
            }
            let from_profile_number = same_sender(attempt.source, &profile.number);
            if handset.call_restriction && from_profile_number {
                return fail(FailureCause::CallRestriction);
            }
            let other_domestic = attempt.source_is_domestic_other_carrier
                || from_profile_number
                || is_domestic_non_mobile(&national_digits(attempt.source));
            if filters.reject_other_domestic && other_domestic {
                return fail(FailureCause::RejectOtherDomestic);
            }
            if filters.content_filter && self.content_rule.rejects(attempt.source, attempt.text) {
                return fail(FailureCause::ContentFilter);
            }
        }
        if attempt.chaos && rng.gen_bool(self.chaos.failure) {
            return fail(FailureCause::ChaosFailure);
        }
        Outcome::Delivered { shown_sender }
    }
}

impl ContentRule {
    /// Whether the filter rejects this text from this sender.
    pub fn rejects(&self, source: &str, text: &str) -> bool {
        let hosts = url_hosts(text);
        if self.reject_urls_from_mobile_numbers && !hosts.is_empty() && is_mobile(&national_digits(source)) {
            return true;
        }
        if self.reject_unknown_url_domains && hosts.iter().any(|host| !self.knows(host)) {
            return true;
        }
        let lower = text.to_lowercase();
        self.patterns
            .iter()
            .any(|p| !p.is_empty() && lower.contains(&p.to_lowercase()))
    }

    fn knows(&self, host: &str) -> bool {
        self.allowed_url_domains
            .iter()
            .any(|domain| host == domain || host.strip_suffix(domain.as_str()).is_some_and(|sub| sub.ends_with('.')))
    }
}

/// The host of every URL in a text (`https://`, `http://` or a bare
/// `www.`), lower case.
fn url_hosts(text: &str) -> Vec<String> {
    let lower = text.to_ascii_lowercase();
    let mut hosts = Vec::new();
    let mut rest = lower.as_str();
    while let Some(start) = ["https://", "http://", "www."]
        .iter()
        .filter_map(|p| rest.find(p))
        .min()
    {
        let after = &rest[start..];
        let host_start = after.find("://").map_or(0, |i| i + 3);
        let host: String = after[host_start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
            .collect();
        let host = host.trim_end_matches('.').to_string();
        // Never zero, and always on a character boundary: the scheme and the
        // host are ASCII.
        let consumed = (host_start + host.len()).max(1);
        if !host.is_empty() {
            hosts.push(host);
        }
        rest = &after[consumed.min(after.len())..];
    }
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::carrier::CarrierSet;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const OTP_TEXT: &str = "JALマイレージバンク ワンタイムパスワード：123456 有効期限10分";

    /// What one attempt from the default sender to `handset` gives, reduced
    /// to the cause code, `stat:err`, or the shown sender.
    fn outcome(handset: &HandsetState, source: &str, text: &str, chaos: bool) -> String {
        let set = CarrierSet::embedded();
        let carrier = set.get(&handset.carrier).expect("a loaded carrier");
        let attempt = Attempt {
            handset,
            source,
            source_is_domestic_other_carrier: false,
            text,
            chaos,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        match carrier.decide(&attempt, &SenderProfile::default(), &mut rng) {
            Outcome::Delivered { shown_sender } => format!("delivered from {shown_sender}"),
            Outcome::Absent { cause } => format!("absent {}", cause.code()),
            Outcome::Failed { cause, receipt } => {
                format!("{} {}:{}", cause.code(), receipt.stat, receipt.err_text())
            }
        }
    }

    /// One rule: the handset that `change` makes, on `carrier`, gets `expect`.
    fn check(carrier: &str, change: impl FnOnce(&mut HandsetState), expect: &str) {
        let mut handset = HandsetState {
            carrier: carrier.to_string(),
            ..HandsetState::default()
        };
        change(&mut handset);
        assert_eq!(
            outcome(&handset, "03-5460-0124", OTP_TEXT, false),
            expect,
            "{handset:?}"
        );
    }

    #[test]
    fn a_phone_with_nothing_set_receives_the_code() {
        check("docomo", |_| {}, "delivered from 03-5460-0124");
        check("softbank", |_| {}, "delivered from 22471");
        check("povo", |_| {}, "delivered from 03-5460-0124");
    }

    #[test]
    fn unreachable_phones_are_absent_and_retried() {
        check("docomo", |h| h.powered_on = false, "absent powered_off");
        check("docomo", |h| h.in_coverage = false, "absent no_coverage");
        check("docomo", |h| h.abroad = true, "absent abroad_no_roaming");
        check(
            "au",
            |h| (h.abroad, h.roaming) = (true, true),
            "delivered from 03-5460-0124",
        );
        // Off wins over every later rule: nothing reaches a phone that is off.
        check(
            "docomo",
            |h| {
                h.powered_on = false;
                h.storage_full = true;
            },
            "absent powered_off",
        );
    }

    #[test]
    fn a_number_not_in_service_is_an_unknown_subscriber() {
        check("docomo", |h| h.in_service = false, "unknown_subscriber UNDELIV:001");
        // The home register answers before the phone is even paged.
        check(
            "au",
            |h| {
                h.in_service = false;
                h.powered_on = false;
            },
            "unknown_subscriber UNDELIV:001",
        );
    }

    #[test]
    fn data_only_sim_and_full_storage_are_undeliverable() {
        check("docomo", |h| h.sms_plan = false, "no_sms_plan UNDELIV:011");
        check("docomo", |h| h.storage_full = true, "storage_full UNDELIV:032");
        check(
            "docomo",
            |h| {
                h.sms_plan = false;
                h.storage_full = true;
            },
            "no_sms_plan UNDELIV:011",
        );
    }

    #[test]
    fn each_filter_rejects_on_its_own() {
        check("docomo", |h| h.filters.reject_all = true, "reject_all REJECTD:101");
        check(
            "docomo",
            |h| h.filters.blocked_senders = vec!["0354600124".into()],
            "blocked_sender REJECTD:101",
        );
        check("docomo", |h| h.call_restriction = true, "call_restriction REJECTD:013");
        check(
            "docomo",
            |h| h.filters.reject_other_domestic = true,
            "reject_other_domestic REJECTD:101",
        );
        check(
            "softbank",
            |h| h.filters.blocked_senders = vec!["22471".into()],
            "blocked_sender REJECTD:101",
        );
        check(
            "softbank",
            |h| h.call_restriction = true,
            "call_restriction REJECTD:013",
        );
    }

    #[test]
    fn the_content_filter_passes_an_otp_and_rejects_fraud() {
        check(
            "docomo",
            |h| h.filters.content_filter = true,
            "delivered from 03-5460-0124",
        );
        let mut handset = HandsetState {
            carrier: "docomo".into(),
            ..HandsetState::default()
        };
        handset.filters.content_filter = true;
        let sender = "03-5460-0124";
        assert_eq!(
            outcome(
                &handset,
                sender,
                "ログインはこちら https://jal-mileage.example.xyz/login",
                false
            ),
            "content_filter REJECTD:102"
        );
        assert_eq!(
            outcome(&handset, sender, "詳細 https://www.jal.co.jp/jmb/", false),
            "delivered from 03-5460-0124"
        );
        assert_eq!(
            outcome(
                &handset,
                sender,
                "お荷物のお届けにあがりましたが不在の為持ち帰りました",
                false
            ),
            "content_filter REJECTD:102"
        );
        // SoftBank's URLリンク付きSMSの拒否 applies to mobile senders only.
        handset.carrier = "softbank".into();
        assert_eq!(
            outcome(&handset, "090-1234-5678", "見て https://www.jal.co.jp/", false),
            "content_filter REJECTD:102"
        );
        assert_eq!(
            outcome(&handset, sender, "詳細 https://www.jal.co.jp/jmb/", false),
            "delivered from 22471"
        );
        // With the filter off the same text arrives.
        handset.filters.content_filter = false;
        assert_eq!(
            outcome(&handset, "090-1234-5678", "見て https://x.example/", false),
            "delivered from 090-1234-5678"
        );
    }

    #[test]
    fn the_allow_list_overrides_every_reject_setting_but_reject_all() {
        let allow_and = |set: fn(&mut HandsetState)| {
            move |h: &mut HandsetState| {
                h.filters.allowed_senders = vec!["+81354600124".into()];
                set(h);
            }
        };
        check(
            "docomo",
            allow_and(|h| h.filters.blocked_senders = vec!["03-5460-0124".into()]),
            "delivered from 03-5460-0124",
        );
        check(
            "docomo",
            allow_and(|h| h.call_restriction = true),
            "delivered from 03-5460-0124",
        );
        check(
            "docomo",
            allow_and(|h| h.filters.reject_other_domestic = true),
            "delivered from 03-5460-0124",
        );
        check(
            "docomo",
            allow_and(|h| h.filters.reject_all = true),
            "reject_all REJECTD:101",
        );
        // A SoftBank member allows what the phone shows.
        check(
            "linemo",
            |h| {
                h.filters.allowed_senders = vec!["22471".into()];
                h.filters.reject_other_domestic = true;
            },
            "delivered from 22471",
        );
    }

    #[test]
    fn other_domestic_means_another_carrier_or_a_fixed_line() {
        let mut handset = HandsetState::default();
        handset.filters.reject_other_domestic = true;
        let set = CarrierSet::embedded();
        let docomo = set.get("docomo").expect("docomo");
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut decide = |source: &str, other: bool| {
            let attempt = Attempt {
                handset: &handset,
                source,
                source_is_domestic_other_carrier: other,
                text: "hi",
                chaos: false,
            };
            docomo.decide(&attempt, &SenderProfile::default(), &mut rng)
        };
        assert!(matches!(decide("09012345678", false), Outcome::Delivered { .. }));
        assert!(matches!(
            decide("09012345678", true),
            Outcome::Failed {
                cause: FailureCause::RejectOtherDomestic,
                ..
            }
        ));
        assert!(matches!(
            decide("0312345678", false),
            Outcome::Failed {
                cause: FailureCause::RejectOtherDomestic,
                ..
            }
        ));
        assert!(matches!(
            decide("81354600124", false),
            Outcome::Failed {
                cause: FailureCause::RejectOtherDomestic,
                ..
            }
        ));
    }

    #[test]
    fn chaos_fails_only_when_on_and_replays_with_the_seed() {
        let set = CarrierSet::embedded();
        let mut au = set.get("au").cloned().expect("au");
        au.chaos.failure = 0.5;
        let handset = HandsetState {
            carrier: "au".into(),
            ..HandsetState::default()
        };
        let run = |chaos: bool, seed: u64| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..100)
                .map(|_| {
                    let attempt = Attempt {
                        handset: &handset,
                        source: "0354600124",
                        source_is_domestic_other_carrier: false,
                        text: OTP_TEXT,
                        chaos,
                    };
                    au.decide(&attempt, &SenderProfile::default(), &mut rng)
                })
                .collect::<Vec<_>>()
        };
        assert!(run(false, 3).iter().all(|o| matches!(o, Outcome::Delivered { .. })));
        let on = run(true, 3);
        assert_eq!(on, run(true, 3));
        let failed: Vec<_> = on.iter().filter(|o| matches!(o, Outcome::Failed { .. })).collect();
        assert!((25..=75).contains(&failed.len()), "{}", failed.len());
        assert!(failed.iter().all(|o| matches!(o,
            Outcome::Failed { cause: FailureCause::ChaosFailure, receipt } if receipt.stat == "UNDELIV" && receipt.err == 34)));
    }

    #[test]
    fn handset_json_defaults_and_field_names() {
        let handset: HandsetState =
            serde_json::from_str(r#"{"carrier":"au","filters":{"reject_all":true}}"#).expect("json");
        assert_eq!(handset.carrier, "au");
        assert!(handset.powered_on && handset.in_coverage && handset.sms_plan);
        assert!(handset.filters.reject_all && handset.filters.allowed_senders.is_empty());
        let value = serde_json::to_value(HandsetState::default()).expect("json");
        let mut keys: Vec<_> = value.as_object().expect("object").keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "abroad",
                "call_restriction",
                "carrier",
                "filters",
                "in_coverage",
                "in_service",
                "powered_on",
                "roaming",
                "sms_plan",
                "storage_full"
            ]
        );
    }

    #[test]
    fn failure_cause_codes_round_trip() {
        for cause in FailureCause::ALL {
            assert_eq!(FailureCause::from_code(cause.code()), Some(cause));
        }
    }

    #[test]
    fn url_hosts_are_found() {
        assert_eq!(
            url_hosts("a https://Www.JAL.co.jp/x b http://e.example:80 www.foo.jp。"),
            ["www.jal.co.jp", "e.example", "www.foo.jp"]
        );
        assert!(url_hosts("コード 123456").is_empty());
    }
}
