//! The carrier models: how each Japanese mobile network (docomo, au,
//! SoftBank, Rakuten), its brands and its MVNOs treat an SMS on its way to a
//! handset — the sender ID the phone shows, the filter settings under their
//! real names, how long the network keeps retrying, how long delivery takes,
//! and which receipt codes each failure produces.
//!
//! The models are data (`carriers/*.toml`, described in `carriers/README.md`)
//! read once into a [`CarrierSet`]; a brand or MVNO file inherits its host
//! network's file and overrides what differs. Everything here is pure: it
//! never reads the clock, never uses a global random generator (callers pass
//! a seeded one), and does no I/O apart from [`CarrierSet::load_dir`] reading
//! the files. It never talks SMPP, HTTP or storage; those modules ask it for
//! decisions and turn them into protocol answers.

mod decide;
mod load;
mod number;

use rand::Rng;
use serde::{Deserialize, Serialize};

pub use decide::{AbsentCause, Attempt, FailureCause, Filters, HandsetState, Outcome};
pub use load::CarrierError;
pub use number::{display_number, is_domestic_non_mobile, is_mobile, national_digits, same_sender};

/// Every loaded carrier, brands and MVNOs resolved against their hosts.
#[derive(Debug, Clone, Serialize)]
pub struct CarrierSet {
    /// In the order of [`CarrierSet::all`].
    carriers: Vec<Carrier>,
}

impl CarrierSet {
    /// The carrier or brand with this id (`"docomo"`, `"ymobile"`, ...).
    pub fn get(&self, id: &str) -> Option<&Carrier> {
        self.carriers.iter().find(|c| c.id == id)
    }

    /// Every carrier in a stable order: host networks by id, each followed
    /// by its brands and then its MVNOs, by id.
    pub fn all(&self) -> Vec<&Carrier> {
        self.carriers.iter().collect()
    }

    /// The network a carrier runs on: itself for a host, the host for a
    /// brand or MVNO.
    pub fn host_of(&self, id: &str) -> Option<&Carrier> {
        self.get(id).and_then(|c| self.get(&c.host))
    }

    /// The carrier whose mail service owns a domain (`"ezweb.ne.jp"`), or an
    /// address in it (`"taro@ezweb.ne.jp"`); case does not matter.
    pub fn by_mail_domain(&self, domain: &str) -> Option<&Carrier> {
        let domain = domain.rsplit('@').next().unwrap_or(domain).trim().to_ascii_lowercase();
        self.carriers.iter().find(|c| c.mail_domains.contains(&domain))
    }

    /// Replaces one carrier's chaos rates (the per-carrier overrides of
    /// `PUT /v1/sim/chaos`). Brands and MVNOs keep their own rates: an
    /// override names each id it applies to.
    pub fn set_chaos(&mut self, id: &str, rates: ChaosRates) -> Result<(), ChaosError> {
        rates.validate()?;
        let carrier = self
            .carriers
            .iter_mut()
            .find(|c| c.id == id)
            .ok_or_else(|| ChaosError::UnknownCarrier(id.to_string()))?;
        carrier.chaos = rates;
        Ok(())
    }
}

/// Whether a carrier is a network of its own or runs on one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CarrierKind {
    /// A network with its own SMSC: docomo, au, SoftBank, Rakuten.
    Host,
    /// The host's own second brand (ahamo, UQ mobile, povo, Y!mobile, LINEMO).
    Brand,
    /// Another company's service on the host's network.
    Mvno,
}

/// One carrier, brand or MVNO, with everything inherited from its host
/// already filled in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Carrier {
    pub id: String,
    pub name_ja: String,
    pub name_en: String,
    pub kind: CarrierKind,
    /// The host network's id; a host's own id for a host.
    pub host: String,
    /// Where the member changes network settings ("My docomo", "the ahamo
    /// app"): remediation texts say `{portal}` and get this.
    pub portal_ja: String,
    pub portal_en: String,
    /// False on the SoftBank network, which shows a short code instead of a
    /// fixed-line sender number.
    pub shows_fixed_line_numbers: bool,
    /// How long the SMSC keeps an undelivered message before EXPIRED.
    pub validity_hours: u32,
    /// Waits between delivery attempts to an absent handset; the last one
    /// repeats until the validity ends.
    pub retry_schedule_seconds: Vec<u32>,
    pub delay: Delay,
    pub settings: Settings,
    pub failures: Failures,
    pub content_rule: ContentRule,
    /// Used only when chaos is on.
    pub chaos: ChaosRates,
    /// The carrier's own mail domains, lower case; empty when it has none.
    pub mail_domains: Vec<String>,
}

