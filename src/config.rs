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
    /// When the HTTP API refuses instead of letting work queue (`[http]`).
    pub http_admission: HttpAdmission,
    /// `None` turns the listener off.
    pub smpp: Option<SocketAddr>,
    /// The SMSC's second listener, SMPP over TLS from the first byte
    /// (`[smpp] tls_listen`, `tls_cert`, `tls_key`); `None`: none.
    pub smpp_tls: Option<SmppTls>,
    pub smtp: Option<SocketAddr>,
    /// Accounts of the embedded SMTP server (`[smtp] auth`); empty means no
    /// AUTH is offered and none is needed.
    pub smtp_auth: Vec<SmtpAccount>,
    /// The embedded SMTP server's certificate and key (`[smtp] tls_cert`,
    /// `tls_key`); `None` means STARTTLS is not offered.
    pub smtp_tls: Option<TlsFiles>,
    /// The embedded SMTP server's second listener, SMTP over TLS from the
    /// first byte (`[smtp] tls_listen`, SMTPS as on port 465); needs
    /// `smtp_tls`.
    pub smtp_tls_listen: Option<SocketAddr>,
    /// Messages a second the SMTP server accepts (`[smtp]
    /// max_messages_per_sec`); above it MAIL is answered `451 4.3.2`.
    /// `None` means no limit.
    pub smtp_max_messages_per_sec: Option<u32>,
    /// SMTP transactions in progress at once, from MAIL to the answer
    /// after DATA (`[smtp] max_in_flight`); past it MAIL is answered
    /// `451 4.3.2`. `None` means no limit.
    pub smtp_max_in_flight: Option<usize>,
    /// While even the quickest capture of the last 100 ms (the end of DATA
    /// to its answer) took longer than this, MAIL is answered `451 4.3.2`
    /// (`[smtp] shed_after_ms`, default 20; 0 turns it off).
    pub smtp_shed_after: Option<std::time::Duration>,
    /// SMTP sessions served at once (`[smtp] max_connections`, default
    /// 1,024); one more is answered `421 4.7.0` at connect and closed.
    pub smtp_max_connections: usize,
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
    /// Delivery-log messages, SMSC records (with the inbox messages they
    /// became) and OTP records kept, each (`log_retention`); the oldest go
    /// first (give or take a 64th of the cap, `store::retention`), except a
    /// message still pending or a code still usable.
    pub log_retention: usize,
    /// sled's page cache in MiB (`cache_mib`, default
    /// [`crate::store::DEFAULT_CACHE_MIB`]): most of what the process
    /// holds under load, and what keeps retention off the disk.
    pub cache_mib: u64,
    /// Free space in MiB kept on the data directory's disk (`min_free_mib`,
    /// default [`crate::store::DEFAULT_MIN_FREE_MIB`]; 0: no check): under
    /// it new messages, mail and writes are refused at once.
    pub min_free_mib: u64,
    pub max_message_bytes: usize,
    /// Required on simulation and admin routes when HTTP listens beyond loopback.
    pub admin_token: Option<String>,
    /// Load the demo data set (fixtures/demo.json) into a new database.
    pub load_demo: bool,
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
    /// Unacknowledged deliver_sm per session of this account (default: `window`).
    #[serde(default)]
    pub window: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct SmscSettings {
    pub accounts: Vec<SmscAccount>,
    pub window: usize,
    /// Requests (`submit_sm`, `query_sm`, `cancel_sm`) one SMPP session may
    /// have in progress; past it they are answered ESME_RTHROTTLED.
    pub submit_window: usize,
    /// Messages the simulated network holds not yet final; past it a
    /// submit is answered ESME_RMSGQFUL.
    pub max_pending: usize,
}

/// SMPP over TLS: where the SMSC listens for it and what it presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmppTls {
    pub addr: SocketAddr,
    pub files: TlsFiles,
}

