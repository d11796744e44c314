//! One SMTP conversation, without the socket: lines in, replies out.
//!
//! The `mailin` state machine decides which command may follow which and
//! decodes SASL; this module wraps it with what it lacks: the asynchronous
//! backend asked at RCPT and after DATA, SIZE, the null sender, limits, and
//! replies with enhanced status codes. `mailin`'s handler is synchronous, so
//! the backend's RCPT verdict is fetched before the line is fed to it and
//! handed over through the shared [`Transaction`]; the end of DATA is always
//! confirmed to `mailin` (whose rejection there would leave it stuck in DATA)
//! and the real answer is written by this module. STARTTLS is answered here
//! too: the connection does the handshake and then calls
//! [`Session::tls_started`], which forgets everything the client said in
//! plain text (RFC 3207). It never does I/O itself, never keeps more than
//! `max_message_bytes` of a message, and never logs a line of DATA or AUTH.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use mailin::{Action, AuthMechanism, Handler, Response};
use subtle::ConstantTimeEq;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::admission::{Backlog, RateLimit};

use super::command::{self, Command};
use super::{DataVerdict, Envelope, Limits, MailBackend, RcptVerdict, SmtpConfig, TlsIdentity};

/// What every session of one server shares.
pub(crate) struct Server {
    config: SmtpConfig,
    /// Offered as STARTTLS when present.
    tls: Option<TlsIdentity>,
    limits: Limits,
    backend: Arc<dyn MailBackend>,
    machine: mailin::SessionBuilder,
    accounts: Arc<[(String, String)]>,
    /// `max_messages_per_sec`, taken at MAIL.
    messages: RateLimit,
    /// `max_in_flight`: a permit from MAIL to the end of the transaction.
    transactions: Option<Arc<Semaphore>>,
    /// `shed_after`: how long captures take, asked at MAIL.
    backlog: Backlog,
}

impl Server {
    pub(crate) fn new(
        config: SmtpConfig,
        tls: Option<TlsIdentity>,
        limits: Limits,
        backend: Arc<dyn MailBackend>,
    ) -> Server {
        let mut machine = mailin::SessionBuilder::new(config.hostname.clone());
        if !config.auth.is_empty() {
            // AUTH is also accepted before STARTTLS (and without a
            // certificate): the server is a simulation meant for loopback
            // and test networks, and the OTP core's own client stays on
            // plain text. `mailin` never hears of TLS; this session handles
            // STARTTLS itself.
            machine
                .enable_auth(AuthMechanism::Plain)
                .enable_auth(AuthMechanism::Login)
                .insecure_enable_plaintext_auth();
        }
        let accounts = config
            .auth
            .iter()
            .filter(|(user, _)| !user.is_empty())
            .cloned()
            .collect::<Vec<_>>()
            .into();
        Server {
            messages: RateLimit::new(config.max_messages_per_sec),
            backlog: Backlog::new(config.shed_after),
            transactions: config
                .max_in_flight
                .map(|n| Arc::new(Semaphore::new(n.clamp(1, Semaphore::MAX_PERMITS)))),
            config,
            tls,
            limits,
            backend,
            machine,
            accounts,
        }
    }

    pub(crate) fn hostname(&self) -> &str {
        &self.config.hostname
    }

    pub(crate) fn tls(&self) -> Option<&TlsIdentity> {
        self.tls.as_ref()
    }

    /// How long a connection may say nothing (a TLS handshake included).
    pub(crate) fn idle_timeout(&self) -> std::time::Duration {
        self.limits.idle_timeout
    }

    pub(crate) fn counters(&self) -> &super::SmtpCounters {
        &self.config.counters
    }

    fn auth_enabled(&self) -> bool {
        !self.config.auth.is_empty()
    }

    /// Whether one more transaction may start now: transactions keep up,
    /// within the message rate and with a slot free. `Err` means no;
    /// `Ok(None)` yes, with no slot to hold (no `max_in_flight`).
    fn admit_message(&self) -> Result<Option<OwnedSemaphorePermit>, ()> {
        let now = self.limits.ticker.now();
        if !self.backlog.admit(now) {
            return Err(());
        }
        let slot = match &self.transactions {
            Some(slots) => Some(slots.clone().try_acquire_owned().map_err(|_| ())?),
            None => None,
        };
        if !self.messages.admit(now) {
            return Err(());
        }
        Ok(slot)
    }
}