/// Who sends the OTPs: the number, and the short code that networks which
/// hide fixed-line senders show instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderProfile {
    /// As configured, e.g. `"03-5460-0124"`.
    pub number: String,
    /// e.g. `"22471"`.
    pub short_code: String,
}

impl Default for SenderProfile {
    /// The help page's sender.
    fn default() -> Self {
        SenderProfile {
            number: "03-5460-0124".to_string(),
            short_code: "22471".to_string(),
        }
    }
}

/// The delivery delay of a reachable handset: a log-normal curve through
/// `median_ms` and `p99_ms`, shifted by `min_ms` and cut at `max_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delay {
    pub min_ms: i64,
    pub median_ms: i64,
    pub p99_ms: i64,
    pub max_ms: i64,
}

/// The probabilities chaos mode draws from, per carrier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChaosRates {
    /// Of a submit being refused as throttled.
    pub throttle: f64,
    /// Of a delivery failing with a system failure.
    pub failure: f64,
    /// Of a delivery taking a long delay instead of the usual one.
    pub long_delay: f64,
    pub long_delay_min_ms: i64,
    pub long_delay_max_ms: i64,
}

/// Why chaos rates were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChaosError {
    #[error("unknown carrier `{0}`")]
    UnknownCarrier(String),
    #[error("field `{field}`: {message}")]
    Invalid { field: &'static str, message: String },
}

impl ChaosRates {
    /// Probabilities within 0..=1 and a long-delay range that is not empty.
    pub fn validate(&self) -> Result<(), ChaosError> {
        for (field, p) in [
            ("throttle", self.throttle),
            ("failure", self.failure),
            ("long_delay", self.long_delay),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(ChaosError::Invalid {
                    field,
                    message: format!("{p} is not a probability between 0 and 1"),
                });
            }
        }
        if self.long_delay_min_ms < 0 || self.long_delay_min_ms > self.long_delay_max_ms {
            return Err(ChaosError::Invalid {
                field: "long_delay_min_ms",
                message: "must be at least 0 and at most long_delay_max_ms".to_string(),
            });
        }
        Ok(())
    }
}

/// A setting on the handset or in the carrier's portal, under its real name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Setting {
    pub name_ja: String,
    pub name_en: String,
    /// What a support agent reads to the member: where the setting is and
    /// what to change. May hold `{sender}`, `{number}`, `{portal}` and, for
    /// the mail setting, `{domain}`; [`Carrier::remediation`] fills them.
    pub remediation_ja: String,
    pub remediation_en: String,
}

impl Setting {
    /// The name in `lang` (`"ja"`, else English).
    pub fn name(&self, lang: &str) -> &str {
        if is_ja(lang) {
            &self.name_ja
        } else {
            &self.name_en
        }
    }
}

/// Which setting: the ones a handset's state can have on, plus the mail one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SettingKind {
    RejectAll,
    RejectOtherDomestic,
    ContentFilter,
    BlockedSenders,
    AllowedSenders,
    CallRestriction,
    MailDomainFilter,
}

impl SettingKind {
    pub const ALL: [SettingKind; 7] = [
        SettingKind::RejectAll,
        SettingKind::RejectOtherDomestic,
        SettingKind::ContentFilter,
        SettingKind::BlockedSenders,
        SettingKind::AllowedSenders,
        SettingKind::CallRestriction,
        SettingKind::MailDomainFilter,
    ];

    /// The stable snake_case name, also the table name in the carrier files.
    pub fn code(self) -> &'static str {
        match self {
            SettingKind::RejectAll => "reject_all",
            SettingKind::RejectOtherDomestic => "reject_other_domestic",
            SettingKind::ContentFilter => "content_filter",
            SettingKind::BlockedSenders => "blocked_senders",
            SettingKind::AllowedSenders => "allowed_senders",
            SettingKind::CallRestriction => "call_restriction",
            SettingKind::MailDomainFilter => "mail_domain_filter",
        }
    }
}

/// A carrier's settings by kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Settings {
    pub reject_all: Setting,
    pub reject_other_domestic: Setting,
    pub content_filter: Setting,
    pub blocked_senders: Setting,
    pub allowed_senders: Setting,
    pub call_restriction: Setting,
    pub mail_domain_filter: Setting,
    /// Settings members often suspect that do not stop the OTP sender
    /// (番号通知なし拒否, 海外事業者からのSMS拒否, ...), so an agent can say so.
    pub harmless: Vec<Setting>,
}

