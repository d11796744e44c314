//! The OpenAPI document lists the routes the server really has: each one
//! is requested and must not fall through to the router's "no route".

mod common;

use common::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_exists() {
    let server = TestServer::start().await;
    let (status, doc) = server.get("/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 30, "{} paths", paths.len());
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            if op["responses"]["200"]["content"]["text/event-stream"].is_object() {
                // A stream never ends on its own; tests/events.rs reads it.
                continue;
            }
            let concrete = path
                .replace("{number}", "090-1234-5678")
                .replace("{address}", "a%40example.org")
                .replace("{destination}", "090-1234-5678")
                .replace("{id}", "x");
            let body = if method == "get" || method == "delete" {
                None
            } else {
                Some("{}")
            };
            let (status, answer) = server.http_raw(&method.to_uppercase(), &concrete, body).await;
            let fell_through = status == 404
                && answer["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("no route"));
            assert!(!fell_through, "{method} {path} is documented but not routed: {answer}");
        }
    }
    server.stop().await;
}

/// Each documented query parameter with a closed set of values, or a time,
/// is read by its route: a value outside the set, or not a time, is
/// refused, not ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_query_choices_are_checked_by_their_routes() {
    let server = TestServer::start().await;
    let member = serde_json::json!({"id": "M1", "locale": "en", "residence": "JP", "email": "m1@example.com"});
    assert_eq!(server.post("/v1/members", member).await.0, 201);
    let (_, doc) = server.get("/v1/openapi.json").await;
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for (method, op) in ops.as_object().unwrap() {
            let Some(params) = op["parameters"].as_array() else {
                continue;
            };
            for p in params.iter().filter(|p| {
                p["in"] == "query" && (p["schema"]["enum"].is_array() || p["schema"]["format"] == "date-time")
            }) {
                let concrete = path
                    .replace("{number}", "090-1234-5678")
                    .replace("{destination}", "090-1234-5678")
                    .replace("{id}", "M1");
                let name = p["name"].as_str().unwrap();
                let url = format!("{concrete}?{name}=nothing-of-the-kind");
                let (status, answer) = server.http_raw(&method.to_uppercase(), &url, None).await;
                assert_eq!(
                    (status, common::error_code(&answer)),
                    (422, "invalid_request"),
                    "{method} {url}: {answer}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "{checked} choices checked");
    server.stop().await;
}