/// The mail transaction in progress, shared with the `mailin` handler.
#[derive(Default)]
struct Transaction {
    /// The backend's verdict for the RCPT being fed to the state machine.
    pending_rcpt: Option<Response>,
    /// The message so far, dot-unstuffed; emptied once it is too large.
    body: Vec<u8>,
    /// Every byte received in this DATA, kept or not.
    body_len: usize,
    max_bytes: usize,
}

impl Transaction {
    fn append(&mut self, bytes: &[u8]) {
        self.body_len = self.body_len.saturating_add(bytes.len());
        if self.body_len > self.max_bytes {
            // Drop what was kept: the message will be refused anyway.
            self.body = Vec::new();
        } else {
            self.body.extend_from_slice(bytes);
        }
    }

    fn start_data(&mut self) {
        self.body = Vec::new();
        self.body_len = 0;
    }

    fn oversize(&self) -> bool {
        self.body_len > self.max_bytes
    }
}

/// The `mailin` handler: hands over prepared verdicts, collects DATA and
/// checks credentials.
struct Bridge {
    shared: Arc<Mutex<Transaction>>,
    accounts: Arc<[(String, String)]>,
}

impl Bridge {
    fn credentials_valid(&self, authorization: &str, user: &str, password: &str) -> bool {
        if user.is_empty() || !(authorization.is_empty() || authorization == user) {
            return false;
        }
        self.accounts
            .iter()
            .any(|(u, p)| u == user && bool::from(p.as_bytes().ct_eq(password.as_bytes())))
    }
}

fn lock(shared: &Mutex<Transaction>) -> MutexGuard<'_, Transaction> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

impl Handler for Bridge {
    fn rcpt(&mut self, _to: &str) -> Response {
        lock(&self.shared).pending_rcpt.take().unwrap_or(mailin::response::OK)
    }

    fn data_start(&mut self, _domain: &str, _from: &str, _is8bit: bool, _to: &[String]) -> Response {
        lock(&self.shared).start_data();
        mailin::response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        lock(&self.shared).append(buf);
        Ok(())
    }

    fn auth_plain(&mut self, authorization_id: &str, authentication_id: &str, password: &str) -> Response {
        if self.credentials_valid(authorization_id, authentication_id, password) {
            mailin::response::AUTH_OK
        } else {
            mailin::response::INVALID_CREDENTIALS
        }
    }

    fn auth_login(&mut self, username: &str, password: &str) -> Response {
        if self.credentials_valid("", username, password) {
            mailin::response::AUTH_OK
        } else {
            mailin::response::INVALID_CREDENTIALS
        }
    }
}

/// Where the conversation stands, beyond what `mailin` tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Command,
    /// A SASL exchange is waiting for the client's next response line.
    AuthResponse,
    /// Reading the message; `mid_line` while the rest of an overlong line
    /// arrives in chunks.
    Data {
        mid_line: bool,
    },
}

/// What the connection does after one input.
#[derive(Debug, Default)]
pub(crate) struct Step {
    pub reply: Option<String>,
    pub close: bool,
    /// The reply was `220 Ready to start TLS`: the TLS handshake comes next.
    pub start_tls: bool,
}

impl Step {
    fn silent() -> Step {
        Step::default()
    }

    fn reply(code: u16, enhanced: &str, text: &str) -> Step {
        Step {
            reply: Some(reply(code, enhanced, text)),
            close: code == 421,
            start_tls: false,
        }
    }
}

/// One reply line; the text loses any line breaks so a backend cannot split
/// the reply.
pub(crate) fn reply(code: u16, enhanced: &str, text: &str) -> String {
    let text: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if enhanced.is_empty() {
        format!("{code} {text}\r\n")
    } else {
        format!("{code} {enhanced} {text}\r\n")
    }
}

pub(crate) struct Session {
    server: Arc<Server>,
    machine: mailin::Session<Bridge>,
    shared: Arc<Mutex<Transaction>>,
    phase: Phase,
    ip: IpAddr,
    peer: String,
    /// The connection runs over TLS (after STARTTLS).
    tls_active: bool,
    helo: Option<String>,
    /// The reverse path of the open transaction ("" for the null sender).
    from: Option<String>,
    /// The open transaction's `max_in_flight` slot, given back when it ends.
    slot: Option<OwnedSemaphorePermit>,
    rcpts: Vec<String>,
    authenticated: bool,
    errors: u32,
    junk: u32,
    /// After a MAIL that admission control refused (451), how many RCPT
    /// and DATA commands pipelined behind it may still be answered 503
    /// without counting as the client's mistakes.
    excused: usize,
}