impl Settings {
    pub fn get(&self, kind: SettingKind) -> &Setting {
        match kind {
            SettingKind::RejectAll => &self.reject_all,
            SettingKind::RejectOtherDomestic => &self.reject_other_domestic,
            SettingKind::ContentFilter => &self.content_filter,
            SettingKind::BlockedSenders => &self.blocked_senders,
            SettingKind::AllowedSenders => &self.allowed_senders,
            SettingKind::CallRestriction => &self.call_restriction,
            SettingKind::MailDomainFilter => &self.mail_domain_filter,
        }
    }
}

/// The codes of a delivery receipt, as an SMPP `deliver_sm` carries them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptCodes {
    /// `DELIVRD`, `EXPIRED`, `UNDELIV`, `REJECTD`.
    pub stat: String,
    /// The receipt text's `err:` field, printed with three digits.
    pub err: u16,
    /// The SMPP `message_state` TLV value matching `stat`.
    pub message_state: u8,
    /// The `network_error_code` TLV: network type (3 = GSM) and error code,
    /// present when the error came from the mobile network (MAP).
    pub network_error_code: Option<(u8, u16)>,
}

impl ReceiptCodes {
    /// `err` as the receipt text writes it: `"027"`.
    pub fn err_text(&self) -> String {
        format!("{:03}", self.err)
    }
}

/// The SMPP 3.4 `message_state` for a receipt `stat`.
pub fn message_state_of(stat: &str) -> Option<u8> {
    Some(match stat {
        "ENROUTE" => 1,
        "DELIVRD" => 2,
        "EXPIRED" => 3,
        "DELETED" => 4,
        "UNDELIV" => 5,
        "ACCEPTD" => 6,
        "UNKNOWN" => 7,
        "REJECTD" => 8,
        _ => return None,
    })
}

/// The failure modes a carrier file gives receipt codes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Powered off, out of coverage, abroad without roaming: retried, then EXPIRED.
    AbsentSubscriber,
    UnknownSubscriber,
    /// Message storage full.
    MemoryCapacityExceeded,
    /// A data-only SIM.
    TeleserviceNotProvisioned,
    /// The incoming-call restriction on the sender.
    CallBarred,
    /// The handset's SMS rejection settings.
    FilterRejection,
    /// The carrier's content filter.
    ContentFilter,
    SystemFailure,
}

impl FailureMode {
    pub const ALL: [FailureMode; 8] = [
        FailureMode::AbsentSubscriber,
        FailureMode::UnknownSubscriber,
        FailureMode::MemoryCapacityExceeded,
        FailureMode::TeleserviceNotProvisioned,
        FailureMode::CallBarred,
        FailureMode::FilterRejection,
        FailureMode::ContentFilter,
        FailureMode::SystemFailure,
    ];

    /// The stable snake_case name, also the table name in the carrier files.
    pub fn code(self) -> &'static str {
        match self {
            FailureMode::AbsentSubscriber => "absent_subscriber",
            FailureMode::UnknownSubscriber => "unknown_subscriber",
            FailureMode::MemoryCapacityExceeded => "memory_capacity_exceeded",
            FailureMode::TeleserviceNotProvisioned => "teleservice_not_provisioned",
            FailureMode::CallBarred => "call_barred",
            FailureMode::FilterRejection => "filter_rejection",
            FailureMode::ContentFilter => "content_filter",
            FailureMode::SystemFailure => "system_failure",
        }
    }
}

/// A carrier's receipt codes for each failure mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failures {
    pub absent_subscriber: ReceiptCodes,
    pub unknown_subscriber: ReceiptCodes,
    pub memory_capacity_exceeded: ReceiptCodes,
    pub teleservice_not_provisioned: ReceiptCodes,
    pub call_barred: ReceiptCodes,
    pub filter_rejection: ReceiptCodes,
    pub content_filter: ReceiptCodes,
    pub system_failure: ReceiptCodes,
}

