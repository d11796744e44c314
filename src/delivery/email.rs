//! otpgate's own SMTP client: it writes the OTP email (ja or en) and hands it
//! to the configured relay, which is the embedded SMTP server or a real one.
//!
//! Built on `mail-send` (and its `mail-builder`); every failure becomes a
//! [`SendOutcome`] carrying the relay's reply code, so the delivery log and
//! the diagnostics can say what the relay answered at which stage. It must
//! never log the message text or put the code anywhere but the message body:
//! the delivery log gets [`masked_text`] instead.

use std::time::Duration;

use crate::clock::Millis;
use mail_send::mail_builder::headers::date::Date;
use mail_send::mail_builder::MessageBuilder;
use mail_send::smtp::AssertReply;
use mail_send::{Credentials, SmtpClient, SmtpClientBuilder};
use tokio::io::{AsyncRead, AsyncWrite};

/// How long one connection attempt and each command may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Where and as whom otpgate sends email.
#[derive(Debug, Clone)]
pub struct EmailClientConfig {
    /// `host:port` of the relay.
    pub relay: String,
    /// The envelope sender and the From address.
    pub from: String,
    /// The name sent in EHLO.
    pub hello: String,
    /// TLS from the first byte (port 465 style); otherwise plain SMTP.
    pub implicit_tls: bool,
    pub credentials: Option<(String, String)>,
}

/// One OTP email to write and send.
#[derive(Debug, Clone)]
pub struct OutgoingEmail {
    pub to: String,
    /// "ja" or "en"; anything else is written in English.
    pub locale: String,
    pub code: String,
    pub valid_minutes: u32,
    /// What the code is for, e.g. "login", "phone_verification".
    pub purpose: String,
    /// The name the member knows the sender by, in the subject and From.
    pub brand: String,
    /// The Date header, from otpgate's clock (the virtual one in tests),
    /// not the machine's.
    pub sent_at: Millis,
}

/// What the relay made of the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// The relay answered 250 to DATA; `reply` is that whole reply, e.g.
    /// `250 2.0.0 Ok: queued as 000000000042` (see [`queued_id`]).
    Accepted { reply: String },
    /// A 5xx reply; `stage` is "connect", "auth", "mail", "rcpt" or "data".
    Rejected {
        code: u16,
        enhanced: String,
        text: String,
        stage: String,
    },
    /// A 4xx reply at any stage: try again later.
    TryLater { code: u16, enhanced: String, text: String },
    /// No SMTP answer at all: connection refused, timeout, TLS failure,
    /// connection lost, or a reply that is not SMTP.
    Unreachable(String),
}

/// Writes the OTP email and sends it through the relay.
pub async fn send_otp(config: &EmailClientConfig, mail: &OutgoingEmail) -> SendOutcome {
    let body = match build_message(config, mail) {
        Ok(body) => body,
        Err(error) => return SendOutcome::Unreachable(format!("message could not be written: {error}")),
    };
    let (host, port) = match split_relay(&config.relay) {
        Some(hp) => hp,
        None => return SendOutcome::Unreachable(format!("relay is not host:port: {}", config.relay)),
    };
    if config.implicit_tls {
        let builder = match SmtpClientBuilder::new(host.to_string(), port) {
            Ok(builder) => builder,
            Err(error) => return SendOutcome::Unreachable(format!("TLS setup failed: {error}")),
        };
        let mut builder = builder
            .implicit_tls(true)
            .helo_host(config.hello.clone())
            .timeout(TIMEOUT);
        if let Some((user, secret)) = &config.credentials {
            builder = builder.credentials(Credentials::new(user.clone(), secret.clone()));
        }
        match builder.connect().await {
            Ok(client) => transact(client, &config.from, &mail.to, &body).await,
            Err(error) => outcome_of(error, "connect"),
        }
    } else {
        match connect_plain(config, host, port).await {
            Ok(client) => transact(client, &config.from, &mail.to, &body).await,
            Err((error, stage)) => outcome_of(error, stage),
        }
    }
}

/// The text of the message with the code replaced by "******" (for the delivery log).
pub fn masked_text(mail: &OutgoingEmail) -> String {
    template(mail).text("******")
}

/// The capture id in an `Accepted` reply from otpgate's own SMTP server.
pub fn queued_id(reply: &str) -> Option<&str> {
    reply
        .split("queued as ")
        .nth(1)
        .map(|rest| rest.split_whitespace().next().unwrap_or(""))
}

fn split_relay(relay: &str) -> Option<(&str, u16)> {
    let (host, port) = relay.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host, port.parse().ok()?)).filter(|(h, _)| !h.is_empty())
}