impl Session {
    pub(crate) fn new(server: Arc<Server>, ip: IpAddr, peer: String) -> Session {
        let (machine, shared) = Session::machine(&server, ip);
        Session {
            server,
            machine,
            shared,
            phase: Phase::Command,
            ip,
            peer,
            tls_active: false,
            helo: None,
            from: None,
            slot: None,
            rcpts: Vec::new(),
            authenticated: false,
            errors: 0,
            junk: 0,
            excused: 0,
        }
    }

    /// A fresh `mailin` state machine and the transaction it shares.
    fn machine(server: &Server, ip: IpAddr) -> (mailin::Session<Bridge>, Arc<Mutex<Transaction>>) {
        let shared = Arc::new(Mutex::new(Transaction {
            max_bytes: server.config.max_message_bytes,
            ..Default::default()
        }));
        let bridge = Bridge {
            shared: shared.clone(),
            accounts: server.accounts.clone(),
        };
        (server.machine.build(ip, bridge), shared)
    }

    /// The TLS handshake after STARTTLS succeeded: the session starts over
    /// as if the client had just connected (RFC 3207 section 4.2): no
    /// HELO, no AUTH, no transaction. The error counters carry over.
    pub(crate) fn tls_started(&mut self) {
        let (machine, shared) = Session::machine(&self.server, self.ip);
        self.machine = machine;
        self.shared = shared;
        self.phase = Phase::Command;
        self.helo = None;
        self.from = None;
        self.slot = None;
        self.rcpts.clear();
        self.authenticated = false;
        self.tls_active = true;
    }

    pub(crate) fn idle_timeout(&self) -> std::time::Duration {
        self.server.idle_timeout()
    }

    pub(crate) fn greeting(&self) -> String {
        format!("220 {} ESMTP otpgate\r\n", self.server.hostname())
    }

    pub(crate) fn hostname(&self) -> &str {
        self.server.hostname()
    }

    pub(crate) fn in_data(&self) -> bool {
        matches!(self.phase, Phase::Data { .. })
    }

    /// The most the connection may read as one line now.
    pub(crate) fn line_limit(&self) -> usize {
        if self.in_data() {
            self.server.limits.data_chunk
        } else {
            self.server.limits.command_line
        }
    }

    /// One line from the client. `complete` is false for an overlong line:
    /// in DATA a chunk of it (more follows), otherwise its start (the rest
    /// has been skipped).
    pub(crate) async fn input(&mut self, bytes: &[u8], complete: bool) -> Step {
        match self.phase {
            Phase::Data { mid_line } => self.data_line(bytes, complete, mid_line).await,
            Phase::AuthResponse if !complete => {
                self.cancel_auth();
                self.client_error(500, "5.5.2", "Error: line too long")
            }
            Phase::AuthResponse => self.auth_response(bytes),
            Phase::Command if !complete => self.client_error(500, "5.5.2", "Error: line too long"),
            Phase::Command => self.command(bytes).await,
        }
    }