/// An external SMSC for the OTP core instead of the embedded one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsOut {
    pub addr: String,
    pub system_id: String,
    pub password: String,
    /// Connect over TLS (as SMPP providers' TLS ports take it, from the
    /// first byte), checking the SMSC's certificate for `addr`'s host.
    #[serde(default)]
    pub tls: bool,
    /// PEM file of the certificates to trust for `tls` instead of the
    /// system's roots; relative to the config file's directory.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Messages submitted at once (default 10); more wait their turn.
    #[serde(default)]
    pub window: Option<usize>,
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

/// The HTTP API's admission control: past these it answers at once with
/// 503 or 429 instead of letting requests wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAdmission {
    /// Connections served at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Requests being worked on at once; one more is answered 503.
    /// Default: 32 per CPU core.
    pub max_in_flight: usize,
    /// Requests a second to routes that change something (every method
    /// but GET and HEAD); above it they are answered 429. `None`: no limit.
    pub max_requests_per_sec: Option<u32>,
}

impl Default for HttpAdmission {
    fn default() -> Self {
        HttpAdmission {
            max_connections: 1024,
            max_in_flight: default_http_in_flight(),
            max_requests_per_sec: None,
        }
    }
}

/// Requests in progress per CPU core by default. With 2 cores the 64 this
/// gives kept the benchmark's overload (twice the sustained maximum, 256
/// connections) at 143% of the maximum served, the rest refused at p99
/// 13 ms; 512 let every request wait (BENCHMARKS.md, fourth round).
const HTTP_IN_FLIGHT_PER_CORE: usize = 32;

fn default_http_in_flight() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    HTTP_IN_FLIGHT_PER_CORE * cores
}

/// An account for SMTP AUTH (PLAIN or LOGIN) on the embedded server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpAccount {
    pub username: String,
    pub password: String,
}

/// PEM files: the certificate chain (leaf first) and its private key.
/// Relative paths in the config file are relative to the file's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The config file's `http`: an address (`http = "127.0.0.1:8080"`) or an
/// `[http]` table with the address as `listen` and the admission limits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpTable {
    listen: Option<String>,
    max_connections: Option<usize>,
    max_in_flight: Option<usize>,
    max_requests_per_sec: Option<u32>,
}

/// The config file's `smpp`: an address (`smpp = "127.0.0.1:2775"`) or an
/// `[smpp]` table with the address as `listen` and a second listener for
/// SMPP over TLS.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SmppTable {
    listen: Option<String>,
    tls_listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

/// The config file's `smtp`: an address (`smtp = "127.0.0.1:2525"`) or an
/// `[smtp]` table with the address as `listen`, the server's AUTH
/// accounts and STARTTLS certificate, and its message rate limit.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SmtpTable {
    listen: Option<String>,
    #[serde(default)]
    auth: Vec<SmtpAccount>,
    tls_listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    max_messages_per_sec: Option<u32>,
    max_connections: Option<usize>,
    max_in_flight: Option<usize>,
    shed_after_ms: Option<u64>,
}

const NO_LIMIT: &str = "; leave it out for no limit";

/// A count that, when given, must be at least 1.
fn not_zero<T: Default + PartialEq>(value: Option<T>, field: &'static str, hint: &str) -> Result<(), ConfigError> {
    if value == Some(T::default()) {
        return Err(ConfigError::Invalid {
            field,
            message: format!("must be at least 1{hint}"),
        });
    }
    Ok(())
}

/// A listener's table that may also be written as just its address.
trait ListenerTable: Default {
    const EXAMPLE: &'static str;
    fn listening_on(listen: String) -> Self;
}

impl ListenerTable for HttpTable {
    const EXAMPLE: &'static str = "an address like \"127.0.0.1:8080\" or an [http] table";
    fn listening_on(listen: String) -> Self {
        HttpTable {
            listen: Some(listen),
            ..HttpTable::default()
        }
    }
}

impl ListenerTable for SmppTable {
    const EXAMPLE: &'static str = "an address like \"127.0.0.1:2775\" or an [smpp] table";
    fn listening_on(listen: String) -> Self {
        SmppTable {
            listen: Some(listen),
            ..SmppTable::default()
        }
    }
}

