//! Socket addresses as text, the same text `Display` writes, without the formatting
//! machinery for IPv4 (about 1,500 instructions an address through it): every connection
//! shows three in its flow record and two in its span.

use std::fmt;
use std::net::SocketAddr;

/// Appends `a` as `Display` writes it.
pub fn write(out: &mut Vec<u8>, a: &SocketAddr) {
    match a {
        SocketAddr::V4(v4) => {
            let mut n = itoa::Buffer::new();
            for (i, octet) in v4.ip().octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(n.format(*octet).as_bytes());
            }
            out.push(b':');
            out.extend_from_slice(n.format(v4.port()).as_bytes());
        }
        SocketAddr::V6(_) => {
            use std::io::Write;
            let _ = write!(out, "{a}");
        }
    }
}

/// An address for a log field (`client = %Shown(addr)`): its `Display` text. Width and
/// precision are not applied to an IPv4 address (no log field asks for them).
pub struct Shown(pub SocketAddr);

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ipv6() {
            return fmt::Display::fmt(&self.0, f);
        }
        // "255.255.255.255:65535" is 21 bytes.
        let mut buf = Vec::with_capacity(21);
        write(&mut buf, &self.0);
        f.write_str(std::str::from_utf8(&buf).expect("digits, dots and a colon"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_what_display_writes() {
        let mut addrs: Vec<SocketAddr> = [
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "127.0.0.1:8080",
            "10.0.200.9:443",
            "[::1]:80",
            "[fe80::1%3]:443",
            "[::ffff:127.0.0.1]:9",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ip = std::net::Ipv4Addr::from((x >> 16) as u32);
            addrs.push(SocketAddr::from((ip, x as u16)));
        }
        for a in addrs {
            let mut mine = Vec::new();
            write(&mut mine, &a);
            assert_eq!(String::from_utf8(mine).unwrap(), a.to_string());
            assert_eq!(Shown(a).to_string(), a.to_string());
        }
    }
}