    async fn command(&mut self, line: &[u8]) -> Step {
        let command = match command::parse(line) {
            Ok(command) => command,
            Err(e) => return self.client_error(e.code, e.enhanced, e.text),
        };
        match command {
            Command::Hello {
                extended,
                domain,
                canonical,
            } => {
                let response = self.machine.process(&canonical);
                if response.code != 250 {
                    return self.machine_error(response);
                }
                self.reset_transaction();
                self.helo = Some(domain.clone());
                if extended {
                    Step {
                        reply: Some(self.ehlo_reply(&domain)),
                        ..Step::silent()
                    }
                } else {
                    Step::reply(250, "", &format!("{} Hello {}", self.server.hostname(), domain))
                }
            }
            Command::Mail { path, size, canonical } => {
                self.excused = 0;
                if self.helo.is_none() {
                    return self.client_error(503, "5.5.1", "Error: send HELO/EHLO first");
                }
                if self.server.auth_enabled() && !self.authenticated {
                    return self.client_error(530, "5.7.0", "Authentication required");
                }
                if self.from.is_some() {
                    return self.client_error(503, "5.5.1", "Error: nested MAIL command");
                }
                if size.is_some_and(|s| s > self.server.config.max_message_bytes as u64) {
                    return Step::reply(552, "5.3.4", "Message size exceeds fixed maximum message size");
                }
                // No room on the disk, or the store failed: refused
                // before anything is kept; the server's state, no error.
                if let Some(refusal) = self.server.backend.refusal() {
                    self.excused = self.server.limits.max_recipients + 1;
                    super::bump(&self.server.counters().refused_storage);
                    return storage_refused(&refusal);
                }
                // Over the message rate or with every slot taken: a
                // transient refusal, before anything of the transaction is
                // kept. It is the server's state, not the client's mistake,
                // so it counts no error.
                let Ok(slot) = self.server.admit_message() else {
                    // Its group's recipients and DATA.
                    self.excused = self.server.limits.max_recipients + 1;
                    super::bump(&self.server.counters().refused_busy);
                    return Step::reply(451, "4.3.2", "Too many messages right now, try again later");
                };
                let response = self.machine.process(&canonical);
                if response.code != 250 {
                    return self.machine_error(response);
                }
                let text = format!("Sender <{path}> OK");
                self.from = Some(path);
                self.slot = slot;
                self.rcpts.clear();
                Step::reply(250, "2.1.0", &text)
            }
            Command::Rcpt { path, canonical } => self.rcpt(path, canonical).await,
            Command::Data => {
                if self.from.is_none() {
                    return self.need_mail();
                }
                if self.rcpts.is_empty() {
                    return self.client_error(554, "5.5.1", "Error: no valid recipients");
                }
                let response = self.machine.process(b"DATA\r\n");
                if response.code != 354 {
                    return self.machine_error(response);
                }
                lock(&self.shared).start_data();
                self.phase = Phase::Data { mid_line: false };
                Step::reply(354, "", "End data with <CR><LF>.<CR><LF>")
            }
            Command::Rset => {
                if let Some(step) = self.junk_limit() {
                    return step;
                }
                let response = self.machine.process(b"RSET\r\n");
                if response.code != 250 {
                    return self.machine_error(response);
                }
                self.reset_transaction();
                Step::reply(250, "2.0.0", "Ok")
            }
            Command::Noop => self.junk_limit().unwrap_or_else(|| Step::reply(250, "2.0.0", "Ok")),
            Command::Quit => Step {
                reply: Some(reply(221, "2.0.0", "Bye")),
                close: true,
                start_tls: false,
            },
            Command::Vrfy => self
                .junk_limit()
                .unwrap_or_else(|| Step::reply(502, "5.5.1", "VRFY command is disabled")),
            Command::Expn => self
                .junk_limit()
                .unwrap_or_else(|| Step::reply(502, "5.5.1", "EXPN command is disabled")),
            Command::Help => self.junk_limit().unwrap_or_else(|| {
                Step::reply(
                    214,
                    "2.0.0",
                    "Commands: HELO EHLO STARTTLS AUTH MAIL RCPT DATA RSET NOOP QUIT HELP",
                )
            }),
            Command::StartTls => self.start_tls(),
            Command::Auth { canonical } => {
                if !self.server.auth_enabled() {
                    return self.client_error(503, "5.5.1", "Error: authentication not enabled");
                }
                if self.helo.is_none() {
                    return self.client_error(503, "5.5.1", "Error: send EHLO first");
                }
                if self.authenticated {
                    return self.client_error(503, "5.5.1", "Error: already authenticated");
                }
                if self.from.is_some() {
                    return self.client_error(503, "5.5.1", "Error: MAIL transaction in progress");
                }
                let response = self.machine.process(&canonical);
                self.after_auth(response, false)
            }
            Command::Unknown => self.client_error(500, "5.5.2", "Error: command not recognized"),
        }
    }

    fn start_tls(&mut self) -> Step {
        if self.server.tls.is_none() {
            return self.client_error(502, "5.5.1", "STARTTLS not supported");
        }
        if self.tls_active {
            return self.client_error(503, "5.5.1", "Error: TLS already active");
        }
        if self.from.is_some() {
            return self.client_error(503, "5.5.1", "Error: MAIL transaction in progress");
        }
        Step {
            reply: Some(reply(220, "2.0.0", "Ready to start TLS")),
            start_tls: true,
            ..Step::silent()
        }
    }

    async fn rcpt(&mut self, path: String, canonical: Vec<u8>) -> Step {
        let Some(from) = self.from.clone() else {
            return self.need_mail();
        };
        if self.rcpts.len() >= self.server.limits.max_recipients {
            return Step::reply(452, "4.5.3", "Error: too many recipients");
        }
        let verdict = self.server.backend.rcpt(&from, &path).await;
        let refusal = match verdict {
            RcptVerdict::Accept => None,
            RcptVerdict::Reject { code, enhanced, text } => {
                // Anything that is not a refusal code would let `mailin` take
                // the recipient; a backend's mistake must not do that.
                let code = if (400..600).contains(&code) { code } else { 550 };
                Some((code, reply(code, &enhanced, &text)))
            }
        };
        lock(&self.shared).pending_rcpt = Some(match &refusal {
            None => mailin::response::OK,
            Some((code, _)) => Response::custom(*code, String::new()),
        });
        let response = self.machine.process(&canonical);
        lock(&self.shared).pending_rcpt = None;
        match refusal {
            None if response.code == 250 => {
                let text = format!("Recipient <{path}> OK");
                self.rcpts.push(path);
                Step::reply(250, "2.1.5", &text)
            }
            Some((code, text)) if response.code == code => Step {
                reply: Some(text),
                close: code == 421,
                start_tls: false,
            },
            _ => self.machine_error(response),
        }
    }

