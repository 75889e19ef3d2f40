use super::*;
use std::time::Duration;

fn line_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

#[test]
fn counters_and_gauges_are_encoded_with_the_prefix() {
    let m = Metrics::new();
    m.flow("http1", "closed");
    m.flow("http1", "closed");
    m.flow("tls", "refused_tls_malformed");
    m.mcp("github", "tools/call", "ok");
    m.denied("policy");
    m.redactions(3);
    m.redactions(0);
    m.set_sessions(4);
    m.set_pending_approvals(1);
    m.set_pins_waiting(2);
    m.connection_opened();
    m.connection_opened();
    m.connection_closed();
    let text = m.encode();
    let v = |s: &str| line_value(&text, s).unwrap_or_else(|| panic!("no {s} in\n{text}"));
    assert_eq!(
        v(r#"mcp_gateway_flows_total{protocol="http1",outcome="closed"}"#),
        2.0
    );
    assert_eq!(
        v(r#"mcp_gateway_flows_total{protocol="tls",outcome="refused_tls_malformed"}"#),
        1.0
    );
    assert_eq!(
        v(r#"mcp_gateway_mcp_calls_total{server="github",method="tools/call",outcome="ok"}"#),
        1.0
    );
    assert_eq!(v(r#"mcp_gateway_denied_total{reason="policy"}"#), 1.0);
    // Every reason is there from the start.
    assert_eq!(
        v(r#"mcp_gateway_denied_total{reason="approval_timeout"}"#),
        0.0
    );
    assert_eq!(v("mcp_gateway_redactions_total"), 3.0);
    assert_eq!(v("mcp_gateway_sessions"), 4.0);
    assert_eq!(v("mcp_gateway_pending_approvals"), 1.0);
    assert_eq!(v("mcp_gateway_pins_waiting"), 2.0);
    assert_eq!(v("mcp_gateway_connections_open"), 1.0);
    assert_eq!(
        v(&format!(
            "mcp_gateway_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    assert!(
        text.contains("# TYPE mcp_gateway_mcp_calls_total counter"),
        "{text}"
    );
    assert!(text.contains("# TYPE mcp_gateway_sessions gauge"), "{text}");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("mcp_gateway_"), "{line}");
    }
}

#[test]
fn methods_outside_the_spec_count_as_other() {
    let m = Metrics::new();
    m.mcp("s", "tools/call", "ok");
    m.mcp("s", "notifications/progress", "notification");
    for i in 0..100 {
        m.mcp("s", &format!("x/{i}"), "ok");
        m.mcp("s", &format!("notifications/made-up-{i}"), "notification");
    }
    let mut methods = Vec::new();
    m.mcp
        .for_each(|[_, method, _], n| methods.push((method.to_owned(), n)));
    methods.sort();
    assert_eq!(
        methods,
        vec![
            ("notifications/progress".into(), 1),
            ("other".into(), 100),
            ("other".into(), 100),
            ("tools/call".into(), 1),
        ]
    );
    assert_eq!(method_label("resources/read"), "resources/read");
    assert_eq!(method_label("initialize"), "initialize");
    assert_eq!(method_label("Tools/Call"), "other");
}

#[test]
fn servers_past_the_cap_count_as_other() {
    let m = Metrics::new();
    for i in 0..MAX_SERVERS + 50 {
        m.mcp(&format!("server-{i}"), "tools/list", "ok");
    }
    // A server seen before the cap keeps its own label.
    m.mcp("server-0", "tools/list", "ok");
    let snap = m.snapshot();
    let servers = snap["servers"].as_array().unwrap();
    assert_eq!(
        servers.len(),
        MAX_SERVERS + 1,
        "{MAX_SERVERS} named + other"
    );
    let calls = |name: &str| {
        servers
            .iter()
            .find(|s| s["server"] == name)
            .map(|s| s["calls"].as_u64().unwrap())
    };
    assert_eq!(calls("server-0"), Some(2));
    assert_eq!(calls("other"), Some(50));
    assert_eq!(calls(&format!("server-{}", MAX_SERVERS + 10)), None);
    assert_eq!(snap["calls"]["total"], (MAX_SERVERS + 51) as u64);
    let text = m.encode();
    assert_eq!(
        line_value(
            &text,
            r#"mcp_gateway_mcp_calls_total{server="other",method="tools/list",outcome="ok"}"#
        ),
        Some(50.0)
    );
}

#[test]
fn series_are_capped_too() {
    let c = labels::CappedCounters::<2>::new(["a", "b"], [100, 100], 10);
    for i in 0..20 {
        c.inc([&format!("a{i}"), &format!("b{i}")]);
    }
    let mut series = 0;
    let mut other = 0;
    c.for_each(|k, n| {
        series += 1;
        if k == [OTHER, OTHER] {
            other = n;
        }
    });
    assert_eq!(series, 11);
    assert_eq!(other, 10);
}

#[test]
fn unknown_denial_reasons_count_as_other() {
    let m = Metrics::new();
    m.denied("rate_limit");
    m.denied("made up by someone");
    m.denied("other");
    let snap = m.snapshot();
    assert_eq!(snap["denials"]["total"], 3);
    assert_eq!(snap["denials"]["by_reason"]["rate_limit"], 1);
    assert_eq!(snap["denials"]["by_reason"]["other"], 2);
    assert_eq!(snap["denials"]["by_reason"]["policy"], 0);
    assert_eq!(reason_label("exfiltration"), "exfiltration");
    assert_eq!(reason_label("nope"), "other");
}

#[test]
fn snapshot_has_the_same_numbers() {
    let m = Metrics::new();
    m.mcp("a", "tools/call", "ok");
    m.mcp("a", "tools/call", "refused");
    m.mcp("b", "tools/list", "ok");
    m.flow("http2", "closed");
    m.flow("tcp", "passthrough");
    m.redactions(7);
    m.set_sessions(3);
    m.set_pending_approvals(2);
    m.set_pins_waiting(1);
    m.connection_opened();
    let s = m.snapshot();
    assert_eq!(s["calls"]["total"], 3);
    assert_eq!(s["calls"]["by_outcome"]["ok"], 2);
    assert_eq!(s["calls"]["by_outcome"]["refused"], 1);
    assert_eq!(s["calls"]["by_method"]["tools/call"], 2);
    assert_eq!(s["servers"][0]["server"], "a");
    assert_eq!(s["servers"][0]["calls"], 2);
    assert_eq!(s["servers"][0]["by_outcome"]["refused"], 1);
    assert_eq!(s["servers"][1]["server"], "b");
    assert_eq!(s["servers"][1]["by_method"]["tools/list"], 1);
    assert_eq!(s["flows"]["total"], 2);
    assert_eq!(s["flows"]["by_protocol"]["tcp"], 1);
    assert_eq!(s["flows"]["by_outcome"]["closed"], 1);
    assert_eq!(s["redactions"], 7);
    assert_eq!(s["sessions"], 3);
    assert_eq!(s["pending_approvals"], 2);
    assert_eq!(s["pins_waiting"], 1);
    assert_eq!(s["connections_open"], 1);
}

#[test]
fn label_values_are_escaped() {
    let m = Metrics::new();
    m.mcp("we\"ird\nname\\", "ping", "ok");
    let text = m.encode();
    assert!(
        text.contains(r#"server="we\"ird\nname\\""#),
        "label value not escaped:\n{text}"
    );
}

#[test]
fn counting_from_many_threads_loses_nothing() {
    let m: &'static Metrics = Box::leak(Box::new(Metrics::new()));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..1000 {
                    m.mcp(&format!("s{}", i % 7), "tools/call", "ok");
                    m.flow("http1", if t % 2 == 0 { "closed" } else { "error" });
                    let _open = m.open_connection();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = m.snapshot();
    assert_eq!(s["calls"]["total"], 4000);
    assert_eq!(s["flows"]["total"], 4000);
    assert_eq!(s["servers"].as_array().unwrap().len(), 7);
    assert_eq!(s["connections_open"], 0);
}

async fn get(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn endpoint_serves_metrics_and_404_elsewhere() {
    let m: &'static Metrics = Box::leak(Box::new(Metrics::new()));
    m.denied("exfiltration");
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve::serve_metrics(listener, m, Duration::from_secs(10)));

    let ok = get(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(
        ok.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{ok}"
    );
    assert!(
        ok.contains("mcp_gateway_denied_total{reason=\"exfiltration\"} 1\n"),
        "{ok}"
    );

    let missing = get(
        addr,
        "GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    let post = get(
        addr,
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    let garbage = get(addr, "\x16\x03\x01 not http at all\r\n\r\n").await;
    assert!(
        garbage.is_empty() || garbage.starts_with("HTTP/1.1 400"),
        "{garbage}"
    );
    server.abort();
}

#[tokio::test]
async fn a_silent_client_does_not_block_others() {
    let m: &'static Metrics = Box::leak(Box::new(Metrics::new()));
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve::serve_metrics(listener, m, Duration::from_secs(10)));
    use tokio::io::AsyncWriteExt;
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /metr").await.unwrap();
    let ok = tokio::time::timeout(
        Duration::from_secs(5),
        get(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ),
    )
    .await
    .expect("a second client is answered while the first one stalls");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    drop(slow);
    server.abort();
}

#[tokio::test]
async fn a_taken_address_names_the_config_key() {
    let first = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = first.local_addr().unwrap();
    let e = serve(addr).await.unwrap_err().to_string();
    assert!(e.contains("metrics.listen"), "{e}");
    assert!(e.contains(&addr.to_string()), "{e}");
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let m: &'static Metrics = Box::leak(Box::new(Metrics::new()));
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve::serve_metrics(
        listener,
        m,
        Duration::from_millis(300),
    ));
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost:")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the stalled connection is still open after 5 s"
    );
    server.abort();
}
