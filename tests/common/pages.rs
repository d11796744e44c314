//! The console's pages over HTTP as a browser gets them: status, the
//! headers that matter (content type, redirect target, security policy) and
//! the HTML text, without following redirects.

#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use super::Api;

/// One answer of the console.
#[derive(Debug)]
pub struct Page {
    pub status: u16,
    pub content_type: String,
    /// The `Location` of a redirect.
    pub location: Option<String>,
    pub csp: Option<String>,
    /// The `Content-Disposition` of a download.
    pub disposition: Option<String>,
    /// The body as text (a download's bytes that are not UTF-8 as U+FFFD).
    pub body: String,
    pub bytes: Vec<u8>,
}

impl Api {
    /// `GET path` on a fresh connection with hyper's client.
    pub async fn page(&self, path: &str) -> Page {
        let stream = tokio::net::TcpStream::connect(self.http).await.expect("connect http");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method("GET")
            .uri(path)
            .header("host", "otpgate")
            .header("accept", "text/html")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = sender.send_request(req).await.expect("response");
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (content_type, location, csp, disposition) = (
            header("content-type").unwrap_or_default(),
            header("location"),
            header("content-security-policy"),
            header("content-disposition"),
        );
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let body = if content_type.starts_with("text/html") {
            String::from_utf8(bytes.to_vec()).expect("the page is UTF-8")
        } else {
            String::from_utf8_lossy(&bytes).into_owned()
        };
        Page {
            status,
            content_type,
            location,
            csp,
            disposition,
            body,
            bytes: bytes.to_vec(),
        }
    }

    /// A console page that must answer 200 with HTML.
    pub async fn html(&self, path: &str) -> String {
        let page = self.page(path).await;
        assert_eq!(page.status, 200, "GET {path}: {}", page.body);
        assert!(
            page.content_type.starts_with("text/html"),
            "GET {path}: {}",
            page.content_type
        );
        page.body
    }
}

/// Text as an HTML-escaping template writes it, to look for in a page.
pub fn escaped(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#x27;")
        .replace('/', "&#x2f;")
}