    async fn data_line(&mut self, bytes: &[u8], complete: bool, mid_line: bool) -> Step {
        self.phase = Phase::Data { mid_line: !complete };
        if mid_line {
            // The rest of an overlong line: no dot to unstuff, no end marker.
            lock(&self.shared).append(bytes);
            return Step::silent();
        }
        if !complete {
            self.machine.process(bytes);
            return Step::silent();
        }
        let line = with_crlf(bytes);
        if line == b".\r\n" {
            return self.end_of_data().await;
        }
        self.machine.process(&line);
        Step::silent()
    }

    async fn end_of_data(&mut self) -> Step {
        self.phase = Phase::Command;
        // `mailin` only ever hears that DATA ended well, so that it returns
        // to its ready state; the answer the client gets is decided here.
        self.machine.process(b".\r\n");
        let (raw, oversize) = {
            let mut tx = lock(&self.shared);
            let oversize = tx.oversize();
            let raw = std::mem::take(&mut tx.body);
            tx.start_data();
            (raw, oversize)
        };
        let envelope = Envelope {
            helo: self.helo.clone().unwrap_or_default(),
            from: self.from.take().unwrap_or_default(),
            rcpts: std::mem::take(&mut self.rcpts),
            peer: self.peer.clone(),
        };
        // The slot is given back once the answer is decided.
        let _slot = self.slot.take();
        if oversize {
            return Step::reply(552, "5.3.4", "Message size exceeds fixed maximum message size");
        }
        if let Some(refusal) = self.server.backend.refusal() {
            super::bump(&self.server.counters().refused_storage);
            return storage_refused(&refusal);
        }
        // The backlog hears how long the capture took, the server's part of
        // the transaction (see `SmtpConfig::shed_after`).
        let started = self.server.limits.ticker.now();
        let verdict = self.server.backend.data(envelope, raw).await;
        let now = self.server.limits.ticker.now();
        self.server
            .backlog
            .finished(now.saturating_duration_since(started), now);
        match verdict {
            DataVerdict::Accepted { id } => {
                super::bump(&self.server.counters().accepted);
                // As Postfix does: a message taken forgives the session's
                // earlier errors and junk commands, so a pooled connection
                // that sends RSET or NOOP between messages is never cut off
                // however many messages it carries.
                self.errors = 0;
                self.junk = 0;
                Step::reply(250, "2.0.0", &format!("Ok: queued as {id}"))
            }
            DataVerdict::Reject { code, enhanced, text } => {
                let code = if (400..600).contains(&code) { code } else { 554 };
                Step::reply(code, &enhanced, &text)
            }
        }
    }

    fn auth_response(&mut self, line: &[u8]) -> Step {
        let line = with_crlf(line);
        if line == b"*\r\n" {
            self.cancel_auth();
            return self.client_error(501, "5.7.0", "Authentication aborted");
        }
        let response = self.machine.process(&line);
        self.after_auth(response, true)
    }

    fn after_auth(&mut self, response: Response, answering_challenge: bool) -> Step {
        match response.code {
            334 => {
                self.phase = Phase::AuthResponse;
                let challenge = response.buffer().unwrap_or_default();
                Step {
                    reply: Some(String::from_utf8_lossy(&challenge).into_owned()),
                    ..Step::silent()
                }
            }
            235 => {
                self.phase = Phase::Command;
                self.authenticated = true;
                Step::reply(235, "2.7.0", "Authentication successful")
            }
            535 => {
                self.phase = Phase::Command;
                self.client_error(535, "5.7.8", "Error: authentication failed")
            }
            500 if answering_challenge => {
                // `mailin` stays in its SASL state after a line it cannot
                // decode; take it out before answering.
                self.cancel_auth();
                self.client_error(501, "5.5.2", "Error: cannot decode response")
            }
            500 | 502 => self.client_error(504, "5.5.4", "Unrecognized authentication type"),
            _ => {
                self.phase = Phase::Command;
                self.machine_error(response)
            }
        }
    }

