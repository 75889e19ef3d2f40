//! What the commands print on stdout. A reader that goes away early (`| head -1`) ends the
//! command quietly with the status a shell gives `cat` killed by SIGPIPE (141): Rust
//! ignores SIGPIPE, so a plain `println!` would panic instead. Not 0: a command that would
//! have failed (`audit verify` finding a bad record) must not look successful. Any other
//! write error ends it with that error.

use std::io::Write;

/// 128 + SIGPIPE, as shells report a command a closed pipe ended.
const EPIPE_STATUS: i32 = 141;

/// Writes `args` (and a newline, with `newline`) to stdout.
pub fn write(args: std::fmt::Arguments<'_>, newline: bool) {
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(EPIPE_STATUS),
        Err(e) => {
            eprintln!("mcp-gateway: error: writing to stdout: {e}");
            std::process::exit(1);
        }
    }
}

/// `println!` for the commands' output.
macro_rules! outln {
    () => { $crate::out::write(format_args!(""), true) };
    ($($t:tt)*) => { $crate::out::write(format_args!($($t)*), true) };
}

/// `print!` for the commands' output.
macro_rules! out {
    ($($t:tt)*) => { $crate::out::write(format_args!($($t)*), false) };
}
