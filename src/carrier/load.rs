//! Reading the carrier files (`carriers/*.toml`) into a validated
//! [`CarrierSet`], from a directory or from the copies compiled into the
//! binary.
//!
//! Every refusal names the file and the field, so that whoever edits a file
//! can fix it without reading this code. This is the only place that knows
//! the file format (documented in `carriers/README.md`); it reads files and
//! nothing else, and never falls back to a default for a missing field.

use std::collections::BTreeMap;
use std::path::Path;

use toml::{Table, Value};

use super::{
    message_state_of, Carrier, CarrierKind, CarrierSet, ChaosRates, ContentRule, Delay, FailureMode, Failures,
    ReceiptCodes, Setting, SettingKind, Settings,
};

/// Why the carrier files were refused.
#[derive(Debug, thiserror::Error)]
pub enum CarrierError {
    #[error("{file}: {source}")]
    Read { file: String, source: std::io::Error },
    #[error("{file}: line {line}: {message}")]
    Syntax { file: String, line: usize, message: String },
    #[error("{file}: field `{field}`: {message}")]
    Field {
        file: String,
        field: String,
        message: String,
    },
    #[error("{dir}: no carrier files (*.toml)")]
    Empty { dir: String },
}

/// The files compiled into the binary, so that it runs outside the repo.
/// A test checks this list against the `carriers/` directory.
const EMBEDDED: &[(&str, &str)] = &[
    ("ahamo.toml", include_str!("../../carriers/ahamo.toml")),
    ("au-mvno.toml", include_str!("../../carriers/au-mvno.toml")),
    ("au.toml", include_str!("../../carriers/au.toml")),
    ("docomo-mvno.toml", include_str!("../../carriers/docomo-mvno.toml")),
    ("docomo.toml", include_str!("../../carriers/docomo.toml")),
    ("linemo.toml", include_str!("../../carriers/linemo.toml")),
    ("povo.toml", include_str!("../../carriers/povo.toml")),
    ("rakuten-mvno.toml", include_str!("../../carriers/rakuten-mvno.toml")),
    ("rakuten.toml", include_str!("../../carriers/rakuten.toml")),
    ("softbank-mvno.toml", include_str!("../../carriers/softbank-mvno.toml")),
    ("softbank.toml", include_str!("../../carriers/softbank.toml")),
    ("uq.toml", include_str!("../../carriers/uq.toml")),
    ("ymobile.toml", include_str!("../../carriers/ymobile.toml")),
];

/// Fields a brand or MVNO never inherits from its host: who it is, and its
/// own mail service.
const NOT_INHERITED: &[&str] = &["id", "name", "kind", "host", "mail_domains"];

const TOP_LEVEL: &[&str] = &[
    "id",
    "name",
    "kind",
    "host",
    "portal",
    "shows_fixed_line_numbers",
    "validity_hours",
    "retry_schedule_seconds",
    "delay",
    "settings",
    "failures",
    "content_rule",
    "chaos",
    "mail_domains",
];

impl CarrierSet {
    /// Reads every `*.toml` in `dir`. An error names the file and the
    /// field: `carriers/au.toml: field `validity_hours`: expected an integer`.
    pub fn load_dir(dir: &Path) -> Result<CarrierSet, CarrierError> {
        let read_error = |file: String| move |source| CarrierError::Read { file, source };
        let entries = std::fs::read_dir(dir).map_err(read_error(dir.display().to_string()))?;
        let mut paths = Vec::new();
        for entry in entries {
            let path = entry.map_err(read_error(dir.display().to_string()))?.path();
            if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            let label = path.display().to_string();
            let text = std::fs::read_to_string(&path).map_err(read_error(label.clone()))?;
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            files.push(SourceFile { label, stem, text });
        }
        if files.is_empty() {
            return Err(CarrierError::Empty {
                dir: dir.display().to_string(),
            });
        }
        build(files)
    }

    /// The carrier files compiled into the binary.
    pub fn embedded() -> CarrierSet {
        let files = EMBEDDED
            .iter()
            .map(|(name, text)| SourceFile {
                label: format!("carriers/{name}"),
                stem: name.trim_end_matches(".toml").to_string(),
                text: (*text).to_string(),
            })
            .collect();
        // The embedded files are part of the source and a test loads them,
        // so a failure here is a build that should never have shipped.
        build(files).unwrap_or_else(|e| panic!("the embedded carrier files are invalid: {e}"))
    }
}