impl ListenerTable for SmtpTable {
    const EXAMPLE: &'static str = "an address like \"127.0.0.1:2525\" or an [smtp] table";
    fn listening_on(listen: String) -> Self {
        SmtpTable {
            listen: Some(listen),
            ..SmtpTable::default()
        }
    }
}

/// Reads a listener as either form; a table keeps serde's precise errors.
fn string_or_table<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: ListenerTable + Deserialize<'de>,
{
    struct Either<T>(std::marker::PhantomData<T>);
    impl<'de, T: ListenerTable + Deserialize<'de>> serde::de::Visitor<'de> for Either<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(T::EXAMPLE)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
            Ok(T::listening_on(v.to_string()))
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_any(Either(std::marker::PhantomData)).map(Some)
}

/// The HTTP API's admission limits, checked.
fn http_admission(table: &HttpTable) -> Result<HttpAdmission, ConfigError> {
    let defaults = HttpAdmission::default();
    let admission = HttpAdmission {
        max_connections: table.max_connections.unwrap_or(defaults.max_connections),
        max_in_flight: table.max_in_flight.unwrap_or(defaults.max_in_flight),
        max_requests_per_sec: table.max_requests_per_sec,
    };
    if admission.max_connections == 0 || admission.max_in_flight == 0 {
        return Err(ConfigError::Invalid {
            field: "http",
            message: "max_connections and max_in_flight must be at least 1".into(),
        });
    }
    not_zero(admission.max_requests_per_sec, "http.max_requests_per_sec", NO_LIMIT)?;
    Ok(admission)
}

/// Certificate and key files given together (or neither), relative to the
/// config file's directory.
fn tls_files(
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
    base: &Path,
    field: &'static str,
) -> Result<Option<TlsFiles>, ConfigError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles {
            cert: base.join(cert),
            key: base.join(key),
        })),
        (None, None) => Ok(None),
        _ => Err(ConfigError::Invalid {
            field,
            message: "tls_cert and tls_key go together: give both or neither".into(),
        }),
    }
}

/// The SMSC's TLS listener, checked: an address needs the files, and files
/// need an address.
fn smpp_tls(table: &SmppTable, base: &Path) -> Result<Option<SmppTls>, ConfigError> {
    let files = tls_files(&table.tls_cert, &table.tls_key, base, "smpp.tls_cert")?;
    let addr = match &table.tls_listen {
        Some(text) => parse_addr("smpp.tls_listen", text)?,
        None => None,
    };
    match (addr, files) {
        (Some(addr), Some(files)) => Ok(Some(SmppTls { addr, files })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError::Invalid {
            field: "smpp.tls_listen",
            message: "SMPP over TLS needs tls_cert and tls_key".into(),
        }),
        (None, Some(_)) => Err(ConfigError::Invalid {
            field: "smpp.tls_cert",
            message: "a certificate needs tls_listen, the address for SMPP over TLS".into(),
        }),
    }
}