    /// Ends a SASL exchange in `mailin` by answering its challenges with
    /// empty credentials, which never authenticate.
    fn cancel_auth(&mut self) {
        for _ in 0..3 {
            if self.machine.process(b"=\r\n").code != 334 {
                break;
            }
        }
        self.phase = Phase::Command;
    }

    fn ehlo_reply(&self, domain: &str) -> String {
        let mut lines = vec![
            format!("{} Hello {}", self.server.hostname(), domain),
            format!("SIZE {}", self.server.config.max_message_bytes),
            "8BITMIME".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            "PIPELINING".to_string(),
        ];
        if self.server.tls.is_some() && !self.tls_active {
            lines.push("STARTTLS".to_string());
        }
        if self.server.auth_enabled() {
            lines.push("AUTH PLAIN LOGIN".to_string());
        }
        lines.push("HELP".to_string());
        let last = lines.len() - 1;
        lines
            .iter()
            .enumerate()
            .map(|(i, line)| format!("250{}{}\r\n", if i == last { ' ' } else { '-' }, line))
            .collect()
    }

    fn reset_transaction(&mut self) {
        self.from = None;
        self.slot = None;
        self.rcpts.clear();
        lock(&self.shared).start_data();
    }

    /// RCPT or DATA outside a transaction: the client's mistake, unless
    /// they were pipelined behind a MAIL this server refused for load (an
    /// RFC 2920 group goes on after a refusal), as many as one group can
    /// hold.
    fn need_mail(&mut self) -> Step {
        if self.excused > 0 {
            self.excused -= 1;
            return Step::reply(503, "5.5.1", "Error: need MAIL command");
        }
        self.client_error(503, "5.5.1", "Error: need MAIL command")
    }

    /// A reply to a client mistake; too many of them end the connection.
    fn client_error(&mut self, code: u16, enhanced: &str, text: &str) -> Step {
        self.errors += 1;
        if self.errors > self.server.limits.max_errors {
            return Step::reply(
                421,
                "4.7.0",
                &format!("{} Error: too many errors", self.server.hostname()),
            );
        }
        Step::reply(code, enhanced, text)
    }

    /// Counts a command that moves no mail; too many end the connection.
    fn junk_limit(&mut self) -> Option<Step> {
        self.junk += 1;
        (self.junk > self.server.limits.max_junk_commands).then(|| {
            Step::reply(
                421,
                "4.7.0",
                &format!("{} Error: too many commands", self.server.hostname()),
            )
        })
    }

    /// A refusal from `mailin`'s state machine, in this server's words.
    fn machine_error(&mut self, response: Response) -> Step {
        if response.action == Action::Close || response.code == 421 {
            return Step::reply(
                421,
                "4.3.0",
                &format!("{} Error: session state lost", self.server.hostname()),
            );
        }
        match response.code {
            503 => self.client_error(503, "5.5.1", "Error: bad sequence of commands"),
            500 => self.client_error(500, "5.5.2", "Error: syntax error"),
            502 => self.client_error(501, "5.5.4", "Error: missing parameter"),
            550 => self.client_error(550, "5.7.0", "Error: use EHLO and authenticate"),
            code => self.client_error(code, "", "Error"),
        }
    }
}

