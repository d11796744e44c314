//! Wires the parts together: opens the store, loads the carriers, starts the
//! clock, the SMSC, the SMTP server, the OTP core's clients and the HTTP
//! API, and stops them all on one shutdown signal.

use std::net::SocketAddr;
use std::sync::Arc;

use rand::rngs::OsRng;
use rand::RngCore;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;

use crate::carrier::{CarrierSet, SenderProfile};
use crate::clock::Clock;
use crate::config::Config;
use crate::delivery::email::EmailClientConfig;
use crate::delivery::log::{DeliveryLog, Event, State};
use crate::delivery::outbound::{MailLink, Outbound, ReceiptRecorder};
use crate::delivery::sms::{SmsClient, SmsClientConfig};
use crate::http::Ctx;
use crate::member::{self, Channel};
use crate::service::{load_or_create_key, OtpService};
use crate::shutdown::{self, Trigger};
use crate::sim::sms::SmsNetwork;
use crate::sim::World;
use crate::smsc::{Account, ReceiptHub, SmscConfig};
use crate::smtp::MailWorld;
use crate::smtp::SmtpConfig;
use crate::store::Store;

/// The OTP core's own SMPP account on the embedded SMSC.
pub const CORE_SYSTEM_ID: &str = "otpgate-core";
/// Receipts the embedded SMSC sends the OTP core before it waits for answers.
const CORE_RECEIPT_WINDOW: usize = 64;
/// Messages the OTP core submits at once to an external SMSC, unless
/// `[sms_out] window` says otherwise: SMPP's customary window.
const SMPP_CLIENT_WINDOW: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data directory {0}: {1}")]
    Data(String, String),
    #[error("carrier files: {0}")]
    Carriers(String),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("{0}")]
    Other(String),
}

/// The carrier models: `--carriers DIR`, else `./carriers` when it exists
/// (so edits to the repository's files take effect), else the copies
/// compiled into the binary. A malformed file stops start-up.
fn load_carriers(config: &Config) -> Result<CarrierSet, StartError> {
    let dir = config.carriers_dir.clone().or_else(|| {
        let local = std::path::PathBuf::from("carriers");
        local.join("docomo.toml").is_file().then_some(local)
    });
    match dir {
        Some(dir) => {
            let set = CarrierSet::load_dir(&dir).map_err(|e| StartError::Carriers(e.to_string()))?;
            tracing::info!(dir = %dir.display(), carriers = set.all().len(), "carrier models loaded");
            Ok(set)
        }
        None => Ok(CarrierSet::embedded()),
    }
}

/// The desk over a data directory, without starting any server (for
/// `otpgate diagnose --data`). Nothing is sent: the outbound side is inert.
pub fn open_desk(config: &Config) -> Result<(crate::desk::Desk, Arc<Clock>), StartError> {
    let data = |e: &dyn std::fmt::Display| StartError::Data(config.data_dir.display().to_string(), e.to_string());
    if !config.data_dir.join("db").exists() {
        return Err(StartError::Data(
            config.data_dir.display().to_string(),
            "no otpgate database here".into(),
        ));
    }
    let key = load_or_create_key(&config.data_dir).map_err(|e| data(&e))?;
    let store = Store::open_with_cache(&config.data_dir, config.cache_mib).map_err(|e| data(&e))?;
    let carriers = Arc::new(load_carriers(config)?);
    let saved = World::saved_clock(&store).map_err(|e| data(&e))?;
    // Data made under a virtual clock is read at that clock's time.
    let clock = match saved {
        Some(at) => Clock::virtual_at(at),
        None => Clock::system(),
    };
    let log = DeliveryLog::open(&store).map_err(|e| data(&e))?;
    log.keep(config.log_retention);
    let profile = SenderProfile {
        number: config.sender.number.clone(),
        short_code: config.sender.short_code.clone(),
    };
    let world = World::open(
        &store,
        carriers.clone(),
        profile.clone(),
        config.default_carrier.clone(),
        false,
    )
    .map_err(|e| data(&e))?;
    let mail = MailWorld::new(&store, clock.clone(), config.mail_retention).map_err(|e| data(&e))?;
    let outbound = Arc::new(Outbound {
        log: log.clone(),
        clock: clock.clone(),
        sms: None,
        email: None,
        sms_source: String::new(),
        brand: config.sender.brand.clone(),
        shown: Arc::new(|_, _| String::new()),
        mail_link: None,
    });
    let service = OtpService::open(&store, clock.clone(), log.clone(), key, config, outbound).map_err(|e| data(&e))?;
    let desk = crate::desk::Desk {
        service,
        log,
        world,
        mail,
        carriers,
        profile,
        email_from: config.sender.email_from.clone(),
        smsc_ids: crate::sim::sms::SmscIds::open(&store).map_err(|e| data(&e))?,
    };
    Ok((desk, clock))
}

