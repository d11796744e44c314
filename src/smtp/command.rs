//! Reading one SMTP command line: the verb, the MAIL and RCPT paths and their
//! ESMTP parameters, and the canonical line handed to the `mailin` state
//! machine (whose own parser knows no SIZE parameter, no null sender and no
//! trailing arguments). Pure byte-string work: it never touches a socket and
//! never decides what a mailbox accepts.

/// One command, as far as the session needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    /// HELO or EHLO; `canonical` is what the state machine is fed.
    Hello {
        extended: bool,
        domain: String,
        canonical: Vec<u8>,
    },
    Mail {
        path: String,
        size: Option<u64>,
        canonical: Vec<u8>,
    },
    Rcpt {
        path: String,
        canonical: Vec<u8>,
    },
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    StartTls,
    /// AUTH with its mechanism and optional initial response, fed as is.
    Auth {
        canonical: Vec<u8>,
    },
    Unknown,
}

/// A syntax error, as the reply that explains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub code: u16,
    pub enhanced: &'static str,
    pub text: &'static str,
}

const fn syntax(code: u16, enhanced: &'static str, text: &'static str) -> SyntaxError {
    SyntaxError { code, enhanced, text }
}

/// The placeholder handed to the state machine for the null sender `<>`,
/// which `mailin` cannot parse; the session keeps the real, empty, path.
const NULL_SENDER_PLACEHOLDER: &str = "null-sender@invalid";

/// Parses one command line (with or without its line ending).
pub(crate) fn parse(line: &[u8]) -> Result<Command, SyntaxError> {
    let line = trim_line_end(line);
    let (verb, rest) = match line.iter().position(|&b| b == b' ') {
        Some(at) => (&line[..at], &line[at + 1..]),
        None => (line, &b""[..]),
    };
    let verb = verb.to_ascii_uppercase();
    match verb.as_slice() {
        b"HELO" | b"EHLO" => {
            let extended = verb == b"EHLO";
            let domain = std::str::from_utf8(rest)
                .ok()
                .and_then(|r| r.split_whitespace().next())
                .filter(|d| d.len() <= 255 && d.bytes().all(|b| b.is_ascii_graphic()))
                .ok_or(if extended {
                    syntax(501, "5.5.4", "Syntax: EHLO hostname")
                } else {
                    syntax(501, "5.5.4", "Syntax: HELO hostname")
                })?;
            let canonical = format!("{} {}\r\n", if extended { "EHLO" } else { "HELO" }, domain).into_bytes();
            Ok(Command::Hello {
                extended,
                domain: domain.to_string(),
                canonical,
            })
        }
        b"MAIL" => parse_mail(rest),
        b"RCPT" => parse_rcpt(rest),
        b"DATA" => no_argument(rest, Command::Data, "Syntax: DATA"),
        b"RSET" => no_argument(rest, Command::Rset, "Syntax: RSET"),
        b"QUIT" => no_argument(rest, Command::Quit, "Syntax: QUIT"),
        b"STARTTLS" => no_argument(rest, Command::StartTls, "Syntax: STARTTLS"),
        // NOOP and HELP may carry a string that means nothing.
        b"NOOP" => Ok(Command::Noop),
        b"HELP" => Ok(Command::Help),
        b"VRFY" => Ok(Command::Vrfy),
        b"EXPN" => Ok(Command::Expn),
        b"AUTH" => {
            let mut canonical = line.to_vec();
            canonical.extend_from_slice(b"\r\n");
            Ok(Command::Auth { canonical })
        }
        _ => Ok(Command::Unknown),
    }
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn no_argument(rest: &[u8], command: Command, usage: &'static str) -> Result<Command, SyntaxError> {
    if rest.iter().all(|b| b.is_ascii_whitespace()) {
        Ok(command)
    } else {
        Err(syntax(501, "5.5.4", usage))
    }
}

fn parse_mail(rest: &[u8]) -> Result<Command, SyntaxError> {
    const USAGE: SyntaxError = syntax(501, "5.5.4", "Syntax: MAIL FROM:<address>");
    let rest = strip_keyword(rest, b"FROM:").ok_or(USAGE)?;
    let (path, params) = split_path(rest).ok_or(USAGE)?;
    if !path.is_empty() {
        check_address(&path)?;
    }
    let mut size = None;
    let mut eight_bit = false;
    for param in params.split_whitespace() {
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param, None),
        };
        match (key.to_ascii_uppercase().as_str(), value) {
            ("SIZE", Some(v)) => {
                size = Some(
                    v.parse::<u64>()
                        .map_err(|_| syntax(501, "5.5.4", "Bad SIZE parameter"))?,
                );
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => eight_bit = true,
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => eight_bit = false,
            ("BODY", _) => return Err(syntax(501, "5.5.4", "Bad BODY parameter")),
            // AUTH=<> identifies the submitter for relays; nothing to check here.
            ("AUTH", Some(_)) => {}
            _ => return Err(syntax(555, "5.5.4", "Unsupported MAIL parameter")),
        }
    }
    let shown = if path.is_empty() {
        NULL_SENDER_PLACEHOLDER
    } else {
        path.as_str()
    };
    let body = if eight_bit { " BODY=8BITMIME" } else { "" };
    let canonical = format!("MAIL FROM:<{shown}>{body}\r\n").into_bytes();
    Ok(Command::Mail { path, size, canonical })
}

