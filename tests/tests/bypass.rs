//! UDP cannot carry an agent around the gateway: QUIC (UDP 443) and UDP to any port in
//! scope are refused for agents — by connect() and by sendto() alike, IPv4, IPv6 and
//! v4-mapped — so HTTP/3 clients fall back to TCP, which is mediated. Other UDP (DNS and
//! the like) and everyone else's UDP are untouched.

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use gateway_tests::{free_port, Gateway, GatewayOptions, CONNECTING_AGENT, PYTHON};
use serde_json::Value;

/// An agent that tries each way to send a datagram and reports what the kernel said.
const UDP_AGENT: &str = r#"
import errno, json, socket, sys
scope, free = int(sys.argv[1]), int(sys.argv[2])
out = {}
def attempt(name, family, addr, connect):
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if connect:
            s.connect(addr)
            s.send(b"agent")
        else:
            s.sendto(b"agent", addr)
        out[name] = "sent"
    except OSError as e:
        out[name] = errno.errorcode.get(e.errno, str(e.errno))
    finally:
        s.close()
attempt("quic4_sendto", socket.AF_INET, ("127.0.0.1", 443), False)
attempt("quic4_connect", socket.AF_INET, ("127.0.0.1", 443), True)
attempt("quic6_sendto", socket.AF_INET6, ("::1", 443), False)
attempt("quic_mapped_sendto", socket.AF_INET6, ("::ffff:127.0.0.1", 443), False)
attempt("scope_connect", socket.AF_INET, ("127.0.0.1", scope), True)
attempt("scope6_sendto", socket.AF_INET6, ("::1", scope), False)
attempt("other_port", socket.AF_INET, ("127.0.0.1", free), False)
print(json.dumps(out))
"#;

#[test]
fn agents_cannot_use_udp_to_mediated_ports_and_others_can() {
    let (scope, free) = (free_port(), free_port());
    let gw = Gateway::start(
        "udp",
        GatewayOptions {
            ports: vec![scope],
            ..Default::default()
        },
    );
    let other = UdpSocket::bind(("127.0.0.1", free)).unwrap();
    other
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut cmd = Command::new(PYTHON);
    cmd.arg("-c")
        .arg(UDP_AGENT)
        .arg(scope.to_string())
        .arg(free.to_string());
    let out = gw.wrap(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    for refused in [
        "quic4_sendto",
        "quic4_connect",
        "quic6_sendto",
        "quic_mapped_sendto",
        "scope_connect",
        "scope6_sendto",
    ] {
        assert_eq!(seen[refused], "EPERM", "{refused}: {seen}");
    }
    assert_eq!(seen["other_port"], "sent", "{seen}");
    let mut buf = [0u8; 16];
    let (n, _) = other
        .recv_from(&mut buf)
        .expect("the other port's datagram arrived");
    assert_eq!(&buf[..n], b"agent");

    // The same program outside the agents' cgroup sends to 443 as usual.
    let quic = UdpSocket::bind("127.0.0.1:443").expect("binding UDP 443 (root)");
    quic.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let plain = Command::new(PYTHON)
        .args([
            "-c",
            "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'host', ('127.0.0.1', 443))",
        ])
        .status()
        .unwrap();
    assert!(plain.success());
    let (n, _) = quic
        .recv_from(&mut buf)
        .expect("a non-agent's QUIC datagram arrived");
    assert_eq!(&buf[..n], b"host");
}

#[test]
fn a_daemon_killed_and_restarted_under_load_never_lets_an_agent_around_it() {
    let echo = gateway_tests::EchoServer::start("127.0.0.1:0");
    let port = echo.addr.port();
    let mut gw = Gateway::start(
        "restart-load",
        GatewayOptions {
            ports: vec![port],
            ..Default::default()
        },
    );
    let mut cmd = Command::new(PYTHON);
    cmd.arg("-c")
        .arg(CONNECTING_AGENT)
        .arg(port.to_string())
        .arg("4");
    let agent = gw
        .wrap(cmd)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    gw.kill9();
    std::thread::sleep(Duration::from_millis(1000));
    gw.launch();
    let out = agent.wait_with_output().unwrap();
    let attempts: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let count = |r: &str| attempts.iter().filter(|a| a["result"] == r).count();
    assert!(
        count("echoed") > 20,
        "mediated before and after: {attempts:?}"
    );
    assert!(
        count("ConnectionRefusedError") > 5,
        "refused while the daemon was down: {attempts:?}"
    );
    // A bypass would show as the server meeting the agent's own socket, from its address.
    let agent_ip: std::net::IpAddr = "127.0.0.3".parse().unwrap();
    let peers = echo.peers();
    assert!(!peers.is_empty(), "the gateway reached the server");
    let around: Vec<_> = peers.into_iter().filter(|p| p.ip() == agent_ip).collect();
    assert!(
        around.is_empty(),
        "agent connections reached the server directly: {around:?}"
    );
    let unknown: Vec<&Value> = attempts
        .iter()
        .filter(|a| {
            !matches!(
                a["result"].as_str(),
                Some("echoed" | "ConnectionRefusedError")
            )
        })
        .collect();
    assert!(
        unknown.len() <= 2,
        "only connections cut by the kill itself may end otherwise: {unknown:?}"
    );
}