impl Failures {
    pub fn get(&self, mode: FailureMode) -> &ReceiptCodes {
        match mode {
            FailureMode::AbsentSubscriber => &self.absent_subscriber,
            FailureMode::UnknownSubscriber => &self.unknown_subscriber,
            FailureMode::MemoryCapacityExceeded => &self.memory_capacity_exceeded,
            FailureMode::TeleserviceNotProvisioned => &self.teleservice_not_provisioned,
            FailureMode::CallBarred => &self.call_barred,
            FailureMode::FilterRejection => &self.filter_rejection,
            FailureMode::ContentFilter => &self.content_filter,
            FailureMode::SystemFailure => &self.system_failure,
        }
    }
}

/// What the carrier's content filter (危険SMS拒否設定, 迷惑SMSブロック, ...)
/// rejects when the handset has it on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContentRule {
    /// A URL whose host is not in `allowed_url_domains` is taken as dangerous.
    pub reject_unknown_url_domains: bool,
    /// Any URL in an SMS from a mobile number is rejected (SoftBank's
    /// URLリンク付きSMSの拒否).
    pub reject_urls_from_mobile_numbers: bool,
    /// Domains (and their subdomains) the filter knows to be safe.
    pub allowed_url_domains: Vec<String>,
    /// Phrases of known fraud messages, matched ignoring case.
    pub patterns: Vec<String>,
}

impl Carrier {
    /// The carrier's name in `lang` (`"ja"`, else English).
    pub fn name(&self, lang: &str) -> &str {
        if is_ja(lang) {
            &self.name_ja
        } else {
            &self.name_en
        }
    }

    /// What the handset shows as the sender of an SMS submitted from
    /// `source` (national digits e.g. `"0354600124"` or `"03-5460-0124"`):
    /// on networks that don't show fixed-line numbers, the profile's short
    /// code when the source is the profile's number; otherwise the number
    /// formatted as the phone shows it (`"03-5460-0124"`).
    pub fn displayed_sender(&self, source: &str, profile: &SenderProfile) -> String {
        if !self.shows_fixed_line_numbers && same_sender(source, &profile.number) {
            return profile.short_code.clone();
        }
        display_number(source)
    }

    /// One delivery delay to a reachable handset, from the carrier's curve.
    pub fn sample_delay_ms<R: Rng + ?Sized>(&self, rng: &mut R) -> i64 {
        let d = &self.delay;
        let spread = (d.median_ms - d.min_ms) as f64;
        // The 99th percentile of a standard normal distribution.
        let sigma = ((d.p99_ms - d.min_ms) as f64 / spread).ln() / 2.326_347_874;
        let x = d.min_ms as f64 + spread * (sigma * standard_normal(rng)).exp();
        (x.round() as i64).clamp(d.min_ms, d.max_ms)
    }

    /// The delay of one delivery: with chaos on, a long delay at the chaos
    /// rate, otherwise [`Carrier::sample_delay_ms`].
    pub fn delivery_delay_ms<R: Rng + ?Sized>(&self, rng: &mut R, chaos: bool) -> i64 {
        if chaos && rng.gen_bool(self.chaos.long_delay) {
            return rng.gen_range(self.chaos.long_delay_min_ms..=self.chaos.long_delay_max_ms);
        }
        self.sample_delay_ms(rng)
    }

    /// The wait before the next delivery attempt after the `attempt`-th
    /// failed one (1 for the first); past the schedule's end its last entry
    /// repeats.
    pub fn retry_delay_ms(&self, attempt: u32) -> i64 {
        let last = self.retry_schedule_seconds.len().saturating_sub(1);
        let index = (attempt.saturating_sub(1) as usize).min(last);
        i64::from(self.retry_schedule_seconds.get(index).copied().unwrap_or(3600)) * 1000
    }

    /// How long the SMSC keeps an undelivered message.
    pub fn validity_ms(&self) -> i64 {
        i64::from(self.validity_hours) * 3_600_000
    }

    /// Whether chaos throttles a submit (the caller checks that chaos is on).
    pub fn chaos_throttle<R: Rng + ?Sized>(&self, rng: &mut R) -> bool {
        rng.gen_bool(self.chaos.throttle)
    }

    /// The setting of this kind: names and remediation, unfilled.
    pub fn setting(&self, kind: SettingKind) -> &Setting {
        self.settings.get(kind)
    }