fn parse_rcpt(rest: &[u8]) -> Result<Command, SyntaxError> {
    const USAGE: SyntaxError = syntax(501, "5.5.4", "Syntax: RCPT TO:<address>");
    let rest = strip_keyword(rest, b"TO:").ok_or(USAGE)?;
    let (path, params) = split_path(rest).ok_or(USAGE)?;
    if path.is_empty() {
        return Err(syntax(501, "5.1.3", "Bad recipient address syntax"));
    }
    check_address(&path)?;
    if !params.trim().is_empty() {
        return Err(syntax(555, "5.5.4", "Unsupported RCPT parameter"));
    }
    let canonical = format!("RCPT TO:<{path}>\r\n").into_bytes();
    Ok(Command::Rcpt { path, canonical })
}

/// `FROM:` or `TO:` after the verb, case-insensitive, with the spaces some
/// clients put around it.
fn strip_keyword<'a>(rest: &'a [u8], keyword: &[u8]) -> Option<&'a [u8]> {
    let rest = trim_start(rest);
    if rest.len() < keyword.len() || !rest[..keyword.len()].eq_ignore_ascii_case(keyword) {
        return None;
    }
    Some(trim_start(&rest[keyword.len()..]))
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    &bytes[start..]
}

/// The path (without brackets and source route) and the parameter text.
fn split_path(rest: &[u8]) -> Option<(String, String)> {
    let rest = std::str::from_utf8(rest).ok()?;
    let (inner, params) = if let Some(bracketed) = rest.strip_prefix('<') {
        let end = bracketed.find('>')?;
        (&bracketed[..end], &bracketed[end + 1..])
    } else {
        // Lenient: a bare address, as some scripts send it.
        match rest.find(' ') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, ""),
        }
    };
    if !params.is_empty() && !params.starts_with(' ') {
        return None;
    }
    // A source route (`@relay1,@relay2:user@domain`) is obsolete; RFC 5321
    // says to ignore it.
    let inner = match inner.strip_prefix('@') {
        Some(route) => route.split_once(':')?.1,
        None => inner,
    };
    Some((inner.to_string(), params.to_string()))
}

fn check_address(path: &str) -> Result<(), SyntaxError> {
    const BAD: SyntaxError = syntax(501, "5.1.3", "Bad address syntax");
    if path.len() > 254
        || path
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
    {
        return Err(BAD);
    }
    match path.rsplit_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() && !domain.contains('@') => Ok(()),
        _ => Err(BAD),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(line: &str, expect: Result<Command, u16>) {
        let got = parse(line.as_bytes()).map_err(|e| e.code);
        assert_eq!(got, expect, "{line:?}");
    }

    fn mail(path: &str, size: Option<u64>, canonical: &str) -> Result<Command, u16> {
        Ok(Command::Mail {
            path: path.into(),
            size,
            canonical: canonical.as_bytes().to_vec(),
        })
    }

    #[test]
    fn mail_from_takes_size_body_and_the_null_sender() {
        check(
            "MAIL FROM:<a@example.com>\r\n",
            mail("a@example.com", None, "MAIL FROM:<a@example.com>\r\n"),
        );
        check(
            "mail FROM:<a@example.com> size=1234 BODY=8BITMIME\r\n",
            mail(
                "a@example.com",
                Some(1234),
                "MAIL FROM:<a@example.com> BODY=8BITMIME\r\n",
            ),
        );
        check(
            "MAIL FROM: <a@example.com>\r\n",
            mail("a@example.com", None, "MAIL FROM:<a@example.com>\r\n"),
        );
        check(
            "MAIL FROM:<>\r\n",
            mail("", None, "MAIL FROM:<null-sender@invalid>\r\n"),
        );
        check("MAIL FROM:<a@example.com> SIZE=lots\r\n", Err(501));
        check("MAIL FROM:<a@example.com> RET=HDRS\r\n", Err(555));
        check("MAIL TO:<a@example.com>\r\n", Err(501));
        check("MAIL FROM:<a b@example.com>\r\n", Err(501));
        check("MAIL FROM:<nodomain>\r\n", Err(501));
    }

    #[test]
    fn rcpt_to_keeps_the_path_and_refuses_parameters() {
        check(
            "RCPT TO:<User@Docomo.ne.jp>\r\n",
            Ok(Command::Rcpt {
                path: "User@Docomo.ne.jp".into(),
                canonical: b"RCPT TO:<User@Docomo.ne.jp>\r\n".to_vec(),
            }),
        );
        check(
            "RCPT TO:<@relay.example:u@example.org>\n",
            Ok(Command::Rcpt {
                path: "u@example.org".into(),
                canonical: b"RCPT TO:<u@example.org>\r\n".to_vec(),
            }),
        );
        check("RCPT TO:<>\r\n", Err(501));
        check("RCPT TO:<u@example.org> NOTIFY=NEVER\r\n", Err(555));
    }

    #[test]
    fn other_verbs_are_recognised_case_insensitively() {
        check(
            "ehlo client.example extra\r\n",
            Ok(Command::Hello {
                extended: true,
                domain: "client.example".into(),
                canonical: b"EHLO client.example\r\n".to_vec(),
            }),
        );
        check("EHLO\r\n", Err(501));
        check("data\r\n", Ok(Command::Data));
        check("DATA now\r\n", Err(501));
        check("noop whatever\r\n", Ok(Command::Noop));
        check("VRFY root\r\n", Ok(Command::Vrfy));
        check("XYZZY\r\n", Ok(Command::Unknown));
        check(
            "AUTH PLAIN AGEAYg==\r\n",
            Ok(Command::Auth {
                canonical: b"AUTH PLAIN AGEAYg==\r\n".to_vec(),
            }),
        );
    }
}
