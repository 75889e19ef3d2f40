//! Which agent TLS the gateway opens: connections to configured MCP servers (or all of
//! them in discovery mode) are terminated; the rest pass through untouched or are refused.

use std::net::SocketAddr;

use crate::config::{Config, Passthrough};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Terminate,
    PassThrough,
    Refuse(&'static str),
}

pub const NO_SNI: &str = "the agent sent no server name (SNI), so the gateway cannot show it a \
     certificate for the server; agents must reach MCP servers over TLS by host name";
pub const NOT_MCP: &str =
    "TLS to a destination that is not a configured MCP server (tls.passthrough = \"refuse\" \
     or http.mcp_only)";

pub fn decide(sni: Option<&str>, dst: SocketAddr, config: &Config) -> Choice {
    let configured = config.servers.iter().any(|s| {
        s.address.is_some_and(|a| a == dst)
            || (s.host.is_some()
                && s.host.as_deref().map(str::to_ascii_lowercase).as_deref()
                    == sni.map(str::to_ascii_lowercase).as_deref()
                && s.port.is_none_or(|p| p == dst.port()))
    });
    if configured || config.tls.discover {
        return match sni {
            Some(_) => Choice::Terminate,
            None => Choice::Refuse(NO_SNI),
        };
    }
    if config.tls.passthrough == Passthrough::Refuse || config.http.mcp_only {
        Choice::Refuse(NOT_MCP)
    } else {
        Choice::PassThrough
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!(
            "[agents]\ncgroups = [\"a.slice\"]\n[[server]]\nname = \"by-host\"\nhost = \"mcp.example.com\"\nport = 443\n\
             [[server]]\nname = \"by-addr\"\naddress = \"10.0.0.5:8443\"\n{extra}"
        );
        Config::parse(std::path::Path::new("t.toml"), &text)
            .unwrap()
            .config
    }

    #[test]
    fn configured_servers_are_terminated_and_others_pass_or_are_refused() {
        let c = config("");
        let d = |sni, dst: &str| decide(sni, dst.parse().unwrap(), &c);
        assert_eq!(d(Some("mcp.example.com"), "1.2.3.4:443"), Choice::Terminate);
        assert_eq!(d(Some("MCP.Example.com"), "1.2.3.4:443"), Choice::Terminate);
        assert_eq!(
            d(Some("mcp.example.com"), "1.2.3.4:8443"),
            Choice::PassThrough
        );
        assert_eq!(d(Some("other.example"), "10.0.0.5:8443"), Choice::Terminate);
        assert_eq!(d(None, "10.0.0.5:8443"), Choice::Refuse(NO_SNI));
        assert_eq!(
            d(Some("www.example.org"), "1.2.3.4:443"),
            Choice::PassThrough
        );
        assert_eq!(d(None, "1.2.3.4:443"), Choice::PassThrough);

        let refusing = config("[tls]\npassthrough = \"refuse\"\n");
        let r = |sni, dst: &str| decide(sni, dst.parse().unwrap(), &refusing);
        assert_eq!(
            r(Some("www.example.org"), "1.2.3.4:443"),
            Choice::Refuse(NOT_MCP)
        );
        assert_eq!(r(Some("mcp.example.com"), "1.2.3.4:443"), Choice::Terminate);

        let discover = config("[tls]\ndiscover = true\n");
        let s = |sni, dst: &str| decide(sni, dst.parse().unwrap(), &discover);
        assert_eq!(s(Some("www.example.org"), "1.2.3.4:443"), Choice::Terminate);
        assert_eq!(s(None, "1.2.3.4:443"), Choice::Refuse(NO_SNI));
    }
}
