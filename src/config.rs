//! The validated configuration, read once at start and passed explicitly.
//!
//! Command-line flags override the config file, which overrides the
//! embedded defaults. Nothing else in otpgate reads the environment or the
//! config file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::clock::{self, Millis};

/// Everything `otpgate serve` needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    pub http: SocketAddr,
    /// `None` turns the listener off.
    pub smpp: Option<SocketAddr>,
    pub smtp: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub virtual_clock: bool,
    pub clock_start: Millis,
    pub seed: u64,
    /// Where carrier files are read from; `None` uses the compiled-in set.
    pub carriers_dir: Option<PathBuf>,
    pub sender: Sender,
    pub otp: OtpRules,
    pub smsc: SmscSettings,
    pub sms_out: Option<SmsOut>,
    pub email_out: Option<EmailOut>,
    pub default_carrier: String,
    pub chaos: bool,
    pub mail_retention: usize,
    pub max_message_bytes: usize,
    /// Required on simulation and admin routes when HTTP listens beyond loopback.
    pub admin_token: Option<String>,
    /// A JSON file of members and handsets loaded at start when the database is new.
    pub demo_data: Option<PathBuf>,
    pub callback_url: Option<String>,
}

/// Who sends the OTPs: the help page's sender number and SoftBank short code.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sender {
    #[serde(default = "default_number")]
    pub number: String,
    #[serde(default = "default_short_code")]
    pub short_code: String,
    #[serde(default = "default_email_from")]
    pub email_from: String,
    #[serde(default = "default_brand")]
    pub brand: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtpRules {
    #[serde(default = "default_validity")]
    pub validity_seconds: i64,
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_cooldown")]
    pub cooldown_seconds: i64,
    #[serde(default = "default_window_cap")]
    pub sends_per_window: usize,
    #[serde(default = "default_window")]
    pub window_seconds: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmscAccount {
    pub system_id: String,
    pub password: String,
    #[serde(default)]
    pub throughput_per_sec: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct SmscSettings {
    pub accounts: Vec<SmscAccount>,
    pub window: usize,
}

/// An external SMSC for the OTP core instead of the embedded one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsOut {
    pub addr: String,
    pub system_id: String,
    pub password: String,
}

/// An external SMTP relay for the OTP core instead of the embedded server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailOut {
    pub relay: String,
    #[serde(default)]
    pub implicit_tls: bool,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

/// The flags of `otpgate serve`; `None` means "not given".
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub http: Option<String>,
    pub smpp: Option<String>,
    pub smtp: Option<String>,
    pub data: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub virtual_clock: bool,
    pub clock_start: Option<String>,
    pub seed: Option<u64>,
    pub carriers: Option<PathBuf>,
}

/// The config file's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    http: Option<String>,
    smpp: Option<String>,
    smtp: Option<String>,
    data: Option<PathBuf>,
    virtual_clock: Option<bool>,
    clock_start: Option<String>,
    seed: Option<u64>,
    carriers: Option<PathBuf>,
    sender: Option<Sender>,
    otp: Option<OtpRules>,
    #[serde(default)]
    accounts: Vec<SmscAccount>,
    window: Option<usize>,
    sms_out: Option<SmsOut>,
    email_out: Option<EmailOut>,
    default_carrier: Option<String>,
    chaos: Option<bool>,
    mail_retention: Option<usize>,
    max_message_bytes: Option<usize>,
    admin_token: Option<String>,
    demo_data: Option<PathBuf>,
    callback_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
}

fn default_number() -> String {
    "03-5460-0124".into()
}
fn default_short_code() -> String {
    "22471".into()
}
fn default_email_from() -> String {
    "otp@otpgate.example".into()
}
fn default_brand() -> String {
    "otpgate".into()
}
fn default_validity() -> i64 {
    600
}
fn default_attempts() -> u32 {
    5
}
fn default_cooldown() -> i64 {
    60
}
fn default_window_cap() -> usize {
    5
}
fn default_window() -> i64 {
    600
}

impl Default for Sender {
    fn default() -> Self {
        Sender {
            number: default_number(),
            short_code: default_short_code(),
            email_from: default_email_from(),
            brand: default_brand(),
        }
    }
}

impl Default for OtpRules {
    fn default() -> Self {
        OtpRules {
            validity_seconds: default_validity(),
            max_attempts: default_attempts(),
            cooldown_seconds: default_cooldown(),
            sends_per_window: default_window_cap(),
            window_seconds: default_window(),
        }
    }
}