/// A started server.
pub struct Running {
    pub http: SocketAddr,
    pub smpp: Option<SocketAddr>,
    /// The SMSC's SMPP-over-TLS listener, when configured.
    pub smpp_tls: Option<SocketAddr>,
    pub smtp: Option<SocketAddr>,
    /// The SMTP server's implicit TLS (SMTPS) listener, when configured.
    pub smtp_tls: Option<SocketAddr>,
    trigger: Trigger,
    /// The server's long-running tasks, by name, for `stop` to wait on.
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    store: Store,
}

impl Running {
    /// The line a harness parses: `otpgate listening http=... smpp=... smtp=...`,
    /// and ` smpps=...` and ` smtps=...` after them when SMPP or SMTP over
    /// TLS is configured.
    pub fn listening_line(&self) -> String {
        let show = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_else(|| "off".into());
        let mut line = format!(
            "otpgate listening http={} smpp={} smtp={}",
            self.http,
            show(self.smpp),
            show(self.smtp)
        );
        if let Some(tls) = self.smpp_tls {
            line.push_str(&format!(" smpps={tls}"));
        }
        if let Some(tls) = self.smtp_tls {
            line.push_str(&format!(" smtps={tls}"));
        }
        line
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// Stops every listener, says goodbye on every protocol and waits, 10
    /// seconds at most in all; a task still running then is named in the
    /// log and left to end with the process.
    pub async fn stop(self) {
        self.trigger.fire();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        for (name, task) in self.tasks {
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                tracing::warn!(task = name, "did not stop within 10 s of the shutdown; left behind");
            }
        }
        let _ = self.store.flush().await;
    }
}

/// New connections the kernel holds for an accept loop: as many as it
/// allows (`net.core.somaxconn` caps it; tokio's `bind` asks for 1,024).
/// Past a full queue the kernel drops a client's SYN, and the client tries
/// again only a second later, then three: under a burst of connections a
/// refusal the server would have answered at once became a timeout.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let listen = |addr: SocketAddr| -> std::io::Result<(TcpListener, SocketAddr)> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(LISTEN_BACKLOG)?;
        let local = listener.local_addr()?;
        Ok((listener, local))
    };
    listen(addr).map_err(|e| StartError::Listen(addr, e))
}