struct SourceFile {
    /// The path shown in errors.
    label: String,
    /// The file name without `.toml`, which must equal the id.
    stem: String,
    text: String,
}

struct Parsed {
    label: String,
    id: String,
    kind: CarrierKind,
    host: Option<String>,
    table: Table,
}

fn build(files: Vec<SourceFile>) -> Result<CarrierSet, CarrierError> {
    let mut parsed: BTreeMap<String, Parsed> = BTreeMap::new();
    for file in files {
        let table: Table = file.text.parse().map_err(|e: toml::de::Error| CarrierError::Syntax {
            file: file.label.clone(),
            line: e.span().map_or(1, |span| line_of(&file.text, span.start)),
            message: e.message().to_string(),
        })?;
        let node = Node {
            file: &file.label,
            path: String::new(),
            table: &table,
        };
        let id = node.string("id")?;
        if id != file.stem {
            return Err(node.error("id", format!("`{id}` must equal the file name `{}`", file.stem)));
        }
        if !id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            || id.is_empty()
        {
            return Err(node.error("id", "expected lower-case letters, digits and `-`"));
        }
        if let Some(other) = parsed.get(&id) {
            return Err(node.error("id", format!("`{id}` is already defined by {}", other.label)));
        }
        let kind = match node.string("kind")?.as_str() {
            "host" => CarrierKind::Host,
            "brand" => CarrierKind::Brand,
            "mvno" => CarrierKind::Mvno,
            _ => return Err(node.error("kind", "expected one of `host`, `brand`, `mvno`")),
        };
        let host = match (kind, node.optional("host")) {
            (CarrierKind::Host, None) => None,
            (CarrierKind::Host, Some(_)) => return Err(node.error("host", "a host network has no host")),
            (_, None) => return Err(node.error("host", "missing: a brand or MVNO names its host network")),
            (_, Some(_)) => Some(node.string("host")?),
        };
        parsed.insert(
            id.clone(),
            Parsed {
                label: file.label,
                id,
                kind,
                host,
                table,
            },
        );
    }

    let mut carriers = Vec::with_capacity(parsed.len());
    for p in parsed.values().filter(|p| p.kind == CarrierKind::Host) {
        let node = Node {
            file: &p.label,
            path: String::new(),
            table: &p.table,
        };
        carriers.push(read_carrier(&node, &p.id, p.kind, &p.id)?);
    }
    for p in parsed.values() {
        let Some(host_id) = &p.host else { continue };
        let own = Node {
            file: &p.label,
            path: String::new(),
            table: &p.table,
        };
        let host = match parsed.get(host_id) {
            Some(host) if host.kind == CarrierKind::Host => host,
            Some(_) => return Err(own.error("host", format!("`{host_id}` is not a host network"))),
            None => return Err(own.error("host", format!("unknown carrier `{host_id}`"))),
        };
        let mut merged = host.table.clone();
        for key in NOT_INHERITED {
            merged.remove(*key);
        }
        merge(&mut merged, &p.table);
        let node = Node {
            file: &p.label,
            path: String::new(),
            table: &merged,
        };
        carriers.push(read_carrier(&node, &p.id, p.kind, host_id)?);
    }

    let mut claimed: BTreeMap<&str, &str> = BTreeMap::new();
    for carrier in &carriers {
        for domain in &carrier.mail_domains {
            if let Some(other) = claimed.insert(domain, &carrier.id) {
                let label = &parsed[&carrier.id].label;
                let node_error = CarrierError::Field {
                    file: label.clone(),
                    field: "mail_domains".to_string(),
                    message: format!("`{domain}` is already claimed by `{other}`"),
                };
                return Err(node_error);
            }
        }
    }

    let rank = |c: &Carrier| match c.kind {
        CarrierKind::Host => 0,
        CarrierKind::Brand => 1,
        CarrierKind::Mvno => 2,
    };
    carriers.sort_by(|a, b| (&a.host, rank(a), &a.id).cmp(&(&b.host, rank(b), &b.id)));
    Ok(CarrierSet { carriers })
}