/// Plain SMTP without touching TLS: greeting, EHLO, AUTH when configured.
async fn connect_plain(
    config: &EmailClientConfig,
    host: &str,
    port: u16,
) -> Result<SmtpClient<tokio::net::TcpStream>, (mail_send::Error, &'static str)> {
    let connect = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect((host, port)));
    let stream = match connect.await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err((mail_send::Error::Io(error), "connect")),
        Err(_) => return Err((mail_send::Error::Timeout, "connect")),
    };
    let mut client = SmtpClient {
        stream,
        timeout: TIMEOUT,
    };
    let greeting = tokio::time::timeout(TIMEOUT, client.read())
        .await
        .map_err(|_| (mail_send::Error::Timeout, "connect"))?
        .map_err(|e| (e, "connect"))?;
    greeting.assert_positive_completion().map_err(|e| (e, "connect"))?;
    let capabilities = client.ehlo(&config.hello).await.map_err(|e| (e, "connect"))?;
    if let Some((user, secret)) = &config.credentials {
        let credentials = Credentials::new(user.clone(), secret.clone());
        client
            .authenticate(&credentials, &capabilities)
            .await
            .map_err(|e| (e, "auth"))?;
    }
    Ok(client)
}

async fn transact<T: AsyncRead + AsyncWrite + Unpin>(
    mut client: SmtpClient<T>,
    from: &str,
    to: &str,
    body: &[u8],
) -> SendOutcome {
    let no_parameters = mail_send::smtp::message::Parameters::new();
    if let Err(error) = client.mail_from(from, &no_parameters).await {
        let _ = client.quit().await;
        return outcome_of(error, "mail");
    }
    if let Err(error) = client.rcpt_to(to, &no_parameters).await {
        let _ = client.quit().await;
        return outcome_of(error, "rcpt");
    }
    match client.data(body).await {
        Ok(reply) => {
            let _ = client.quit().await;
            SendOutcome::Accepted {
                reply: format_reply(reply.code, &reply.esc, &reply.message),
            }
        }
        Err(error) => {
            let _ = client.quit().await;
            outcome_of(error, "data")
        }
    }
}

fn format_reply(code: u16, esc: &[u8; 3], message: &str) -> String {
    match enhanced(esc) {
        e if e.is_empty() => format!("{code} {message}"),
        e => format!("{code} {e} {message}"),
    }
}

fn enhanced(esc: &[u8; 3]) -> String {
    if esc[0] == 0 {
        String::new()
    } else {
        format!("{}.{}.{}", esc[0], esc[1], esc[2])
    }
}

/// Maps a `mail-send` error at `stage` to the outcome: the reply code where
/// the relay gave one.
fn outcome_of(error: mail_send::Error, stage: &str) -> SendOutcome {
    let (reply, stage) = match error {
        mail_send::Error::UnexpectedReply(reply) => (reply, stage),
        mail_send::Error::AuthenticationFailed(reply) => (reply, "auth"),
        mail_send::Error::UnsupportedAuthMechanism => {
            return SendOutcome::Rejected {
                code: 504,
                enhanced: "5.5.4".into(),
                text: "the relay offers no usable AUTH mechanism".into(),
                stage: "auth".into(),
            }
        }
        other => return SendOutcome::Unreachable(other.to_string()),
    };
    let enhanced = enhanced(&reply.esc);
    let text = reply.message.clone();
    match reply.code {
        400..=499 => SendOutcome::TryLater {
            code: reply.code,
            enhanced,
            text,
        },
        500..=599 => SendOutcome::Rejected {
            code: reply.code,
            enhanced,
            text,
            stage: stage.to_string(),
        },
        code => SendOutcome::Unreachable(format!("unexpected reply at {stage}: {code} {text}")),
    }
}

fn build_message(config: &EmailClientConfig, mail: &OutgoingEmail) -> std::io::Result<Vec<u8>> {
    let template = template(mail);
    MessageBuilder::new()
        .from((mail.brand.as_str(), config.from.as_str()))
        .to(mail.to.as_str())
        .subject(template.subject())
        .date(Date::new(mail.sent_at.div_euclid(1000)))
        .text_body(template.text(&mail.code))
        .write_to_vec()
}

fn template(mail: &OutgoingEmail) -> Template<'_> {
    Template {
        mail,
        japanese: mail.locale.eq_ignore_ascii_case("ja"),
    }
}

/// The ja and en wording of the OTP email.
struct Template<'a> {
    mail: &'a OutgoingEmail,
    japanese: bool,
}

