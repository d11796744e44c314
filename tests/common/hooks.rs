//! A receiver for otpgate's status callbacks: a hyper server on
//! 127.0.0.1:0 that answers 200 to every POST and hands each JSON body to
//! the test, so a test waits for `delivered` on a channel instead of polling.

#![allow(dead_code)]

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::esme::within;

pub struct HookReceiver {
    /// What to configure as `callback_url`.
    pub url: String,
    bodies: mpsc::UnboundedReceiver<Value>,
}

impl HookReceiver {
    pub async fn start() -> HookReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind hook receiver");
        let url = format!("http://{}/otpgate/status", listener.local_addr().expect("address"));
        let (tx, bodies) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                let service = service_fn(move |request: hyper::Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let bytes = request
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                        let _ = tx.send(body);
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        HookReceiver { url, bodies }
    }

    /// The next callback body.
    pub async fn next(&mut self) -> Value {
        within("a status callback", self.bodies.recv())
            .await
            .expect("hook receiver running")
    }

    /// Callbacks until one matches `done`; answers all of them, in order.
    pub async fn until(&mut self, done: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let body = self.next().await;
            let last = done(&body);
            seen.push(body);
            if last {
                return seen;
            }
        }
    }
}