/// Lays `over` onto `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut Table, over: &Table) {
    for (key, value) in over {
        match (base.get_mut(key), value) {
            (Some(Value::Table(base_table)), Value::Table(over_table)) => merge(base_table, over_table),
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(1, |before| before.matches('\n').count() + 1)
}

fn read_carrier(node: &Node, id: &str, kind: CarrierKind, host: &str) -> Result<Carrier, CarrierError> {
    node.only(TOP_LEVEL)?;
    let name = node.table("name")?;
    name.only(&["ja", "en"])?;
    let portal = node.table("portal")?;
    portal.only(&["ja", "en"])?;
    let validity_hours = node.integer("validity_hours")?;
    if !(1..=720).contains(&validity_hours) {
        return Err(node.error("validity_hours", "expected between 1 and 720 hours"));
    }
    let retry_schedule_seconds = node.integers("retry_schedule_seconds")?;
    if retry_schedule_seconds.is_empty() || retry_schedule_seconds.iter().any(|s| !(1..=86_400).contains(s)) {
        return Err(node.error(
            "retry_schedule_seconds",
            "expected a non-empty list of waits between 1 and 86400 seconds",
        ));
    }
    let mail_domains = node.strings("mail_domains")?;
    if let Some(bad) = mail_domains.iter().find(|d| !is_domain(d)) {
        return Err(node.error("mail_domains", format!("`{bad}` is not a lower-case domain")));
    }
    Ok(Carrier {
        id: id.to_string(),
        name_ja: name.text("ja")?,
        name_en: name.text("en")?,
        kind,
        host: host.to_string(),
        portal_ja: portal.text("ja")?,
        portal_en: portal.text("en")?,
        shows_fixed_line_numbers: node.boolean("shows_fixed_line_numbers")?,
        validity_hours: validity_hours as u32,
        retry_schedule_seconds: retry_schedule_seconds.into_iter().map(|s| s as u32).collect(),
        delay: read_delay(&node.table("delay")?)?,
        settings: read_settings(&node.table("settings")?)?,
        failures: read_failures(&node.table("failures")?)?,
        content_rule: read_content_rule(&node.table("content_rule")?)?,
        chaos: read_chaos(&node.table("chaos")?)?,
        mail_domains,
    })
}

fn read_delay(node: &Node) -> Result<Delay, CarrierError> {
    node.only(&["min_ms", "median_ms", "p99_ms", "max_ms"])?;
    let delay = Delay {
        min_ms: node.integer("min_ms")?,
        median_ms: node.integer("median_ms")?,
        p99_ms: node.integer("p99_ms")?,
        max_ms: node.integer("max_ms")?,
    };
    if delay.min_ms < 0 {
        return Err(node.error("min_ms", "expected 0 or more"));
    }
    if delay.median_ms <= delay.min_ms {
        return Err(node.error("median_ms", "expected more than min_ms"));
    }
    if delay.p99_ms <= delay.median_ms {
        return Err(node.error("p99_ms", "expected more than median_ms"));
    }
    if delay.max_ms < delay.p99_ms {
        return Err(node.error("max_ms", "expected at least p99_ms"));
    }
    Ok(delay)
}

const SMS_PLACEHOLDERS: &[&str] = &["sender", "number", "portal"];
const MAIL_PLACEHOLDERS: &[&str] = &["domain", "portal"];

fn read_settings(node: &Node) -> Result<Settings, CarrierError> {
    let mut allowed: Vec<&str> = SettingKind::ALL.iter().map(|k| k.code()).collect();
    allowed.push("harmless");
    node.only(&allowed)?;
    let setting = |kind: SettingKind| {
        let placeholders = if kind == SettingKind::MailDomainFilter {
            MAIL_PLACEHOLDERS
        } else {
            SMS_PLACEHOLDERS
        };
        read_setting(&node.table(kind.code())?, placeholders)
    };
    let harmless = node
        .tables("harmless")?
        .iter()
        .map(|entry| read_setting(entry, SMS_PLACEHOLDERS))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Settings {
        reject_all: setting(SettingKind::RejectAll)?,
        reject_other_domestic: setting(SettingKind::RejectOtherDomestic)?,
        content_filter: setting(SettingKind::ContentFilter)?,
        blocked_senders: setting(SettingKind::BlockedSenders)?,
        allowed_senders: setting(SettingKind::AllowedSenders)?,
        call_restriction: setting(SettingKind::CallRestriction)?,
        mail_domain_filter: setting(SettingKind::MailDomainFilter)?,
        harmless,
    })
}

