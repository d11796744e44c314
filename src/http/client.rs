//! A small HTTP/1.1 JSON client for otpgate's own API, used by the
//! scenario runner, `otpgate diagnose` and `otpgate watch` against a
//! running server.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

/// A base URL like `http://127.0.0.1:8080`, with an optional bearer token.
#[derive(Clone, Debug)]
pub struct ApiClient {
    host_port: String,
    token: Option<String>,
}

impl ApiClient {
    pub fn new(base: &str, token: Option<String>) -> Result<ApiClient, String> {
        let rest = base
            .strip_prefix("http://")
            .ok_or_else(|| format!("`{base}`: only http:// URLs are supported"))?;
        let host_port = rest.trim_end_matches('/').to_string();
        if host_port.is_empty() || host_port.contains('/') {
            return Err(format!("`{base}` is not a base URL like http://127.0.0.1:8080"));
        }
        Ok(ApiClient { host_port, token })
    }

    /// `GET path` as server-sent events: `on_event` gets each block's
    /// `event:` name and `data:`, until the server ends the stream (Ok) or
    /// refuses to open it (Err with its status and message).
    pub async fn events(&self, path: &str, mut on_event: impl FnMut(&str, &str)) -> Result<(), String> {
        let resp = self.send("GET", path, Bytes::new()).await?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        if status != 200 {
            let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            return Err(format!("GET {path}: {status} {}", String::from_utf8_lossy(&bytes)));
        }
        let mut pending = String::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("GET {path}: {e}"))?;
            let Some(data) = frame.data_ref() else { continue };
            pending.push_str(&String::from_utf8_lossy(data));
            while let Some(end) = pending.find("\n\n") {
                let block: String = pending.drain(..end + 2).collect();
                let (mut event, mut data) = ("message", String::new());
                for line in block.lines() {
                    if let Some(name) = line.strip_prefix("event: ") {
                        event = name;
                    } else if let Some(more) = line.strip_prefix("data: ") {
                        data.push_str(more);
                    }
                }
                if !data.is_empty() {
                    on_event(event, &data);
                }
            }
        }
        Ok(())
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        payload: Bytes,
    ) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        let stream = tokio::net::TcpStream::connect(&self.host_port)
            .await
            .map_err(|e| format!("connect {}: {e}", self.host_port))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("http handshake: {e}"))?;
        tokio::spawn(conn);
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host_port)
            .header("content-type", "application/json");
        if let Some(t) = &self.token {
            builder = builder.header("authorization", format!("Bearer {t}"));
        }
        let req = builder.body(Full::new(payload)).map_err(|e| e.to_string())?;
        sender
            .send_request(req)
            .await
            .map_err(|e| format!("{method} {path}: {e}"))
    }

    /// One request; answers (status, JSON or the text as a JSON string).
    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value), String> {
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let resp = self.send(method, path, Bytes::from(payload)).await?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?
            .to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok((status, value))
    }
}

/// Percent-encodes one path segment.
pub fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