fn parse_addr(field: &'static str, text: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if text == "off" {
        return Ok(None);
    }
    let text = text
        .strip_prefix("localhost:")
        .map(|p| format!("127.0.0.1:{p}"))
        .unwrap_or_else(|| text.to_string());
    text.parse().map(Some).map_err(|_| ConfigError::Invalid {
        field,
        message: format!("`{text}` is not an address like 127.0.0.1:8080 (or `off`)"),
    })
}

impl Config {
    /// Reads the config file (when given) and applies the flags over it.
    pub fn load(flags: Overrides) -> Result<Config, ConfigError> {
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None => File::default(),
        };
        let http = flags.http.or(file.http).unwrap_or_else(|| "127.0.0.1:8080".into());
        let http = parse_addr("http", &http)?.ok_or(ConfigError::Invalid {
            field: "http",
            message: "the HTTP listener cannot be off".into(),
        })?;
        let smpp = parse_addr(
            "smpp",
            &flags.smpp.or(file.smpp).unwrap_or_else(|| "127.0.0.1:2775".into()),
        )?;
        let smtp = parse_addr(
            "smtp",
            &flags.smtp.or(file.smtp).unwrap_or_else(|| "127.0.0.1:2525".into()),
        )?;
        let clock_start = match flags.clock_start.or(file.clock_start) {
            Some(text) => clock::parse_rfc3339(&text).ok_or(ConfigError::Invalid {
                field: "clock_start",
                message: format!("`{text}` is not an RFC 3339 date"),
            })?,
            None => clock::DEFAULT_VIRTUAL_START,
        };
        let otp = file.otp.unwrap_or_default();
        if otp.validity_seconds <= 0 || otp.max_attempts == 0 || otp.sends_per_window == 0 {
            return Err(ConfigError::Invalid {
                field: "otp",
                message: "validity_seconds, max_attempts and sends_per_window must be positive".into(),
            });
        }
        let mut accounts = file.accounts;
        if !accounts.iter().any(|a| a.system_id == "otpgate") {
            accounts.push(SmscAccount {
                system_id: "otpgate".into(),
                password: "otpgate".into(),
                throughput_per_sec: None,
            });
        }
        Ok(Config {
            http,
            smpp,
            smtp,
            data_dir: flags
                .data
                .or(file.data)
                .unwrap_or_else(|| PathBuf::from("otpgate-data")),
            virtual_clock: flags.virtual_clock || file.virtual_clock.unwrap_or(false),
            clock_start,
            seed: flags.seed.or(file.seed).unwrap_or(1),
            carriers_dir: flags.carriers.or(file.carriers),
            sender: file.sender.unwrap_or_default(),
            otp,
            smsc: SmscSettings {
                accounts,
                window: file.window.unwrap_or(10).max(1),
            },
            sms_out: file.sms_out,
            email_out: file.email_out,
            default_carrier: file.default_carrier.unwrap_or_else(|| "docomo".into()),
            chaos: file.chaos.unwrap_or(false),
            mail_retention: file.mail_retention.unwrap_or(10_000).max(1),
            max_message_bytes: file.max_message_bytes.unwrap_or(10 * 1024 * 1024),
            admin_token: file.admin_token,
            demo_data: file.demo_data,
            callback_url: file.callback_url,
        })
    }

    /// True when simulation and admin routes need no token.
    pub fn http_is_loopback(&self) -> bool {
        self.http.ip().is_loopback()
    }
}

fn read_file(path: &Path) -> Result<File, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_design() {
        let c = Config::load(Overrides::default()).unwrap();
        assert_eq!(c.http.to_string(), "127.0.0.1:8080");
        assert_eq!(c.smpp.unwrap().to_string(), "127.0.0.1:2775");
        assert_eq!(c.smtp.unwrap().to_string(), "127.0.0.1:2525");
        assert_eq!(c.sender.number, "03-5460-0124");
        assert_eq!(c.sender.short_code, "22471");
        assert_eq!(c.otp.validity_seconds, 600);
        assert!(c
            .smsc
            .accounts
            .iter()
            .any(|a| a.system_id == "otpgate" && a.password == "otpgate"));
    }

    #[test]
    fn a_bad_address_names_the_field() {
        let flags = Overrides {
            smpp: Some("nonsense".into()),
            ..Default::default()
        };
        let err = Config::load(flags).unwrap_err().to_string();
        assert!(err.starts_with("smpp:"), "{err}");
    }
}