fn read_setting(node: &Node, placeholders: &[&str]) -> Result<Setting, CarrierError> {
    node.only(&["name", "remediation"])?;
    let name = node.table("name")?;
    name.only(&["ja", "en"])?;
    let remediation = node.table("remediation")?;
    remediation.only(&["ja", "en"])?;
    for lang in ["ja", "en"] {
        let text = remediation.text(lang)?;
        if let Some(unknown) = placeholders_in(&text)
            .into_iter()
            .find(|p| !placeholders.contains(&p.as_str()))
        {
            let known = placeholders
                .iter()
                .map(|p| format!("{{{p}}}"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(remediation.error(lang, format!("unknown placeholder `{{{unknown}}}` (known: {known})")));
        }
    }
    Ok(Setting {
        name_ja: name.text("ja")?,
        name_en: name.text("en")?,
        remediation_ja: remediation.text("ja")?,
        remediation_en: remediation.text("en")?,
    })
}

fn placeholders_in(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) => {
                found.push(after[..close].to_string());
                rest = &after[close + 1..];
            }
            None => {
                found.push(after.to_string());
                break;
            }
        }
    }
    found
}

fn read_failures(node: &Node) -> Result<Failures, CarrierError> {
    let codes: Vec<&str> = FailureMode::ALL.iter().map(|m| m.code()).collect();
    node.only(&codes)?;
    let mut seen: BTreeMap<(String, u16), &str> = BTreeMap::new();
    let mut read = |mode: FailureMode| -> Result<ReceiptCodes, CarrierError> {
        let entry = node.table(mode.code())?;
        let receipt = read_receipt(&entry, mode)?;
        if let Some(other) = seen.insert((receipt.stat.clone(), receipt.err), mode.code()) {
            return Err(entry.error(
                "err",
                format!(
                    "{} {} is already used by `{other}`: each failure needs its own codes",
                    receipt.stat,
                    receipt.err_text()
                ),
            ));
        }
        Ok(receipt)
    };
    Ok(Failures {
        absent_subscriber: read(FailureMode::AbsentSubscriber)?,
        unknown_subscriber: read(FailureMode::UnknownSubscriber)?,
        memory_capacity_exceeded: read(FailureMode::MemoryCapacityExceeded)?,
        teleservice_not_provisioned: read(FailureMode::TeleserviceNotProvisioned)?,
        call_barred: read(FailureMode::CallBarred)?,
        filter_rejection: read(FailureMode::FilterRejection)?,
        content_filter: read(FailureMode::ContentFilter)?,
        system_failure: read(FailureMode::SystemFailure)?,
    })
}

fn read_receipt(node: &Node, mode: FailureMode) -> Result<ReceiptCodes, CarrierError> {
    node.only(&["stat", "err", "network_error_code"])?;
    let stat = node.string("stat")?;
    let allowed: &[&str] = if mode == FailureMode::AbsentSubscriber {
        &["EXPIRED"]
    } else {
        &["UNDELIV", "REJECTD"]
    };
    if !allowed.contains(&stat.as_str()) {
        return Err(node.error("stat", format!("expected {}", allowed.join(" or "))));
    }
    let err = match node.value("err")? {
        Value::Integer(n) if (0..=999).contains(n) => *n as u16,
        Value::String(s) if s.len() == 3 && s.chars().all(|c| c.is_ascii_digit()) => s.parse().unwrap_or_default(),
        _ => {
            return Err(node.error(
                "err",
                "expected an integer from 0 to 999 (or three digits as a string, \"027\")",
            ))
        }
    };
    let network_error_code = match node.optional("network_error_code") {
        None => None,
        Some(_) => {
            let pair = node.integers("network_error_code")?;
            match pair.as_slice() {
                [kind @ 1..=3, code @ 0..=0xffff] => Some((*kind as u8, *code as u16)),
                _ => {
                    return Err(node.error(
                        "network_error_code",
                        "expected [network type, code]: type 1 (ANSI-136), 2 (IS-95) or 3 (GSM), code 0-65535",
                    ))
                }
            }
        }
    };
    let message_state = message_state_of(&stat).unwrap_or_default();
    Ok(ReceiptCodes {
        stat,
        err,
        message_state,
        network_error_code,
    })
}