/// The line with a CRLF ending, also when the client sent a bare LF.
fn with_crlf(line: &[u8]) -> Vec<u8> {
    let mut out = line.to_vec();
    if out.ends_with(b"\n") && !out.ends_with(b"\r\n") {
        out.pop();
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// RFC 5321's answer to a full disk, `452 4.3.1` (RFC 3463: mail system
/// full), as Postfix gives it while its queue is short of space; a store
/// that failed is a local error, `451 4.3.0`. Both are transient: a
/// client keeps the message and tries again.
fn storage_refused(refusal: &crate::store::Refusal) -> Step {
    match refusal.is_temporary() {
        true => Step::reply(452, "4.3.1", "Insufficient system storage, try again later"),
        false => Step::reply(
            451,
            "4.3.0",
            "Local error in processing: storage failed, try again later",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::future::BoxFuture;

    /// Accepts everyone except `nobody@…` and keeps the last message.
    #[derive(Default)]
    struct Recorder {
        last: Mutex<Option<(Envelope, Vec<u8>)>>,
    }

    impl MailBackend for Recorder {
        fn rcpt(&self, _from: &str, to: &str) -> BoxFuture<'_, RcptVerdict> {
            let verdict = if to.starts_with("nobody@") {
                RcptVerdict::Reject {
                    code: 550,
                    enhanced: "5.1.1".into(),
                    text: "User unknown".into(),
                }
            } else {
                RcptVerdict::Accept
            };
            Box::pin(async move { verdict })
        }

        fn data(&self, envelope: Envelope, raw: Vec<u8>) -> BoxFuture<'_, DataVerdict> {
            *self.last.lock().unwrap() = Some((envelope, raw));
            Box::pin(async { DataVerdict::Accepted { id: "1".into() } })
        }
    }

    fn session(config: SmtpConfig) -> (Session, Arc<Recorder>) {
        session_with(config, None)
    }

    fn session_with(config: SmtpConfig, tls: Option<TlsIdentity>) -> (Session, Arc<Recorder>) {
        let backend = Arc::new(Recorder::default());
        let server = Arc::new(Server::new(config, tls, Limits::default(), backend.clone()));
        (
            Session::new(server, IpAddr::from([127, 0, 0, 1]), "127.0.0.1:1".into()),
            backend,
        )
    }

    /// Feeds each line and checks the reply codes (0 for no reply).
    async fn check(session: &mut Session, dialogue: &[(&str, u16)]) {
        for (line, want) in dialogue {
            let step = session.input(line.as_bytes(), true).await;
            let code = step
                .reply
                .as_deref()
                .map(|r| r[..3].parse::<u16>().unwrap())
                .unwrap_or(0);
            assert_eq!(code, *want, "{line:?} -> {:?}", step.reply);
        }
    }

    #[tokio::test]
    async fn a_transaction_runs_and_unstuffs_dots() {
        let (mut s, backend) = session(SmtpConfig::default());
        check(
            &mut s,
            &[
                ("EHLO client\r\n", 250),
                ("MAIL FROM:<a@example.com> SIZE=20\r\n", 250),
                ("RCPT TO:<nobody@example.org>\r\n", 550),
                ("DATA\r\n", 554),
                ("RCPT TO:<b@example.org>\r\n", 250),
                ("DATA\r\n", 354),
                ("Subject: hi\r\n", 0),
                ("\n", 0),
                ("..dot\r\n", 0),
                (".\r\n", 250),
                ("MAIL FROM:<>\r\n", 250),
                ("RSET\r\n", 250),
                ("QUIT\r\n", 221),
            ],
        )
        .await;
        let (envelope, raw) = backend.last.lock().unwrap().take().unwrap();
        assert_eq!(raw, b"Subject: hi\r\n\r\n.dot\r\n");
        assert_eq!(envelope.rcpts, vec!["b@example.org"]);
        assert_eq!(envelope.helo, "client");
    }

    #[tokio::test]
    async fn sequence_errors_and_refusals() {
        let (mut s, _) = session(SmtpConfig::default());
        check(
            &mut s,
            &[
                ("MAIL FROM:<a@example.com>\r\n", 503),
                ("HELO client\r\n", 250),
                ("RCPT TO:<b@example.org>\r\n", 503),
                ("VRFY root\r\n", 502),
                ("STARTTLS\r\n", 502),
                ("AUTH PLAIN AGEAYg==\r\n", 503),
                ("FROB\r\n", 500),
                ("MAIL FROM:<a@example.com> SIZE=99999999999\r\n", 552),
                ("NOOP\r\n", 250),
            ],
        )
        .await;
        let step = s.input(b"MAIL FROM:<aaaa", false).await;
        assert!(step.reply.unwrap().starts_with("500 5.5.2"));
    }

    #[tokio::test]
    async fn an_oversized_message_is_refused_and_not_kept() {
        let config = SmtpConfig {
            max_message_bytes: 100,
            ..SmtpConfig::default()
        };
        let (mut s, backend) = session(config);
        check(
            &mut s,
            &[
                ("EHLO c\r\n", 250),
                ("MAIL FROM:<a@x.example>\r\n", 250),
                ("RCPT TO:<b@y.example>\r\n", 250),
                ("DATA\r\n", 354),
            ],
        )
        .await;
        for _ in 0..20 {
            assert!(s.input(b"0123456789\r\n", true).await.reply.is_none());
        }
        assert!(lock(&s.shared).body.is_empty());
        let step = s.input(b".\r\n", true).await;
        assert!(step.reply.unwrap().starts_with("552 5.3.4"));
        assert!(backend.last.lock().unwrap().is_none());
        check(&mut s, &[("MAIL FROM:<a@x.example>\r\n", 250)]).await;
    }

    #[tokio::test]
    async fn auth_is_required_when_accounts_exist() {
        let config = SmtpConfig {
            auth: vec![("qa".into(), "secret".into())],
            ..SmtpConfig::default()
        };
        let (mut s, _) = session(config.clone());
        // AHFhAHNlY3JldA== is "\0qa\0secret"; AHFhAHdyb25n is "\0qa\0wrong".
        check(
            &mut s,
            &[
                ("EHLO c\r\n", 250),
                ("MAIL FROM:<a@x.example>\r\n", 530),
                ("AUTH PLAIN AHFhAHdyb25n\r\n", 535),
                ("AUTH PLAIN\r\n", 334),
                ("*\r\n", 501),
                ("AUTH LOGIN\r\n", 334),
                ("cWE=\r\n", 334),
                ("c2VjcmV0\r\n", 235),
                ("MAIL FROM:<a@x.example>\r\n", 250),
            ],
        )
        .await;
        let (mut s, _) = session(config);
        check(
            &mut s,
            &[
                ("EHLO c\r\n", 250),
                ("AUTH PLAIN AHFhAHNlY3JldA==\r\n", 235),
                ("MAIL FROM:<a@x.example>\r\n", 250),
            ],
        )
        .await;
    }

    #[tokio::test]
    async fn ehlo_advertises_size_and_auth() {
        let config = SmtpConfig {
            auth: vec![("qa".into(), "pw".into())],
            max_message_bytes: 1234,
            ..SmtpConfig::default()
        };
        let (mut s, _) = session(config);
        let reply = s.input(b"EHLO c\r\n", true).await.reply.unwrap();
        assert!(reply.contains("250-SIZE 1234\r\n"), "{reply}");
        assert!(reply.contains("250-AUTH PLAIN LOGIN\r\n"), "{reply}");
        assert!(reply.ends_with("250 HELP\r\n"), "{reply}");
    }

    fn fixture_identity() -> TlsIdentity {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tls");
        TlsIdentity::load(&dir.join("cert.pem"), &dir.join("key.pem")).unwrap()
    }

    #[tokio::test]
    async fn starttls_is_offered_with_a_certificate_and_resets_the_session() {
        let config = SmtpConfig {
            auth: vec![("qa".into(), "secret".into())],
            ..SmtpConfig::default()
        };
        let (mut s, _) = session_with(config, Some(fixture_identity()));
        let ehlo = s.input(b"EHLO c\r\n", true).await.reply.unwrap();
        assert!(ehlo.contains("250-STARTTLS\r\n"), "{ehlo}");
        check(
            &mut s,
            &[
                ("STARTTLS now\r\n", 501),
                ("AUTH PLAIN AHFhAHNlY3JldA==\r\n", 235),
                ("MAIL FROM:<a@x.example>\r\n", 250),
                ("STARTTLS\r\n", 503),
                ("RSET\r\n", 250),
            ],
        )
        .await;
        let step = s.input(b"STARTTLS\r\n", true).await;
        assert!(step.start_tls && !step.close);
        assert_eq!(step.reply.as_deref(), Some("220 2.0.0 Ready to start TLS\r\n"));
        s.tls_started();
        // Everything said in plain text is forgotten: HELO and AUTH again.
        check(&mut s, &[("MAIL FROM:<a@x.example>\r\n", 503), ("STARTTLS\r\n", 503)]).await;
        let ehlo = s.input(b"EHLO c\r\n", true).await.reply.unwrap();
        assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
        assert!(ehlo.contains("250-AUTH PLAIN LOGIN\r\n"), "{ehlo}");
        check(
            &mut s,
            &[
                ("MAIL FROM:<a@x.example>\r\n", 530),
                ("AUTH PLAIN AHFhAHNlY3JldA==\r\n", 235),
                ("MAIL FROM:<a@x.example>\r\n", 250),
            ],
        )
        .await;
    }

    #[tokio::test]
    async fn without_a_certificate_starttls_is_not_offered() {
        let (mut s, _) = session(SmtpConfig::default());
        let ehlo = s.input(b"EHLO c\r\n", true).await.reply.unwrap();
        assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
        check(&mut s, &[("STARTTLS\r\n", 502)]).await;
    }

    #[tokio::test]
    async fn too_many_errors_close_the_connection() {
        let (mut s, _) = session(SmtpConfig::default());
        for _ in 0..10 {
            assert!(!s.input(b"FROB\r\n", true).await.close);
        }
        let step = s.input(b"FROB\r\n", true).await;
        assert!(step.close);
        assert!(step.reply.unwrap().starts_with("421 4.7.0"));
    }
}