impl Template<'_> {
    fn subject(&self) -> String {
        if self.japanese {
            format!("【{}】ワンタイムパスワードのお知らせ", self.mail.brand)
        } else {
            format!("[{}] Your one-time password", self.mail.brand)
        }
    }

    /// The text body with `code` in it (the real code, or the mask).
    fn text(&self, code: &str) -> String {
        let m = self.mail;
        if self.japanese {
            format!(
                "{brand}をご利用いただきありがとうございます。\n\
                 {purpose}のためのワンタイムパスワードをお知らせします。\n\
                 \n\
                 ワンタイムパスワード：{code}\n\
                 \n\
                 有効期限は{minutes}分です。入力画面を閉じずにそのまま入力してください。\n\
                 ワンタイムパスワードは一度だけ使用できます。再発行すると、以前のパスワードは使用できなくなります。\n\
                 お心当たりのない場合は、このメールを破棄してください。\n\
                 \n\
                 {brand}\n\
                 ※このメールは送信専用です。ご返信いただいてもお答えできません。\n",
                brand = m.brand,
                purpose = purpose_ja(&m.purpose),
                minutes = m.valid_minutes,
            )
        } else {
            format!(
                "Thank you for using {brand}.\n\
                 Here is your one-time password for {purpose}:\n\
                 \n\
                 {code}\n\
                 \n\
                 It is valid for {minutes} minutes. Enter it on the screen that asked for it, without closing that screen.\n\
                 The code works once. Requesting a new code makes this one invalid.\n\
                 If you did not request it, you can ignore this email.\n\
                 \n\
                 {brand}\n\
                 This address does not receive replies.\n",
                brand = m.brand,
                purpose = purpose_en(&m.purpose),
                minutes = m.valid_minutes,
            )
        }
    }
}

fn purpose_ja(purpose: &str) -> &'static str {
    match purpose {
        "login" => "ログイン",
        "profile" | "view_profile" => "会員情報の表示",
        "redeem" | "redeem_miles" => "マイルの交換",
        "phone_verification" => "携帯電話番号の確認",
        _ => "お手続き",
    }
}

fn purpose_en(purpose: &str) -> &'static str {
    match purpose {
        "login" => "signing in",
        "profile" | "view_profile" => "viewing your profile",
        "redeem" | "redeem_miles" => "redeeming miles",
        "phone_verification" => "confirming your mobile number",
        _ => "your request",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(locale: &str) -> OutgoingEmail {
        OutgoingEmail {
            to: "taro@docomo.ne.jp".into(),
            locale: locale.into(),
            code: "402931".into(),
            valid_minutes: 10,
            purpose: "login".into(),
            brand: "otpgate".into(),
            sent_at: crate::clock::DEFAULT_VIRTUAL_START,
        }
    }

    fn config() -> EmailClientConfig {
        EmailClientConfig {
            relay: "127.0.0.1:1".into(),
            from: "noreply@otpgate.example".into(),
            hello: "otpgate.example".into(),
            implicit_tls: false,
            credentials: None,
        }
    }

    #[test]
    fn masked_text_hides_the_code_in_both_languages() {
        for locale in ["ja", "en"] {
            let masked = masked_text(&mail(locale));
            assert!(masked.contains("******"), "{masked}");
            assert!(!masked.contains("402931"));
        }
        assert!(masked_text(&mail("ja")).contains("有効期限は10分"));
    }

    #[test]
    fn the_japanese_message_parses_back_with_subject_and_code() {
        let raw = build_message(&config(), &mail("ja")).unwrap();
        assert!(raw.is_ascii(), "the message is 7-bit clean for carrier mail");
        let parsed = mail_parser::MessageParser::default().parse(&raw).unwrap();
        assert_eq!(parsed.subject(), Some("【otpgate】ワンタイムパスワードのお知らせ"));
        let text = parsed.body_text(0).unwrap();
        assert_eq!(crate::smtp::capture::find_code(&text), Some("402931"));
        assert!(text.contains("ワンタイムパスワード："));
    }

    #[test]
    fn relay_addresses_and_queue_ids_are_read() {
        assert_eq!(split_relay("127.0.0.1:2525"), Some(("127.0.0.1", 2525)));
        assert_eq!(split_relay("[::1]:25"), Some(("::1", 25)));
        assert_eq!(split_relay("nohost"), None);
        assert_eq!(queued_id("250 2.0.0 Ok: queued as 000000000042"), Some("000000000042"));
    }

    #[tokio::test]
    async fn an_unreachable_relay_is_reported_as_such() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let outcome = send_otp(
            &EmailClientConfig {
                relay: addr.to_string(),
                ..config()
            },
            &mail("en"),
        )
        .await;
        assert!(matches!(outcome, SendOutcome::Unreachable(_)), "{outcome:?}");
    }
}