fn read_content_rule(node: &Node) -> Result<ContentRule, CarrierError> {
    node.only(&[
        "reject_unknown_url_domains",
        "reject_urls_from_mobile_numbers",
        "allowed_url_domains",
        "patterns",
    ])?;
    let allowed_url_domains = node.strings("allowed_url_domains")?;
    if let Some(bad) = allowed_url_domains.iter().find(|d| !is_domain(d)) {
        return Err(node.error("allowed_url_domains", format!("`{bad}` is not a lower-case domain")));
    }
    let patterns = node.strings("patterns")?;
    if patterns.iter().any(|p| p.trim().is_empty()) {
        return Err(node.error("patterns", "an empty pattern would match every text"));
    }
    Ok(ContentRule {
        reject_unknown_url_domains: node.boolean("reject_unknown_url_domains")?,
        reject_urls_from_mobile_numbers: node.boolean("reject_urls_from_mobile_numbers")?,
        allowed_url_domains,
        patterns,
    })
}

fn read_chaos(node: &Node) -> Result<ChaosRates, CarrierError> {
    node.only(&[
        "throttle",
        "failure",
        "long_delay",
        "long_delay_min_ms",
        "long_delay_max_ms",
    ])?;
    let rates = ChaosRates {
        throttle: node.probability("throttle")?,
        failure: node.probability("failure")?,
        long_delay: node.probability("long_delay")?,
        long_delay_min_ms: node.integer("long_delay_min_ms")?,
        long_delay_max_ms: node.integer("long_delay_max_ms")?,
    };
    if rates.long_delay_min_ms < 0 || rates.long_delay_min_ms > rates.long_delay_max_ms {
        return Err(node.error("long_delay_min_ms", "expected at least 0 and at most long_delay_max_ms"));
    }
    Ok(rates)
}

fn is_domain(d: &str) -> bool {
    d.contains('.')
        && !d.starts_with('.')
        && !d.ends_with('.')
        && d.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
}

/// A table of one file, with the dotted path that leads to it, so that every
/// error names the field in full (`delay.median_ms`).
struct Node<'a> {
    file: &'a str,
    path: String,
    table: &'a Table,
}

impl<'a> Node<'a> {
    fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn error(&self, key: &str, message: impl Into<String>) -> CarrierError {
        CarrierError::Field {
            file: self.file.to_string(),
            field: self.field(key),
            message: message.into(),
        }
    }

    fn mismatch(&self, key: &str, expected: &str, found: &Value) -> CarrierError {
        self.error(key, format!("expected {expected}, found {}", describe(found)))
    }

    /// Refuses keys the format does not know: a typo must not silently
    /// become a default.
    fn only(&self, known: &[&str]) -> Result<(), CarrierError> {
        match self.table.keys().find(|k| !known.contains(&k.as_str())) {
            Some(unknown) => Err(self.error(unknown, "unknown field")),
            None => Ok(()),
        }
    }