    /// The remediation of a setting in `lang`, placeholders filled: `{sender}`
    /// as this carrier shows the profile's number, `{number}` the number
    /// itself, `{portal}` where the member changes settings, `{domain}` the
    /// domain OTP mail comes from.
    pub fn remediation(&self, kind: SettingKind, lang: &str, profile: &SenderProfile, mail_domain: &str) -> String {
        let setting = self.setting(kind);
        let text = if is_ja(lang) {
            &setting.remediation_ja
        } else {
            &setting.remediation_en
        };
        let portal = if is_ja(lang) { &self.portal_ja } else { &self.portal_en };
        text.replace("{sender}", &self.displayed_sender(&profile.number, profile))
            .replace("{number}", &display_number(&profile.number))
            .replace("{portal}", portal)
            .replace("{domain}", mail_domain)
    }

    /// The receipt codes of a failure mode.
    pub fn receipt(&self, mode: FailureMode) -> ReceiptCodes {
        self.failures.get(mode).clone()
    }

    /// The receipt of a message whose validity ended while the handset was
    /// absent: EXPIRED with the absent-subscriber codes.
    pub fn expired_receipt(&self) -> ReceiptCodes {
        ReceiptCodes {
            stat: "EXPIRED".to_string(),
            message_state: 3,
            ..self.receipt(FailureMode::AbsentSubscriber)
        }
    }

    /// The receipt of a delivered message.
    pub fn delivered_receipt(&self) -> ReceiptCodes {
        ReceiptCodes {
            stat: "DELIVRD".to_string(),
            err: 0,
            message_state: 2,
            network_error_code: None,
        }
    }

    /// Which failure mode a receipt's `stat` and `err` stand for on this
    /// carrier, so that a receipt read back from SMPP can be explained.
    pub fn failure_mode_of(&self, stat: &str, err: u16) -> Option<FailureMode> {
        FailureMode::ALL.into_iter().find(|mode| {
            let codes = self.failures.get(*mode);
            codes.stat == stat && codes.err == err
        })
    }
}

fn is_ja(lang: &str) -> bool {
    lang.trim().eq_ignore_ascii_case("ja")
}