pub async fn start(config: Config) -> Result<Running, StartError> {
    let data = |e: &dyn std::fmt::Display| StartError::Data(config.data_dir.display().to_string(), e.to_string());
    std::fs::create_dir_all(&config.data_dir).map_err(|e| data(&e))?;
    // A data directory just made is durable before anything in it is.
    let parent = config.data_dir.parent().filter(|p| !p.as_os_str().is_empty());
    std::fs::File::open(parent.unwrap_or(std::path::Path::new(".")))
        .and_then(|d| d.sync_all())
        .map_err(|e| data(&e))?;
    let key = load_or_create_key(&config.data_dir).map_err(|e| data(&e))?;
    let store = Store::open_with(&config.data_dir, config.cache_mib, config.min_free_mib).map_err(|e| data(&e))?;
    let fresh = store.tree("members").map_err(|e| data(&e))?.is_empty()
        && store.tree("handsets").map_err(|e| data(&e))?.is_empty();
    let carriers = Arc::new(load_carriers(&config)?);
    if carriers.get(&config.default_carrier).is_none() {
        return Err(StartError::Carriers(format!(
            "default_carrier `{}` is not a loaded carrier",
            config.default_carrier
        )));
    }
    let clock = if config.virtual_clock {
        let saved = World::saved_clock(&store).map_err(|e| data(&e))?;
        Clock::virtual_at(saved.map_or(config.clock_start, |s| s.max(config.clock_start)))
    } else {
        Clock::system()
    };
    let (trigger, shutdown) = shutdown::channel();
    let mut tasks = Vec::new();

    let log = DeliveryLog::open(&store).map_err(|e| data(&e))?;
    log.keep(config.log_retention);
    let events = crate::http::events::EventHub::new();
    log.observe(events.observer());
    if let Some(url) = &config.callback_url {
        let callbacks = crate::delivery::callbacks::Callbacks::open(&store, clock.clone(), url.clone())
            .map_err(|e| StartError::Other(format!("callback_url: {e}")))?;
        log.observe(callbacks.observer());
        tasks.push(("callbacks", tokio::spawn(callbacks.run(shutdown.clone()))));
    }
    let profile = SenderProfile {
        number: config.sender.number.clone(),
        short_code: config.sender.short_code.clone(),
    };
    let world = World::open(
        &store,
        carriers.clone(),
        profile,
        config.default_carrier.clone(),
        config.chaos,
    )
    .map_err(|e| data(&e))?;
    let hub = ReceiptHub::new();
    let network = SmsNetwork::open(
        &store,
        world.clone(),
        log.clone(),
        clock.clone(),
        hub.clone(),
        config.seed,
        CORE_SYSTEM_ID.into(),
    )
    .map_err(|e| data(&e))?;
    network.keep(config.log_retention);
    network.hold_at_most(config.smsc.max_pending);
    network.serve_accounts(config.smsc.accounts.iter().map(|a| a.system_id.clone()).collect());

    // A crash can leave messages open that nothing will move forward: an
    // OTP whose send was cut off (the plain code is gone, so it cannot be
    // sent again), an email or SMS retry that lived in memory, a submit the
    // SMSC logged but never stored. They fail as interrupted, so the log
    // says what happened. SMS an external SMSC took (it gave a message id)
    // keep waiting for their receipts. This runs before any listener opens,
    // so no new message can be mistaken for an interrupted one.
    let now = clock.now();
    let external_smsc = config.sms_out.is_some();
    let settled = log
        .settle_after_restart(|m| {
            // The core's OTPs: an ESME on the default account has the
            // core's origin too, but never an OTP id.
            let from_core = m.origin == "otpgate" && m.otp_id.is_some();
            let submitted_outside = external_smsc && from_core && m.smsc_message_id.is_some();
            match m.channel {
                Channel::Sms if submitted_outside => None,
                Channel::Sms => network.settle_after_restart(m, now),
                // A relay's 250 is the last word an email gets; only a send
                // or a retry still to come was interrupted.
                Channel::Email if !matches!(m.state, State::Queued | State::Enroute) => None,
                Channel::Email => Some(
                    Event::new("interrupted", now)
                        .state(State::Failed)
                        .reason("interrupted_by_restart")
                        .detail("the server stopped before this email was settled"),
                ),
            }
        })
        .await;
    match settled {
        Ok(0) => {}
        Ok(n) => tracing::info!(messages = n, "closed messages a restart interrupted"),
        Err(e) => tracing::error!(error = %e, "could not settle messages after a restart"),
    }

    // The SMSC, with the configured accounts and the core's own.
    let mut core_password = [0u8; 4]; // SMPP passwords are at most 8 characters
    OsRng.fill_bytes(&mut core_password);
    let core_password = crate::otp::hex(&core_password);
    let mut accounts: Vec<Account> = config
        .smsc
        .accounts
        .iter()
        .map(|a| Account {
            system_id: a.system_id.clone(),
            password: a.password.clone(),
            throughput_per_sec: a.throughput_per_sec,
            window: a.window.map(|w| w.max(1)),
        })
        .collect();
    accounts.push(Account {
        system_id: CORE_SYSTEM_ID.into(),
        password: core_password.clone(),
        throughput_per_sec: None,
        // The core answers receipts concurrently, each once it is logged
        // durably; with 10 at a time its receipts fell seconds behind.
        window: Some(CORE_RECEIPT_WINDOW),
    });
    let smsc_counters = Arc::new(crate::smsc::SmscCounters::default());
    let smsc_binds = crate::smsc::binds::Binds::default();
    let mut smsc_view = None;
    let smtp_counters = Arc::new(crate::smtp::SmtpCounters::default());
    let mut smpp_tls_addr = None;
    let smpp_addr = match config.smpp {
        Some(addr) => {
            let (listener, local) = listen(addr)?;
            let tls = match &config.smpp_tls {
                Some(tls) => {
                    let identity = crate::tls::TlsIdentity::load(&tls.files.cert, &tls.files.key)
                        .map_err(|e| StartError::Other(format!("smpp TLS: {e}")))?;
                    let (listener, local) = listen(tls.addr)?;
                    smpp_tls_addr = Some(local);
                    Some(crate::smsc::TlsListener { listener, identity })
                }
                None => None,
            };
            smsc_view = Some(crate::smsc::binds::SmscView::new(
                smsc_binds.clone(),
                hub.clone(),
                accounts.iter().map(|a| a.system_id.clone()).collect(),
            ));
            let smsc_config = SmscConfig {
                accounts,
                max_connections: 1024,
                window: config.smsc.window,
                submit_window: config.smsc.submit_window,
                max_pdu_len: 64 * 1024,
                counters: smsc_counters.clone(),
                binds: smsc_binds,
            };
            tasks.push((
                "SMSC",
                tokio::spawn(crate::smsc::serve(
                    listener,
                    tls,
                    smsc_config,
                    Arc::new(network.clone()),
                    hub.clone(),
                    clock.clone(),
                    shutdown.clone(),
                )),
            ));
            Some(local)
        }
        None => None,
    };

    // The SMTP server and the mail world.
    let mail = MailWorld::new(&store, clock.clone(), config.mail_retention).map_err(|e| data(&e))?;
    let mail_link = MailLink::new(log.clone(), config.sender.email_from.clone());
    mail.set_observer(mail_link.observer());
    let mut smtp_tls_addr = None;
    let smtp_addr = match config.smtp {
        Some(addr) => {
            let (listener, local) = listen(addr)?;
            let implicit_tls = match config.smtp_tls_listen {
                Some(addr) => {
                    let (listener, local) = listen(addr)?;
                    smtp_tls_addr = Some(local);
                    Some(listener)
                }
                None => None,
            };
            let smtp_tls = match &config.smtp_tls {
                Some(files) => Some(
                    crate::smtp::TlsIdentity::load(&files.cert, &files.key)
                        .map_err(|e| StartError::Other(format!("smtp TLS: {e}")))?,
                ),
                None => None,
            };
            let smtp_config = SmtpConfig {
                hostname: "otpgate.local".into(),
                max_message_bytes: config.max_message_bytes,
                max_connections: config.smtp_max_connections,
                max_messages_per_sec: config.smtp_max_messages_per_sec,
                max_in_flight: config.smtp_max_in_flight,
                shed_after: config.smtp_shed_after,
                auth: config
                    .smtp_auth
                    .iter()
                    .map(|a| (a.username.clone(), a.password.clone()))
                    .collect(),
                counters: smtp_counters.clone(),
            };
            tasks.push((
                "SMTP server",
                tokio::spawn(crate::smtp::serve_on(
                    crate::smtp::Listeners {
                        plain: listener,
                        implicit_tls,
                    },
                    smtp_config,
                    smtp_tls,
                    Arc::new(mail.clone()),
                    shutdown.clone(),
                )),
            ));
            Some(local)
        }
        None => None,
    };

    tasks.push(("virtual clock", tokio::spawn(clock.clone().run(shutdown.clone()))));
    match network.resume() {
        Ok(0) => {}
        Ok(n) => tracing::info!(pending = n, "resumed pending SMS deliveries"),
        Err(e) => tracing::error!(error = %e, "could not resume pending SMS"),
    }

    // The OTP core's clients: to the embedded servers unless configured otherwise.
    let sms_client_config = match (&config.sms_out, smpp_addr) {
        (Some(out), _) => Some(SmsClientConfig {
            addr: out.addr.clone(),
            system_id: out.system_id.clone(),
            password: out.password.clone(),
            window: out.window.unwrap_or(SMPP_CLIENT_WINDOW),
            tls: match out.tls {
                true => Some(
                    crate::tls::client_connector(out.tls_ca.as_deref())
                        .map_err(|e| StartError::Other(format!("sms_out TLS: {e}")))?,
                ),
                false => None,
            },
        }),
        (None, Some(local)) => Some(SmsClientConfig {
            addr: local.to_string(),
            system_id: CORE_SYSTEM_ID.into(),
            password: core_password,
            // As many as the embedded SMSC takes at once from one session.
            window: config.smsc.submit_window,
            tls: None,
        }),
        (None, None) => None,
    };
    let recorder = Arc::new(ReceiptRecorder {
        log: log.clone(),
        clock: clock.clone(),
    });
    let sms = match sms_client_config {
        Some(c) => match SmsClient::start(c, recorder, shutdown.clone()).await {
            Ok(client) => Some(client),
            Err(e) => {
                tracing::error!(error = %e, "the OTP core could not bind to the SMSC (refused, or a bad system_id or password); SMS OTPs will fail");
                None
            }
        },
        None => None,
    };
    let email = match (&config.email_out, smtp_addr) {
        (Some(out), _) => Some(EmailClientConfig {
            relay: out.relay.clone(),
            from: config.sender.email_from.clone(),
            hello: "otpgate.local".into(),
            implicit_tls: out.implicit_tls,
            credentials: out.username.clone().zip(out.password.clone()),
        }),
        (None, Some(local)) => Some(EmailClientConfig {
            relay: local.to_string(),
            from: config.sender.email_from.clone(),
            hello: "otpgate.local".into(),
            implicit_tls: false,
            // The embedded server requires AUTH once accounts are configured.
            credentials: config
                .smtp_auth
                .first()
                .map(|a| (a.username.clone(), a.password.clone())),
        }),
        (None, None) => None,
    };
    let shown_world = world.clone();
    let email_from = config.sender.email_from.clone();
    let sms_link = sms.clone();
    let outbound = Arc::new(Outbound {
        log: log.clone(),
        clock: clock.clone(),
        sms,
        email,
        sms_source: member::national_number(&config.sender.number).unwrap_or_else(|| config.sender.number.clone()),
        brand: config.sender.brand.clone(),
        shown: Arc::new(move |channel, destination| match channel {
            Channel::Sms => shown_world.shown_sender(destination),
            Channel::Email => email_from.clone(),
        }),
        mail_link: config.email_out.is_none().then_some(mail_link),
    });
    let service = OtpService::open(&store, clock.clone(), log.clone(), key, &config, outbound).map_err(|e| data(&e))?;

    if fresh && config.load_demo {
        if let Err(e) = crate::fixtures::load_demo(&service, &world).await {
            tracing::warn!(error = %e, "demo data not loaded");
        }
    }

    let (http_listener, http_addr) = listen(config.http)?;
    let desk = crate::desk::Desk {
        service: service.clone(),
        log: log.clone(),
        world: world.clone(),
        mail: mail.clone(),
        carriers: carriers.clone(),
        profile: SenderProfile {
            number: config.sender.number.clone(),
            short_code: config.sender.short_code.clone(),
        },
        email_from: config.sender.email_from.clone(),
        smsc_ids: crate::sim::sms::SmscIds::open(&store).map_err(|e| data(&e))?,
    };
    let ctx = Arc::new(Ctx {
        service,
        log,
        clock,
        world,
        network,
        mail,
        desk,
        admin_token: config.admin_token.clone(),
        loopback: config.http_is_loopback(),
        metrics: Default::default(),
        smsc_counters,
        smsc: smsc_view,
        smtp_counters,
        sms_link,
        store: store.clone(),
        shutdown: shutdown.clone(),
        events,
    });
    let http_limits = crate::http::Limits {
        max_connections: config.http_admission.max_connections,
        max_in_flight: config.http_admission.max_in_flight,
        max_requests_per_sec: config.http_admission.max_requests_per_sec,
    };
    tasks.push((
        "HTTP server",
        tokio::spawn(crate::http::serve(http_listener, ctx, http_limits, shutdown.clone())),
    ));

    Ok(Running {
        http: http_addr,
        smpp: smpp_addr,
        smpp_tls: smpp_tls_addr,
        smtp_tls: smtp_tls_addr,
        smtp: smtp_addr,
        trigger,
        tasks,
        store,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_of_connections_waits_in_the_queue_past_tokios_default_backlog() {
        let (_listener, addr) = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        // Nobody accepts: the kernel completes and queues each handshake
        // until the queue is full, then drops the SYNs (tokio's `bind`
        // queues 1,024).
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(4096);
        if somaxconn <= 1024 {
            eprintln!("net.core.somaxconn is {somaxconn}: no queue longer than tokio's to test");
            return;
        }
        let mut queued = Vec::new();
        for i in 0..somaxconn.min(1500) {
            let connect = tokio::net::TcpStream::connect(addr);
            match tokio::time::timeout(std::time::Duration::from_secs(2), connect).await {
                Ok(Ok(stream)) => queued.push(stream),
                Ok(Err(e)) => panic!("connection {i}: {e}"),
                Err(_) => panic!("connection {i} was not queued: its SYN was dropped"),
            }
        }
    }
}