    fn optional(&self, key: &str) -> Option<&'a Value> {
        self.table.get(key)
    }

    fn value(&self, key: &str) -> Result<&'a Value, CarrierError> {
        self.table.get(key).ok_or_else(|| self.error(key, "missing"))
    }

    fn table(&self, key: &str) -> Result<Node<'a>, CarrierError> {
        match self.value(key)? {
            Value::Table(table) => Ok(Node {
                file: self.file,
                path: self.field(key),
                table,
            }),
            other => Err(self.mismatch(key, "a table", other)),
        }
    }

    /// An array of tables (`[[settings.harmless]]`); absent means none.
    fn tables(&self, key: &str) -> Result<Vec<Node<'a>>, CarrierError> {
        let Some(value) = self.optional(key) else {
            return Ok(Vec::new());
        };
        let Value::Array(items) = value else {
            return Err(self.mismatch(key, "a list of tables", value));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::Table(table) => Ok(Node {
                    file: self.file,
                    path: format!("{}[{i}]", self.field(key)),
                    table,
                }),
                other => Err(self.mismatch(&format!("{key}[{i}]"), "a table", other)),
            })
            .collect()
    }

    fn string(&self, key: &str) -> Result<String, CarrierError> {
        match self.value(key)? {
            Value::String(s) => Ok(s.clone()),
            other => Err(self.mismatch(key, "a string", other)),
        }
    }

    /// A string that must say something.
    fn text(&self, key: &str) -> Result<String, CarrierError> {
        let s = self.string(key)?;
        if s.trim().is_empty() {
            return Err(self.error(key, "expected a non-empty string"));
        }
        Ok(s)
    }

    fn integer(&self, key: &str) -> Result<i64, CarrierError> {
        match self.value(key)? {
            Value::Integer(n) => Ok(*n),
            other => Err(self.mismatch(key, "an integer", other)),
        }
    }

    fn boolean(&self, key: &str) -> Result<bool, CarrierError> {
        match self.value(key)? {
            Value::Boolean(b) => Ok(*b),
            other => Err(self.mismatch(key, "a boolean (true or false)", other)),
        }
    }

    fn probability(&self, key: &str) -> Result<f64, CarrierError> {
        let p = match self.value(key)? {
            Value::Float(f) => *f,
            Value::Integer(n) => *n as f64,
            other => return Err(self.mismatch(key, "a probability (a number from 0 to 1)", other)),
        };
        if !(0.0..=1.0).contains(&p) {
            return Err(self.error(key, format!("expected a probability from 0 to 1, found {p}")));
        }
        Ok(p)
    }

    fn list(&self, key: &str, expected: &str) -> Result<&'a Vec<Value>, CarrierError> {
        match self.value(key)? {
            Value::Array(items) => Ok(items),
            other => Err(self.mismatch(key, expected, other)),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, CarrierError> {
        let expected = "a list of strings";
        self.list(key, expected)?
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(self.mismatch(key, expected, other)),
            })
            .collect()
    }

    fn integers(&self, key: &str) -> Result<Vec<i64>, CarrierError> {
        let expected = "a list of integers";
        self.list(key, expected)?
            .iter()
            .map(|item| match item {
                Value::Integer(n) => Ok(*n),
                other => Err(self.mismatch(key, expected, other)),
            })
            .collect()
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("the string {s:?}"),
        Value::Integer(n) => format!("the integer {n}"),
        Value::Float(f) => format!("the number {f}"),
        Value::Boolean(b) => format!("{b}"),
        Value::Datetime(_) => "a date".to_string(),
        Value::Array(_) => "a list".to_string(),
        Value::Table(_) => "a table".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn carriers_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("carriers")
    }

    fn embedded_text(name: &str) -> String {
        EMBEDDED
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| t.to_string())
            .expect(name)
    }

    /// Builds a set from the embedded files with `name` replaced by `text`
    /// (or added) and returns the error, which must exist.
    fn refused(name: &str, text: &str) -> String {
        let mut files: Vec<SourceFile> = EMBEDDED
            .iter()
            .filter(|(n, _)| *n != name)
            .map(|(n, t)| SourceFile {
                label: format!("carriers/{n}"),
                stem: n.trim_end_matches(".toml").into(),
                text: (*t).into(),
            })
            .collect();
        files.push(SourceFile {
            label: format!("carriers/{name}"),
            stem: name.trim_end_matches(".toml").into(),
            text: text.into(),
        });
        match build(files) {
            Ok(_) => panic!("{name} should be refused"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn embedded_loads_every_file() {
        let set = CarrierSet::embedded();
        let ids: Vec<&str> = set.all().iter().map(|c| c.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "au",
                "povo",
                "uq",
                "au-mvno",
                "docomo",
                "ahamo",
                "docomo-mvno",
                "rakuten",
                "rakuten-mvno",
                "softbank",
                "linemo",
                "ymobile",
                "softbank-mvno"
            ]
        );
        for carrier in set.all() {
            let host = set.host_of(&carrier.id).expect("host");
            assert_eq!(host.kind, CarrierKind::Host);
            assert_eq!(
                carrier.shows_fixed_line_numbers, host.shows_fixed_line_numbers,
                "{}",
                carrier.id
            );
        }
    }

    #[test]
    fn embedded_matches_the_carriers_directory() {
        let mut on_disk: Vec<String> = std::fs::read_dir(carriers_dir())
            .expect("carriers/")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.ends_with(".toml"))
            .collect();
        on_disk.sort();
        let embedded: Vec<String> = EMBEDDED.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(on_disk, embedded, "add new carrier files to EMBEDDED");
        let from_disk = CarrierSet::load_dir(&carriers_dir()).expect("carriers/ loads");
        assert_eq!(
            serde_json::to_value(&from_disk).ok(),
            serde_json::to_value(CarrierSet::embedded()).ok()
        );
    }

    #[test]
    fn brands_inherit_and_override() {
        let set = CarrierSet::embedded();
        let (docomo, ahamo) = (set.get("docomo").expect("docomo"), set.get("ahamo").expect("ahamo"));
        assert_eq!(ahamo.host, "docomo");
        assert_eq!(ahamo.validity_hours, docomo.validity_hours);
        assert_eq!(ahamo.failures, docomo.failures);
        assert_eq!(ahamo.settings.reject_all.name_ja, docomo.settings.reject_all.name_ja);
        assert_ne!(ahamo.portal_ja, docomo.portal_ja);
        assert!(ahamo.mail_domains.is_empty());
    }

    #[test]
    fn a_wrong_type_names_the_file_and_the_field() {
        let text = embedded_text("au.toml").replace("validity_hours = 72", "validity_hours = \"72\"");
        let error = refused("au.toml", &text);
        assert!(
            error.starts_with("carriers/au.toml: field `validity_hours`: expected an integer"),
            "{error}"
        );
    }

    #[test]
    fn load_dir_names_the_file_by_its_path() {
        let dir = std::env::temp_dir().join(format!("otpgate-carriers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let text = embedded_text("docomo.toml").replace("validity_hours = 72", "validity_hours = 7.2");
        std::fs::write(dir.join("docomo.toml"), text).expect("write");
        let error = CarrierSet::load_dir(&dir).map(|_| ()).map_err(|e| e.to_string());
        std::fs::remove_dir_all(&dir).ok();
        let expected = format!(
            "{}: field `validity_hours`: expected an integer",
            dir.join("docomo.toml").display()
        );
        assert!(error.as_ref().is_err_and(|e| e.starts_with(&expected)), "{error:?}");
    }

    #[test]
    fn a_missing_field_is_named() {
        let text = embedded_text("softbank.toml").replace("median_ms", "# median_ms");
        assert_eq!(
            refused("softbank.toml", &text),
            "carriers/softbank.toml: field `delay.median_ms`: missing"
        );
        let text = embedded_text("docomo.toml").replace("validity_hours = 72", "");
        assert_eq!(
            refused("docomo.toml", &text),
            "carriers/docomo.toml: field `validity_hours`: missing"
        );
    }

    #[test]
    fn an_unknown_host_is_refused() {
        let text = embedded_text("ahamo.toml").replace("host = \"docomo\"", "host = \"dokomo\"");
        assert_eq!(
            refused("ahamo.toml", &text),
            "carriers/ahamo.toml: field `host`: unknown carrier `dokomo`"
        );
        let text = embedded_text("ahamo.toml").replace("host = \"docomo\"", "host = \"uq\"");
        assert_eq!(
            refused("ahamo.toml", &text),
            "carriers/ahamo.toml: field `host`: `uq` is not a host network"
        );
    }

    #[test]
    fn other_mistakes_are_refused_with_their_field() {
        let check = |name: &str, from: &str, to: &str, expect: &str| {
            let text = embedded_text(name);
            assert!(text.contains(from), "{name} has no `{from}`");
            let error = refused(name, &text.replacen(from, to, 1));
            assert!(error.contains(expect), "{error}");
        };
        check(
            "au.toml",
            "validity_hours = 72",
            "validity_hours = 72\nvalidty = 1",
            "field `validty`: unknown field",
        );
        check(
            "au.toml",
            "id = \"au\"",
            "id = \"kddi\"",
            "field `id`: `kddi` must equal the file name `au`",
        );
        check(
            "au.toml",
            "throttle = ",
            "throttle = 2 #",
            "field `chaos.throttle`: expected a probability",
        );
        check(
            "au.toml",
            "stat = \"EXPIRED\"",
            "stat = \"UNDELIV\"",
            "field `failures.absent_subscriber.stat`",
        );
        check(
            "au.toml",
            "err = 13\n",
            "err = 101\n",
            "each failure needs its own codes",
        );
        check("au.toml", "{sender}", "{sendr}", "unknown placeholder `{sendr}`");
        check(
            "uq.toml",
            "mail_domains = [\"uqmobile.jp\"]",
            "mail_domains = [\"au.com\"]",
            "`au.com` is already claimed",
        );
        check(
            "docomo.toml",
            "retry_schedule_seconds = [",
            "retry_schedule_seconds = [\"60\", ",
            "expected a list of integers",
        );
        check(
            "docomo.toml",
            "kind = \"host\"",
            "kind = \"hots\"",
            "field `kind`: expected one of",
        );
        check("docomo.toml", "[delay]", "[delay\n", "carriers/docomo.toml: line ");
    }
}