/// A standard normal draw (Box–Muller) from the caller's generator, so that
/// one seed gives one sequence of delays.
fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    // 1 - [0, 1) is (0, 1], which keeps ln() finite.
    let u1 = 1.0 - rng.gen::<f64>();
    let u2 = rng.gen::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn set() -> CarrierSet {
        CarrierSet::embedded()
    }

    #[test]
    fn softbank_network_shows_the_short_code_and_the_others_the_number() {
        let set = set();
        let profile = SenderProfile::default();
        for carrier in set.all() {
            let host = set.host_of(&carrier.id).expect("every carrier has a host");
            let expected = if host.id == "softbank" { "22471" } else { "03-5460-0124" };
            for source in ["0354600124", "03-5460-0124", "+81354600124"] {
                assert_eq!(
                    carrier.displayed_sender(source, &profile),
                    expected,
                    "{} from {source}",
                    carrier.id
                );
            }
        }
        for id in ["softbank", "ymobile", "linemo"] {
            assert!(!set.get(id).expect(id).shows_fixed_line_numbers, "{id}");
        }
        for id in ["docomo", "ahamo", "au", "uq", "povo", "rakuten"] {
            assert!(set.get(id).expect(id).shows_fixed_line_numbers, "{id}");
        }
    }

    #[test]
    fn softbank_shows_other_numbers_as_numbers() {
        let softbank = set().get("softbank").cloned().expect("softbank");
        let profile = SenderProfile::default();
        assert_eq!(softbank.displayed_sender("09012345678", &profile), "090-1234-5678");
        assert_eq!(softbank.displayed_sender("0312345678", &profile), "03-1234-5678");
    }

    #[test]
    fn the_same_seed_gives_the_same_delays() {
        let set = set();
        let docomo = set.get("docomo").expect("docomo");
        let draw = |seed: u64| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..200)
                .map(|_| docomo.delivery_delay_ms(&mut rng, true))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn delays_follow_the_curve_within_its_bounds() {
        let set = set();
        for carrier in set.all() {
            let mut rng = ChaCha8Rng::seed_from_u64(42);
            let mut delays: Vec<i64> = (0..4000).map(|_| carrier.sample_delay_ms(&mut rng)).collect();
            delays.sort_unstable();
            let d = &carrier.delay;
            assert!(
                delays[0] >= d.min_ms && delays[delays.len() - 1] <= d.max_ms,
                "{}",
                carrier.id
            );
            let median = delays[delays.len() / 2];
            let p99 = delays[delays.len() * 99 / 100];
            assert!(
                (median - d.median_ms).abs() <= d.median_ms / 10,
                "{}: median {median}",
                carrier.id
            );
            assert!((p99 - d.p99_ms).abs() <= d.p99_ms / 4, "{}: p99 {p99}", carrier.id);
        }
    }

    #[test]
    fn retries_follow_the_schedule_and_the_last_wait_repeats() {
        let set = set();
        let docomo = set.get("docomo").expect("docomo");
        let schedule = &docomo.retry_schedule_seconds;
        assert_eq!(docomo.retry_delay_ms(1), i64::from(schedule[0]) * 1000);
        let last = i64::from(*schedule.last().expect("a schedule")) * 1000;
        assert_eq!(docomo.retry_delay_ms(schedule.len() as u32), last);
        assert_eq!(docomo.retry_delay_ms(100), last);
        assert_eq!(docomo.retry_delay_ms(0), i64::from(schedule[0]) * 1000);
    }

    #[test]
    fn validity_per_network() {
        let set = set();
        let hours = |id: &str| set.get(id).expect(id).validity_ms() / 3_600_000;
        assert_eq!(hours("docomo"), 72);
        assert_eq!(hours("ahamo"), 72);
        assert_eq!(hours("au"), 72);
        assert_eq!(hours("softbank"), 24);
        assert_eq!(hours("linemo"), 24);
    }

    #[test]
    fn receipts() {
        let set = set();
        let au = set.get("au").expect("au");
        let expired = au.expired_receipt();
        assert_eq!(
            (expired.stat.as_str(), expired.err_text(), expired.message_state),
            ("EXPIRED", "027".to_string(), 3)
        );
        assert_eq!(expired.network_error_code, Some((3, 27)));
        let delivered = au.delivered_receipt();
        assert_eq!(
            (delivered.stat.as_str(), delivered.err, delivered.message_state),
            ("DELIVRD", 0, 2)
        );
        for carrier in set.all() {
            for mode in FailureMode::ALL {
                let codes = carrier.receipt(mode);
                assert_eq!(
                    carrier.failure_mode_of(&codes.stat, codes.err),
                    Some(mode),
                    "{} {mode:?}",
                    carrier.id
                );
                assert_eq!(message_state_of(&codes.stat), Some(codes.message_state));
            }
        }
    }

    #[test]
    fn remediation_names_the_sender_the_member_sees() {
        let set = set();
        let profile = SenderProfile::default();
        let text = |id: &str, kind, lang| set.get(id).expect(id).remediation(kind, lang, &profile, "jal.co.jp");
        assert!(text("softbank", SettingKind::AllowedSenders, "ja").contains("22471"));
        assert!(text("docomo", SettingKind::AllowedSenders, "en").contains("03-5460-0124"));
        assert!(text("softbank", SettingKind::CallRestriction, "ja").contains("03-5460-0124"));
        assert!(text("docomo", SettingKind::MailDomainFilter, "ja").contains("jal.co.jp"));
        for carrier in set.all() {
            for kind in SettingKind::ALL {
                for lang in ["ja", "en"] {
                    let filled = carrier.remediation(kind, lang, &profile, "jal.co.jp");
                    assert!(!filled.contains('{'), "{} {kind:?} {lang}: {filled}", carrier.id);
                }
            }
        }
    }

    #[test]
    fn mail_domains_find_their_carrier() {
        let set = set();
        let check = |domain: &str, id: &str| {
            assert_eq!(set.by_mail_domain(domain).map(|c| c.id.as_str()), Some(id), "{domain}");
        };
        check("docomo.ne.jp", "docomo");
        check("ezweb.ne.jp", "au");
        check("AU.COM", "au");
        check("taro@softbank.ne.jp", "softbank");
        check("i.softbank.jp", "softbank");
        check("ymobile.ne.jp", "ymobile");
        assert!(set.by_mail_domain("example.org").is_none());
    }

    #[test]
    fn chaos_overrides_are_validated() {
        let mut set = set();
        let mut rates = set.get("au").expect("au").chaos.clone();
        rates.failure = 1.0;
        set.set_chaos("au", rates.clone()).expect("valid rates");
        assert_eq!(set.get("au").expect("au").chaos.failure, 1.0);
        assert_eq!(
            set.set_chaos("nope", rates.clone()),
            Err(ChaosError::UnknownCarrier("nope".to_string()))
        );
        rates.throttle = 1.5;
        assert!(matches!(
            set.set_chaos("au", rates),
            Err(ChaosError::Invalid { field: "throttle", .. })
        ));
    }
}