/// The SMTP server's AUTH accounts and TLS files, checked.
fn smtp_security(table: &SmtpTable, base: &Path) -> Result<(Vec<SmtpAccount>, Option<TlsFiles>), ConfigError> {
    if let Some(bad) = table
        .auth
        .iter()
        .find(|a| a.username.is_empty() || a.password.is_empty())
    {
        return Err(ConfigError::Invalid {
            field: "smtp.auth",
            message: format!("account `{}` needs a username and a password", bad.username),
        });
    }
    let tls = tls_files(&table.tls_cert, &table.tls_key, base, "smtp.tls_cert")?;
    Ok((table.auth.clone(), tls))
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
    #[serde(default, deserialize_with = "string_or_table")]
    http: Option<HttpTable>,
    #[serde(default, deserialize_with = "string_or_table")]
    smpp: Option<SmppTable>,
    #[serde(default, deserialize_with = "string_or_table")]
    smtp: Option<SmtpTable>,
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
    submit_window: Option<usize>,
    max_pending: Option<usize>,
    sms_out: Option<SmsOut>,
    email_out: Option<EmailOut>,
    default_carrier: Option<String>,
    chaos: Option<bool>,
    mail_retention: Option<usize>,
    log_retention: Option<usize>,
    cache_mib: Option<u64>,
    min_free_mib: Option<u64>,
    max_message_bytes: Option<usize>,
    admin_token: Option<String>,
    demo: Option<bool>,
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
        let http_table = file.http.unwrap_or_default();
        let http_admission = http_admission(&http_table)?;
        let http = flags
            .http
            .or(http_table.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let http = parse_addr("http", &http)?.ok_or(ConfigError::Invalid {
            field: "http",
            message: "the HTTP listener cannot be off".into(),
        })?;
        let smpp_table = file.smpp.unwrap_or_default();
        let smpp = parse_addr(
            "smpp",
            &flags
                .smpp
                .or(smpp_table.listen.clone())
                .unwrap_or_else(|| "127.0.0.1:2775".into()),
        )?;
        let smtp_table = file.smtp.unwrap_or_default();
        let smtp = parse_addr(
            "smtp",
            &flags
                .smtp
                .or(smtp_table.listen.clone())
                .unwrap_or_else(|| "127.0.0.1:2525".into()),
        )?;
        let config_dir = flags
            .config
            .as_deref()
            .and_then(Path::parent)
            .unwrap_or_else(|| Path::new(""));
        let (smtp_auth, smtp_tls) = smtp_security(&smtp_table, config_dir)?;
        let smtp_tls_listen = match &smtp_table.tls_listen {
            Some(text) => parse_addr("smtp.tls_listen", text)?,
            None => None,
        };
        if smtp_tls_listen.is_some() && smtp_tls.is_none() {
            return Err(ConfigError::Invalid {
                field: "smtp.tls_listen",
                message: "SMTP over TLS needs tls_cert and tls_key".into(),
            });
        }
        if smtp.is_none() && smtp_tls_listen.is_some() {
            return Err(ConfigError::Invalid {
                field: "smtp.tls_listen",
                message: "SMTP over TLS is the SMTP server's second listener; the SMTP server is off".into(),
            });
        }
        let smpp_tls = smpp_tls(&smpp_table, config_dir)?;
        if smpp.is_none() && smpp_tls.is_some() {
            return Err(ConfigError::Invalid {
                field: "smpp.tls_listen",
                message: "SMPP over TLS is the SMSC's second listener; the SMSC is off".into(),
            });
        }
        let mut sms_out = file.sms_out;
        if let Some(out) = &mut sms_out {
            out.tls_ca = out.tls_ca.as_ref().map(|ca| config_dir.join(ca));
        }
        not_zero(smtp_table.max_messages_per_sec, "smtp.max_messages_per_sec", NO_LIMIT)?;
        not_zero(smtp_table.max_connections, "smtp.max_connections", "")?;
        not_zero(smtp_table.max_in_flight, "smtp.max_in_flight", NO_LIMIT)?;
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
                window: None,
            });
        }
        Ok(Config {
            http,
            http_admission,
            smpp,
            smpp_tls,
            smtp,
            smtp_auth,
            smtp_tls,
            smtp_tls_listen,
            smtp_max_messages_per_sec: smtp_table.max_messages_per_sec,
            smtp_max_connections: smtp_table.max_connections.unwrap_or(1024),
            smtp_max_in_flight: smtp_table.max_in_flight,
            smtp_shed_after: Some(std::time::Duration::from_millis(
                smtp_table.shed_after_ms.unwrap_or(crate::smtp::DEFAULT_SHED_AFTER_MS),
            ))
            .filter(|d| !d.is_zero()),
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
                submit_window: file.submit_window.unwrap_or(crate::smsc::DEFAULT_SUBMIT_WINDOW).max(1),
                max_pending: file.max_pending.unwrap_or(crate::sim::sms::DEFAULT_MAX_PENDING).max(1),
            },
            sms_out,
            email_out: file.email_out,
            default_carrier: file.default_carrier.unwrap_or_else(|| "docomo".into()),
            chaos: file.chaos.unwrap_or(false),
            mail_retention: file.mail_retention.unwrap_or(10_000).max(1),
            log_retention: file
                .log_retention
                .unwrap_or(crate::delivery::log::DEFAULT_RETENTION)
                .max(1),
            cache_mib: file.cache_mib.unwrap_or(crate::store::DEFAULT_CACHE_MIB).max(1),
            min_free_mib: file.min_free_mib.unwrap_or(crate::store::DEFAULT_MIN_FREE_MIB),
            max_message_bytes: file.max_message_bytes.unwrap_or(10 * 1024 * 1024),
            admin_token: file.admin_token,
            load_demo: file.demo.unwrap_or(true),
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
        assert_eq!(c.http_admission, HttpAdmission::default());
        assert_eq!(c.http_admission.max_in_flight, default_http_in_flight());
        assert!(c.http_admission.max_in_flight >= HTTP_IN_FLIGHT_PER_CORE);
        assert_eq!(c.http_admission.max_requests_per_sec, None);
        assert_eq!(c.smtp_max_messages_per_sec, None);
        assert_eq!(c.smtp_max_in_flight, None);
        assert_eq!(c.smtp_shed_after, Some(std::time::Duration::from_millis(20)));
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

    fn load_file(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("otpgate.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(Overrides {
            config: Some(path),
            ..Default::default()
        })
    }

    #[test]
    fn the_database_cache_is_set_in_mib_and_never_zero() {
        assert_eq!(load_file("cache_mib = 64\n").unwrap().cache_mib, 64);
        assert_eq!(load_file("cache_mib = 0\n").unwrap().cache_mib, 1);
        assert_eq!(load_file("").unwrap().cache_mib, crate::store::DEFAULT_CACHE_MIB);
        assert!(load_file("cache_mib = \"big\"\n").is_err());
    }

    #[test]
    fn the_free_space_kept_is_set_in_mib_and_zero_turns_it_off() {
        assert_eq!(load_file("min_free_mib = 64\n").unwrap().min_free_mib, 64);
        assert_eq!(load_file("min_free_mib = 0\n").unwrap().min_free_mib, 0);
        assert_eq!(load_file("").unwrap().min_free_mib, crate::store::DEFAULT_MIN_FREE_MIB);
        assert!(load_file("min_free_mib = -1\n").is_err());
    }

    #[test]
    fn smtp_is_an_address_or_a_table_with_auth_and_tls() {
        let c = load_file("smtp = \"127.0.0.1:2626\"\n").unwrap();
        assert_eq!(c.smtp.unwrap().to_string(), "127.0.0.1:2626");
        assert!(c.smtp_auth.is_empty() && c.smtp_tls.is_none());

        let c = load_file(
            "[smtp]\nlisten = \"127.0.0.1:2727\"\ntls_cert = \"tls/cert.pem\"\ntls_key = \"/etc/key.pem\"\n\
             auth = [{ username = \"qa\", password = \"pw\" }]\n",
        )
        .unwrap();
        assert_eq!(c.smtp.unwrap().to_string(), "127.0.0.1:2727");
        assert_eq!(c.smtp_auth.len(), 1);
        assert_eq!(
            (c.smtp_auth[0].username.as_str(), c.smtp_auth[0].password.as_str()),
            ("qa", "pw")
        );
        let tls = c.smtp_tls.unwrap();
        assert!(tls.cert.is_absolute() && tls.cert.ends_with("tls/cert.pem"), "{tls:?}");
        assert_eq!(tls.key, PathBuf::from("/etc/key.pem"));

        // Without `listen` the default address stays.
        let c = load_file("[smtp]\nauth = [{ username = \"qa\", password = \"pw\" }]\n").unwrap();
        assert_eq!(c.smtp.unwrap().to_string(), "127.0.0.1:2525");
    }

    #[test]
    fn smpp_is_an_address_or_a_table_with_a_tls_listener() {
        let c = load_file("smpp = \"127.0.0.1:2776\"\n").unwrap();
        assert_eq!(c.smpp.unwrap().to_string(), "127.0.0.1:2776");
        assert!(c.smpp_tls.is_none());

        let c = load_file(
            "[smpp]\nlisten = \"127.0.0.1:2777\"\ntls_listen = \"127.0.0.1:3550\"\n\
             tls_cert = \"tls/cert.pem\"\ntls_key = \"/etc/key.pem\"\n\
             [sms_out]\naddr = \"smsc.example:3550\"\nsystem_id = \"a\"\npassword = \"b\"\n\
             tls = true\ntls_ca = \"tls/ca.pem\"\n",
        )
        .unwrap();
        assert_eq!(c.smpp.unwrap().to_string(), "127.0.0.1:2777");
        let tls = c.smpp_tls.unwrap();
        assert_eq!(tls.addr.to_string(), "127.0.0.1:3550");
        assert!(tls.files.cert.is_absolute() && tls.files.cert.ends_with("tls/cert.pem"));
        assert_eq!(tls.files.key, PathBuf::from("/etc/key.pem"));
        let out = c.sms_out.unwrap();
        assert!(out.tls);
        let ca = out.tls_ca.unwrap();
        assert!(
            ca.is_absolute() && ca.ends_with("tls/ca.pem"),
            "relative to the file: {ca:?}"
        );

        for (text, field) in [
            ("[smpp]\ntls_listen = \"127.0.0.1:3550\"\n", "smpp.tls_listen:"),
            ("[smpp]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n", "smpp.tls_cert:"),
            ("[smpp]\ntls_cert = \"c.pem\"\n", "smpp.tls_cert:"),
            (
                "[smpp]\ntls_listen = \"nowhere\"\ntls_cert = \"c\"\ntls_key = \"k\"\n",
                "smpp.tls_listen:",
            ),
            (
                "[smpp]\nlisten = \"off\"\ntls_listen = \"127.0.0.1:3550\"\ntls_cert = \"c\"\ntls_key = \"k\"\n",
                "smpp.tls_listen:",
            ),
        ] {
            let err = load_file(text).unwrap_err().to_string();
            assert!(err.starts_with(field), "{text}: {err}");
        }
    }

    #[test]
    fn http_is_an_address_or_a_table_with_admission_limits() {
        let c = load_file("http = \"127.0.0.1:8181\"\n").unwrap();
        assert_eq!(c.http.to_string(), "127.0.0.1:8181");
        assert_eq!(c.http_admission, HttpAdmission::default());

        let c = load_file(
            "[http]\nlisten = \"127.0.0.1:8282\"\nmax_connections = 10\nmax_in_flight = 4\nmax_requests_per_sec = 300\n",
        )
        .unwrap();
        assert_eq!(c.http.to_string(), "127.0.0.1:8282");
        assert_eq!(
            c.http_admission,
            HttpAdmission {
                max_connections: 10,
                max_in_flight: 4,
                max_requests_per_sec: Some(300),
            }
        );

        // The flag still wins over the file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("otpgate.toml");
        std::fs::write(&path, "[http]\nlisten = \"127.0.0.1:8282\"\n").unwrap();
        let c = Config::load(Overrides {
            config: Some(path),
            http: Some("127.0.0.1:0".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.http.to_string(), "127.0.0.1:0");
    }

    #[test]
    fn admission_limits_of_zero_are_refused() {
        let err = load_file("[http]\nmax_in_flight = 0\n").unwrap_err().to_string();
        assert!(err.starts_with("http:"), "{err}");
        let err = load_file("[http]\nmax_requests_per_sec = 0\n").unwrap_err().to_string();
        assert!(err.starts_with("http.max_requests_per_sec:"), "{err}");
        let err = load_file("[smtp]\nmax_messages_per_sec = 0\n").unwrap_err().to_string();
        assert!(err.starts_with("smtp.max_messages_per_sec:"), "{err}");
        let err = load_file("[http]\nmax_inflight = 3\n").unwrap_err().to_string();
        assert!(err.contains("max_inflight"), "{err}");
        let c = load_file("[smtp]\nmax_messages_per_sec = 50\nmax_connections = 64\nmax_in_flight = 16\n").unwrap();
        assert_eq!(c.smtp_max_messages_per_sec, Some(50));
        assert_eq!(c.smtp_max_connections, 64);
        assert_eq!(c.smtp_max_in_flight, Some(16));
        assert_eq!(load_file("[smtp]\nshed_after_ms = 0\n").unwrap().smtp_shed_after, None);
        let c = load_file("[smtp]\nshed_after_ms = 200\n").unwrap();
        assert_eq!(c.smtp_shed_after, Some(std::time::Duration::from_millis(200)));
        let err = load_file("[smtp]\nmax_in_flight = 0\n").unwrap_err().to_string();
        assert!(err.starts_with("smtp.max_in_flight:"), "{err}");
        let err = load_file("[smtp]\nmax_connections = 0\n").unwrap_err().to_string();
        assert!(err.starts_with("smtp.max_connections:"), "{err}");
    }

    #[test]
    fn smtp_takes_a_tls_listener_with_its_certificate() {
        let c = load_file(
            "[smtp]\nlisten = \"127.0.0.1:2526\"\ntls_listen = \"127.0.0.1:4650\"\n\
             tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n",
        )
        .unwrap();
        assert_eq!(c.smtp_tls_listen.unwrap().to_string(), "127.0.0.1:4650");
        assert!(c.smtp_tls.is_some());
        for (file, field) in [
            ("[smtp]\ntls_listen = \"127.0.0.1:4650\"\n", "smtp.tls_listen:"),
            (
                "[smtp]\nlisten = \"off\"\ntls_listen = \"127.0.0.1:4650\"\ntls_cert = \"c\"\ntls_key = \"k\"\n",
                "smtp.tls_listen:",
            ),
            (
                "[smtp]\ntls_listen = \"nowhere\"\ntls_cert = \"c\"\ntls_key = \"k\"\n",
                "smtp.tls_listen:",
            ),
        ] {
            let err = load_file(file).unwrap_err().to_string();
            assert!(err.starts_with(field), "{file}: {err}");
        }
    }

    #[test]
    fn smtp_security_mistakes_are_refused() {
        let err = load_file("[smtp]\ntls_cert = \"c.pem\"\n").unwrap_err().to_string();
        assert!(err.starts_with("smtp.tls_cert:"), "{err}");
        let err = load_file("[smtp]\nauth = [{ username = \"\", password = \"pw\" }]\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("smtp.auth:"), "{err}");
        let err = load_file("[smtp]\nlisten = \"127.0.0.1:1\"\ntls = true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls"), "{err}");
    }
}

#[cfg(test)]
mod example_file {
    use super::*;

    #[test]
    fn the_example_config_file_loads() {
        let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/otpgate.example.toml"));
        let c = Config::load(Overrides {
            config: Some(path),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.otp.max_attempts, 5);
        assert!(c
            .smsc
            .accounts
            .iter()
            .any(|a| a.system_id == "qa-app" && a.throughput_per_sec == Some(100) && a.window == Some(10)));
        assert!(c.smsc.accounts.iter().any(|a| a.system_id == "otpgate"));
        assert_eq!(c.smtp.map(|a| a.to_string()), Some("127.0.0.1:2525".into()));
        assert_eq!(c.http.to_string(), "127.0.0.1:8080");
        // The example shows the defaults; the rate limits are off.
        assert_eq!(c.http_admission, HttpAdmission::default());
        assert_eq!(c.smtp_max_messages_per_sec, None);
        assert_eq!(c.log_retention, crate::delivery::log::DEFAULT_RETENTION);
        assert_eq!(c.cache_mib, crate::store::DEFAULT_CACHE_MIB);
        assert_eq!(c.min_free_mib, crate::store::DEFAULT_MIN_FREE_MIB);
    }
}
